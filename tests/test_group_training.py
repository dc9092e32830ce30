"""The trainer's fused groups (training/loop.py train_group, training/members.py): runs of a
sweep trained as one group in one process, each member on the curve of its run trained alone
by the same trainer, writing its own run directory, archive and ordinary checkpoints."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from hpcdiff.config import tomlio
from hpcdiff.storage import archive, checkpoint
from hpcdiff.storage.rundir import RunDir
from hpcdiff.training.loop import train, train_group
from hpcdiff.training.members import FusionError

from helpers import cli, fabricate_status, make_run_dir, train_to_end, wait_for

# Members differ in what a member may own: seed, lr, n_T, clipping, EMA, optimiser, epochs.
MEMBERS = {
    "a": "seed = 0\nlr = 1e-3",
    "b": "seed = 7\nlr = 3e-3\ngrad_clip = 0.5\nema_decay = 0.9",
    "c": 'seed = 3\nlr = 2e-3\noptimizer = "adamw"\nweight_decay = 0.01',
}
N_T = {"a": 20, "b": 12, "c": 30}


def _member_sweep(tiny_sweep, name: str, settings: str, n_T: int = 20, epochs: int = 2, **kwargs):
    path = tiny_sweep(f'\n[sweep]\nname = "{name}"\n', epochs=epochs, name=name, **kwargs)
    text = path.read_text().replace("seed = 0", settings).replace("n_T = 20", f"n_T = {n_T}")
    path.write_text(text)
    return path


def _pairs(tiny_sweep, tmp_path, members: dict, n_T: dict | None = None, epochs: dict | None = None, **kwargs):
    """Each member's run written twice, as a sweep would: once to train alone, once fused."""
    alone, fused = [], []
    for name, settings in members.items():
        path = _member_sweep(
            tiny_sweep, name, settings, (n_T or {}).get(name, 20), (epochs or {}).get(name, 2), **kwargs
        )
        alone.append(make_run_dir(path, tmp_path / "alone"))
        fused.append(make_run_dir(path, tmp_path / "fused"))
    return alone, fused


def _curves(rd: RunDir) -> dict:
    return archive.read(rd.archive)["metrics"]


def _assert_same_curve(fused: RunDir, alone: RunDir, keys=("train_loss", "val_loss"), rtol=1e-4):
    mine, theirs = _curves(fused), _curves(alone)
    assert mine["epoch"].tolist() == theirs["epoch"].tolist()
    for key in keys:
        np.testing.assert_allclose(mine[key], theirs[key], rtol=rtol, err_msg=f"{fused.run_id} {key}")


def test_a_group_trains_each_member_on_its_run_alones_curve(tiny_sweep, tmp_path):
    """Three members (seed, lr, n_T, clipping, EMA, Adam/AdamW, 2 or 3 epochs) trained as one
    group against the same runs trained alone: per-epoch train and validation losses to
    1e-4, the final weights and EMA to 1e-4, each member's own status, archive, samples and
    ordinary checkpoints; the member with more epochs trains on alone in the group."""
    alone, fused = _pairs(tiny_sweep, tmp_path, MEMBERS, N_T, epochs={"c": 3})
    for rd in alone:
        assert train(rd.path) == "done"
    assert train_group([rd.path for rd in fused]) == ["done"] * 3
    for f, a in zip(fused, alone):
        _assert_same_curve(f, a)
        status = f.read_status()
        assert status["state"] == "done" and status["epoch"] == a.read_status()["epoch"]
        assert "fused group of 3" in archive.read(f.archive)["attrs"]["step_mode_reason"]
        epoch = checkpoint.list_epochs(f.checkpoints)[-1]
        mine = torch.load(f.checkpoints / f"epoch_{epoch:05d}.pt", weights_only=False)
        theirs = torch.load(a.checkpoints / f"epoch_{epoch:05d}.pt", weights_only=False)
        assert mine["step"] == theirs["step"] and mine["partial"] is None
        for name, value in theirs["model"].items():
            torch.testing.assert_close(mine["model"][name], value, rtol=1e-4, atol=1e-6)
        if theirs["ema"] is not None:
            for name, value in theirs["ema"].items():
                torch.testing.assert_close(mine["ema"][name], value, rtol=1e-4, atol=1e-6)
        assert archive.read(f.archive)["samples"].keys() == archive.read(a.archive)["samples"].keys()
    # Control: the members' curves are far apart, so matching one's own run means something.
    first, second = _curves(alone[0])["train_loss"], _curves(alone[1])["train_loss"]
    assert np.abs(first - second).max() > 1e-2 * np.abs(first).max()


