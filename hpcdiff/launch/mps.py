"""NVIDIA MPS inside one job: the K processes of a packed task then share the GPU's
streaming multiprocessors at once, instead of taking turns in time slices.

The daemon's pipe and log directories are private to the job (keyed by its job id, under
the node-local ``$TMPDIR``, else /tmp; created with mode 0700, and refused when they exist
and are someone else's or open to others: ``child.private_dir``), so jobs sharing a node
never talk to each other's daemon, and the daemon is told to quit when the job ends. Unverified on a GPU cluster until
one has run it: only the commands' shape is tested here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from hpcdiff.launch.child import private_dir

CONTROL = "nvidia-cuda-mps-control"


def mps_dir(job_id: str, tmp: str | None = None) -> Path:
    """Where the daemon of this job keeps its pipes (``pipe/``) and logs (``log/``)."""
    # ${TMPDIR:-/tmp}, as the sbatch templates write it (node-local on clusters).
    return Path(tmp or os.environ.get("TMPDIR") or "/tmp") / f"hpcdiff-mps-{job_id}"


def mps_env(base: Path) -> dict[str, str]:
    """What the daemon and every CUDA process of the job need to find each other."""
    return {"CUDA_MPS_PIPE_DIRECTORY": str(base / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(base / "log")}


@contextmanager
def mps_daemon(job_id: str):
    """Start a private MPS control daemon for the block; yields the environment variables
    the job's processes need ({} when the daemon could not start: the runs then share the
    GPU by time slicing, which is slower but gives the same results)."""
    base = mps_dir(job_id)
    env = mps_env(base)
    if shutil.which(CONTROL) is None:
        _warn(f"slurm.mps = true but {CONTROL} is not on PATH; the packed runs share the GPU without MPS")
        yield {}
        return
    private_dir(base)  # raises PrivateDirError: the job fails rather than use another's pipes
    for d in env.values():
        private_dir(Path(d))
    started = subprocess.run([CONTROL, "-d"], env={**os.environ, **env}, capture_output=True, text=True)
    if started.returncode != 0:
        _warn(
            f"{CONTROL} -d failed ({started.stderr.strip() or started.returncode}); "
            "the packed runs share the GPU without MPS"
        )
        shutil.rmtree(base, ignore_errors=True)
        yield {}
        return
    try:
        yield env
    finally:
        try:
            subprocess.run(
                [CONTROL], input="quit\n", env={**os.environ, **env}, text=True, capture_output=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError) as err:
            _warn(f"could not stop the MPS daemon of job {job_id}: {err}")
        shutil.rmtree(base, ignore_errors=True)


def _warn(message: str) -> None:
    print(f"hpcdiff: warning: {message}", file=sys.stderr, flush=True)
