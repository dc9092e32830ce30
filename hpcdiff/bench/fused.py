"""Throughput of a fused group (training/fused.py) against the ways a sweep's K runs share a
device without it, all measured in one process run on the device given:

- ``one after another``: K runs' training steps in turn (the baseline: what one process,
  or SLURM's one run per GPU, does with the device);
- ``K processes``: K processes, each training one run, started at once and sharing the
  device (what ``slurm.runs_per_gpu`` does), the CPU threads split between them;
- ``fused``: one group of K members, one batched forward and backward per step.

With ``part="sample"`` the same comparison for sampling (what evaluations and sample grids
cost): K members' DDIM samplers on ``SAMPLE_STEPS`` steps one after another against one
fused sampler (science/fused_sampling.py), one stacked network call per step.

Each training step is the trainer's own: the run's process and network, Adam, real digits
(the shipped mnist-5k), the quick sweep's UNet recipe or the starter CNN. Reported as
aggregate images per second and as ratios against one after another.

Library function only (CLI: `hpcdiff bench fused`): ``benchmark_fused(...) -> list[dict]``.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import torch

from hpcdiff.bench.train import sync_device, timed
from hpcdiff.config.spec import DataSpec, RunSpec
from hpcdiff.data import load_splits, to_model_range
from hpcdiff.resolve import validate_spec
from hpcdiff.science.diffusion import build_diffusion
from hpcdiff.science.models import build_model
from hpcdiff.training.fused import FusedGroup, MemberSettings
from hpcdiff.training.step import EAGER, StepMode, make_optimizer

#: The models measured: the quick sweep's UNet and the coursework starter's CNN.
RECIPES = {
    "quick-unet": {"name": "unet", "base_channels": 16, "channel_mults": [1, 2, 4]},
    "starter-cnn": {"name": "cnn", "hidden": [16, 32, 32, 16]},
}


def _spec(model: str, k: int, device: str) -> RunSpec:
    # Members differ in what a sweep varies: learning rate and seed.
    raw = {"model": RECIPES[model], "train": {"lr": 1e-3 * (1 + k), "seed": k, "device": device}}
    return validate_spec(RunSpec.from_dict(raw))


def _member(model: str, k: int, device: torch.device):
    spec = _spec(model, k, device.type)
    torch.manual_seed(spec.train.seed)
    return spec, build_diffusion(spec, build_model(spec.model, (1, 28, 28))).to(device)


def _images(device: torch.device) -> torch.Tensor:
    return to_model_range(load_splits(DataSpec(name="mnist-5k")).train.images, device)


def _batches(images: torch.Tensor, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [images[torch.randint(0, len(images), (batch,), generator=g).to(images.device)] for _ in range(steps)]


def _solo(model, i, device, images, batch, n):
    """Run i alone: its process, its optimiser (the trainer's), its n batches."""
    spec, process = _member(model, i, device)
    opt = make_optimizer(spec.train, process.parameters(), device=device, mode=StepMode(EAGER, ""))
    return process, opt, _batches(images, batch, n, i)


def _solo_step(process, opt, x) -> None:
    """The trainer's eager step (training/step.py) without clipping, EMA or accumulation."""
    process(x).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def steps_one_after_another(model, k, batch, n, device, images):
    """A callable doing the next of n training steps of runs 0..k-1, one after another."""
    runs = [_solo(model, i, device, images, batch, n) for i in range(k)]
    nxt = iter(range(n))

    def once():
        j = next(nxt)
        for process, opt, xs in runs:
            _solo_step(process, opt, xs[j])

    return once


def fused_steps(model, k, batch, n, device, images, mode=None):
    """(a callable doing the next of n training steps of members 0..k-1 as one fused group,
    the group)."""
    members = [_member(model, i, device) for i in range(k)]
    group = FusedGroup([p for _, p in members], [MemberSettings.of(s.train) for s, _ in members], mode=mode)
    xs = [_batches(images, batch, n, i) for i in range(k)]
    nxt = iter(range(n))

    def once():
        j = next(nxt)
        group.step([x[j] for x in xs], [None] * k)

    return once, group


def _one_after_another(model, k, batch, steps, warmup, device, images) -> float:
    return timed(steps_one_after_another(model, k, batch, steps + warmup, device, images), steps, warmup, device)


def _fused(model, k, batch, steps, warmup, device, images, mode=None) -> float:
    once, _ = fused_steps(model, k, batch, steps + warmup, device, images, mode)
    return timed(once, steps, warmup, device)


#: DDIM steps of the sampling measurement: the evaluation default (eval.steps).
SAMPLE_STEPS = 50


def _starts(k: int, batch: int, device: torch.device) -> list[torch.Tensor]:
    return [torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(i)).to(device) for i in range(k)]


