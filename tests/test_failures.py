"""Runs that go wrong: a diverging loss, non-finite weights, a full disk. Each ends in a state
that says why, keeps the last good checkpoint and archive, and a rerun does the right thing."""

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hpcdiff.cli import main
from hpcdiff.config import tomlio
from hpcdiff.storage import archive, checkpoint
from hpcdiff.storage.rundir import sweep_run_dirs

from helpers import cli, fabricate_status, make_run_dir

PAGE = 4096


def _with_train(sweep_text: str, **settings) -> str:
    lines = "".join(f"{k} = {v}\n" for k, v in settings.items())
    return sweep_text.replace("[train]\n", "[train]\n" + lines, 1)


def _set_config(rd, **train):
    config = tomlio.load(rd.config_path)
    config["train"].update(train)
    rd.config_path.write_text(tomlio.dumps(config))


# ------------------------------------------------------------------------------ divergence


def test_diverging_run_stops_at_the_first_check_with_default_metrics(tiny_sweep, tmp_path, fashion_classifier):
    """lr = 1e6: the loss is NaN within a few steps. The run stops at the first interval check
    of epoch 1 (not at the FID of the last epoch), in state "diverged", with a message that
    names the epoch, the step and the learning rate; nothing is written after it."""
    sweep_file = tiny_sweep(epochs=3, subset=1280, metrics=True)
    sweep_file.write_text(_with_train(sweep_file.read_text(), lr="1e6"))
    out = tmp_path / "runs"
    result = cli("sweep", sweep_file, "--output", out, "--executor", "local")
    assert result.exit_code == 1, result.output
    assert "1 diverged" in result.output
    rd = sweep_run_dirs(next(out.iterdir()))[0]
    status = rd.read_status()
    assert status["state"] == "diverged"
    assert "epoch 1, step 10" in status["error"] and "train.lr = 1000000.0" in status["error"]
    assert "Traceback" not in rd.log.read_text()
    assert checkpoint.list_epochs(rd.checkpoints) == []
    assert "epoch" not in archive.read(rd.archive)["metrics"]

    # The same config diverges the same way: a rerun leaves it alone, --force relaunches it.
    again = cli("sweep", sweep_file, "--output", out, "--executor", "local")
    assert again.exit_code == 0, again.output
    assert "skip-diverged" in again.output and "Nothing to do" in again.output
    forced = cli("sweep", sweep_file, "--output", out, "--executor", "local", "--force")
    assert forced.exit_code == 1 and "1 diverged" in forced.output
    assert rd.read_status()["restarts"] == 1


def test_divergence_after_good_epochs_keeps_the_last_good_checkpoint(tiny_sweep, tmp_path):
    sweep_file = tiny_sweep(epochs=1, subset=640)
    rd = make_run_dir(sweep_file, tmp_path / "runs")
    assert cli("train", rd.path).exit_code == 0
    path = checkpoint.path_for(rd.checkpoints, 1)
    good = torch.load(path, weights_only=True)
    # Two more epochs, continued with a learning rate that blows up: the resumed optimiser
    # takes its learning rate from the checkpoint, so that is where it is raised.
    for group in good["optimizer"]["param_groups"]:
        group["lr"] = 1e6
    torch.save(good, path)
    _set_config(rd, epochs=3)
    fabricate_status(rd, state="timeout")
    result = cli("train", rd.path)
    assert result.exit_code == 1
    assert "training diverged at epoch 2" in result.output and "Traceback" not in result.output
    assert "last good checkpoint (epoch 1) is kept" in result.output
    assert checkpoint.list_epochs(rd.checkpoints) == [1]
    kept = torch.load(path, weights_only=True)
    assert all(torch.equal(kept["model"][k], v) for k, v in good["model"].items())
    assert archive.read(rd.archive)["metrics"]["epoch"].tolist() == [1]
    assert rd.read_status()["state"] == "diverged"


def test_monitor_verdict_covers_loss_weights_and_signals():
    """The check behind every checkpoint: a finite loss with one non-finite weight is a
    divergence; a stop signal is kept, USR2 (requeue) over SIGTERM; checks come every
    CHECK_EVERY optimiser steps and at every epoch end."""
    import signal

    from hpcdiff.training.monitor import CHECK_EVERY, TrainingMonitor

    monitor = TrainingMonitor()
    finite = [torch.ones(3), torch.zeros(2, 2)]
    verdict = monitor.check(torch.tensor(4.0), finite)
    assert verdict.finite and verdict.stop_signal == 0 and verdict.loss_sum == 4.0
    bad = [torch.ones(3), torch.tensor([[0.0, float("inf")], [0.0, 0.0]])]
    verdict = monitor.check(torch.tensor(4.0), bad)
    assert verdict.loss_finite and not verdict.weights_finite and not verdict.finite
    assert not monitor.check(torch.tensor(float("nan")), finite).loss_finite
    monitor.request_stop(signal.SIGTERM)
    monitor.request_stop(signal.SIGUSR2)
    monitor.request_stop(signal.SIGTERM)
    assert monitor.check(torch.tensor(1.0), finite).stop_signal == signal.SIGUSR2
    due = [monitor.optimizer_step_taken() for _ in range(2 * CHECK_EVERY)]
    assert [i + 1 for i, d in enumerate(due) if d] == [CHECK_EVERY, 2 * CHECK_EVERY]
    assert monitor.optimizer_step_taken(epoch_end=True)


