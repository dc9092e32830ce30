"""Fused groups (training/fused.py, science/stacked.py): K members that differ in learning
rate, n_T, seed, clipping, weight decay and EMA, trained as one batched model, against the
same K members trained alone by the trainer's own parts (the run's process, its optimiser
from training.step.make_optimizer, clip_grad_norm_, training.state.EMA), on real digits.

Each member draws its batches and its noise from its own generators, as it does alone."""

from __future__ import annotations

import copy

import pytest
import torch

from hpcdiff.config.spec import DataSpec, RunSpec
from hpcdiff.data import load_splits, to_model_range
from hpcdiff.resolve import validate_spec
from hpcdiff.science.diffusion import build_diffusion
from hpcdiff.science.models import build_model
from hpcdiff.science.streams import generator, stream_seed
from hpcdiff.training.fused import FusedGroup, MemberSettings
from hpcdiff.training.state import EMA
from hpcdiff.training.step import EAGER, StepMode, load_optimizer_state, make_optimizer

CPU = torch.device("cpu")
BATCH = 32

# What the members of one group may differ in; everything else (model, data, process) is shared.
MEMBERS = [
    {"train": {"lr": 2e-3, "seed": 0}, "diffusion": {"n_T": 400}},
    {"train": {"lr": 5e-4, "seed": 1, "grad_clip": 0.05}, "diffusion": {"n_T": 400}},
    {"train": {"lr": 1e-3, "seed": 2, "weight_decay": 0.05, "optimizer": "adamw"}, "diffusion": {"n_T": 100}},
    {
        "train": {"lr": 3e-3, "seed": 3, "grad_clip": 1.0, "ema_decay": 0.9, "weight_decay": 0.01},
        "diffusion": {"n_T": 200},
    },
]
MODELS = {
    "cnn": {"name": "cnn", "hidden": [8, 16, 8]},
    "unet": {"name": "unet", "base_channels": 8, "channel_mults": [1, 2], "groups": 4},
}
PROCESSES = {"gaussian": {}, "impulse": {"degradation": {"name": "impulse"}}}


@pytest.fixture(scope="module")
def digits():
    splits = load_splits(DataSpec(name="mnist-5k", subset=320))
    return to_model_range(splits.train.images[:256]), to_model_range(splits.val.images[:64])


def _specs(model: str, process: str, members=MEMBERS) -> list[RunSpec]:
    out = []
    for m in members:
        raw = {"model": MODELS[model], **copy.deepcopy(PROCESSES[process])}
        for section, values in m.items():
            raw.setdefault(section, {}).update(values)
        if process != "gaussian":
            raw["diffusion"].setdefault("n_T", 150)
        out.append(validate_spec(RunSpec.from_dict(raw)))
    return out


def _process(spec: RunSpec):
    torch.manual_seed(spec.train.seed)  # each member's own initial weights, as its run draws them
    return build_diffusion(spec, build_model(spec.model, (1, 28, 28)))


class Solo:
    """One member trained alone, step by step as training/step.py's eager step does."""

    def __init__(self, spec: RunSpec, process):
        self.spec, self.process = spec, process
        self.optimizer = make_optimizer(spec.train, process.parameters(), device=CPU, mode=StepMode(EAGER, ""))
        self.ema = EMA(process.denoiser, spec.train.ema_decay) if spec.train.ema_decay else None

    def step(self, x, g) -> float:
        loss = self.process(x, generator=g)
        loss.backward()
        if self.spec.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.process.parameters(), self.spec.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.process.denoiser)
        return float(loss.detach())


def _noise(spec: RunSpec) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(spec.train.seed, "rank_noise", 0))


def _batches(spec: RunSpec, epoch: int, n: int) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator(spec.train.seed, "epoch_order", epoch))
    return [order[i : i + BATCH] for i in range(0, n - BATCH + 1, BATCH)]


