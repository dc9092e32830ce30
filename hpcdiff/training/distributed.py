"""Process-group rendezvous from the environment a launcher leaves.

`accelerate launch` and torchrun set RANK/WORLD_SIZE/MASTER_ADDR themselves. srun (plain
sbatch or submitit with several tasks) sets only SLURM_* variables, so every task would
believe it is rank 0 of 1 and train the same run on the same GPU. This module derives the
torch.distributed variables from SLURM's, once, before Accelerate starts.
"""

from __future__ import annotations

import os
import re
import subprocess


def _first_int(text: str, default: int = 1) -> int:
    m = re.match(r"\d+", text or "")
    return int(m.group(0)) if m else default


def first_host(nodelist: str) -> str:
    """The first hostname of a SLURM node list ("gpu-q-[1,3-4],gpu-r-2" -> "gpu-q-1")."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    m = re.match(r"([^,\[]+)(?:\[(\d+))?", nodelist)
    if not m:
        return "127.0.0.1"
    return m.group(1) + (m.group(2) or "")


def env_from_slurm(environ=None) -> bool:
    """Fill RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT from a
    multi-task SLURM step. Returns True when it did (nothing is overwritten)."""
    env = os.environ if environ is None else environ
    ntasks = _first_int(env.get("SLURM_NTASKS", "1"))
    if "RANK" in env or ntasks <= 1 or "SLURM_PROCID" not in env:
        return False
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = str(ntasks)
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env["LOCAL_WORLD_SIZE"] = str(_first_int(env.get("SLURM_NTASKS_PER_NODE", ""), ntasks))
    env.setdefault("MASTER_ADDR", first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
    # Distinct per job (array tasks have their own job ids), inside the unprivileged range.
    env.setdefault("MASTER_PORT", str(15000 + _first_int(env.get("SLURM_JOB_ID", "0"), 0) % 20000))
    return True


def process_rank(environ=None) -> int:
    env = os.environ if environ is None else environ
    return int(env.get("RANK", "0"))


def local_cuda_index(environ=None) -> int:
    """The GPU this process trains on, as Accelerate picks it: LOCAL_RANK (SLURM_LOCALID under
    srun, through env_from_slurm) modulo the GPUs the process sees. A task bound to its own
    GPU (srun --gpus-per-task=1) sees only that one, as cuda:0; tasks that all see the node's
    GPUs take cuda:LOCAL_RANK. Known before Accelerate starts, so that nothing looks at (and
    creates a CUDA context on) cuda:0 on behalf of every rank."""
    import torch

    env = os.environ if environ is None else environ
    return int(env.get("LOCAL_RANK", "0") or 0) % max(1, torch.cuda.device_count())
