"""Equal-compute budgets (train.max_steps, train.max_minutes): when a run has spent its
compute, counted across requeues and resumes, so that the runs of a sweep can be compared at
equal optimiser steps or equal training time.

Optimiser steps are not stored: they follow from (epoch, batches done in it), because the
accumulation windows restart at every epoch's first batch (training/loop.py run_epoch), so
the count is the same arithmetic on every rank and after any resume. Training time is
``TrainState.elapsed`` (checkpointed), plus the running epoch's seconds; it is read only at
the interval checks of training/monitor.py, never per step (a GPU step must not wait for the
host), so a time budget ends the run at the first check past it: at most CHECK_EVERY
optimiser steps (or an epoch end) later. A step budget ends it exactly at its step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    max_steps: int  # 0 = none
    max_seconds: float  # 0 = none
    batches_per_epoch: int
    accumulation: int  # batches per optimiser step (the last window of an epoch may be shorter)

    @classmethod
    def of(cls, train_spec, batches_per_epoch: int) -> Budget:
        return cls(train_spec.max_steps, train_spec.max_minutes * 60.0, batches_per_epoch, train_spec.grad_accumulation)

    def optimizer_steps(self, epoch: int, batches: int) -> int:
        """Optimiser steps taken once ``batches`` batches of ``epoch`` (1-based) are done."""
        per_epoch = math.ceil(self.batches_per_epoch / self.accumulation)
        return (epoch - 1) * per_epoch + math.ceil(batches / self.accumulation)

    def is_last_step(self, optimizer_steps: int) -> bool:
        """The step max_steps ends the run on: a check is made there, whatever the interval."""
        return bool(self.max_steps) and optimizer_steps >= self.max_steps

    def spent(self, optimizer_steps: int, seconds: float) -> str | None:
        """Which budget is spent ("max_steps" or "max_minutes"), or None."""
        if self.is_last_step(optimizer_steps):
            return "max_steps"
        if self.max_seconds and seconds >= self.max_seconds:
            return "max_minutes"
        return None