def _build(model: str, process: str, members=MEMBERS, mode=None):
    specs = _specs(model, process, members)
    processes = [_process(s) for s in specs]
    solos = [Solo(s, copy.deepcopy(p)) for s, p in zip(specs, processes)]
    group = FusedGroup(processes, [MemberSettings.of(s.train) for s in specs], mode=mode)
    return specs, solos, group


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _train_epochs(specs, solos, group, images, val, epochs: int, stop=lambda group, epoch, losses: None):
    """Both ways, epoch by epoch: ({member: [mean train loss per epoch]}, same for val)."""
    fused_noise, solo_noise = [_noise(s) for s in specs], [_noise(s) for s in specs]
    curves = {"fused": [[] for _ in specs], "solo": [[] for _ in specs]}
    vals = {"fused": [[] for _ in specs], "solo": [[] for _ in specs]}
    for epoch in range(1, epochs + 1):
        orders = [_batches(s, epoch, len(images)) for s in specs]
        fused_sum, solo_sum = torch.zeros(len(specs), dtype=torch.float64), [0.0] * len(specs)
        for j in range(len(orders[0])):
            active = group.active.clone()
            losses = group.step([images[o[j]] for o in orders], fused_noise)
            fused_sum += losses.double()
            for k, solo in enumerate(solos):
                if active[k]:
                    solo_sum[k] += solo.step(images[orders[k][j]], solo_noise[k])
            stop(group, epoch, losses)
        for k in range(len(specs)):
            if active[k]:
                curves["fused"][k].append(float(fused_sum[k]) / len(orders[0]))
                curves["solo"][k].append(solo_sum[k] / len(orders[0]))
        with torch.no_grad():
            val_noise = [generator(s.train.seed, "validation", 0) for s in specs]
            fused_val = group.losses([val] * len(specs), val_noise)
            for k, (s, solo) in enumerate(zip(specs, solos)):
                if active[k]:
                    vals["fused"][k].append(float(fused_val[k]))
                    vals["solo"][k].append(float(solo.process(val, generator=generator(s.train.seed, "validation", 0))))
    return curves, vals


@pytest.mark.parametrize("mode", ["vmap", "loop"])
@pytest.mark.parametrize(
    "model,process", [("cnn", "gaussian"), ("unet", "gaussian"), ("cnn", "impulse"), ("unet", "impulse")]
)
def test_each_members_gradient_and_step_match_its_run_alone(digits, model, process, mode):
    """Both ways of calling the members (science/stacked.py) give each its own gradient."""
    images, _ = digits
    specs, solos, group = _build(model, process, mode=mode)
    batches = [images[_batches(s, 1, len(images))[0]] for s in specs]
    group.step(batches, [_noise(s) for s in specs], sync=False)
    for k, (s, solo) in enumerate(zip(specs, solos)):
        solo.process(batches[k], generator=_noise(s)).backward()
        for name, p in solo.process.denoiser.named_parameters():
            assert _relative(group.net.params[name].grad[k], p.grad) < 1e-5, (k, name)
    # One optimiser step each (clipping, Adam/AdamW, weight decay, EMA) from the same
    # gradients: Adam's first step divides a gradient by its own magnitude, so a 1e-6
    # difference in a near-zero gradient would show as a larger one in the weights.
    with torch.no_grad():
        for k, solo in enumerate(solos):
            for name, p in solo.process.denoiser.named_parameters():
                group.net.params[name].grad[k].copy_(p.grad)
    group.optimizer_step()
    for solo in solos:
        if solo.spec.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(solo.process.parameters(), solo.spec.train.grad_clip)
        solo.optimizer.step()
        if solo.ema is not None:
            solo.ema.update(solo.process.denoiser)
    for k, solo in enumerate(solos):
        mine = group.member_checkpoint(k)
        for name, value in solo.process.denoiser.state_dict().items():
            assert _relative(mine["model"][name], value) < 1e-6, (k, name)
        if solo.ema is not None:
            for name, value in solo.ema.shadow.items():
                assert _relative(mine["ema"][name], value) < 1e-6, (k, name)


@pytest.mark.parametrize("model,process", [("cnn", "gaussian"), ("unet", "impulse")])
def test_two_epochs_of_losses_match_each_run_alone(digits, model, process):
    """In the mode the CPU uses (loop) for one pair, the GPU's (vmap) for the other."""
    images, val = digits
    specs, solos, group = _build(model, process, mode="loop" if model == "cnn" else "vmap")
    curves, vals = _train_epochs(specs, solos, group, images, val, epochs=2)
    for k in range(len(specs)):
        for fused, solo in zip(curves["fused"][k] + vals["fused"][k], curves["solo"][k] + vals["solo"][k]):
            assert abs(fused - solo) <= 1e-4 * abs(solo), (k, curves, vals)


