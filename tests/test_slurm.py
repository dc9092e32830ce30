"""SLURM for real: submitit job arrays on the one-node test cluster (slurm/dev-cluster.sh)."""

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.config.spec import RunSpec
from hpcdiff.launch.slurm import render_script
from hpcdiff.storage import archive
from hpcdiff.storage.rundir import RunDir, sweep_run_dirs

from helpers import TINY_BASE, cli

GOLDEN = Path(__file__).parent / "golden"


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def wait_until_ended(sweep_dir: Path, n_runs: int, timeout: float):
    """Poll the run files (what hpcdiff status reads) until every run has ended and its job
    has left the queue."""
    from hpcdiff.launch.status import collect_status, is_finished

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, rows = collect_status(sweep_dir)
        if len(rows) == n_runs and is_finished(rows):
            return rows
        time.sleep(1)
    _, rows = collect_status(sweep_dir)
    logs = "\n".join(p.read_text()[-2000:] for p in sweep_dir.glob("slurm/*/*.err"))
    raise AssertionError(f"sweep did not end in {timeout}s: {[(r.run_id, r.state, r.job_state) for r in rows]}\n{logs}")


def test_rendered_script_matches_golden_file():
    spec = RunSpec.from_dict(
        {
            "slurm": {
                "partition": "ampere",
                "account": "MYPROJ-SL3-GPU",
                "time_min": 720,
                "gpus_per_node": 1,
                "cpus_per_task": 8,
                "mem_gb": 32,
                "array_parallelism": 4,
                "setup": ["module load rhel8/default-amp"],
                "extra_sbatch": ["--exclusive"],
                "qos": "normal",
            }
        }
    )
    script = render_script(
        spec.slurm,
        job_name="hpcdiff-part2",
        folder=Path("/rds/user/me/runs/part2/slurm/%j"),
        n_tasks_in_array=8,
        python="python3",
    )
    assert script == (GOLDEN / "array.sbatch").read_text()


SLURM_SECTION = """
[slurm]
array_parallelism = 2
cpus_per_task = 1
time_min = {time_min}
{slurm_extra}
"""


def write_sweep(tmp_path, name, *, axes="", subset=320, epochs=2, time_min=10, slurm_extra=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'[sweep]\nname = "{name}"\n{axes}\n'
        + TINY_BASE.format(root="/usr/share/datasets/fashion-mnist", subset=subset, epochs=epochs)
        + SLURM_SECTION.format(time_min=time_min, slurm_extra=slurm_extra)
    )
    return path


@pytest.mark.slurm
def test_array_of_four_finishes_and_rerun_submits_nothing(slurm_env, tmp_path):
    sweep_file = write_sweep(tmp_path, "four", axes="[sweep.product]\ntrain.lr = [1e-3, 2e-3]\ntrain.seed = [0, 1]\n")
    out = tmp_path / "runs"
    result = cli("sweep", sweep_file, "--output", out)  # auto -> slurm: sbatch is on PATH
    assert result.exit_code == 0, result.output
    assert "slurm: launched 4 runs" in result.output
    sweep_dir = out / "four"
    job_ids = {RunDir(p.path).read_status()["job_id"] for p in sweep_run_dirs(sweep_dir)}
    assert len({j.split("_")[0] for j in job_ids}) == 1 and len(job_ids) == 4  # one array of 4 tasks

    # Re-running while the array is queued or running submits nothing either.
    again = cli("sweep", sweep_file, "--output", out)
    assert "launched" not in again.output

    rows = wait_until_ended(sweep_dir, 4, timeout=300)
    assert [r.state for r in rows] == ["done"] * 4
    status = cli("status", sweep_dir)
    assert "4 done" in status.output

    before = squeue_ids()
    rerun = cli("sweep", sweep_file, "--output", out)
    assert rerun.exit_code == 0 and "Nothing to do" in rerun.output
    assert squeue_ids() == before


@pytest.mark.slurm
def test_time_limit_requeues_and_resumes_without_duplicate_rows(slurm_env, tmp_path):
    # 4-9 s per epoch on these machines: 8 epochs need more compute than the 1-minute limit
    # itself, so the job cannot finish in one allocation. SLURM checks limits every 30 s, so
    # the warning (asked for 15 s early) comes 15-45 s before the limit, and an allocation
    # may train for as little as ~12 s after its start-up: requeues to spare for a slow machine.
    sweep_file = write_sweep(
        tmp_path, "limit", subset=30000, epochs=8, time_min=1, slurm_extra="signal_delay_s = 15\nmax_requeues = 20"
    )
    out = tmp_path / "runs"
    result = cli("sweep", sweep_file, "--output", out, "--executor", "slurm")
    assert result.exit_code == 0, result.output
    rows = wait_until_ended(out / "limit", 1, timeout=600)
    rd = sweep_run_dirs(out / "limit")[0]
    status = rd.read_status()
    assert rows[0].state == "done", (status, rd.log.read_text())
    assert status["requeues"] >= 1 and status["restarts"] >= 1
    assert "stopped by signal SIGUSR2" in rd.log.read_text()
    metrics = archive.read(rd.archive)["metrics"]
    assert metrics["epoch"].tolist() == list(range(1, 9))
    assert np.isfinite(metrics["train_loss"]).all()