def test_a_diverging_member_is_masked_and_the_others_keep_their_curves(tiny_sweep, tmp_path):
    members = {"a": MEMBERS["a"], "blowup": "seed = 1\nlr = 1e6", "c": MEMBERS["c"]}
    alone, fused = _pairs(tiny_sweep, tmp_path, members, epochs={"a": 3, "c": 3, "blowup": 3})
    for rd in (alone[0], alone[2]):
        train(rd.path)
    states = train_group([rd.path for rd in fused])
    assert states == ["done", "diverged", "done"]
    status = fused[1].read_status()
    assert status["state"] == "diverged" and "diverged" in status["error"]
    _assert_same_curve(fused[0], alone[0])
    _assert_same_curve(fused[2], alone[2])
    # The command says each run's state and fails, as a diverged run alone makes it fail.
    again = _pairs(tiny_sweep, tmp_path / "cli", {"a": MEMBERS["a"], "blowup": "seed = 1\nlr = 1e6"})[1]
    result = cli("train", "--no-progress", *(rd.path for rd in again))
    assert result.exit_code == 1, result.output
    assert f"{again[0].path}: done" in result.output and f"{again[1].path}: diverged" in result.output


def test_budgets_and_early_stopping_are_each_members_own(tiny_sweep, tmp_path):
    """max_steps ends one member mid-epoch at its exact step while the others train on."""
    members = {
        "steps": "seed = 0\nlr = 1e-3\nmax_steps = 6",
        "patient": "seed = 2\nlr = 1e-3\nearly_stopping_patience = 1\nearly_stopping_min_delta = 10.0",
        "plateau": "seed = 4\nlr = 0.1\nlr_plateau_patience = 1\nlr_plateau_factor = 0.5",
    }
    alone, fused = _pairs(tiny_sweep, tmp_path, members, epochs={k: 4 for k in members})
    for rd in alone:
        train(rd.path)
    assert train_group([rd.path for rd in fused]) == ["done"] * 3
    for f, a in zip(fused, alone):
        _assert_same_curve(f, a, keys=("train_loss", "val_loss", "lr", "optimizer_steps"))
    assert fused[0].read_status()["stopped_by"] == "max_steps"
    assert _curves(fused[0])["optimizer_steps"].tolist()[-1] == 6
    assert fused[1].read_status().get("early_stopped") and len(_curves(fused[1])["epoch"]) == 2
    # The plateau lowered this member's lr before its last epoch, which trained with it.
    assert _curves(fused[2])["lr"].tolist()[-1] == 0.05
    assert len(_curves(fused[2])["epoch"]) == 4