def test_swapping_two_members_learning_rates_breaks_the_match(digits):
    """The control: the check above sees a member trained with another member's settings."""
    images, val = digits
    specs, solos, _ = _build("cnn", "gaussian")
    swapped = [MemberSettings.of(s.train) for s in specs]
    swapped[0], swapped[1] = (
        MemberSettings.of(specs[0].train.__class__(**{**specs[0].train.__dict__, "lr": specs[1].train.lr})),
        MemberSettings.of(specs[1].train.__class__(**{**specs[1].train.__dict__, "lr": specs[0].train.lr})),
    )
    group = FusedGroup([_process(s) for s in specs], swapped)
    curves, _ = _train_epochs(specs, solos, group, images, val, epochs=1)
    worst = max(abs(f[0] - s[0]) / abs(s[0]) for f, s in zip(curves["fused"][:2], curves["solo"][:2]))
    assert worst > 1e-3
    assert all(abs(f[0] - s[0]) <= 1e-4 * abs(s[0]) for f, s in zip(curves["fused"][2:], curves["solo"][2:]))


def test_a_diverging_member_is_masked_and_leaves_the_others_unchanged(digits):
    images, val = digits
    members = copy.deepcopy(MEMBERS)
    members[2]["train"]["lr"] = 1e6
    specs, solos, group = _build("cnn", "gaussian", members)
    frozen = {}

    def stop(group, epoch, losses):
        for k in range(group.k):
            if group.active[k] and (not torch.isfinite(losses[k]) or (k == 2 and abs(float(losses[k])) > 1e3)):
                group.deactivate(k)
                frozen[k] = group.member_checkpoint(k)["model"]

    curves, vals = _train_epochs(specs, solos, group, images, val, epochs=2, stop=stop)
    assert 2 in frozen and not group.active[2]
    for k in (0, 1, 3):
        assert len(curves["fused"][k]) == 2
        for fused, solo in zip(curves["fused"][k] + vals["fused"][k], curves["solo"][k] + vals["solo"][k]):
            assert abs(fused - solo) <= 1e-4 * abs(solo), k
    after = group.member_checkpoint(2)["model"]
    assert all(torch.equal(after[n], v) or torch.isnan(v).all() for n, v in frozen[2].items())


def test_a_member_checkpoint_resumes_alone_and_a_solo_checkpoint_resumes_fused(digits):
    """After one fused epoch, member 3 (AdamW-like decay, clipping, EMA) continues alone from
    its checkpoint, in torch's own formats, on the curve the group continues on; and a
    solo run's checkpoint loaded into another group's slot continues the same."""
    images, val = digits
    specs, solos, group = _build("cnn", "gaussian")
    _train_epochs(specs, solos, group, images, val, epochs=1)
    k, spec = 3, specs[3]
    saved = group.member_checkpoint(k)
    alone = Solo(spec, _process(spec))
    alone.process.denoiser.load_state_dict(saved["model"])
    load_optimizer_state(alone.optimizer, saved["optimizer"])
    alone.ema.load_state_dict(saved["ema"])
    # A fresh group whose slot 0 takes the solo run's state (its own checkpoint formats).
    solo_state = {
        "model": solos[k].process.denoiser.state_dict(),
        "optimizer": solos[k].optimizer.state_dict(),
        "ema": solos[k].ema.state_dict(),
    }
    other = FusedGroup(
        [_process(specs[0]), _process(spec)], [MemberSettings.of(specs[0].train), MemberSettings.of(spec.train)]
    )
    other.load_member(1, **solo_state)
    seeded = lambda: torch.Generator().manual_seed(99)
    g_group, g_alone, g_other = seeded(), seeded(), seeded()
    others = [torch.Generator().manual_seed(i) for i in range(group.k)]
    for idx in _batches(spec, 2, len(images)):
        x = images[idx]
        in_group = float(group.step([x] * group.k, [g_group if i == k else others[i] for i in range(group.k)])[k])
        a = alone.step(x, g_alone)
        b = float(other.step([x, x], [others[0], g_other])[1])
        assert abs(in_group - a) <= 1e-4 * abs(a) and abs(b - a) <= 1e-4 * abs(a), (in_group, a, b)


def test_the_fused_benchmark_reports_each_way_against_one_after_another():
    """One command, one process run: every method at every K, ratios against the same K's
    one-after-another rate (the numbers themselves are the benchmark's, not the test's)."""
    from hpcdiff.bench.fused import benchmark_fused

    rows = benchmark_fused(("starter-cnn",), (1, 2), batch=8, steps=1, warmup=1, processes=True)
    methods = {(r["k"], r["method"]) for r in rows}
    assert methods == {
        (1, "one after another"),
        (1, "fused (vmap)"),
        (1, "fused (loop)"),
        (2, "one after another"),
        (2, "2 processes"),
        (2, "fused (vmap)"),
        (2, "fused (loop)"),
    }
    for r in rows:
        base = next(b for b in rows if b["k"] == r["k"] and b["method"] == "one after another")
        assert r["images/s"] > 0 and r["ratio"] == pytest.approx(r["images/s"] / base["images/s"])


