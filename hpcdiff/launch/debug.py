"""In-process execution, one run after another: for debugging (breakpoints, tracebacks)."""

from __future__ import annotations

from pathlib import Path

from hpcdiff.launch.base import Executor, LaunchReport
from hpcdiff.storage.rundir import RunDir
from hpcdiff.storage.runstate import RunState


class DebugExecutor(Executor):
    name = "debug"

    def __init__(self, show_progress: bool = True, **_ignored):
        self.show_progress = show_progress

    def launch(self, sweep_dir: Path, run_dirs: list[RunDir], groups=None) -> LaunchReport:
        # Never fused (launch.plan keeps every run alone for this executor): one at a time.
        from hpcdiff.training.loop import train
        from hpcdiff.training.monitor import Diverged

        report = LaunchReport(self.name)
        for rd in run_dirs:
            report.launched.append(rd.run_id)
            try:
                report.results[rd.run_id] = train(rd.path, show_progress=self.show_progress)
            except Diverged:  # recorded in status.json and the log; the next run goes on
                report.results[rd.run_id] = RunState.DIVERGED
        return report
