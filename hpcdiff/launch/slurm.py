"""The SLURM backend: runs go out as submitit job arrays.

- One array per distinct ``[slurm]`` section (cases may ask for different resources), split
  into several arrays when a sweep is larger than the cluster's MaxArraySize, each throttled
  to ``array_parallelism`` tasks at a time (``--array=0-N%P``).
- Each task runs ``TrainJob(run_dir)``; on SLURM's warning signal the training loop writes
  a checkpoint and submitit requeues the task, which resumes from disk.
- With ``slurm.runs_per_gpu = K`` each task runs ``PackedTrainJob`` over K runs of its
  section (hpcdiff.launch.packed): K processes sharing the task's GPU, all recording the
  task's job id.
- With ``[sweep] fuse`` a fused group is one unit: one task runs it as one `hpcdiff train
  DIR1 DIR2 ...` process on its GPU, and runs_per_gpu packs groups (K processes), each
  member recording the task's job id.
- The job id of each run is written to its status.json; whether a run is still queued is
  read from ``squeue`` (never ``sacct``: accounting differs between clusters).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hpcdiff.config.spec import SlurmSpec
from hpcdiff.launch.base import Executor, LaunchReport, groups_of
from hpcdiff.launch.job import PackedTrainJob, TrainJob, analyze_job
from hpcdiff.storage.rundir import RunDir
from hpcdiff.storage.runstate import RunState

# squeue states of a job that will still run (or is running).
ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "STAGE_OUT",
    "SIGNALING",
    "PREEMPTED",
}
DEFAULT_MAX_ARRAY_SIZE = 1001


class SlurmError(RuntimeError):
    pass


def sbatch_available() -> bool:
    return shutil.which("sbatch") is not None


def cluster_reachable() -> bool:
    """sbatch is installed and a controller answers (slurm-client alone, with no cluster
    configured, is common on workstations: there the local executor is the right default)."""
    if not sbatch_available() or shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def max_array_size() -> int:
    """MaxArraySize from `scontrol show config` (array indices must stay below it)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_MAX_ARRAY_SIZE
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(m.group(1)) if m else DEFAULT_MAX_ARRAY_SIZE


def queue_states() -> dict[str, str]:
    """job id (array tasks as ARRAY_TASK) -> state, for the jobs in squeue ({} when
    there is no squeue or it does not answer)."""
    return query_queue() or {}


def query_queue() -> dict[str, str] | None:
    """Like ``queue_states``, but None when squeue cannot answer: "no such job" can then be
    told from "no answer"."""
    if shutil.which("squeue") is None:
        return None
    try:
        # Every user's jobs: a sweep directory may be shared, and job ids are cluster-wide.
        proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    states = {}
    for line in proc.stdout.splitlines():
        if "|" in line:
            job_id, state = line.strip().split("|", 1)
            states[job_id] = state
    return states


def is_queued(status: dict, states: dict[str, str]) -> bool:
    job_id = status.get("job_id")
    return bool(job_id) and states.get(str(job_id)) in ACTIVE_STATES


def executor_parameters(s: SlurmSpec, job_name: str) -> dict:
    """[slurm] section -> submitit.SlurmExecutor parameters (sbatch flags)."""
    p: dict = {
        "job_name": job_name,
        "time": s.time_min,
        "nodes": s.nodes,
        "ntasks_per_node": s.tasks,
        "cpus_per_task": s.cpus_per_task,
        "array_parallelism": s.array_parallelism,
        "signal_delay_s": s.signal_delay_s,
        # A task that dies (an exception on rank 0, say) ends the step, instead of leaving
        # the other ranks waiting in a collective until the process-group timeout.
        "srun_args": ["--kill-on-bad-exit=1"],
    }
    for key in ("partition", "account", "qos", "constraint", "mail_user", "mail_type"):
        value = getattr(s, key)
        if value:
            p[key] = value
    if s.gpus_per_node:
        p["gres"] = f"gpu:{s.gpus_per_node}"
    if s.mem_gb:
        p["mem"] = f"{s.mem_gb}GB"
    if s.setup:
        p["setup"] = list(s.setup)
    extra = dict(parse_extra_sbatch(line) for line in s.extra_sbatch)
    if extra:
        p["additional_parameters"] = extra
    return p


def parse_extra_sbatch(line: str) -> tuple[str, object]:
    """'--exclusive' -> ('exclusive', True); '--gpu-bind=closest' -> ('gpu-bind', 'closest')."""
    body = line.strip()[2:]
    if "=" in body:
        key, value = body.split("=", 1)
        return key, value
    return body, True


def render_script(
    s: SlurmSpec, *, job_name: str, folder: Path, n_tasks_in_array: int, python: str | None = None
) -> str:
    """The sbatch script submitit submits for an array of this section (pure function)."""
    import shlex

    from submitit.slurm.slurm import _make_sbatch_string

    python = python or shlex.quote(sys.executable)
    command = " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])
    params = executor_parameters(s, job_name)
    return _make_sbatch_string(command=command, folder=folder, map_count=n_tasks_in_array, **params)


