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
