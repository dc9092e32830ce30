"""Stop signals: SLURM's "your time is nearly up" becomes a checkpoint at the next check.

SLURM sends SIGTERM before killing a job at its time limit or on preemption (and USR1/USR2
when asked to warn early; submitit asks for USR2). The handler only records the signal in
the TrainingMonitor; the loop acts on it at its next interval check, after an optimiser
step, so every rank stops after the same batch.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopRequested(Exception):
    """Raised at a batch boundary after a stop signal, once the checkpoint is written."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum


@contextmanager
def stop_on_signals(monitor):
    """Route the stop signals to ``monitor.request_stop`` for the block."""

    def handler(signum, frame):
        monitor.request_stop(signum)

    previous = {}
    for sig in STOP_SIGNALS:
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. the debug executor in a thread)
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def hand_on_to_submitit(signum: int) -> None:
    """Under submitit, USR2 means "time limit or preemption": its own handler (restored by
    now) calls TrainJob.checkpoint and requeues the job, then exits the process."""
    handler = signal.getsignal(signum)
    if signum == signal.SIGUSR2 and callable(handler) and "submitit" in getattr(handler, "__module__", ""):
        handler(signum, None)
