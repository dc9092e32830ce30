"""Sweep file -> run directories -> executor. What `hpcdiff sweep` does.

The decision for each run comes from the files on disk, so re-running a sweep never
duplicates or overwrites finished work:
    done                      -> skip (--force: rerun from scratch, old results moved aside)
    diverged                  -> skip: the same config diverges the same way (--force: resume
                                 from its last good checkpoint)
    being trained right now   -> skip
    anything else             -> launch (resumes from its latest checkpoint, if any)

With ``fuse`` > 1 (``[sweep] fuse``, ``--fuse``) the runs to launch are grouped
(config/fusion.py): each group is one `hpcdiff train DIR1 DIR2 ...` process, one array task.
Finished and skipped runs never join a group.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hpcdiff.config.fusion import FusionPlan, one_process_reason, plan_groups
from hpcdiff.config.spec import SpecError
from hpcdiff.config.sweep import Sweep, check_fuse
from hpcdiff.launch import get_executor, resolve_executor_name, slurm
from hpcdiff.launch.base import LaunchReport
from hpcdiff.resolve import load_sweep
from hpcdiff.storage.rundir import RunDir, manifest_path, update_manifest, write_run_config
from hpcdiff.storage.runstate import RunState


class SweepWriteError(SpecError):
    """The sweep directory cannot be written (read-only file system, full disk, quota, a file
    in the way). Nothing this invocation wrote is left behind."""

    def __init__(self, path: Path, err: OSError | str):
        reason = (
            err
            if isinstance(err, str)
            else (
                f"[Errno {err.errno}] {err.strerror}" + (f": {err.filename!r}" if err.filename else "")
                if err.strerror
                else str(err)
            )
        )
        super().__init__(f"cannot write the sweep directory {path}: {reason}")


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
    # The most runs per fused group (1 = off) and the groups of the runs to launch.
    fuse: int = 1
    fusion: FusionPlan = field(default_factory=FusionPlan)

    @property
    def to_launch(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.action in ("new", "resume", "rerun")]

    def launch_groups(self) -> list[list[RunDir]]:
        """The runs to launch, group by group (each run its own group when not fused)."""
        by_id = {pr.run_dir.run_id: pr.run_dir for pr in self.to_launch}
        grouped = [[by_id[rid] for rid in group if rid in by_id] for group in self.fusion.groups]
        listed = {rd.run_id for group in grouped for rd in group}
        return [g for g in grouped if g] + [[rd] for rid, rd in by_id.items() if rid not in listed]


def plan_sweep(
    sweep_file: str | Path,
    *,
    output: str | Path = "runs",
    overrides=(),
    force: bool = False,
    fuse: int | None = None,
    executor: str | None = None,
    processes: int = 1,
) -> SweepPlan:
    """Validate and expand; touches nothing on disk. ``fuse`` (``--fuse``) overrides the
    sweep file's; ``executor`` (a name of launch.CHOICES, resolved here only when fusing;
    None: not known, every rule applies) and ``processes`` (the local executor's per run)
    decide which runs cannot fuse because of how they are launched."""
    sweep = load_sweep(sweep_file, overrides)
    sweep_dir = Path(output) / sweep.name
    try:
        check_writable(sweep_dir)
        plan = _plan(sweep, sweep_dir, force)
    except OSError as err:  # e.g. a path too long, or a directory we may not read
        raise SweepWriteError(sweep_dir, err) from None
    plan.fuse = sweep.fuse if fuse is None else check_fuse(fuse, "--fuse")
    _group(plan, executor, processes)
    return plan


def _group(plan: SweepPlan, executor: str | None, processes: int) -> None:
    """Group the runs to launch (only those: finished and skipped runs never fuse)."""
    specs = {r.run_id: r.spec for r in plan.sweep.runs}
    todo = [pr.run_dir.run_id for pr in plan.to_launch]
    apart: dict[str, str] = {}
    if plan.fuse > 1 and executor is not None:
        executor = resolve_executor_name(executor)
    for rid in todo if plan.fuse > 1 else ():
        s = specs[rid].slurm
        if executor == "debug":
            apart[rid] = "the debug executor trains one run at a time, in its own process"
            continue
        on_slurm = (s.nodes * s.tasks, s.nodes * s.gpus_per_node)
        if executor == "local":
            n, gpus = processes, 1
        elif executor == "slurm":
            n, gpus = on_slurm
        else:  # not known yet: either may apply
            n, gpus = max(processes, on_slurm[0]), on_slurm[1]
        reason = one_process_reason(n, gpus)
        if reason:
            apart[rid] = reason
    plan.fusion = plan_groups([(rid, specs[rid].to_dict()) for rid in todo], plan.fuse, apart=apart)


def check_writable(sweep_dir: Path) -> None:
    """Fail before anything is written (and in a dry run) when the sweep directory could not
    be created or written: its nearest existing ancestor must be a writable directory."""
    existing = Path(sweep_dir)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SweepWriteError(sweep_dir, f"{existing} is not a directory")
    # Root passes every permission check, but not a read-only mount: ask for that first.
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise SweepWriteError(sweep_dir, OSError(errno.EROFS, os.strerror(errno.EROFS), str(existing)))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SweepWriteError(sweep_dir, OSError(errno.EACCES, os.strerror(errno.EACCES), str(existing)))


def _plan(sweep: Sweep, sweep_dir: Path, force: bool) -> SweepPlan:
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
            elif state == RunState.DONE:
                action = "rerun" if force else "skip-done"
            elif state == RunState.DIVERGED:
                action = "resume" if force else "skip-diverged"
            else:
                action = "resume"
        plan.runs.append(PlannedRun(rd, run.axes, run.label, action))
    return plan


def execute_plan(
    plan: SweepPlan,
    *,
    executor: str = "auto",
    concurrency: int = 1,
    show_progress: bool = True,
    then_analyze: bool = False,
    processes: int = 1,
) -> LaunchReport:
    """Write the run directories and hand the runs to the executor."""
    # The executor first: one that cannot run here fails before anything is written.
    backend = get_executor(
        executor, concurrency=concurrency, show_progress=show_progress, then_analyze=then_analyze, processes=processes
    )
    source_text = Path(plan.sweep.source).read_text() if plan.sweep.source else ""
    undo = _Undo()
    try:
        check_writable(plan.sweep_dir)
        undo.keep_dir(plan.sweep_dir)
        undo.keep_file(manifest_path(plan.sweep_dir))
        undo.keep_file(plan.sweep_dir / "sweep.toml")
        update_manifest(plan.sweep_dir, plan.sweep, source_text)
        by_id = {r.run_id: r for r in plan.sweep.runs}
        for pr in plan.runs:
            run = by_id[pr.run_dir.run_id]
            undo.keep_dir(pr.run_dir.path)
            undo.keep_file(pr.run_dir.config_path)
            undo.keep_file(pr.run_dir.status_path, only_new=True)
            write_run_config(
                pr.run_dir, run.spec, run_id=run.run_id, sweep=plan.sweep.name, axes=run.axes, label=run.label
            )
    except OSError as err:
        undo.rollback()
        raise SweepWriteError(plan.sweep_dir, err) from None
    except SpecError:  # a run directory holding another config: the others stay as they were
        undo.rollback()
        raise
    for pr in plan.runs:
        if pr.action == "rerun":
            _archive_previous(pr.run_dir)
    return backend.launch(plan.sweep_dir, [pr.run_dir for pr in plan.to_launch], groups=plan.launch_groups())


class _Undo:
    """What writing the sweep directory changed, so that a failure part-way (a full disk, a
    quota) leaves the directory as it was: files are restored to their old bytes, and files
    and directories that did not exist are removed (with their parents created on the way)."""

    def __init__(self):
        self._files: list[tuple[Path, bytes | None]] = []
        self._new_dirs: list[Path] = []

    def keep_file(self, path: Path, *, only_new: bool = False) -> None:
        """Record a file before it is written. ``only_new``: one that exists is not restored
        (status.json: a live run may be writing it)."""
        if not path.exists():
            self._files.append((path, None))
        elif not only_new:
            self._files.append((path, path.read_bytes()))

    def keep_dir(self, path: Path) -> None:
        """Record a directory before it is created (with its missing parents)."""
        top, parent = None, path
        while not parent.exists() and parent != parent.parent:
            top, parent = parent, parent.parent
        if top is not None:  # the outermost directory created: removing it removes the rest
            self._new_dirs.append(top)

    def rollback(self) -> None:
        for path, old in reversed(self._files):
            try:
                if old is None:
                    path.unlink(missing_ok=True)
                else:
                    path.write_bytes(old)
            except OSError:
                pass  # the same failure that stopped the write; nothing more to do
        for d in reversed(self._new_dirs):
            shutil.rmtree(d, ignore_errors=True)


def _archive_previous(rd: RunDir) -> None:
    """--force: move the finished results aside (never delete them) and start afresh."""
    import time

    dest = rd.path / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir()
    for name in ("checkpoints", "archive.h5", "log.txt", "stdout.txt"):
        if (rd.path / name).exists():
            (rd.path / name).rename(dest / name)
    rd.write_status(state=RunState.PENDING, epoch=0, error=None, traceback=None, elapsed=0.0, early_stopped=None)


@dataclass
class DryRun:
    scripts: list[str]
    test_only: list[str]
    gpu_hours: float
    runs: int
    tasks: int = 0
    # Without packing (runs_per_gpu = 1), for comparison.
    gpu_hours_unpacked: float = 0.0
    # One line per packed [slurm] section: runs -> tasks of up to K, GPU-hours saved.
    packing: list[str] = field(default_factory=list)


def dry_run_report(plan: SweepPlan) -> DryRun:
    """The submission script(s) that would be sent, sbatch --test-only's answer where sbatch
    exists, and the GPU-hours asked for (array tasks x nodes x GPUs x time limit, with and
    without fusing runs and packing several groups per GPU). Submits nothing."""
    sections: dict = {}
    specs = {r.run_id: r.spec for r in plan.sweep.runs}
    for group in plan.launch_groups():  # the members of a group share their [slurm] section
        sections.setdefault(specs[group[0].run_id].slurm, []).append(group)
    report = DryRun([], [], 0.0, len(plan.to_launch))
    for s, groups in sections.items():
        tasks = len(slurm.pack(groups, s.runs_per_gpu))
        runs = sum(len(g) for g in groups)
        script = slurm.render_script(
            s,
            job_name=f"hpcdiff-{plan.sweep.name}",
            folder=slurm.submitit_folder(plan.sweep_dir),
            n_tasks_in_array=tasks,
        )
        report.scripts.append(script)
        if slurm.sbatch_available():
            report.test_only.append(slurm.sbatch_test_only(script))
        per_task = s.nodes * s.gpus_per_node * s.time_min / 60
        report.tasks += tasks
        report.gpu_hours += tasks * per_task
        report.gpu_hours_unpacked += runs * per_task
        if runs > len(groups):
            report.packing.append(_packing_line(s, runs, tasks, groups=len(groups), fuse=plan.fuse))
        elif s.packed:
            report.packing.append(_packing_line(s, runs, tasks))
    return report


def _packing_line(s, runs: int, tasks: int, *, groups: int = 0, fuse: int = 1) -> str:
    """How a section's runs become tasks (fused into ``groups`` when given, packed by
    runs_per_gpu), and the GPU-hours (CPU core-hours for a CPU-only section) that saves."""
    unit, per_task = (
        ("GPU-hours", s.nodes * s.gpus_per_node) if s.gpus_per_node else ("CPU core-hours", s.cpus_per_task)
    )
    hours = per_task * s.time_min / 60
    packing = f"slurm.runs_per_gpu{', with MPS' if s.mps else ''}"
    if not groups:
        how = f"packing: {runs} runs -> {tasks} array tasks of up to {s.runs_per_gpu} runs each ({packing})"
    elif s.packed:
        how = (
            f"fusion and packing: {runs} runs -> {groups} processes (fuse = {fuse}) -> {tasks} array tasks "
            f"of up to {s.runs_per_gpu} processes each ({packing})"
        )
    else:
        how = f"fusion: {runs} runs -> {tasks} array tasks (fuse = {fuse})"
    return f"{how}: {tasks * hours:.1f} {unit} instead of {runs * hours:.1f}, {(runs - tasks) * hours:.1f} saved"


__all__ = ["dry_run_report", "DryRun", "plan_sweep", "execute_plan", "SweepPlan", "PlannedRun", "resolve_executor_name"]


def preamble_lines(plan: SweepPlan) -> list[str]:
    """What `hpcdiff sweep` says before launching (rich markup): runs it leaves alone."""
    lines = []
    skipped_diverged = sum(1 for r in plan.runs if r.action == "skip-diverged")
    if skipped_diverged:
        lines.append(
            f"[magenta]{skipped_diverged} diverged run(s) not relaunched[/] (the same config diverges "
            f"the same way; --force resumes them from their last good checkpoint)."
        )
    if not plan.to_launch:
        lines.append("Nothing to do: every run is finished, diverged or running. (--force reruns them.)")
    return lines


def outcome_lines(plan: SweepPlan, report: LaunchReport) -> list[str]:
    """What `hpcdiff sweep` says after launching (rich markup): how many runs ended how, the
    SLURM arrays, and what to do about failures. A run another process was training when
    this sweep reached it is busy, not failed: that process trains it."""
    diverged, crashed, busy = (report.ended(s) for s in (RunState.DIVERGED, RunState.FAILED, RunState.BUSY))
    lines = [
        f"{report.executor}: launched {len(report.launched)} runs"
        + (f", [red]{len(crashed)} failed[/]: {', '.join(crashed)}" if crashed else "")
        + (f", [magenta]{len(diverged)} diverged[/]: {', '.join(diverged)}" if diverged else "")
        + (f", {len(busy)} busy in another process: {', '.join(busy)}" if busy else "")
    ]
    if report.job_ids:
        arrays = sorted({j.split("_")[0] for k, j in report.job_ids.items() if k != "analyze"})
        tasks = len({j for k, j in report.job_ids.items() if k != "analyze"})
        lines.append(
            f"submitted SLURM job array(s) {', '.join(arrays)}"
            + (f" ({tasks} tasks: {_shared_by(plan)})" if tasks < len(report.launched) else "")
            + (f"; analysis job {report.job_ids['analyze']}" if "analyze" in report.job_ids else "")
        )
        lines.append(f"  hpcdiff status {plan.sweep_dir} --watch")
    if crashed:
        lines.append(f"See {plan.sweep_dir}/<run_id>/log.txt; rerunning the same command resumes them.")
    if diverged:
        lines.append(
            f"Diverged runs say why in {plan.sweep_dir}/<run_id>/log.txt and `hpcdiff status`; "
            f"rerunning does not relaunch them."
        )
    if busy:
        lines.append(
            f"Busy runs are being trained by another process (another `hpcdiff sweep` or job); "
            f"`hpcdiff status {plan.sweep_dir}` follows them."
        )
    return lines


def _shared_by(plan: SweepPlan) -> str:
    """Why a sweep has fewer array tasks than runs."""
    fused = "fused groups" if plan.fusion.fused else ""
    specs = {r.run_id: r.spec for r in plan.sweep.runs}
    packed = "slurm.runs_per_gpu" if any(specs[pr.run_dir.run_id].slurm.packed for pr in plan.to_launch) else ""
    return " and ".join(w for w in (fused, packed) if w) or "slurm.runs_per_gpu"
