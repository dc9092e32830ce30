"""Several runs in one SLURM task (``slurm.runs_per_gpu = K``): K `hpcdiff train RUN_DIR`
processes sharing the task's GPU (or, without one, its CPUs).

Each run stays a process of its own, exactly what a one-run task executes: its own run
directory, lock, checkpoints, archive and status.json. One of them failing, diverging or
being killed never stops the others (they are not ranks of one step, so nothing like
``srun --kill-on-bad-exit`` applies between them); the task waits for all of them.

Stop signals (SLURM's USR2 warning, SIGTERM) are forwarded to every process still running,
and again every second until each has ended: a process that has not yet installed its own
handler ignores them (it is started that way) instead of dying, and hears the next one.
Each writes a checkpoint and ends in state "timeout"; then the task hands USR2 on to
submitit, which requeues it (``PackedTrainJob.checkpoint``).

A fused group (``[sweep] fuse``) is one such process, `hpcdiff train DIR1 DIR2 ...`: the
task's K processes are then K groups, and each member's end is settled on its own.

Torch-free: the task's own process only starts, signals and waits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from hpcdiff.launch.child import child_env, start_child
from hpcdiff.storage.rundir import RunBusyError, RunDir
from hpcdiff.storage.runstate import RunState

POLL_SECONDS = 1.0
FORWARDED = (signal.SIGUSR2, signal.SIGTERM, signal.SIGUSR1)


class PackedRunsFailed(RuntimeError):
    """Some runs of a packed task failed or diverged (the others ran to their end)."""


def unfinished(run_dirs: list[str]) -> list[str]:
    """The runs a requeued task still has to train (done, failed and diverged ones stay so)."""
    return [d for d in run_dirs if not RunDir(Path(d)).state.final]


def run_packed(run_dirs: list[str], *, mps: bool = False, groups: list[list[str]] | None = None) -> dict[str, str]:
    """Train the runs at once, one process each (or one per fused group of ``groups``, which
    partition ``run_dirs``); returns run id -> final state. Raises PackedRunsFailed (after
    all have ended) when any failed or diverged; on SLURM's USR2 warning, requeues the task
    through submitit once every process has stopped."""
    from hpcdiff.launch.mps import mps_daemon
    from hpcdiff.training.signals import hand_on_to_submitit

    job_id = os.environ.get("SLURM_JOB_ID", str(os.getpid()))
    units = [[d] for d in run_dirs] if groups is None else [list(g) for g in groups]
    with mps_daemon(job_id) if mps else _no_mps() as extra:
        env = child_env(len(units), extra=extra)
        with _forwarding() as forward:
            procs = [_start(unit, env) for unit in units]
            forward.procs = procs
            _wait_all(procs, forward)
        stopped = forward.signum
    states = {
        RunDir(Path(d)).run_id: settle(RunDir(Path(d)), p.returncode, stopped, fused=len(unit) > 1)
        for unit, p in zip(units, procs)
        for d in unit
    }
    print(f"hpcdiff: packed runs ended: {states}", flush=True)
    if stopped == signal.SIGUSR2 and RunState.TIMEOUT in states.values():
        hand_on_to_submitit(signal.SIGUSR2)  # checkpoint() -> requeue, then exits
    # busy: another process trains it (and records how it ends)
    bad = {run_id: s for run_id, s in states.items() if s not in (RunState.DONE, RunState.TIMEOUT, RunState.BUSY)}
    if bad:
        raise PackedRunsFailed(_summary(run_dirs, bad))
    return {run_id: str(state) for run_id, state in states.items()}


@contextmanager
def _no_mps():
    yield {}


def _start(unit: list[str], env: dict) -> subprocess.Popen:
    proc = start_child(unit[0] if len(unit) == 1 else unit, env, preexec_fn=_ignore_stop_signals)
    what = f"run {Path(unit[0]).name}" if len(unit) == 1 else "fused group " + " ".join(Path(d).name for d in unit)
    print(f"hpcdiff: {what}: process {proc.pid}", flush=True)
    return proc


def _ignore_stop_signals() -> None:
    # In the child, before exec: a stop signal that comes before training has installed its
    # handler is ignored (and forwarded again) rather than killing the process unsaved.
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_IGN)


class _Forwarder:
    def __init__(self):
        self.signum: int | None = None
        self.procs: list[subprocess.Popen] = []

    def __call__(self, signum, frame) -> None:
        if signum == signal.SIGUSR2 or self.signum is None:  # USR2 (requeue) wins
            self.signum = signum
        self.forward()

    def forward(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                try:
                    os.kill(proc.pid, self.signum)
                except ProcessLookupError:
                    pass


@contextmanager
def _forwarding():
    """Forward the stop signals for the block; the previous handlers (submitit's) after it."""
    forward = _Forwarder()
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        yield forward
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _wait_all(procs: list[subprocess.Popen], forward: _Forwarder) -> None:
    while True:
        live = [p for p in procs if p.poll() is None]
        if not live:
            return
        if forward.signum is not None:
            forward.forward()
        try:
            live[0].wait(timeout=POLL_SECONDS)
        except subprocess.TimeoutExpired:
            pass


def settle(rd: RunDir, code: int, stopped: int | None, *, fused: bool = False) -> RunState:
    """A run's end state after its process exited with ``code``: what it recorded, or, when
    it could not record one (killed, crashed before training), what the task knows. A
    member of a fused group keeps the end state it recorded whatever its process's code."""
    state = rd.state
    if fused and state.final:
        return state
    if code == RunBusyError.exit_code:
        return RunState.BUSY
    if code == 0 or state.final:
        return state
    if stopped is not None:
        # Stopped before it could checkpoint: it resumes from its latest checkpoint.
        return _record(rd, state=RunState.TIMEOUT, error=None)
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    return _record(
        rd, state=RunState.FAILED, error=f"its process {how} without recording how the run ended", traceback=None
    )


def _record(rd: RunDir, **fields) -> RunState:
    try:
        rd.write_status(**fields)
    except OSError as err:
        print(f"hpcdiff: run {rd.run_id}: cannot write status.json ({err}): {fields}", file=sys.stderr, flush=True)
    return fields["state"]


def _summary(run_dirs: list[str], bad: dict[str, str]) -> str:
    lines = [f"{len(bad)} of the {len(run_dirs)} runs of this task did not finish:"]
    for d in run_dirs:
        rd = RunDir(Path(d))
        if rd.run_id in bad:
            error = " ".join(str(rd.read_status().get("error") or "").split())[:200]
            lines.append(f"  {rd.run_id}: {bad[rd.run_id]}" + (f" ({error})" if error else ""))
    return "\n".join(lines)
