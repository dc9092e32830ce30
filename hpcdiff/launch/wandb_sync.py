"""`hpcdiff sync SWEEP_DIR`: upload a sweep's offline W&B runs from a login node.

Inside SLURM jobs W&B runs offline (compute nodes have no internet; training.trackers), and
leaves one ``<run_dir>/wandb/offline-run-<time>-<id>/`` per process start of a run: a run
resumed twice has three, all with the same W&B id. ``wandb sync`` uploads them, in order of
start time, into that one W&B run, and skips the ones it has already synced, so running
this again after more jobs have ended uploads only what is new.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hpcdiff.config.log_spec import tracker_install_problem


def offline_runs(sweep_dir: Path) -> list[Path]:
    """The offline W&B run directories under a sweep directory, oldest first per run."""
    return sorted(Path(sweep_dir).glob("*/wandb/offline-run-*"), key=lambda p: (p.parent.parent.name, p.name))


def sync_command(runs: list[Path], *, dry_run: bool = False) -> list[str]:
    return [sys.executable, "-m", "wandb", "sync", *(["--dry-run"] if dry_run else []), *map(str, runs)]


def sync_sweep(sweep_dir: Path, *, dry_run: bool = False) -> tuple[list[Path], int]:
    """Run ``wandb sync`` over the sweep's offline runs: (the runs, its exit code). Raises
    RuntimeError naming the extra when wandb is not installed."""
    runs = offline_runs(sweep_dir)
    if not runs:
        return runs, 0
    problem = tracker_install_problem("wandb")
    if problem:
        raise RuntimeError(f"cannot sync: {problem}")
    return runs, subprocess.run(sync_command(runs, dry_run=dry_run)).returncode