def _replicate(rd):
    """A real run's member: its process built as the trainer builds it (the global RNG seeded
    with the run seed, then the network's initial weights), and the generator that continues
    the global stream from there, which the trainer's noise comes from alone."""
    from hpcdiff.storage.rundir import RunDir

    spec = validate_spec(RunDir(rd).load_spec())
    splits = load_splits(spec.data)
    with torch.random.fork_rng():
        torch.manual_seed(spec.train.seed)
        process = build_diffusion(spec, build_model(spec.model, splits.train.image_shape))
        noise = torch.Generator()
        noise.set_state(torch.get_rng_state())
    return spec, splits, process, noise


def test_members_replay_real_runs_trained_alone_by_the_trainer(tiny_sweep, tmp_path):
    """Two real `hpcdiff train` runs (seeds and learning rates differ) against a group of the
    same two members: each member's per-epoch training and validation losses are the ones its
    run recorded alone, to 1e-4. The trainer's noise is the global stream after the initial
    weights (nothing else draws from it: validation forks it, samples and metrics use named
    streams), so a member replays its run without changing how runs alone draw."""
    from hpcdiff.storage import archive
    from hpcdiff.training.loop import train

    from helpers import make_run_dir

    dirs = []
    for seed, lr in ((0, 1e-3), (5, 3e-3)):
        sweep = tiny_sweep(f"\n[sweep]\nname = 's{seed}'\n", epochs=2, name=f"s{seed}")
        text = sweep.read_text().replace("seed = 0", f"seed = {seed}\nlr = {lr}")
        sweep.write_text(text)
        rd = make_run_dir(sweep, tmp_path / "runs")
        train(rd.path)
        dirs.append(rd.path)
    members = [_replicate(d) for d in dirs]
    specs = [m[0] for m in members]
    group = FusedGroup([m[2] for m in members], [MemberSettings.of(s.train) for s in specs])
    train_images = to_model_range(members[0][1].train.images)
    val_images = to_model_range(members[0][1].val.images)
    batch = specs[0].train.batch_size
    steps = len(train_images) // batch
    noise = [m[3] for m in members]
    for epoch in (1, 2):
        orders = [
            torch.randperm(len(train_images), generator=generator(s.train.seed, "epoch_order", epoch)) for s in specs
        ]
        total = torch.zeros(len(specs), dtype=torch.float64)
        for i in range(steps):
            total += group.step([train_images[o[i * batch : (i + 1) * batch]] for o in orders], noise).double()
        val_noise = [torch.Generator().manual_seed(stream_seed(s.train.seed, "validation", 0)) for s in specs]
        val_sum, count = torch.zeros(len(specs), dtype=torch.float64), 0
        for i in range(0, len(val_images), batch):
            x = val_images[i : i + batch]
            val_sum += group.losses([x] * len(specs), val_noise).double() * len(x)
            count += len(x)
        for k, d in enumerate(dirs):
            recorded = archive.read(d / "archive.h5")["metrics"]
            assert (
                abs(float(total[k]) / steps - recorded["train_loss"][epoch - 1])
                <= 1e-4 * recorded["train_loss"][epoch - 1]
            )
            assert (
                abs(float(val_sum[k]) / count - recorded["val_loss"][epoch - 1])
                <= 1e-4 * recorded["val_loss"][epoch - 1]
            )


def test_a_members_checkpoint_resumes_alone_with_hpcdiff_train_on_its_runs_curve(tiny_sweep, tmp_path):
    """A run trained alone for 2 epochs, and the same run as a member of a group for epoch 1,
    written as a checkpoint of a run alone and resumed by the trainer for epoch 2: epoch 2's
    recorded losses agree to 1e-4."""
    from hpcdiff.storage import archive, checkpoint
    from hpcdiff.training.loop import train

    from helpers import make_run_dir

    sweep = tiny_sweep(epochs=2)
    text = sweep.read_text().replace("seed = 0", "seed = 3\nlr = 2e-3\nema_decay = 0.9")
    sweep.write_text(text)
    alone = make_run_dir(sweep, tmp_path / "alone")
    train(alone.path)
    member = make_run_dir(sweep, tmp_path / "fused")
    spec, splits, process, noise = _replicate(member.path)
    other_spec = validate_spec(RunSpec.from_dict({**spec.to_dict(), "train": {**spec.to_dict()["train"], "seed": 9}}))
    group = FusedGroup(
        [process, _process(other_spec)], [MemberSettings.of(spec.train), MemberSettings.of(other_spec.train)]
    )
    images = to_model_range(splits.train.images)
    batch, steps = spec.train.batch_size, len(images) // spec.train.batch_size
    orders = [
        torch.randperm(len(images), generator=generator(s.train.seed, "epoch_order", 1)) for s in (spec, other_spec)
    ]
    other_noise = torch.Generator().manual_seed(1)
    for i in range(steps):
        group.step([images[o[i * batch : (i + 1) * batch]] for o in orders], [noise, other_noise])
    state = group.member_train_state(0, noise=noise, epoch_done=1, step=steps, elapsed=0.0, config=spec.to_dict())
    checkpoint.save(state, member.checkpoints, 1, keep=spec.train.keep_checkpoints)
    train(member.path)
    mine, theirs = archive.read(member.archive)["metrics"], archive.read(alone.archive)["metrics"]
    assert list(mine["epoch"]) == [2]  # epoch 1 was the group's: its row is not the trainer's to write
    for name in ("train_loss", "val_loss"):
        assert abs(mine[name][-1] - theirs[name][-1]) <= 1e-4 * abs(theirs[name][-1]), name