@torch.no_grad()
def _sample_one_after_another(model, k, batch, steps, warmup, device, images) -> float:
    processes = [_member(model, i, device)[1].eval() for i in range(k)]
    x_T = _starts(k, batch, device)

    def once():
        for p, x in zip(processes, x_T):
            p.sample(x, sampler="ddim", steps=SAMPLE_STEPS)

    return timed(once, steps, warmup, device)


@torch.no_grad()
def _sample_fused(model, k, batch, steps, warmup, device, images, mode=None) -> float:
    from hpcdiff.science.fused_sampling import FusedProcess

    fused = FusedProcess.of([_member(model, i, device)[1].eval() for i in range(k)], mode)
    x_T = torch.stack(_starts(k, batch, device))
    return timed(lambda: fused.sample(x_T, [None] * k, sampler="ddim", steps=SAMPLE_STEPS), steps, warmup, device)


def _process_worker(model, i, batch, steps, warmup, device_name, threads, barrier, out):
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    process, opt, xs = _solo(model, i, device, _images(device), batch, steps + warmup)
    for x in xs[:warmup]:
        _solo_step(process, opt, x)
    sync_device(device)
    barrier.wait()
    tic = time.perf_counter()
    for x in xs[warmup:]:
        _solo_step(process, opt, x)
    sync_device(device)
    out.put((tic, time.perf_counter()))


def _k_processes(model, k, batch, steps, warmup, device) -> float:
    """Wall time from the first process's start of the timed steps to the last one's end."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(k), ctx.Queue()
    threads = max(1, torch.get_num_threads() // k) if device.type == "cpu" else 1
    procs = [
        ctx.Process(target=_process_worker, args=(model, i, batch, steps, warmup, str(device), threads, barrier, out))
        for i in range(k)
    ]
    for p in procs:
        p.start()
    spans = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    return max(end for _, end in spans) - min(start for start, _ in spans)


def benchmark_fused(
    models=tuple(RECIPES),
    ks=(1, 2, 4, 8, 16),
    *,
    batch: int = 128,
    steps: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    processes: bool = True,
    modes=("vmap", "loop"),
    part: str = "train",
    on_row=None,
) -> list[dict]:
    """Rows {model, k, method, seconds, images/s, ratio} (ratio: images/s over one after
    another's at the same K). ``part``: "train" (training steps) or "sample" (DDIM sampling
    on SAMPLE_STEPS steps, ``steps`` timed samplings of ``batch`` images per member)."""
    if part not in ("train", "sample"):
        raise ValueError(f"part must be 'train' or 'sample', not {part!r}")
    dev = torch.device(device)
    images = _images(dev)
    rows = []
    for model in models:
        for k in ks:
            base = None
            sampling = part == "sample"
            methods = [("one after another", _sample_one_after_another if sampling else _one_after_another, (images,))]
            if processes and k > 1 and not sampling:
                methods.append((f"{k} processes", _k_processes, ()))
            for mode in modes:
                methods.append((f"fused ({mode})", _sample_fused if sampling else _fused, (images, mode)))
            for name, run, extra in methods:
                seconds = run(model, k, batch, steps, warmup, dev, *extra)
                rate = k * batch * steps / seconds
                base = rate if base is None else base
                row = {
                    "part": part,
                    "model": model,
                    "k": k,
                    "method": name,
                    "seconds": seconds,
                    "images/s": rate,
                    "ratio": rate / base,
                }
                rows.append(row)
                if on_row:
                    on_row(row)
    return rows


__all__ = ["benchmark_fused", "RECIPES"]
