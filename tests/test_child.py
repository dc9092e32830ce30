"""One way to start a child `hpcdiff train` (hpcdiff/launch/child.py): the local executor,
packed tasks and the sbatch scripts give it the same environment (the shell equivalent is
run and compared here), and a job's private directory is refused when someone else could
own or enter it, in Python and in shell alike."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hpcdiff.config.spec import SlurmSpec
from hpcdiff.launch.child import (
    RANK_VARIABLES,
    SHELL_PRIVATE_DIR,
    PrivateDirError,
    child_command,
    child_env,
    private_dir,
    shell_command,
    shell_prelude,
)
from hpcdiff.launch.sbatch import render

# What srun sets for task 1 of a 2-task step, plus what torchrun would set: a child that
# kept any of these would wait for peers that never come.
STEP_ENV = {
    "SLURM_JOB_ID": "77",
    "SLURM_ARRAY_TASK_ID": "3",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "0",
    "SLURM_NTASKS": "2",
    "SLURM_NPROCS": "2",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_TASKS_PER_NODE": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_STEP_TASKS_PER_NODE": "2",
    "SLURM_GTIDS": "0,1",
    "RANK": "1",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29511",
}
SHELL_OWN = {"PWD", "OLDPWD", "SHLVL", "_"}


def _shell_env(environ: dict, k: int) -> dict:
    runs = " ".join(f"run{i}" for i in range(k))
    script = f"set -euo pipefail\nTASK_RUNS=({runs})\n{shell_prelude()}env -0\n"
    out = subprocess.run(["bash", "-c", script], env=environ, capture_output=True, check=True).stdout
    pairs = (item.split(b"=", 1) for item in out.split(b"\0") if item)
    return {key.decode(): value.decode() for key, value in pairs if key.decode() not in SHELL_OWN}


@pytest.mark.parametrize("case", ["slurm-cpus", "user-threads", "machine-cpus"])
def test_the_sbatch_shell_gives_children_the_environment_python_gives_them(case):
    environ = {"PATH": os.environ["PATH"], "HOME": "/tmp", **STEP_ENV}
    if case != "machine-cpus":
        environ["SLURM_CPUS_PER_TASK"] = "8"
    if case == "user-threads":
        environ["OMP_NUM_THREADS"] = "5"
    for k in (1, 3):
        python = child_env(k, environ=environ)
        assert _shell_env(environ, k) == python, (case, k)
        assert RANK_VARIABLES and set(RANK_VARIABLES).isdisjoint(python)
        assert python["SLURM_JOB_ID"] == "77" and python["SLURM_ARRAY_TASK_ID"] == "3"
    assert child_env(3, environ=environ)["OMP_NUM_THREADS"] == {"slurm-cpus": "2", "user-threads": "5"}.get(
        case, str(max(1, len(os.sched_getaffinity(0)) // 3))
    )
    # Control: the comparison sees a difference in the thread share.
    if case != "user-threads":
        assert _shell_env(environ, 3) != child_env(1, environ=environ) or len(os.sched_getaffinity(0)) < 2


def test_the_sbatch_scripts_start_the_command_python_starts(tmp_path):
    prefix = [sys.executable, "-m", "hpcdiff"]
    assert shlex.split(shell_command(shlex.join(prefix), "RUN")) == child_command("RUN", hpcdiff=prefix)
    script = render(
        "gpu",
        SlurmSpec(gpus_per_node=1, runs_per_gpu=2, mps=True),
        job_name="j",
        run_dirs=["runs/a", "runs/b"],
        log_dir="logs",
        hpcdiff=shlex.join(prefix),
    )
    assert shell_prelude() in script and shell_command(shlex.join(prefix)) + " &" in script
    assert child_command("x")[-3:] == ["train", "--no-progress", "x"]


def test_a_local_sweep_inside_an_srun_step_trains_its_runs_as_one_process_runs(tiny_sweep, tmp_path):
    """A local sweep started inside a 2-task step: its children must not take themselves for
    rank 1 of 2 (they would wait for rank 0 at MASTER_ADDR until the timeout)."""
    sweep = tiny_sweep(epochs=1)
    env = {**os.environ, **STEP_ENV}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpcdiff",
            "sweep",
            str(sweep),
            "--executor",
            "local",
            "--output",
            str(tmp_path / "runs"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 done" in proc.stdout, proc.stdout


# ------------------------------------------------------------------ private directories


def _shell_private_dir(path: Path) -> subprocess.CompletedProcess:
    script = f"set -euo pipefail\n{SHELL_PRIVATE_DIR}hpcdiff_private_dir {shlex.quote(str(path))}\necho ok\n"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True)


def _python_private_dir(path: Path) -> str:
    try:
        private_dir(path)
        return "ok"
    except PrivateDirError as err:
        return str(err)


def _verdicts(path: Path) -> tuple[str, str]:
    shell = _shell_private_dir(path)
    return _python_private_dir(path), (
        "ok" if shell.returncode == 0 and shell.stdout == "ok\n" else shell.stderr.strip().removeprefix("hpcdiff: ")
    )


def test_a_private_directory_is_created_0700_by_python_and_by_shell(tmp_path):
    for who, make in (("python", private_dir), ("shell", _shell_private_dir)):
        path = tmp_path / who
        make(path)
        assert path.is_dir() and (path.stat().st_mode & 0o777) == 0o700, who
        assert _verdicts(path) == ("ok", "ok")  # its own private directory is reused (a requeue)


def test_a_directory_open_to_others_is_refused_by_python_and_by_shell(tmp_path):
    path = tmp_path / "open"
    path.mkdir()
    path.chmod(0o777)
    python, shell = _verdicts(path)
    assert python == shell and "has mode 0777, open to other users" in python and "refusing" in python
    path.chmod(0o750)
    assert _verdicts(path)[0] == _verdicts(path)[1] != "ok"


def test_a_symlink_is_refused_by_python_and_by_shell(tmp_path):
    target = tmp_path / "mine"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    python, shell = _verdicts(link)
    assert python == shell and "is not a directory" in python


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a directory owned by another user needs root")
def test_another_users_directory_is_refused_by_python_and_by_shell(tmp_path):
    path = tmp_path / "theirs"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    python, shell = _verdicts(path)
    assert python == shell and f"belongs to uid 65534, not to this user (uid {os.geteuid()})" in python


def _fake_mps_control(tmp_path) -> Path:
    record = tmp_path / "mps-calls"
    fake = tmp_path / "bin" / "nvidia-cuda-mps-control"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$*" >> {record}\n')
    fake.chmod(0o755)
    return record


def test_the_mps_daemon_refuses_a_directory_someone_else_created(tmp_path, monkeypatch):
    """Python (a packed task's supervisor) and the packed sbatch script alike: the job stops
    before the daemon is started, naming the directory."""
    from hpcdiff.launch.mps import mps_daemon

    record = _fake_mps_control(tmp_path)
    node = tmp_path / "node-local"
    node.mkdir()
    squatted = node / "hpcdiff-mps-42"
    squatted.mkdir()
    squatted.chmod(0o777)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("TMPDIR", str(node))
    with pytest.raises(PrivateDirError, match="hpcdiff-mps-42 has mode 0777"):
        with mps_daemon("42"):
            pass
    assert not record.exists()

    script = tmp_path / "packed.sbatch"
    script.write_text(
        render(
            "gpu",
            SlurmSpec(gpus_per_node=1, runs_per_gpu=2, mps=True),
            job_name="j",
            run_dirs=[str(tmp_path / "a"), str(tmp_path / "b")],
            log_dir=str(tmp_path),
            hpcdiff="false",
        )
    )
    env = {
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "TMPDIR": str(node),
        "SLURM_JOB_ID": "42",
        "SLURM_CPUS_PER_TASK": "2",
    }
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "hpcdiff-mps-42 has mode 0777, open to other users" in out.stderr
    assert not record.exists() and squatted.is_dir()  # not started, and not removed: it is not ours

    # Control: with the directory gone, the script creates its own and starts the daemon.
    squatted.rmdir()
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert record.read_text().splitlines()[0] == "-d", out.stderr
