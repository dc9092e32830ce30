"""Real trainings through the real CLI on real Fashion-MNIST IDX files."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from hpcdiff.storage import archive
from hpcdiff.storage.rundir import RunDir

from helpers import cli, make_run_dir, wait_for


def test_sweep_status_analyze_and_rerun(tiny_sweep, tmp_path):
    sweep_file = tiny_sweep('[sweep]\nname = "e2e"\n[sweep.product]\ntrain.lr = [1e-3, 3e-3]\n', epochs=2)
    out = tmp_path / "runs"
    result = cli("sweep", sweep_file, "--output", out, "--executor", "local")
    assert result.exit_code == 0, result.output
    sweep_dir = out / "e2e"
    assert "hpcdiff analyze" in result.output and str(sweep_dir) in result.output
    run_dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert len(run_dirs) == 2
    for rd in run_dirs:
        assert {"config.toml", "status.json", "archive.h5", "log.txt", "checkpoints"} <= {p.name for p in rd.iterdir()}
        status = json.loads((rd / "status.json").read_text())
        assert status["state"] == "done" and status["epoch"] == 2
        data = archive.read(rd / "archive.h5")
        assert data["metrics"]["epoch"].tolist() == [1, 2]
        assert np.isfinite(data["metrics"]["train_loss"]).all()
        assert data["samples"][2]["images"].shape == (4, 28, 28)
        assert data["samples"][2]["images"].dtype == np.uint8
        assert "[train]" in data["attrs"]["config"]
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert sorted(manifest["runs"]) == [p.name for p in run_dirs]

    status = cli("status", sweep_dir)
    assert status.exit_code == 0 and "2 done" in status.output

    mtimes = {p: (p / "archive.h5").stat().st_mtime_ns for p in run_dirs}
    again = cli("sweep", sweep_file, "--output", out, "--executor", "local")
    assert again.exit_code == 0
    assert "Nothing to do" in again.output
    assert {p: (p / "archive.h5").stat().st_mtime_ns for p in run_dirs} == mtimes

    analysis_dir = tmp_path / "analysis"
    res = cli("analyze", sweep_dir, "--out", analysis_dir)
    assert res.exit_code == 0, res.output
    lines = (analysis_dir / "runs.csv").read_text().strip().splitlines()
    header = lines[0].split(",")
    assert "train.lr" in header and "final_val_loss" in header and len(lines) == 3
    pngs = sorted(analysis_dir.glob("*.png"))
    assert {p.name for p in pngs} >= {"loss_curves.png"} | {f"samples_{p.name}.png" for p in run_dirs}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
    assert "loss_curves.png" in (analysis_dir / "index.md").read_text()


def test_sigkill_then_resume_continues_from_checkpoint(tiny_sweep, tmp_path):
    # Enough epochs that the kill lands well before the end even on an idle machine.
    epochs = 8
    sweep_file = tiny_sweep('[sweep]\nname = "kill"\n', epochs=epochs, subset=1280)
    out = tmp_path / "runs"
    # Reference: the same run uninterrupted, elsewhere.
    ref = cli("sweep", sweep_file, "--output", tmp_path / "ref", "--executor", "debug")
    assert ref.exit_code == 0, ref.output
    ref_dir = next(p for p in (tmp_path / "ref" / "kill").iterdir() if p.is_dir())
    reference = archive.read(ref_dir / "archive.h5")["metrics"]

    dry = cli("sweep", sweep_file, "--output", out, "--executor", "local", "--set", "train.epochs=0")
    assert dry.exit_code == 2  # epochs=0 is invalid: nothing was written
    assert not out.exists()

    rd = make_run_dir(sweep_file, out)

    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcdiff", "train", str(rd.path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: rd.read_status().get("epoch", 0) >= 2 or proc.poll() is not None, 300, "epoch 2")
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = rd.read_status()["epoch"]
    assert 2 <= killed_at < epochs
    assert rd.read_status()["state"] == "running"
    assert rd.effective_state() == "interrupted"
    # The archive is readable right after the kill and holds whole epochs only.
    after_kill = archive.read(rd.archive)["metrics"]["epoch"].tolist()
    assert after_kill == list(range(1, len(after_kill) + 1)) and len(after_kill) >= 2

    result = cli("sweep", sweep_file, "--output", out, "--executor", "local")
    assert result.exit_code == 0, result.output
    assert "resume" in result.output
    status = rd.read_status()
    assert status["state"] == "done" and status["epoch"] == epochs and status["restarts"] == 1
    metrics = archive.read(rd.archive)["metrics"]
    assert metrics["epoch"].tolist() == list(range(1, epochs + 1))
    assert "resuming run" in rd.log.read_text()
    # Resuming restores weights, optimiser and RNG streams: the curve is the uninterrupted one.
    np.testing.assert_allclose(metrics["train_loss"], reference["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["val_loss"], reference["val_loss"], rtol=1e-5)


def test_failed_run_is_reported_and_rerun(tiny_sweep, tmp_path):
    # A real failure: the IDX directory is missing when the run starts.
    sweep_file = tiny_sweep('[sweep]\nname = "fail"\n', epochs=1)
    out = tmp_path / "runs"
    result = cli(
        "sweep", sweep_file, "--output", out, "--executor", "local", "--set", f"data.root={tmp_path / 'nowhere'}"
    )
    assert result.exit_code == 1
    assert "1 failed" in result.output
    rd = next(RunDir(p) for p in (out / "fail").iterdir() if p.is_dir())
    status = rd.read_status()
    assert status["state"] == "failed" and "DataError" in status["error"]
    assert "failed" in cli("status", out / "fail").output


def test_sigterm_mid_epoch_checkpoints_and_resumes_exactly(tiny_sweep, tmp_path):
    """SLURM's warning signal (here SIGTERM, as a local kill sends) stops training at the
    next batch boundary with a mid-epoch checkpoint; the rerun continues that epoch."""
    sweep_file = tiny_sweep('[sweep]\nname = "term"\n', epochs=3, subset=1000)
    ref = cli("sweep", sweep_file, "--output", tmp_path / "ref", "--executor", "debug")
    assert ref.exit_code == 0, ref.output
    ref_dir = next(p for p in (tmp_path / "ref" / "term").iterdir() if p.is_dir())
    reference = archive.read(ref_dir / "archive.h5")["metrics"]

    out = tmp_path / "runs"
    rd = make_run_dir(sweep_file, out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcdiff", "train", str(rd.path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # Stop inside epoch 2: after epoch 1's row exists.
        wait_for(lambda: rd.read_status().get("epoch", 0) >= 1 or proc.poll() is not None, 300, "epoch 1")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    status = rd.read_status()
    if status["epoch"] >= 3:
        pytest.skip("training finished before the signal arrived")
    assert status["state"] == "timeout"
    from hpcdiff.storage import checkpoint

    epoch_done, state = checkpoint.load_latest(rd.checkpoints)
    assert state["partial"] is not None and state["partial"]["epoch"] == epoch_done + 1
    assert 1 <= state["partial"]["batch"]

    result = cli("sweep", sweep_file, "--output", out, "--executor", "local")
    assert result.exit_code == 0, result.output
    assert rd.read_status()["state"] == "done"
    assert "batches of epoch" in rd.log.read_text()
    metrics = archive.read(rd.archive)["metrics"]
    assert metrics["epoch"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(metrics["train_loss"], reference["train_loss"], rtol=1e-5)


def test_missing_classifier_fails_early_naming_prepare(tmp_path, monkeypatch):
    """Offline compute node: the classifier the runs ask for (their dataset's own, not the
    shipped reference) is not cached and may not be trained there."""
    monkeypatch.setenv("HPCDIFF_CACHE", str(tmp_path / "empty-cache"))
    sweep_file = tmp_path / "offline.toml"
    sweep_file.write_text(
        '[sweep]\nname = "offline"\n[data]\nname = "mnist-5k"\nsubset = 200\n'
        "[model]\nhidden = [4]\n[diffusion]\nn_T = 10\n[train]\nepochs = 3\n"
        '[eval]\ntrain_classifier = false\nclassifier = "trained"\n'
    )
    result = cli("sweep", sweep_file, "--output", tmp_path / "runs", "--executor", "local")
    assert result.exit_code == 1
    rd = next(RunDir(p) for p in (tmp_path / "runs" / "offline").iterdir() if p.is_dir())
    status = rd.read_status()
    assert status["state"] == "failed" and "hpcdiff prepare" in status["error"]
    assert status.get("epoch", 0) == 0  # nothing was trained before the check


def test_prepare_then_offline_run(tmp_path, monkeypatch):
    """`hpcdiff prepare` builds the classifier a run needs; the run then works with
    train_classifier = false (what a compute node without internet does)."""
    monkeypatch.setenv("HPCDIFF_CACHE", str(tmp_path / "cache"))
    sweep_file = tmp_path / "prep.toml"
    sweep_file.write_text(
        '[sweep]\nname = "prep"\n[data]\nname = "mnist-5k"\nsubset = 200\n'
        "[model]\nhidden = [4]\n[diffusion]\nn_T = 10\n[train]\nepochs = 1\n"
        "[eval]\ntrain_classifier = false\nclassifier_epochs = 1\nsamples = 16\n"
        'classifier = "trained"\n'
    )
    result = cli("prepare", sweep_file, "--no-inception")
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and list((tmp_path / "cache").glob("classifier-mnist-5k-*.pt"))
    result = cli("sweep", sweep_file, "--output", tmp_path / "runs", "--executor", "local")
    assert result.exit_code == 0, result.output
    rd = next(RunDir(p) for p in (tmp_path / "runs" / "prep").iterdir() if p.is_dir())
    assert rd.read_status()["state"] == "done"
    assert np.isfinite(archive.read(rd.archive)["metrics"]["fid_classifier"]).all()