@pytest.mark.slurm
def test_failed_run_shows_error_and_rerun_resubmits_only_it(slurm_env, tmp_path):
    cases = (
        '[[sweep.cases]]\nlabel = "ok"\n[[sweep.cases]]\nlabel = "broken"\ndata = { root = "/nonexistent/fashion" }\n'
    )
    sweep_file = write_sweep(tmp_path, "failing", axes=cases, epochs=1)
    out = tmp_path / "runs"
    assert cli("sweep", sweep_file, "--output", out).exit_code == 0
    rows = {r.label: r for r in wait_until_ended(out / "failing", 2, timeout=300)}
    assert rows["ok"].state == "done"
    assert rows["broken"].state == "failed" and "DataError" in rows["broken"].error
    assert "failed" in cli("status", out / "failing").output

    rerun = cli("sweep", sweep_file, "--output", out)
    assert "slurm: launched 1 runs" in rerun.output
    broken = RunDir(out / "failing" / rows["broken"].run_id)
    assert broken.read_status()["job_id"] != rows["broken"].job_id
    wait_until_ended(out / "failing", 2, timeout=300)


@pytest.mark.slurm
def test_dry_run_prints_script_and_submits_nothing(slurm_env, tmp_path):
    sweep_file = write_sweep(tmp_path, "dry", axes="[sweep.product]\ntrain.lr = [1e-3, 2e-3]\n")
    before = squeue_ids()
    result = cli("sweep", sweep_file, "--output", tmp_path / "runs", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "#SBATCH --array=0-1%2" in result.output
    assert "sbatch --test-only" in result.output and "to start at" in result.output
    assert "GPU-hours requested: 0.0" in result.output
    assert squeue_ids() == before
    assert not (tmp_path / "runs").exists()


@pytest.mark.slurm
def test_injection_is_rejected_or_inert(slurm_env, tmp_path):
    for bad in [
        'setup = ["module load x; touch {p}"]',
        'partition = "debug\\n#SBATCH --wrap=touch {p}"',
        'extra_sbatch = ["--comment=$(touch {p})"]',
    ]:
        marker = tmp_path / "pwned"
        path = write_sweep(tmp_path, "inject", slurm_extra=bad.format(p=marker))
        result = cli("sweep", path, "--output", tmp_path / "runs")
        assert result.exit_code == 2, result.output
        assert "slurm." in result.output
    # A run directory whose path holds shell metacharacters is quoted, never executed.
    marker = tmp_path / "pwned2"
    out = tmp_path / f"out $(touch {marker}) `touch {marker}`"
    sweep_file = write_sweep(tmp_path, "quoted", epochs=1)
    result = cli("sweep", sweep_file, "--output", out)
    assert result.exit_code == 0, result.output
    rows = wait_until_ended(out / "quoted", 1, timeout=300)
    assert rows[0].state == "done"
    assert not marker.exists() and not (tmp_path / "pwned").exists()


@pytest.mark.slurm
def test_arrays_split_at_max_array_size_then_analyze(slurm_env, tmp_path, monkeypatch):
    # The test cluster's MaxArraySize is 1001; pretend it is 3 so that 4 runs need 2 arrays.
    import hpcdiff.launch.slurm as slurm_backend

    monkeypatch.setattr(slurm_backend, "max_array_size", lambda: 3)
    sweep_file = write_sweep(
        tmp_path, "split", axes="[sweep.product]\ntrain.lr = [1e-3, 2e-3]\ntrain.seed = [0, 1]\n", epochs=1
    )
    out = tmp_path / "runs"
    result = cli("sweep", sweep_file, "--output", out, "--then-analyze")
    assert result.exit_code == 0, result.output
    job_ids = [RunDir(p.path).read_status()["job_id"] for p in sweep_run_dirs(out / "split")]
    arrays = {j.split("_")[0] for j in job_ids}
    assert len(arrays) == 2 and sorted(int(j.split("_")[1]) for j in job_ids) == [0, 0, 1, 1]
    assert "analysis job" in result.output
    wait_until_ended(out / "split", 4, timeout=300)
    index = tmp_path / "analysis" / "split" / "index.md"
    deadline = time.monotonic() + 180
    while not index.exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert index.exists(), list((out / "split" / "slurm").glob("*/*.err"))
    assert "4 runs, 4 done" in index.read_text()


def start_long_run(tmp_path, name):
    """Submit a one-run sweep far longer than a test and wait until its first epoch is
    written: (sweep file, output dir, run dir)."""
    sweep_file = write_sweep(tmp_path, name, subset=30000, epochs=50)
    out = tmp_path / "runs"
    assert cli("sweep", sweep_file, "--output", out).exit_code == 0
    rd = sweep_run_dirs(out / name)[0]
    deadline = time.monotonic() + 180
    while rd.read_status().get("epoch", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert rd.read_status().get("epoch", 0) >= 1, rd.read_status()
    return sweep_file, out, rd


@pytest.mark.slurm
def test_cancel_stops_jobs_which_keep_their_checkpoint(slurm_env, tmp_path):
    _, out, rd = start_long_run(tmp_path, "cancel")
    result = cli("cancel", out / "cancel")
    assert "cancelled 1 jobs" in result.output
    rows = wait_until_ended(out / "cancel", 1, timeout=180)
    assert rows[0].state == "timeout"  # SIGTERM: checkpoint written, not marked failed
    assert rd.read_status()["job_id"] not in squeue_ids()
    from hpcdiff.storage import checkpoint

    assert checkpoint.list_epochs(rd.checkpoints)


@pytest.mark.slurm
def test_job_killed_without_a_signal_reads_interrupted_and_resumes(slurm_env, tmp_path):
    """SIGKILL (what the OOM killer or a lost node amounts to): the run cannot write its end
    state, so status.json keeps saying running; once its job has left the queue, status
    says interrupted and a rerun resumes it."""
    from hpcdiff.launch.plan import plan_sweep
    from hpcdiff.launch.status import collect_status

    sweep_file, out, rd = start_long_run(tmp_path, "killed")
    job_id = rd.read_status()["job_id"]
    # The login node cannot probe a compute node's lock: present the run as started on
    # another host (the one stand-in here), so only the queue can tell that it is gone.
    rd.write_status(host="compute-node-elsewhere")
    assert collect_status(out / "killed")[1][0].state == "running"
    # SIGKILL to every process of the job at once (scancel would SIGTERM the step first).
    listed = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True, check=True).stdout
    pids = [int(line.split()[0]) for line in listed.splitlines()[1:] if line.split() and line.split()[0].isdigit()]
    assert pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 120
    while job_id in squeue_ids() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job_id not in squeue_ids()
    assert rd.read_status()["state"] == "running"  # nobody could say otherwise
    (row,) = collect_status(out / "killed")[1]
    assert row.state == "interrupted" and row.job_state is None
    assert [r.action for r in plan_sweep(sweep_file, output=out).runs] == ["resume"]


# --- several runs per GPU (slurm.runs_per_gpu): CPU processes sharing the test node ---


def job_ids_by_run(sweep_dir: Path) -> dict[str, str]:
    return {rd.run_id: rd.read_status()["job_id"] for rd in sweep_run_dirs(sweep_dir)}


@pytest.mark.slurm
def test_packed_runs_share_array_tasks_and_all_finish(slurm_env, tmp_path):
    sweep_file = write_sweep(
        tmp_path,
        "packed",
        axes="[sweep.product]\ntrain.lr = [1e-3, 2e-3]\ntrain.seed = [0, 1]\n",
        slurm_extra="runs_per_gpu = 2",
    )
    out = tmp_path / "runs"
    result = cli("sweep", sweep_file, "--output", out)
    assert result.exit_code == 0, result.output
    assert "slurm: launched 4 runs" in result.output and "(2 tasks" in result.output
    jobs = job_ids_by_run(out / "packed")
    tasks = sorted(set(jobs.values()))
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1  # one array of 2 tasks
    assert sorted(list(jobs.values()).count(t) for t in tasks) == [2, 2]

    rows = wait_until_ended(out / "packed", 4, timeout=300)
    assert [r.state for r in rows] == ["done"] * 4
    for rd in sweep_run_dirs(out / "packed"):
        data = archive.read(rd.archive)
        assert data["metrics"]["epoch"].tolist() == [1, 2] and data["attrs"]["finished"]
        assert sorted(data["samples"]) == [1, 2]
    status = cli("status", out / "packed").output
    assert "4 done" in status
    for task in tasks:  # which runs shared which job
        assert f"{task}: " in status and "share a job" in status


@pytest.mark.slurm
def test_packed_requeue_resumes_both_runs(slurm_env, tmp_path):
    """SLURM's time-limit warning (USR2 to every process of the job's step, as
    `--signal=USR2@...` sends it), delivered while both runs of a task are mid-training:
    both checkpoint, the task is requeued once, and both resume and finish. Sent with
    scancel rather than waited for: 2 runs sharing 2 busy cores would need a dozen 1-minute
    allocations to finish, and the moment it comes is then chosen, not raced."""
    sweep_file = write_sweep(
        tmp_path,
        "packreq",
        axes="[sweep.product]\ntrain.lr = [1e-3, 2e-3]\n",
        subset=30000,
        epochs=3,
        slurm_extra="runs_per_gpu = 2",
    )
    out = tmp_path / "runs"
    result = cli("sweep", sweep_file, "--output", out, "--executor", "slurm")
    assert result.exit_code == 0, result.output
    (job_id,) = set(job_ids_by_run(out / "packreq").values())
    runs = sweep_run_dirs(out / "packreq")
    deadline = time.monotonic() + 600  # ~40 s on an idle machine
    while not all(rd.read_status().get("epoch", 0) >= 1 for rd in runs):  # both past their first epoch
        assert time.monotonic() < deadline, [rd.read_status() for rd in runs]
        time.sleep(0.5)
    assert all(rd.read_status()["state"] == "running" for rd in runs)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    rows = wait_until_ended(out / "packreq", 2, timeout=600)
    for rd, row in zip(runs, rows):
        status, log = rd.read_status(), rd.log.read_text()
        assert row.state == "done", (status, log[-3000:])
        assert status["requeues"] >= 1 and status["restarts"] >= 1 and status["job_id"] == job_id
        assert "stopped by signal SIGUSR2" in log and "resuming run" in log
        metrics = archive.read(rd.archive)["metrics"]
        assert metrics["epoch"].tolist() == [1, 2, 3]  # resumed, no duplicate rows
        assert np.isfinite(metrics["train_loss"]).all()


@pytest.mark.slurm
def test_packed_run_failing_leaves_its_partner_done(slurm_env, tmp_path):
    cases = (
        '[[sweep.cases]]\nlabel = "ok"\n[[sweep.cases]]\nlabel = "broken"\ndata = { root = "/nonexistent/fashion" }\n'
    )
    sweep_file = write_sweep(tmp_path, "packfail", axes=cases, epochs=2, slurm_extra="runs_per_gpu = 2")
    out = tmp_path / "runs"
    assert cli("sweep", sweep_file, "--output", out).exit_code == 0
    rows = {r.label: r for r in wait_until_ended(out / "packfail", 2, timeout=300)}
    assert rows["ok"].job_id == rows["broken"].job_id  # one task for both
    assert rows["broken"].state == "failed" and "DataError" in rows["broken"].error
    assert rows["ok"].state == "done" and rows["ok"].epoch == 2
    status = cli("status", out / "packfail").output
    assert "1 done, 1 failed" in status
    err = "\n".join(p.read_text() for p in (out / "packfail" / "slurm").glob("*/*.err"))
    assert "1 of the 2 runs of this task did not finish" in err  # the task itself ended FAILED


@pytest.mark.slurm
def test_packed_run_killed_leaves_its_partner_done(slurm_env, tmp_path):
    """SIGKILL to one run's process (what the OOM killer does to it alone): that run is
    recorded failed by its task, its partner trains on to the end."""
    cases = (
        '[[sweep.cases]]\nlabel = "short"\n'
        '[[sweep.cases]]\nlabel = "long"\ndata = { subset = 30000 }\ntrain = { epochs = 50 }\n'
    )
    sweep_file = write_sweep(tmp_path, "packkill", axes=cases, epochs=3, slurm_extra="runs_per_gpu = 2")
    out = tmp_path / "runs"
    assert cli("sweep", sweep_file, "--output", out).exit_code == 0
    long_run = next(rd for rd in sweep_run_dirs(out / "packkill") if rd.load_spec().train.epochs == 50)
    deadline = time.monotonic() + 180
    while long_run.read_status().get("state") != "running":  # started training, lock held
        assert time.monotonic() < deadline, long_run.read_status()
        time.sleep(0.5)
    lines = "".join(p.read_text() for p in (out / "packkill" / "slurm").glob("*/*_log.out")).splitlines()
    (pid,) = [int(line.split()[-1]) for line in lines if line.startswith(f"hpcdiff: run {long_run.run_id}: process")]
    os.kill(pid, signal.SIGKILL)
    rows = {r.label: r for r in wait_until_ended(out / "packkill", 2, timeout=300)}
    assert rows["short"].state == "done" and rows["short"].epoch == 3
    assert rows["long"].state == "failed" and "killed by SIGKILL" in rows["long"].error
