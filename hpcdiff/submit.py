"""Sweep file -> run directories -> executor. What `hpcdiff sweep` does.

The decision for each run comes from the files on disk, so re-running a sweep never
duplicates or overwrites finished work:
    done                      -> skip (--force: rerun from scratch, old results moved aside)
    diverged                  -> skip: the same config diverges the same way (--force: resume
                                 from its last good checkpoint)
    being trained right now   -> skip
    anything else             -> launch (resumes from its latest checkpoint, if any)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .launch import get_executor, resolve_executor_name, slurm
from .launch.base import LaunchReport
from .rundir import RunDir, update_manifest, write_run_config
from .sweep import Sweep, load_sweep


@dataclass
class PlannedRun:
    run_dir: RunDir
    axes: dict
    label: str
    action: str  # "new", "resume", "rerun", "skip-done", "skip-diverged", "skip-running", "skip-queued"


@dataclass
class SweepPlan:
    sweep: Sweep
    sweep_dir: Path
    runs: list[PlannedRun] = field(default_factory=list)

    @property
    def to_launch(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.action in ("new", "resume", "rerun")]


def plan_sweep(sweep_file: str | Path, *, output: str | Path = "runs", overrides=(),
               force: bool = False) -> SweepPlan:
    """Validate and expand; touches nothing on disk."""
    sweep = load_sweep(sweep_file, overrides)
    sweep_dir = Path(output) / sweep.name
    plan = SweepPlan(sweep=sweep, sweep_dir=sweep_dir)
    queue = slurm.queue_states() if sweep_dir.is_dir() else {}
    for run in sweep.runs:
        rd = RunDir(sweep_dir / run.run_id)
        if not rd.exists():
            action = "new"
        else:
            state = rd.effective_state()
            if rd.is_locked():
                action = "skip-running"
            elif slurm.is_queued(rd.read_status(), queue):
                action = "skip-queued"
            elif state == "done":
                action = "rerun" if force else "skip-done"
            elif state == "diverged":
                action = "resume" if force else "skip-diverged"
            else:
                action = "resume"
        plan.runs.append(PlannedRun(rd, run.axes, run.label, action))
    return plan


def execute_plan(plan: SweepPlan, *, executor: str = "auto", concurrency: int = 1,
                 show_progress: bool = True, then_analyze: bool = False, processes: int = 1) -> LaunchReport:
    """Write the run directories and hand the runs to the executor."""
    # The executor first: one that cannot run here fails before anything is written.
    backend = get_executor(executor, concurrency=concurrency, show_progress=show_progress,
                           then_analyze=then_analyze, processes=processes)
    source_text = Path(plan.sweep.source).read_text() if plan.sweep.source else ""
    update_manifest(plan.sweep_dir, plan.sweep, source_text)
    by_id = {r.run_id: r for r in plan.sweep.runs}
    for pr in plan.runs:
        run = by_id[pr.run_dir.run_id]
        write_run_config(pr.run_dir, run.spec, run_id=run.run_id, sweep=plan.sweep.name,
                         axes=run.axes, label=run.label)
        if pr.action == "rerun":
            _archive_previous(pr.run_dir)
    return backend.launch(plan.sweep_dir, [pr.run_dir for pr in plan.to_launch])


def _archive_previous(rd: RunDir) -> None:
    """--force: move the finished results aside (never delete them) and start afresh."""
    import time

    dest = rd.path / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir()
    for name in ("checkpoints", "archive.h5", "log.txt", "stdout.txt"):
        if (rd.path / name).exists():
            (rd.path / name).rename(dest / name)
    rd.write_status(state="pending", epoch=0, error=None, traceback=None, elapsed=0.0, early_stopped=None)


@dataclass
class DryRun:
    scripts: list[str]
    test_only: list[str]
    gpu_hours: float
    runs: int


def dry_run_report(plan: SweepPlan) -> DryRun:
    """The submission script(s) that would be sent, sbatch --test-only's answer where sbatch
    exists, and the GPU-hours asked for (runs x nodes x GPUs x time limit). Submits nothing."""
    groups: dict = {}
    for pr in plan.to_launch:
        run = next(r for r in plan.sweep.runs if r.run_id == pr.run_dir.run_id)
        groups.setdefault(run.spec.slurm, []).append(run)
    scripts, answers, gpu_hours = [], [], 0.0
    for s, runs in groups.items():
        script = slurm.render_script(s, job_name=f"hpcdiff-{plan.sweep.name}",
                                     folder=slurm.submitit_folder(plan.sweep_dir), n_tasks_in_array=len(runs))
        scripts.append(script)
        if slurm.sbatch_available():
            answers.append(slurm.sbatch_test_only(script))
        gpu_hours += len(runs) * s.nodes * s.gpus_per_node * s.time_min / 60
    return DryRun(scripts, answers, gpu_hours, len(plan.to_launch))


__all__ = ["dry_run_report", "DryRun", "plan_sweep", "execute_plan", "SweepPlan", "PlannedRun", "resolve_executor_name"]
