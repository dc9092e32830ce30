"""Local execution: each run is a `hpcdiff train RUN_DIR` subprocess, N at a time (a fused
group is one `hpcdiff train DIR1 DIR2 ...` subprocess; ``-j`` counts groups).

Subprocesses, not threads, so that a crash, a kill or a hung run only affects its own run
and the same command is what a SLURM job executes. On a machine with several GPUs the
concurrent runs are spread over them: each gets its own ``CUDA_VISIBLE_DEVICES`` (the
least busy GPUs first).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from hpcdiff.config import tomlio
from hpcdiff.config.text_table import progress_numbers
from hpcdiff.launch.base import Executor, LaunchReport, groups_of
from hpcdiff.launch.child import child_env, start_child
from hpcdiff.storage.rundir import RunBusyError, RunDir
from hpcdiff.storage.runstate import RunState

POLL_SECONDS = 0.5


def gpu_slots(environ=None) -> list[str]:
    """The GPUs to spread concurrent runs over: the devices of CUDA_VISIBLE_DEVICES when it
    is set, else one per line of `nvidia-smi -L`; [] when there are fewer than two (nothing
    to spread, and no GPU query at all on a machine without nvidia-smi)."""
    env = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in env:
        slots = [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    else:
        slots = [str(i) for i in range(_nvidia_smi_count())]
    return slots if len(slots) > 1 else []


def _nvidia_smi_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def pick_gpus(slots: list[str], in_use: list[str], n: int = 1) -> list[str]:
    """The ``n`` GPUs for the next run: the least busy (fewest runs in ``in_use``), the
    first listed among equals, so that K runs on G GPUs go round-robin."""
    load = {slot: in_use.count(slot) for slot in slots}
    return sorted(slots, key=lambda slot: (load[slot], slots.index(slot)))[:n]


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, concurrency: int = 1, show_progress: bool = True, processes: int = 1, **_ignored):
        self.concurrency = max(1, concurrency)
        self.show_progress = show_progress
        self.processes = max(1, processes)

    def launch(self, sweep_dir: Path, run_dirs: list[RunDir], groups: list[list[RunDir]] | None = None) -> LaunchReport:
        report = LaunchReport(self.name)
        queue = groups_of(run_dirs, groups)
        # Each process's runs, by the first run's id (a run alone: itself).
        running: dict[str, tuple[subprocess.Popen, list[RunDir]]] = {}
        # Each child's share of the cores: `concurrency` runs of `processes` ranks each.
        env = child_env(self.concurrency * self.processes)
        with _SweepProgress(self.show_progress, [rd for g in queue for rd in g]) as progress:
            try:
                self._loop(queue, running, env, report, progress)
            finally:
                # Ctrl-C (or any error) here: stop the trainings too; SIGTERM makes each
                # write a checkpoint, so rerunning the sweep resumes them.
                for proc, _rds in running.values():
                    if proc.poll() is None:
                        proc.terminate()
                for proc, _rds in running.values():
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
        return report

    def _loop(self, queue, running, env, report, progress) -> None:
        slots = gpu_slots(env) if self.concurrency > 1 else []
        gpus: dict[str, list[str]] = {}  # first run id -> the GPUs its process was given
        while queue or running:
            while queue and len(running) < self.concurrency:
                group = queue.pop(0)
                key = group[0].run_id
                if slots:
                    gpus[key] = pick_gpus(slots, [g for ids in gpus.values() for g in ids], self.processes)
                running[key] = (self._start(group, env, gpus.get(key)), group)
                report.launched += [rd.run_id for rd in group]
            for key, (proc, group) in list(running.items()):
                code = proc.poll()
                if code is not None:
                    del running[key]
                    gpus.pop(key, None)
                    for rd in group:
                        report.results[rd.run_id] = ended_as(rd, code, fused=len(group) > 1)
            progress.refresh(running, report.results)
            if running:
                try:
                    # Wakes when the oldest child exits; the timeout only paces the display.
                    next(iter(running.values()))[0].wait(timeout=POLL_SECONDS)
                except subprocess.TimeoutExpired:
                    pass

    def _start(self, group: list[RunDir], env: dict, gpus: list[str] | None) -> subprocess.Popen:
        if gpus:
            env = {**env, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
        first = group[0]
        for rd in group[1:]:  # one process, one output: the first member's stdout.txt
            with open(rd.path / "stdout.txt", "a") as out:
                out.write(f"hpcdiff: trained in a fused group; its output is in {first.path / 'stdout.txt'}\n")
        with open(first.path / "stdout.txt", "ab") as out:
            target = first.path if len(group) == 1 else [rd.path for rd in group]
            return start_child(target, env, processes=self.processes, stdout=out, new_session=True)


def ended_as(rd: RunDir, code: int, *, fused: bool = False) -> RunState:
    """How a run ended, once its process exited with ``code``. A diverged run exits non-zero
    too, but it is not a crash; nor is a run that another process (another sweep of the same
    file) is training. A member of a fused group keeps any end state it recorded (its
    partners may have made the process fail)."""
    state = rd.state
    if fused and state.final:
        return state
    if code == RunBusyError.exit_code:
        return RunState.BUSY
    return state if code == 0 or state == RunState.DIVERGED else RunState.FAILED


class _SweepProgress:
    """One bar per run (from status.json, in the unit that ends the run: steps under a step
    budget, minutes under a time budget, else epochs) and one for the sweep."""

    def __init__(self, enabled: bool, run_dirs: list[RunDir]):
        self.enabled = enabled
        self.run_dirs = run_dirs
        self._p = None
        self._train: dict[str, dict] = {}

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
            )
            self._p.__enter__()
            self._sweep = self._p.add_task("[bold]sweep", total=len(self.run_dirs), info="")
            self._tasks = {}
        return self

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)

    def _numbers(self, rd: RunDir, st: dict, *, ended: bool) -> tuple[float | None, float, str]:
        if rd.run_id not in self._train:
            try:
                self._train[rd.run_id] = tomlio.load(rd.config_path).get("train", {})
            except (OSError, ValueError):
                self._train[rd.run_id] = {}
        return progress_numbers(
            self._train[rd.run_id],
            epoch=int(st.get("epoch", 0)),
            epochs=int(st.get("epochs", 1)),
            steps=st.get("steps"),
            seconds=st.get("elapsed"),
            ended=ended,
            stopped_by=st.get("stopped_by"),
        )

    def refresh(self, running, results):
        if self._p is None:
            return
        for _proc, rd in ((proc, rd) for proc, group in running.values() for rd in group):
            run_id = rd.run_id
            st = rd.read_status()
            done, total, unit = self._numbers(rd, st, ended=False)
            if run_id not in self._tasks:
                self._tasks[run_id] = self._p.add_task(f"run {run_id} ({unit})", total=total, info="")
            loss = st.get("last_loss")
            info = f"loss {loss:.4f}" if isinstance(loss, float) else st.get("state", "")
            self._p.update(self._tasks[run_id], completed=done or 0, total=total, info=info)
        for run_id, state in results.items():
            if run_id in self._tasks:
                rd = next(r for r in self.run_dirs if r.run_id == run_id)
                done, total, unit = self._numbers(rd, rd.read_status(), ended=True)
                self._p.update(
                    self._tasks[run_id],
                    info=state,
                    completed=done or 0,
                    total=total,
                    description=f"run {run_id} ({unit})",
                )
        done = len(results)
        self._p.update(
            self._sweep,
            completed=done,
            info=f"{sum(1 for s in results.values() if s == RunState.DONE)} done, "
            f"{sum(1 for s in results.values() if s == RunState.FAILED)} failed"
            + (f", {busy} busy elsewhere" if (busy := sum(1 for s in results.values() if s == RunState.BUSY)) else ""),
        )
