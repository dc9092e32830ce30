"""How a launcher starts a child `hpcdiff train RUN_DIR` (a fused group: `hpcdiff train DIR1
DIR2 ...`): its command line, its environment (the variables it must not inherit, its share
of the CPU threads, its GPUs, the MPS variables) and the job's private directories. The
local executor and packed tasks call these functions; the sbatch scripts get their shell
equivalent from :func:`shell_prelude` and :data:`SHELL_PRIVATE_DIR`, and a test runs both
on one environment and compares.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

#: Set by srun for each task of a step, or by torchrun for each rank: a child keeping them
#: would take itself for one rank of a multi-process run and wait for peers that never come
#: (a local sweep started inside an `srun` step, or K runs packed in one task). SLURM_JOB_ID
#: and SLURM_ARRAY_* stay, so that each run's status.json records the job it ran in.
RANK_VARIABLES = (
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_NTASKS",
    "SLURM_NPROCS",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_TASKS_PER_NODE",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_STEP_TASKS_PER_NODE",
    "SLURM_GTIDS",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def child_command(run_dir, processes: int = 1, hpcdiff: list[str] | None = None) -> list[str]:
    """``hpcdiff train --no-progress RUN_DIR`` (the parent shows progress; the child's output
    goes to a file or a job log), under torchrun for ``processes`` > 1 (it sets RANK,
    WORLD_SIZE and MASTER_ADDR; Accelerate picks gloo on CPU, NCCL on GPU). ``run_dir`` may
    be a list: a fused group, ``hpcdiff train --no-progress DIR1 DIR2 ...``, one process (a
    list of one is the plain command)."""
    dirs = [str(d) for d in run_dir] if isinstance(run_dir, (list, tuple)) else [str(run_dir)]
    if not dirs:
        raise ValueError("child_command needs at least one run directory")
    if processes > 1:
        if len(dirs) > 1:
            raise ValueError(f"a fused group trains in one process, not {processes}")
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            "hpcdiff",
            "train",
            "--no-progress",
            *dirs,
        ]
    prefix = [sys.executable, "-m", "hpcdiff"] if hpcdiff is None else hpcdiff
    return [*prefix, "train", "--no-progress", *dirs]


def available_cpus(environ=None) -> int:
    """The CPUs this job may use: SLURM_CPUS_PER_TASK, else this process's CPU affinity
    (what `nproc` says; a container or a cgroup limits it below the machine's count)."""
    env = os.environ if environ is None else environ
    cpus = env.get("SLURM_CPUS_PER_TASK", "")
    if cpus.isdigit() and int(cpus) > 0:
        return int(cpus)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def threads_per_run(k: int, environ=None) -> int:
    """The job's CPUs shared by the K processes it runs at once."""
    return max(1, available_cpus(environ) // max(1, k))


def child_env(k: int, *, gpus: list[str] | None = None, extra: dict | None = None, environ=None) -> dict[str, str]:
    """The environment of each of the K processes a launcher runs at once: no rank variables,
    OMP_NUM_THREADS as the user set it or else its share of the CPUs, CUDA_VISIBLE_DEVICES =
    ``gpus`` when given (else inherited), then ``extra`` (the MPS variables)."""
    env = dict(os.environ if environ is None else environ)
    for key in RANK_VARIABLES:
        env.pop(key, None)
    if not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = str(threads_per_run(k, env))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    env.update(extra or {})
    return env


def start_child(
    run_dir,
    env: dict,
    *,
    processes: int = 1,
    stdout=None,
    new_session: bool = False,
    preexec_fn=None,
    hpcdiff: list[str] | None = None,
) -> subprocess.Popen:
    return subprocess.Popen(
        child_command(run_dir, processes, hpcdiff),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        start_new_session=new_session,
        preexec_fn=preexec_fn,
    )


def shell_prelude(runs_var: str = "TASK_RUNS") -> str:
    """Bash lines that give the shell's children what :func:`child_env` gives (K is the
    length of the array ``runs_var``)."""
    return (
        f"unset {' '.join(RANK_VARIABLES)}\n"
        f'CPUS="${{SLURM_CPUS_PER_TASK:-$(nproc)}}"\n'
        f'export OMP_NUM_THREADS="${{OMP_NUM_THREADS:-$(( CPUS / ${{#{runs_var}[@]}} > 0 ? '
        f'CPUS / ${{#{runs_var}[@]}} : 1 ))}}"\n'
    )


def shell_command(hpcdiff: str, run_dir_expr: str = '"$RUN_DIR"') -> str:
    """The shell form of :func:`child_command` for one process (``run_dir_expr`` may expand
    to several words: a fused group's run directories)."""
    return " ".join([hpcdiff, *map(shlex.quote, child_command("RUN_DIR", hpcdiff=[])[:-1]), run_dir_expr])


class PrivateDirError(RuntimeError):
    """A job's private directory exists and someone else could read or own it."""


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user can enter: created with mode 0700, or, when it
    already exists (a requeued task on the same node), accepted only if it is a real
    directory (no symlink) owned by this user with no access for group or others. Anyone can
    predict a name under /tmp and create it first; refusing then keeps the job's MPS pipes
    and logs out of their hands."""
    path = Path(path)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    problem = (
        "is not a directory"
        if not stat.S_ISDIR(st.st_mode)
        else f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
        if st.st_uid != os.geteuid()
        else f"has mode {stat.S_IMODE(st.st_mode):04o}, open to other users"
        if st.st_mode & 0o077
        else None
    )
    if problem:
        raise PrivateDirError(
            f"{path} {problem}; refusing to keep this job's private files there. Remove it, "
            f"or set TMPDIR to a directory of your own"
        )
    return path


#: The shell form of :func:`private_dir`: ``hpcdiff_private_dir PATH`` or the job exits 1
#: with the same message.
SHELL_PRIVATE_DIR = r"""hpcdiff_private_dir() {
    mkdir -m 700 "$1" 2>/dev/null || true
    local problem=""
    if [ -L "$1" ] || [ ! -d "$1" ]; then problem="is not a directory"
    elif [ "$(stat -c %u "$1")" != "$(id -u)" ]; then
        problem="belongs to uid $(stat -c %u "$1"), not to this user (uid $(id -u))"
    elif [ $(( 0$(stat -c %a "$1") & 077 )) -ne 0 ]; then
        problem="has mode $(printf %04o $(( 0$(stat -c %a "$1") ))), open to other users"
    fi
    if [ -n "$problem" ]; then
        echo "hpcdiff: $1 $problem; refusing to keep this job's private files there." \
             "Remove it, or set TMPDIR to a directory of your own" >&2
        exit 1
    fi
}
"""
