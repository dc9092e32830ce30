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

    def launch(self, sweep_dir: Path, run_dirs: list[RunDir], groups: list[list[RunDir]] | None = None) -> LaunchReport:
        """Train ``run_dirs``; ``groups`` (the same runs, partitioned; None: each alone) says
        which train as one fused group: one `hpcdiff train DIR1 DIR2 ...` process each."""
        raise NotImplementedError


def groups_of(run_dirs: list[RunDir], groups: list[list[RunDir]] | None) -> list[list[RunDir]]:
    """``groups``, or each run in a group of its own."""
    return [list(g) for g in groups] if groups is not None else [[rd] for rd in run_dirs]
