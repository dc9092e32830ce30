"""The ``[log]`` section: live tracking of a run in TensorBoard and/or Weights & Biases
(through Accelerate's trackers, hpcdiff.training.trackers). Observation only: not part of a
run's identity (config/identity.py, rule 1), so adding a tracker to a sweep finds the same
runs. Stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcdiff.config.checks import check, choice_msg

TRACKERS = ("tensorboard", "wandb")
# "auto": the WANDB_MODE environment variable when set, else "offline" inside a SLURM job
# (compute nodes have no internet; `hpcdiff sync SWEEP_DIR` uploads later), else "online".
WANDB_MODES = ("auto", "online", "offline")


@dataclass(frozen=True)
class LogSpec:
    # Accelerate trackers the run logs to: [], ["tensorboard"], ["wandb"] or both.
    trackers: tuple[str, ...] = ()
    # W&B: the project runs go to (one W&B run per hpcdiff run, grouped by sweep), the
    # entity (user or team; "" = the logged-in user's default) and the mode.
    wandb_project: str = "hpcdiff"
    wandb_entity: str = ""
    wandb_mode: str = "auto"

    def validate(self, p: str) -> None:
        seen = set()
        for i, name in enumerate(self.trackers):
            check(name in TRACKERS, f"{p}.trackers[{i}]", choice_msg(name, TRACKERS))
            check(name not in seen, f"{p}.trackers[{i}]", f"{name!r} is listed twice")
            seen.add(name)
        check(self.wandb_mode in WANDB_MODES, f"{p}.wandb_mode", choice_msg(self.wandb_mode, WANDB_MODES))
        check(self.wandb_project != "", f"{p}.wandb_project", "must not be empty")


# Each tracker's package and the extra that installs it (pyproject's optional dependencies).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def tracker_install_problem(name: str) -> str | None:
    """Why tracker ``name`` cannot run here (its package is missing), or None. Asked at
    `hpcdiff sweep` and again when a run starts: Accelerate itself would only drop a missing
    tracker with a debug message, and the run would train with no curves at all."""
    import importlib.util

    package = TRACKER_PACKAGES[name]
    try:
        found = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken install, or one blocked in sys.modules
        found = False
    if found:
        return None
    return f"{name!r} needs the {package} package, which is not installed: pip install 'hpcdiff[{name}]'"
