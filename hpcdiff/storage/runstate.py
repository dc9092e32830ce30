"""A run's state: the one owner of its names, its transitions and the states derived from
what other processes are doing.

Recorded in status.json by whoever runs the run (the trainer, the launcher that plans or
submits it, a packed task that saw its trainer die):

    pending -> running -> done | failed | timeout | diverged
    timeout | failed | interrupted-as-running -> running  (resumed from the last checkpoint)
    any ended state -> pending                 (a rerun: planned or submitted again)

Derived, never written: ``interrupted`` (recorded "running" but its process is gone),
``queued`` (waiting in the SLURM queue for its start or restart), ``busy`` (another process
holds its training lock: a launcher's view of a run it did not start).

Every change goes through :func:`update`, which holds an exclusive lock on the run's
``.status.lock`` around read, change and atomic write: two writers (a trainer and the
launcher adding its job id, a packed task's supervisor beside its trainers) never lose each
other's fields.
"""

from __future__ import annotations

import enum
import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path

from hpcdiff.storage.atomic import atomic_write_bytes


class RunState(str, enum.Enum):
    """Compares equal to its name in status.json (``RunState.DONE == "done"``)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    TIMEOUT = "timeout"
    DIVERGED = "diverged"
    # derived
    INTERRUPTED = "interrupted"
    QUEUED = "queued"
    BUSY = "busy"

    def __str__(self) -> str:
        return self.value

    @property
    def recorded(self) -> bool:
        return self in RECORDED

    @property
    def ended(self) -> bool:
        """No process is working on it (it may be resumed or rerun later)."""
        return self in ENDED

    @property
    def final(self) -> bool:
        """Ended by its trainer for good: a relaunch would not change it (done, failed, diverged)."""
        return self in FINAL


RECORDED = frozenset(
    {RunState.PENDING, RunState.RUNNING, RunState.DONE, RunState.FAILED, RunState.TIMEOUT, RunState.DIVERGED}
)
ENDED = frozenset({RunState.DONE, RunState.FAILED, RunState.TIMEOUT, RunState.INTERRUPTED, RunState.DIVERGED})
FINAL = frozenset({RunState.DONE, RunState.FAILED, RunState.DIVERGED})
#: Allowed changes of the recorded state (a state may always be recorded again, with new fields).
TRANSITIONS = {
    RunState.PENDING: {RunState.RUNNING, RunState.FAILED, RunState.TIMEOUT},
    RunState.RUNNING: {RunState.DONE, RunState.FAILED, RunState.TIMEOUT, RunState.DIVERGED, RunState.PENDING},
    RunState.TIMEOUT: {RunState.RUNNING, RunState.PENDING, RunState.FAILED},
    RunState.FAILED: {RunState.RUNNING, RunState.PENDING, RunState.TIMEOUT},
    RunState.DIVERGED: {RunState.RUNNING, RunState.PENDING},
    RunState.DONE: {RunState.PENDING},
}


class TransitionError(ValueError):
    """A change of state that the state machine does not allow (a bug, not bad input)."""


def parse(value) -> RunState:
    """A recorded state; an unknown one (a hand-edited file) reads as failed, loudly visible."""
    try:
        return RunState(value)
    except ValueError:
        return RunState.FAILED


def read(path: Path) -> dict:
    """status.json's fields ({"state": "pending"} before it exists or while unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"state": RunState.PENDING.value}


@contextmanager
def _locked(path: Path):
    # A separate lock file: status.json itself is replaced by each atomic write.
    with open(Path(path).with_name(".status.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def update(path: Path, **fields) -> dict:
    """Change the given fields of status.json under its lock and return the new status.
    A ``state`` is checked against :data:`TRANSITIONS` (``TransitionError``)."""
    with _locked(path):
        status = read(path)
        if "state" in fields and fields["state"] is not None:
            new = RunState(fields["state"])
            if not new.recorded:
                raise TransitionError(f"{new.value!r} is derived, never recorded")
            old = parse(status.get("state"))
            if new != old and new not in TRANSITIONS[old]:
                raise TransitionError(f"{Path(path).parent.name}: {old.value} -> {new.value} is not a run-state change")
            fields["state"] = new.value
        status.update(fields)
        status["updated"] = time.time()
        atomic_write_bytes(path, json.dumps(status, indent=2, sort_keys=True).encode())
        return status
