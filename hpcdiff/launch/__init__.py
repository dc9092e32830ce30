"""Backends that execute runs: what runs (``hpcdiff train RUN_DIR``) is kept apart from how.

Every backend implements ``Executor.launch(sweep_dir, run_dirs) -> LaunchReport``. The
choice is made by name; ``auto`` picks SLURM where ``sbatch`` is on PATH and a cluster
answers, local processes otherwise.
"""

from __future__ import annotations

from hpcdiff.config import catalog
from hpcdiff.config.registry import Registry, unknown_name_message
from hpcdiff.launch import slurm
from hpcdiff.launch.base import Executor, LaunchReport
from hpcdiff.launch.debug import DebugExecutor
from hpcdiff.launch.local import LocalExecutor
from hpcdiff.launch.slurm import SlurmExecutor

BACKENDS: Registry[type] = Registry("executor", declared=catalog.BACKENDS)
BACKENDS.register("local")(LocalExecutor)
BACKENDS.register("debug")(DebugExecutor)
BACKENDS.register("slurm")(SlurmExecutor)
BACKENDS.seal()
CHOICES = catalog.EXECUTORS


def resolve_executor_name(name: str) -> str:
    if name == "auto":
        return "slurm" if slurm.cluster_reachable() else "local"
    return name


def get_executor(name: str, **options) -> Executor:
    name = resolve_executor_name(name)
    if name not in BACKENDS:
        raise ValueError(unknown_name_message("executor", name, BACKENDS.names()))
    return BACKENDS.get(name)(**options)


__all__ = ["Executor", "LaunchReport", "get_executor", "resolve_executor_name", "CHOICES", "BACKENDS"]