def test_a_group_stopped_mid_epoch_resumes_exactly_fused_alone_or_in_another_group(tiny_sweep, tmp_path):
    """SIGTERM stops `hpcdiff train A B` mid-epoch with a checkpoint for each member. Then A
    resumes alone and B in a new group with another run, in another slot: both end on the
    curves of their runs trained alone without a stop."""
    members = {"a": MEMBERS["a"], "b": MEMBERS["b"]}
    alone, fused = _pairs(tiny_sweep, tmp_path, members, N_T, epochs={"a": 3, "b": 3}, subset=1000)
    for rd in alone:
        train(rd.path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcdiff", "train", "--no-progress", *(str(rd.path) for rd in fused)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: fused[0].read_status().get("epoch", 0) >= 1 or proc.poll() is not None, 300, "epoch 1")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    if fused[0].read_status()["epoch"] >= 3:
        pytest.skip("training finished before the signal arrived")
    for rd in fused:
        assert rd.read_status()["state"] == "timeout"
        epoch_done, state = checkpoint.load_latest(rd.checkpoints)
        assert state["partial"] is not None and state["partial"]["epoch"] == epoch_done + 1
    assert train(fused[0].path) == "done"
    other = make_run_dir(_member_sweep(tiny_sweep, "c", MEMBERS["c"], N_T["c"], 1, subset=1000), tmp_path / "more")
    assert train_group([other.path, fused[1].path]) == ["done", "done"]
    for f, a in zip(fused, alone):
        _assert_same_curve(f, a, keys=("train_loss",))
        # Validation at the stopped epoch's end is the resumed process's: the same too.
        _assert_same_curve(f, a, keys=("val_loss",))


def test_members_at_different_epochs_train_together(tiny_sweep, tmp_path):
    """A run that already has one epoch (trained alone) and a fresh run form a group: each
    continues from its own checkpoint and ends on its run's curve."""
    alone, fused = _pairs(tiny_sweep, tmp_path, {"a": MEMBERS["a"], "b": MEMBERS["b"]}, N_T, epochs={"a": 3, "b": 3})
    for rd in alone:
        train(rd.path)
    ahead = fused[0]
    config = tomlio.load(ahead.config_path)
    config["train"]["epochs"] = 1
    ahead.config_path.write_text(tomlio.dumps(config))
    assert train(ahead.path) == "done"
    config["train"]["epochs"] = 3
    ahead.config_path.write_text(tomlio.dumps(config))
    fabricate_status(ahead, state="timeout")
    assert train_group([rd.path for rd in fused]) == ["done", "done"]
    for f, a in zip(fused, alone):
        _assert_same_curve(f, a)


def test_runs_that_cannot_fuse_are_refused_before_anything_is_written(tiny_sweep, tmp_path):
    first = make_run_dir(_member_sweep(tiny_sweep, "a", MEMBERS["a"]), tmp_path / "runs")
    wide = _member_sweep(tiny_sweep, "wide", MEMBERS["b"])
    wide.write_text(wide.read_text().replace("hidden = [8, 8]", "hidden = [16, 16]"))
    second = make_run_dir(wide, tmp_path / "runs")
    with pytest.raises(FusionError, match=r"model\.hidden"):
        train_group([first.path, second.path])
    result = cli("train", "--no-progress", first.path, second.path)
    assert result.exit_code == 2 and "model.hidden" in result.output
    for rd in (first, second):
        assert not rd.archive.exists() and rd.read_status().get("state") in (None, "pending")


def test_a_group_asked_for_cuda_graphs_says_it_steps_eagerly(tiny_sweep, tmp_path):
    rds = []
    for name in ("a", "b"):
        path = _member_sweep(tiny_sweep, name, MEMBERS[name], epochs=1)
        path.write_text(path.read_text().replace("seed = ", 'compile = "graph"\nseed = ', 1))
        rds.append(make_run_dir(path, tmp_path / "runs"))
    assert train_group([rd.path for rd in rds]) == ["done", "done"]
    for rd in rds:
        assert 'train.compile = "graph" does not apply here: a fused group' in rd.log.read_text()
        attrs = archive.read(rd.archive)["attrs"]
        assert attrs["step_mode"] == "none" and "fused group of 2" in attrs["step_mode_reason"]


def test_metrics_of_each_member_are_its_run_alones(tiny_sweep, tmp_path, fashion_classifier):
    """The user's path: the default metrics on. Each member's scores equal its run alone's."""
    alone, fused = _pairs(tiny_sweep, tmp_path, {"a": MEMBERS["a"], "b": MEMBERS["b"]}, N_T, metrics=True)
    for rd in alone:
        train(rd.path)
    assert train_group([rd.path for rd in fused]) == ["done", "done"]
    for f, a in zip(fused, alone):
        scored = [k for k in ("fid", "kid_mean", "inception_score", "ssim") if k in _curves(a)]
        assert scored, sorted(_curves(a))
        _assert_same_curve(f, a, keys=("train_loss", "val_loss", *scored), rtol=1e-3)
    # Both members' epochs end in the same round: each one's training time is the group's
    # rounds, not also the other member's evaluation (seconds here), which runs after it.
    seconds = [_curves(rd)["epoch_seconds"] for rd in fused]
    assert np.abs(seconds[0] - seconds[1]).max() < 0.1, seconds


@pytest.mark.parametrize("process", ["gaussian", "impulse"])
def test_members_sharing_a_sampler_draw_their_evaluations_together(tiny_sweep, tmp_path, fashion_classifier, process):
    """Members with one n_T (a, b) draw their evaluation samples, reconstructions and grids
    as one (one stacked call per sampling step); c, with another n_T, alone. Every member's
    scores and grids are its run alone's."""
    extra = '[degradation]\nname = "impulse"\n' if process == "impulse" else ""
    n_T = {"a": 20, "b": 20, "c": 30}
    alone, fused = [], []
    for name, settings in MEMBERS.items():
        path = _member_sweep(tiny_sweep, name, settings, n_T[name], 2, metrics=True)
        if extra:
            path.write_text(path.read_text() + extra)
        alone.append(make_run_dir(path, tmp_path / "alone"))
        fused.append(make_run_dir(path, tmp_path / "fused"))
    for rd in alone:
        train(rd.path)
    assert train_group([rd.path for rd in fused]) == ["done"] * 3
    for f, a in zip(fused, alone):
        theirs = _curves(a)
        scored = [k for k in theirs if k.startswith(("fid", "kid", "inception", "recon_", "class_"))]
        assert any(k.startswith("recon_") for k in scored) == (process == "impulse"), scored
        assert len(scored) >= 3, sorted(theirs)
        _assert_same_curve(f, a, keys=("train_loss", "val_loss", *scored), rtol=1e-3)
        grids, grids_alone = archive.read(f.archive)["samples"], archive.read(a.archive)["samples"]
        assert sorted(grids) == sorted(grids_alone) and grids
        for epoch in grids:
            np.testing.assert_array_equal(grids[epoch]["images"], grids_alone[epoch]["images"])
    together = [("drawn with 1 other member" in rd.log.read_text()) for rd in fused]
    assert together == [True, True, False]


def test_each_member_logs_to_its_own_trackers(tiny_sweep, tmp_path):
    """[log] trackers in a group: each member's TensorBoard curves are its own archive's."""
    pytest.importorskip("tensorboard", reason="missing tensorboard: bash tests/run.sh installs it")
    from test_trackers import tensorboard_events

    members = {"a": MEMBERS["a"] + '\n[log]\ntrackers = ["tensorboard"]', "b": MEMBERS["b"]}
    members["b"] += '\n[log]\ntrackers = ["tensorboard"]'
    fused = _pairs(tiny_sweep, tmp_path, members, N_T)[1]
    # [log] follows [train] in the written sweep: the member settings above end the file's [train].
    assert train_group([rd.path for rd in fused]) == ["done", "done"]
    for rd in fused:
        events = tensorboard_events(rd.path / "tensorboard")
        curve = _curves(rd)
        assert [step for step, _ in events["train_loss"]] == curve["epoch"].tolist()
        np.testing.assert_allclose([v for _, v in events["train_loss"]], curve["train_loss"], rtol=1e-6)
        assert rd.log.read_text().count("train_loss") == len(curve["epoch"])


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_a_group_on_the_device_follows_its_runs_alone(test_device, gpu_sweep, tmp_path, precision):
    """On CUDA: vmap over the members, each member's own CUDA generator, the fused step eager
    beside runs alone replayed from CUDA graphs (fp32 and bf16). Curves agree to 2e-2: batched
    kernels and the graph-captured fused Adam round differently; a wrong stream, lr or member
    would be off by far more (the members' own curves differ by > 5%)."""
    alone, fused = [], []
    for seed, lr in ((0, 1e-3), (3, 4e-3)):
        path = gpu_sweep(f"g{seed}", test_device, train=f'mixed_precision = "{precision}"\n')
        path.write_text(path.read_text().replace("seed = 0", f"seed = {seed}\nlr = {lr}"))
        alone.append(make_run_dir(path, tmp_path / "alone"))
        fused.append(make_run_dir(path, tmp_path / "fused"))
    # Each in a process of its own, as jobs run: Accelerate's precision is set once per process.
    for rd in alone:
        train_to_end(rd)
    group = subprocess.run(
        [sys.executable, "-m", "hpcdiff", "train", "--no-progress", *(str(rd.path) for rd in fused)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert group.returncode == 0, group.stdout + group.stderr
    for f, a in zip(fused, alone):
        _assert_same_curve(f, a, rtol=2e-2)
        assert "fused group of 2" in archive.read(f.archive)["attrs"]["step_mode_reason"]
    first, second = _curves(alone[0])["train_loss"], _curves(alone[1])["train_loss"]
    assert np.abs(first - second).max() > 5e-2 * np.abs(first).max()
