"""The run-state machine (storage/runstate.py): one owner of the state names, the allowed
changes and the derived states, and status.json updates that never lose another writer's."""

import json
import multiprocessing as mp
import re
from pathlib import Path

import pytest

from hpcdiff.storage import runstate
from hpcdiff.storage.atomic import atomic_write_bytes
from hpcdiff.storage.rundir import RunDir
from hpcdiff.storage.runstate import RunState, TransitionError

WRITERS, UPDATES = 4, 150


def _unlocked_update(path: Path, **fields) -> None:
    """status.json updated the way it was before runstate.update: read, change, atomic write."""
    status = runstate.read(path)
    status.update(fields)
    atomic_write_bytes(path, json.dumps(status).encode())


def _writer(path: str, i: int, locked: bool) -> None:
    for k in range(UPDATES):
        (runstate.update if locked else _unlocked_update)(Path(path), **{f"writer_{i}": k})


def _lost_writers(tmp_path: Path, locked: bool) -> int:
    """Writers whose last update is missing after WRITERS processes each wrote their own field."""
    path = tmp_path / f"locked_{locked}" / "status.json"
    path.parent.mkdir(exist_ok=True)
    path.unlink(missing_ok=True)
    procs = [mp.get_context("fork").Process(target=_writer, args=(str(path), i, locked)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    status = runstate.read(path)
    return sum(status.get(f"writer_{i}") != UPDATES - 1 for i in range(WRITERS))


def test_concurrent_writers_of_one_status_file_lose_nothing(tmp_path):
    """A trainer writing its progress while a launcher adds the job id (here: four real
    processes, each updating its own field). The read-change-write of before loses updates
    (the control, in at least one of three tries); under runstate.update none is lost."""
    assert any(_lost_writers(tmp_path, locked=False) for _ in range(3))
    for _ in range(3):
        assert _lost_writers(tmp_path, locked=True) == 0


def test_states_compare_with_their_recorded_names_and_say_what_they_are():
    assert RunState.DONE == "done" and f"{RunState.TIMEOUT}" == "timeout" and str(RunState.BUSY) == "busy"
    assert json.dumps({"state": RunState.DONE.value}) == '{"state": "done"}'
    assert {s for s in RunState if s.ended} == {
        RunState.DONE,
        RunState.FAILED,
        RunState.TIMEOUT,
        RunState.INTERRUPTED,
        RunState.DIVERGED,
    }
    assert {s for s in RunState if s.final} == {RunState.DONE, RunState.FAILED, RunState.DIVERGED}
    assert not RunState.QUEUED.recorded and not RunState.INTERRUPTED.recorded and not RunState.BUSY.recorded
    assert runstate.parse("finished-by-hand") == RunState.FAILED


def test_only_the_state_machines_changes_are_recorded(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    assert rd.state == RunState.PENDING  # before status.json exists
    for state in (RunState.RUNNING, RunState.RUNNING, RunState.TIMEOUT, RunState.RUNNING, RunState.DONE):
        rd.write_status(state=state, epoch=1)
    assert json.loads(rd.status_path.read_text())["state"] == "done"
    with pytest.raises(TransitionError, match="done -> failed"):
        rd.write_status(state=RunState.FAILED)  # a finished run never turns failed afterwards
    with pytest.raises(TransitionError, match="derived"):
        rd.write_status(state=RunState.INTERRUPTED)
    with pytest.raises(ValueError):
        rd.write_status(state="finished")
    assert rd.state == RunState.DONE and rd.read_status()["epoch"] == 1
    rd.write_status(state=RunState.PENDING)  # --force: planned again
    assert rd.state == RunState.PENDING


def test_a_running_run_without_its_process_reads_interrupted(tmp_path):
    import socket

    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    rd.write_status(state=RunState.RUNNING, host=socket.gethostname())
    assert rd.effective_state() == RunState.INTERRUPTED and rd.state == RunState.RUNNING
    lock = rd.lock()
    try:
        assert rd.effective_state() == RunState.RUNNING
    finally:
        lock.close()


def test_no_state_name_is_spelled_outside_the_state_machine():
    """Every module names a run state through RunState (docstrings and comments aside)."""
    import ast

    package = Path(runstate.__file__).resolve().parent.parent
    names = {s.value for s in RunState}
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "runstate.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and node.value in names
            ):
                found.append(f"{path.relative_to(package)}:{node.lineno}: {node.value!r}")
    assert not found, found
    assert re.search(r"\bclass RunState\b", Path(runstate.__file__).read_text())
