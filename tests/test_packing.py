"""Several runs per GPU (slurm.runs_per_gpu) without a cluster: how runs are packed into
tasks, what each packed process gets, and the packed job itself on real tiny runs. The
SLURM side (array tasks, requeues, a failing partner) is in test_slurm.py."""

import signal

import pytest

from hpcdiff.config.spec import SlurmSpec
from hpcdiff.launch.child import child_env, threads_per_run
from hpcdiff.launch.job import PackedTrainJob, TrainJob
from hpcdiff.launch.local import gpu_slots, pick_gpus
from hpcdiff.launch.packed import PackedRunsFailed, settle
from hpcdiff.launch.slurm import pack, task_job
from hpcdiff.storage.rundir import RunDir

from helpers import TINY_BASE, cli, fabricate_status, make_run_dir


def test_runs_are_packed_k_per_task_in_order():
    assert pack(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert pack(list("abc"), 1) == [["a"], ["b"], ["c"]]
    assert pack(list("ab"), 4) == [["a", "b"]]


def test_a_task_of_one_run_is_a_plain_train_job(tmp_path):
    s = SlurmSpec(gpus_per_node=1, runs_per_gpu=2, mps=True)
    one = task_job([RunDir(tmp_path / "a")], s)
    two = task_job([RunDir(tmp_path / "a"), RunDir(tmp_path / "b")], s)
    assert isinstance(one, TrainJob)
    assert isinstance(two, PackedTrainJob) and two.mps and two.run_dirs == [str(tmp_path / "a"), str(tmp_path / "b")]


def test_each_packed_process_is_a_one_process_run_with_its_share_of_cpus():
    environ = {
        "SLURM_JOB_ID": "7",
        "SLURM_ARRAY_JOB_ID": "6",
        "SLURM_ARRAY_TASK_ID": "1",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_LOCALID": "0",
        "RANK": "0",
        "SLURM_CPUS_PER_TASK": "8",
        "PATH": "/bin",
    }
    env = child_env(3, extra={"CUDA_MPS_PIPE_DIRECTORY": "/tmp/x"}, environ=environ)
    assert env["OMP_NUM_THREADS"] == "2"  # 8 // 3
    assert {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "RANK"}.isdisjoint(env)
    assert env["SLURM_JOB_ID"] == "7" and env["SLURM_ARRAY_TASK_ID"] == "1"  # status.json records the job
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == "/tmp/x"
    assert threads_per_run(16, {"SLURM_CPUS_PER_TASK": "4"}) == 1


def test_gpu_slots_and_round_robin_assignment():
    assert gpu_slots({"CUDA_VISIBLE_DEVICES": "0"}) == []  # the user chose one device
    assert gpu_slots({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert gpu_slots({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    slots = ["0", "1", "2"]
    taken: list[str] = []
    for _ in range(5):  # 5 concurrent runs on 3 GPUs: 0 1 2 0 1
        taken += pick_gpus(slots, taken)
    assert taken == ["0", "1", "2", "0", "1"]
    assert pick_gpus(slots, ["0", "0", "1"]) == ["2"]  # a slot freed by a finished run is reused first
    assert pick_gpus(["0", "1", "2", "3"], ["0", "1"], n=2) == ["2", "3"]  # a 2-process run


def test_a_process_that_could_not_record_its_end_is_settled_by_the_task(tmp_path):
    rd = RunDir(tmp_path / "r")
    rd.path.mkdir()
    rd.write_status(state="running")
    assert settle(rd, -signal.SIGKILL, None) == "failed"
    assert "killed by SIGKILL" in rd.read_status()["error"]
    rd.write_status(state="running")
    assert settle(rd, -signal.SIGUSR2, signal.SIGUSR2) == "timeout"  # resumes after the requeue
    fabricate_status(rd, state="diverged")
    assert settle(rd, 1, None) == "diverged"
    rd.write_status(state="running")
    assert settle(rd, 3, None) == "busy" and rd.read_status()["state"] == "running"  # not ours to write


def test_dry_run_shows_the_packing_and_gpu_hours_saved(tmp_path):
    from hpcdiff.launch.plan import dry_run_report, plan_sweep

    sweep = tmp_path / "p.toml"
    sweep.write_text(
        '[sweep]\nname = "p"\n[sweep.product]\ntrain.lr = [1e-3, 2e-3, 3e-3, 4e-3, 5e-3]\n'
        + TINY_BASE.format(root="/nonexistent", subset=10, epochs=1)
        + "[slurm]\ngpus_per_node = 1\ntime_min = 120\nruns_per_gpu = 2\n"
    )
    report = dry_run_report(plan_sweep(sweep, output=tmp_path / "runs"))
    assert report.tasks == 3 and report.gpu_hours == 6.0 and report.gpu_hours_unpacked == 10.0
    assert "#SBATCH --array=0-2%" in report.scripts[0]
    assert report.packing == [
        "packing: 5 runs -> 3 array tasks of up to 2 runs each (slurm.runs_per_gpu): "
        "6.0 GPU-hours instead of 10.0, 4.0 saved"
    ]
    assert not (tmp_path / "runs").exists()
    shown = cli("sweep", sweep, "--output", tmp_path / "runs", "--executor", "slurm", "--dry-run").output
    assert "GPU-hours requested: 6.0 (3 array tasks" in shown and "4.0 saved" in shown
    assert not (tmp_path / "runs").exists()


def test_packed_job_trains_its_runs_at_once_and_a_failure_stays_its_own(tmp_path, fashion_dir):
    """Real processes, no cluster: the broken run fails at once, its partner still
    finishes, and the job then raises one error naming the failed run."""
    runs = []
    for name, root in (("ok", fashion_dir), ("broken", "/nonexistent/fashion")):
        sweep = tmp_path / f"{name}.toml"
        sweep.write_text(f'[sweep]\nname = "{name}"\n' + TINY_BASE.format(root=root, subset=320, epochs=1))
        runs.append(make_run_dir(sweep, tmp_path / "runs"))
    job = PackedTrainJob([str(rd.path) for rd in runs])
    with pytest.raises(PackedRunsFailed, match=f"(?s)1 of the 2 runs.*{runs[1].run_id}: failed .*DataError"):
        job()
    assert runs[0].read_status()["state"] == "done" and runs[1].read_status()["state"] == "failed"
    # A requeue restarts only the runs that are not over (here: one stopped by the warning).
    fabricate_status(runs[0], state="timeout")
    assert job.checkpoint().function.run_dirs == [str(runs[0].path)]


def test_mps_daemon_is_private_to_the_job_and_quits(tmp_path, monkeypatch, capfd):
    """The commands' shape only (no GPU here): a stand-in nvidia-cuda-mps-control records
    how it is called. Unverified against the real daemon until a GPU cluster runs it."""
    from hpcdiff.launch.mps import mps_daemon

    record = tmp_path / "calls"
    fake = tmp_path / "bin" / "nvidia-cuda-mps-control"
    fake.parent.mkdir()
    fake.write_text(
        f'#!/bin/sh\necho "$* pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY '
        f'stdin=$(test "$1" = -d || cat)" >> {record}\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "node-local"))
    (tmp_path / "node-local").mkdir()
    base = tmp_path / "node-local" / "hpcdiff-mps-42"
    with mps_daemon("42") as env:
        assert env == {"CUDA_MPS_PIPE_DIRECTORY": f"{base}/pipe", "CUDA_MPS_LOG_DIRECTORY": f"{base}/log"}
        assert (base / "pipe").is_dir() and (base / "log").is_dir()
    start, stop = record.read_text().splitlines()
    assert start == f"-d pipe={base}/pipe log={base}/log stdin="
    assert stop == f" pipe={base}/pipe log={base}/log stdin=quit"
    assert not base.exists()

    monkeypatch.setenv("PATH", "/nonexistent")
    with mps_daemon("43") as env:
        assert env == {}
    assert "nvidia-cuda-mps-control is not on PATH" in capfd.readouterr().err
