"""What the training loop checks between steps without waiting for the device on every step:
stop signals, a non-finite loss, non-finite weights.

A step on a GPU is queued, not finished, when Python moves on; reading a value back
(``loss.item()``, ``bool(tensor)``) makes the host wait for the whole queue. So the loss is
summed on the device and inspected only when ``due`` says so: every ``every`` optimiser
steps and at every epoch end. One small tensor carries every rank's verdict through one
all-reduce, so all ranks stop, or declare divergence, after the same step and none is left
waiting in a collective.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import torch

# Optimiser steps between checks: a diverged run stops within this many steps, a stop signal
# is honoured within this many (SLURM warns minutes ahead), and the host waits for the
# device once per interval instead of once per step.
CHECK_EVERY = 10

# Each rank's stop request, ordered so that MAX across ranks picks the one that matters:
# submitit's USR2 ("checkpoint and requeue") wins over any other stop signal.
_NO_STOP, _STOP, _REQUEUE = 0, 1, 2


class Diverged(RuntimeError):
    """The loss or the weights stopped being finite. No checkpoint was written after it."""

    def __init__(self, *, epoch: int, step: int, what: str, hints: list[str], last_good: int):
        self.epoch, self.step, self.what, self.last_good = epoch, step, what, last_good
        where = f"epoch {epoch}, step {step}"
        kept = (
            f"the last good checkpoint (epoch {last_good}) is kept"
            if last_good
            else "no checkpoint had been written yet"
        )
        causes = "; ".join(hints)
        super().__init__(
            f"training diverged at {where}: {what}. Likely causes: {causes}. "
            f"Nothing was written after it and {kept}. Rerunning the sweep does not relaunch a "
            f"diverged run (the same config diverges the same way): change the config, or use "
            f"--force to relaunch it from its last good checkpoint."
        )


def divergence_hints(train_spec, precision: str) -> list[str]:
    """The usual suspects, worded for the settings of this run (``precision``: the mixed
    precision in use, "no", "bf16" or "fp16", after "auto" was resolved)."""
    hints = [f"a learning rate too high for this model (train.lr = {train_spec.lr!r})"]
    if precision == "fp16":
        hints.append('fp16 overflow (mixed precision fp16: set train.mixed_precision = "bf16" or "no")')
    elif precision == "bf16":
        hints.append('bf16 rounding (mixed precision bf16: set train.mixed_precision = "no")')
    if not train_spec.grad_clip:
        hints.append("no gradient clipping (train.grad_clip = 0: try 1.0)")
    return hints


@dataclass(frozen=True)
class Verdict:
    stop_signal: int  # 0, or the signal every rank stops for
    loss_finite: bool
    weights_finite: bool
    loss_sum: float  # this rank's, for the progress display
    over_budget: bool = False  # some rank found the run's compute budget spent

    @property
    def finite(self) -> bool:
        return self.loss_finite and self.weights_finite


def all_finite(tensors) -> torch.Tensor:
    """One device tensor, True when every element of every tensor is finite (no host sync)."""
    tensors = [t for t in tensors if t.is_floating_point()]
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


class TrainingMonitor:
    """Holds the stop-signal flag (set by a signal handler) and makes the interval checks."""

    def __init__(self, accelerator=None, *, every: int = CHECK_EVERY):
        self.every = every
        self.stop_signal = 0
        self._accelerator = accelerator
        self._since_check = 0

    def request_stop(self, signum: int) -> None:
        """Called from a signal handler: only records the signal."""
        if signum == signal.SIGUSR2 or not self.stop_signal:
            self.stop_signal = signum

    def optimizer_step_taken(self, *, epoch_end: bool = False, budget_step: bool = False) -> bool:
        """Count an optimiser step; True when a check is due after it (every ``every`` steps,
        at every epoch end, and at the step train.max_steps ends the run on, so that it stops
        exactly there). Every rank counts the same steps, so all check together."""
        self._since_check += 1
        if epoch_end or budget_step or self._since_check >= self.every:
            self._since_check = 0
            return True
        return False

    def check(self, loss_sum: torch.Tensor, weights=None, *, over_budget: bool = False) -> Verdict:
        """The verdict of every rank, agreed: one reduction, one host sync.

        ``loss_sum`` is the loss accumulated on the device since the epoch began (a NaN or an
        infinity stays in a sum); ``weights``, when given, are checked too (before a
        checkpoint: a checkpoint is only ever written of finite weights)."""
        device = loss_sum.device
        mine = {0: _NO_STOP, int(signal.SIGUSR2): _REQUEUE}.get(int(self.stop_signal), _STOP)
        bad_weights = (
            (~all_finite(weights).to(device))
            if weights is not None
            else torch.zeros((), dtype=torch.bool, device=device)
        )
        packed = torch.stack(
            [
                torch.tensor(float(mine), device=device),
                (~torch.isfinite(loss_sum.detach())).any().float(),
                bad_weights.float(),
                torch.tensor(float(over_budget), device=device),
            ]
        )
        acc = self._accelerator
        if acc is not None and acc.num_processes > 1:
            torch.distributed.all_reduce(packed, op=torch.distributed.ReduceOp.MAX)
        stop, bad_loss, bad_w, budget = (int(v) for v in packed.tolist())
        local_sum = float(loss_sum.detach().float().sum())
        if stop == _REQUEUE:
            self.stop_signal = int(signal.SIGUSR2)
        elif stop == _STOP and not self.stop_signal:
            # Another rank was signalled: this one stops with it.
            self.stop_signal = int(signal.SIGTERM)
        return Verdict(
            stop_signal=self.stop_signal if stop else 0,
            loss_finite=not bad_loss,
            weights_finite=not bad_w,
            loss_sum=local_sum,
            over_budget=bool(budget),
        )
