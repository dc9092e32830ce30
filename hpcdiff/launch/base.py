from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hpcdiff.storage.rundir import RunDir
from hpcdiff.storage.runstate import RunState


@dataclass
class LaunchReport:
    executor: str
    launched: list[str] = field(default_factory=list)
    results: dict[str, str] = field(default_factory=dict)  # run id -> final state
    job_ids: dict[str, str] = field(default_factory=dict)  # run id -> backend job id

    def ended(self, state: RunState) -> list[str]:
        return [run_id for run_id, s in self.results.items() if s == state]

    @property
    def failed(self) -> list[str]:
        """Runs that crashed or diverged: the sweep command exits 1."""
        return self.ended(RunState.FAILED) + self.ended(RunState.DIVERGED)


class Executor:
    name = "base"

    def launch(self, sweep_dir: Path, run_dirs: list[RunDir]) -> LaunchReport:
        raise NotImplementedError
