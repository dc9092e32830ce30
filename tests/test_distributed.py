"""Real multi-process training (gloo on CPU): accelerate launch, the local executor's
--processes, SLURM tasks, and resuming with another world size."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hpcdiff.launch.child import child_command
from hpcdiff.storage import archive, checkpoint
from hpcdiff.storage.rundir import sweep_run_dirs
from hpcdiff.training.distributed import env_from_slurm, first_host

from helpers import cli, make_run_dir

# Per-epoch mean losses of a 2-process run vs a 1-process run with the same global batch:
# the two draw different noise (one stream per rank), so they agree statistically, not bitwise.
LOSS_RTOL = 0.05


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(__import__("pathlib").Path(__file__).parent.parent), env.get("PYTHONPATH", "")]
    )
    return env


def _reference(sweep_file, tmp_path):
    result = cli("sweep", sweep_file, "--output", tmp_path / "ref", "--executor", "debug")
    assert result.exit_code == 0, result.output
    rd = sweep_run_dirs(next((tmp_path / "ref").iterdir()))[0]
    return archive.read(rd.archive)["metrics"]


def test_env_from_slurm_derives_rendezvous():
    env = {
        "SLURM_NTASKS": "4",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS_PER_NODE": "2(x2)",
        "SLURM_JOB_NODELIST": "nodeA",
        "SLURM_JOB_ID": "123",
    }
    assert env_from_slurm(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("3", "4", "1", "2")
    assert env["MASTER_ADDR"] == "nodeA" and env["MASTER_PORT"] == str(15000 + 123)
    # A launcher that already set RANK (torchrun, accelerate launch) wins; one task: nothing to do.
    assert not env_from_slurm({"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "RANK": "0"})
    assert not env_from_slurm({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"})
    assert first_host("gpu-q-[1,3-4],gpu-r-2") == "gpu-q-1"


def _assert_default_metrics(data):
    """The default [eval] metrics of the last epoch, computed by the main process."""
    metrics = data["metrics"]
    assert np.isfinite(metrics["fid_classifier"][-1]) and 1.0 <= metrics["inception_score"][-1] <= 10.0
    assert np.isfinite(metrics["diversity_trace"][-1])


def test_accelerate_launch_two_processes_matches_one(tiny_sweep, tmp_path, fashion_classifier):
    sweep_file = tiny_sweep('[sweep]\nname = "ddp"\n', epochs=3, subset=1280, metrics=True)
    reference = _reference(sweep_file, tmp_path)
    rd = make_run_dir(sweep_file, tmp_path / "runs")
    # accelerate 1.x starts several CPU processes through its multi-GPU (torchrun) launcher;
    # Accelerator(cpu=True) then uses gloo. (--cpu alone expects MPI for more than one.)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "hpcdiff",
            "train",
            str(rd.path),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = archive.read(rd.archive)
    assert data["attrs"]["world_size"] == 2
    assert data["metrics"]["epoch"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(data["metrics"]["train_loss"], reference["train_loss"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(data["metrics"]["val_loss"], reference["val_loss"], rtol=LOSS_RTOL)
    _assert_default_metrics(data)
    # Exactly one set of outputs: one archive, one checkpoint per kept epoch, one log.
    assert sorted(p.name for p in rd.path.iterdir() if p.suffix in (".h5", ".tmp")) == ["archive.h5"]
    assert checkpoint.list_epochs(rd.checkpoints) == [2, 3]
    assert rd.log.read_text().count("epoch 3/3") == 1


def test_resume_with_another_world_size(tiny_sweep, tmp_path):
    sweep_file = tiny_sweep('[sweep]\nname = "ws"\n', epochs=4, subset=1920)
    rd = make_run_dir(sweep_file, tmp_path / "runs")
    proc = subprocess.Popen(
        child_command(rd.path, processes=2),
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while rd.read_status().get("epoch", 0) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be stopped"
        os.killpg(proc.pid, signal.SIGTERM)  # what SLURM does at the time limit, to every task
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    status = rd.read_status()
    if status["epoch"] >= 4:
        pytest.skip("training finished before the signal arrived")
    assert status["state"] == "timeout" and status["world_size"] == 2
    # Resume with one process.
    result = cli("sweep", sweep_file, "--output", tmp_path / "runs", "--executor", "local")
    assert result.exit_code == 0, result.output
    status = rd.read_status()
    assert status["state"] == "done" and status["world_size"] == 1
    data = archive.read(rd.archive)
    assert data["metrics"]["epoch"].tolist() == [1, 2, 3, 4]
    assert data["attrs"]["world_size"] == 1
    assert "resuming run" in rd.log.read_text()


def test_local_executor_processes_option(tiny_sweep, tmp_path, fashion_classifier):
    """`--processes 2` with the [eval] a user gets: ranks on Accelerate's cpu:0 device load the
    classifier and share the evaluation samples."""
    sweep_file = tiny_sweep('[sweep]\nname = "localddp"\n', epochs=1, subset=640, metrics=True)
    result = cli("sweep", sweep_file, "--output", tmp_path / "runs", "--executor", "local", "--processes", "2")
    assert result.exit_code == 0, result.output
    rd = sweep_run_dirs(tmp_path / "runs" / "localddp")[0]
    assert rd.read_status()["state"] == "done"
    data = archive.read(rd.archive)
    assert data["attrs"]["world_size"] == 2
    _assert_default_metrics(data)


@pytest.mark.slurm
def test_two_task_slurm_job_trains_one_run(slurm_env, tiny_sweep, tmp_path, fashion_classifier):
    sweep_file = tiny_sweep(
        '[sweep]\nname = "tasks"\n[slurm]\ntasks_per_node = 2\ncpus_per_task = 1\ntime_min = 10\n',
        epochs=3,
        subset=1280,
        metrics=True,
    )
    reference = _reference(sweep_file, tmp_path)
    out = tmp_path / "runs"
    result = cli("sweep", sweep_file, "--output", out, "--executor", "slurm")
    assert result.exit_code == 0, result.output
    rd = sweep_run_dirs(out / "tasks")[0]
    from hpcdiff.launch.status import collect_status, is_finished

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        _, rows = collect_status(out / "tasks")
        if is_finished(rows):
            break
        time.sleep(1)
    status = rd.read_status()
    logs = "\n".join(p.read_text()[-1500:] for p in (out / "tasks" / "slurm").glob("*/*.err"))
    assert status["state"] == "done", (status, logs)
    data = archive.read(rd.archive)
    assert data["attrs"]["world_size"] == 2
    np.testing.assert_allclose(data["metrics"]["train_loss"], reference["train_loss"], rtol=LOSS_RTOL)
    _assert_default_metrics(data)