def sbatch_test_only(script: str) -> str:
    """`sbatch --test-only`: asks the scheduler whether and when the job would run; submits nothing."""
    with tempfile.NamedTemporaryFile("w", suffix=".sbatch", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        proc = subprocess.run(["sbatch", "--test-only", path], capture_output=True, text=True, timeout=60)
    finally:
        Path(path).unlink(missing_ok=True)
    return (proc.stdout + proc.stderr).strip()


def pack(runs: list, k: int) -> list[list]:
    """The runs (or fused groups) of one [slurm] section in tasks of up to ``k``
    (runs_per_gpu), in order."""
    k = max(1, k)
    return [runs[i : i + k] for i in range(0, len(runs), k)]


def task_job(units: list, s: SlurmSpec):
    """What one array task runs: one run, several packed onto its GPU, or fused groups.
    ``units``: run directories (each alone) or fused groups (lists of them)."""
    groups = [list(u) if isinstance(u, (list, tuple)) else [u] for u in units]
    if all(len(g) == 1 for g in groups):
        if len(groups) == 1:
            return TrainJob(str(groups[0][0].path))
        return PackedTrainJob([str(g[0].path) for g in groups], mps=s.mps)
    return PackedTrainJob(
        [str(rd.path) for g in groups for rd in g], mps=s.mps, groups=[[str(rd.path) for rd in g] for g in groups]
    )


@dataclass
class _Section:
    spec: SlurmSpec
    groups: list[list[RunDir]]


def _sections(groups: list[list[RunDir]]) -> list[_Section]:
    """The groups by [slurm] section (the members of a fused group share theirs)."""
    sections: dict[SlurmSpec, _Section] = {}
    for group in groups:
        s = group[0].load_spec().slurm
        sections.setdefault(s, _Section(s, [])).groups.append(group)
    return list(sections.values())


def submitit_folder(sweep_dir: Path) -> Path:
    return Path(sweep_dir).absolute() / "slurm" / "%j"


class SlurmExecutor(Executor):
    name = "slurm"

    def __init__(self, then_analyze: bool = False, **_ignored):
        if not sbatch_available():
            raise SlurmError("the slurm executor needs sbatch on PATH (run on a login node, or use --executor local)")
        self.then_analyze = then_analyze

    def launch(self, sweep_dir: Path, run_dirs: list[RunDir], groups: list[list[RunDir]] | None = None) -> LaunchReport:
        import submitit

        report = LaunchReport(self.name)
        limit = max(1, max_array_size() - 1)
        folder = submitit_folder(sweep_dir)
        array_ids = []
        for section in _sections(groups_of(run_dirs, groups)):
            executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=section.spec.max_requeues)
            executor.update_parameters(**executor_parameters(section.spec, f"hpcdiff-{Path(sweep_dir).name}"))
            tasks = pack(section.groups, section.spec.runs_per_gpu)
            for start in range(0, len(tasks), limit):
                chunk = tasks[start : start + limit]
                # Before submitting: a task that starts and ends at once must not have its
                # final state overwritten by this launcher afterwards.
                for rd in (rd for task in chunk for group in task for rd in group):
                    rd.write_status(state=RunState.PENDING, submitted=time.time(), error=None, traceback=None)
                try:
                    with executor.batch():
                        jobs = [executor.submit(task_job(task, section.spec)) for task in chunk]
                except submitit.core.utils.FailedJobError as err:
                    raise SlurmError(f"sbatch refused the array: {err}") from None
                for task, job in zip(chunk, jobs):
                    for rd in (rd for group in task for rd in group):  # a task's runs share its job id
                        rd.write_status(job_id=job.job_id)
                        report.launched.append(rd.run_id)
                        report.job_ids[rd.run_id] = job.job_id
                if jobs:
                    array_ids.append(jobs[0].job_id.split("_")[0])
        if self.then_analyze and array_ids:
            report.job_ids["analyze"] = submit_analysis(sweep_dir, run_dirs, array_ids)
        return report


def submit_analysis(sweep_dir: Path, run_dirs: list[RunDir], array_ids: list[str]) -> str:
    """A CPU job that runs `hpcdiff analyze` once every array has ended (afterany)."""
    import submitit

    s = run_dirs[0].load_spec().slurm
    executor = submitit.SlurmExecutor(folder=submitit_folder(sweep_dir), max_num_timeout=0)
    params = {
        "job_name": f"hpcdiff-analyze-{Path(sweep_dir).name}",
        "time": 30,
        "cpus_per_task": 2,
        "nodes": 1,
        "ntasks_per_node": 1,
        "additional_parameters": {"dependency": "afterany:" + ":".join(array_ids)},
    }
    partition = s.cpu_partition or s.partition
    if partition:
        params["partition"] = partition
    for key in ("account", "qos"):
        if getattr(s, key):
            params[key] = getattr(s, key)
    if s.setup:
        params["setup"] = list(s.setup)
    executor.update_parameters(**params)
    return executor.submit(analyze_job, str(sweep_dir)).job_id


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], check=False, timeout=60)
