from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hpcdiff.storage.rundir import RunDir


@dataclass
class LaunchReport:
    executor: str
    launched: list[str] = field(default_factory=list)
    results: dict[str, str] = field(default_factory=dict)  # run id -> final state
    job_ids: dict[str, str] = field(default_factory=dict)  # run id -> backend job id


class Executor:
    name = "base"

    def launch(self, sweep_dir: Path, run_dirs: list[RunDir]) -> LaunchReport:
        raise NotImplementedError