def test_two_processes_agree_on_divergence(tiny_sweep, tmp_path):
    """Both ranks see the verdict of the same all-reduce: both stop, none waits for the other
    in a collective (the test would hang until the process-group timeout otherwise)."""
    sweep_file = tiny_sweep(epochs=3, subset=1280)
    sweep_file.write_text(_with_train(sweep_file.read_text(), lr="1e6"))
    out = tmp_path / "runs"
    result = cli("sweep", sweep_file, "--output", out, "--executor", "local", "--processes", "2")
    assert result.exit_code == 1, result.output
    rd = sweep_run_dirs(next(out.iterdir()))[0]
    assert rd.read_status()["state"] == "diverged"
    assert rd.read_status()["world_size"] == 2


def test_metrics_of_non_finite_samples_say_so():
    from hpcdiff.evaluation.metrics import MetricContext, NonFiniteSamples, compute_metrics, frechet_distance

    samples = torch.zeros(8, 1, 28, 28)
    samples[3, 0, 5, 5] = float("nan")
    samples[6, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteSamples, match="2 of 8 samples are not finite"):
        compute_metrics(["diversity"], MetricContext(samples=samples))
    eye = torch.eye(3)
    with pytest.raises(ValueError, match="finite"):
        frechet_distance(torch.zeros(3), eye * float("nan"), torch.zeros(3), eye)


# ------------------------------------------------------------------------------ full disk


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MiB tmpfs, mounted for the test (root only)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk: Path, leave_pages: int) -> Path:
    """Fill the file system until ``leave_pages`` pages are free."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    size = st.f_bavail * st.f_frsize - leave_pages * PAGE
    with open(filler, "wb") as f:
        block = b"\0" * (1 << 20)
        while size > 0:
            n = min(size, len(block))
            f.write(block[:n])
            size -= n
    st = os.statvfs(disk)
    assert st.f_bavail * st.f_frsize == leave_pages * PAGE
    return filler


def _pages(path: Path) -> int:
    return -(-path.stat().st_size // PAGE)


@pytest.mark.parametrize("fails", ["checkpoint", "archive", "status"])
def test_full_disk_fails_cleanly_keeps_the_last_checkpoint_and_resumes(fails, small_disk, tiny_sweep, tmp_path):
    """Epoch 1 is trained; then the disk fills up, leaving room for the small files but not the
    checkpoint, not the archive, or nothing at all. The run fails with exit code 1 and a
    message naming the file and the cause, the previous checkpoint and archive are intact,
    and once space is freed the same command resumes to the end."""
    sweep_file = tiny_sweep(epochs=1, subset=640)
    rd = make_run_dir(sweep_file, small_disk / "runs")
    assert cli("train", rd.path).exit_code == 0
    _set_config(rd, epochs=3)
    fabricate_status(rd, state="timeout")
    ckpt_pages = _pages(checkpoint.path_for(rd.checkpoints, 1))
    archive_pages = _pages(rd.archive)
    # What each scenario relies on: the archive's copy-on-write fits where a checkpoint does not.
    assert ckpt_pages > 2 * archive_pages + 24 and archive_pages > 3
    leave = {"checkpoint": 2 * archive_pages + 16, "archive": 2, "status": 0}[fails]
    filler = _fill(small_disk, leave)

    result = CliRunner().invoke(main, ["train", str(rd.path)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "No space left on device" in result.output
    expected = {
        "checkpoint": str(checkpoint.path_for(rd.checkpoints, 2)),
        "archive": str(rd.archive),
        "status": str(rd.status_path),
    }[fails]
    assert f"cannot write {expected}" in result.output
    if fails == "status":
        # status.json could not say it: stderr does.
        assert "status.json could not record it" in result.output
        assert rd.read_status()["state"] == "timeout"
    else:
        status = rd.read_status()
        assert status["state"] == "failed" and expected in status["error"]
        assert "traceback" not in status or status["traceback"] is None

    # Nothing torn, nothing left behind; the last checkpoint and the archive read as before.
    assert checkpoint.list_epochs(rd.checkpoints) == [1]
    assert torch.load(checkpoint.path_for(rd.checkpoints, 1), weights_only=True)["epoch"] == 1
    assert archive.read(rd.archive)["metrics"]["epoch"].tolist()[0] == 1
    assert not [p for p in rd.path.rglob("*") if ".tmp" in p.name]

    filler.unlink()
    again = CliRunner().invoke(main, ["train", str(rd.path)])
    assert again.exit_code == 0, again.output
    assert rd.read_status()["state"] == "done"
    assert archive.read(rd.archive)["metrics"]["epoch"].tolist() == [1, 2, 3]
    assert "resuming run" in rd.log.read_text()


def test_storage_error_names_path_and_cause(tmp_path):
    from hpcdiff.storage.atomic import StorageError, atomic_write_bytes

    err = StorageError(tmp_path / "x", OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)))
    assert str(err).startswith(f"cannot write {tmp_path / 'x'}: Disk quota exceeded") and err.disk_full
    # A missing directory is a storage error too, and no temporary file stays behind.
    with pytest.raises(StorageError, match="No such file or directory"):
        atomic_write_bytes(tmp_path / "missing" / "f", b"x")