@pytest.mark.parametrize("mode", ["vmap", "loop"])
@pytest.mark.parametrize("sampler,steps", [("ancestral", 0), ("ancestral", 10), ("ddim", 10)])
def test_fused_sampling_gives_each_member_the_samples_its_sampler_draws_alone(mode, sampler, steps):
    from hpcdiff.science.fused_sampling import FusedProcess

    members = [{"train": {"lr": 1e-3, "seed": s}, "diffusion": {"n_T": 40}} for s in (0, 1, 2)]
    specs = _specs("cnn", "gaussian", members)
    processes = [_process(s) for s in specs]
    alone = [copy.deepcopy(p).eval() for p in processes]
    group = FusedGroup(processes, [MemberSettings.of(s.train) for s in specs], mode=mode)
    x_T = torch.stack([torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(10 + k)) for k in range(3)])
    fused = FusedProcess(group.processes, group.net).sample(
        x_T, [torch.Generator().manual_seed(k) for k in range(3)], sampler=sampler, steps=steps
    )
    for k, process in enumerate(alone):
        mine = process.sample(x_T[k], generator=torch.Generator().manual_seed(k), sampler=sampler, steps=steps)
        assert _relative(fused[k], mine) < 1e-5, k
    # Control: another member's generator gives other samples (ancestral draws noise).
    if sampler == "ancestral":
        wrong = FusedProcess(group.processes, group.net).sample(
            x_T, [torch.Generator().manual_seed(k) for k in (1, 0, 2)], sampler=sampler, steps=steps
        )
        assert _relative(wrong[0], fused[0]) > 1e-3


def test_members_with_other_schedules_sample_apart():
    from hpcdiff.science.fused_sampling import FusedProcess

    specs = _specs("cnn", "gaussian", MEMBERS[:3])  # n_T 400, 400, 100
    group = FusedGroup([_process(s) for s in specs], [MemberSettings.of(s.train) for s in specs])
    with pytest.raises(ValueError, match=r"sample apart: members differ in n_T \(\[100, 400\]\)"):
        FusedProcess(group.processes, group.net)


@pytest.mark.gpu
def test_on_the_gpu_each_members_gradient_matches_its_run_alone(digits):
    """The device's own rule (vmap on CUDA): per-member CUDA generators, gradients and one
    optimiser step against the runs alone on the same device. TF32 is off for the
    comparison: it rounds batched and plain convolutions differently (~1e-3)."""
    from helpers import GPU_SKIP_REASON, gpu_test_device

    name = gpu_test_device()
    if name is None:
        pytest.skip(GPU_SKIP_REASON)
    device = torch.device(name)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        specs = _specs("unet", "gaussian")
        processes = [_process(s).to(device) for s in specs]
        solos = [copy.deepcopy(p) for p in processes]
        group = FusedGroup(processes, [MemberSettings.of(s.train) for s in specs])
        assert group.net.mode == ("vmap" if device.type == "cuda" else "loop")
        images = digits[0].to(device)
        batches = [images[_batches(s, 1, len(images))[0].to(device)] for s in specs]
        seeded = lambda s: torch.Generator(device=device).manual_seed(s.train.seed)
        group.step(batches, [seeded(s) for s in specs], sync=False)
        for k, (s, solo) in enumerate(zip(specs, solos)):
            solo(batches[k], generator=seeded(s)).backward()
            for pname, p in solo.denoiser.named_parameters():
                assert _relative(group.net.params[pname].grad[k], p.grad) < 1e-4, (k, pname)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
