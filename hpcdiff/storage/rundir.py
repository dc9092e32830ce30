"""The on-disk layout of sweeps and runs (each run's state machine: storage/runstate.py).

<output>/<sweep>/sweep.json            manifest: every run ever expanded from the sweep
<output>/<sweep>/sweep.toml            copy of the sweep file as last launched
<output>/<sweep>/<run_id>/config.toml  resolved config (rebuilds every object)
                         status.json   the run's state and progress (storage/runstate.py)
                         checkpoints/  atomic full-state checkpoints
                         archive.h5    metrics and samples
                         log.txt       training log
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from hpcdiff.config import saved
from hpcdiff.config.spec import RunSpec, SpecError
from hpcdiff.storage import runstate
from hpcdiff.storage.atomic import atomic_write_bytes
from hpcdiff.storage.runstate import RunState


class RunBusyError(RuntimeError):
    """Another process is training this run right now."""

    #: What `hpcdiff train` exits with then: a launcher tells "busy elsewhere" from a crash.
    exit_code = 3


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def archive(self) -> Path:
        return self.path / "archive.h5"

    @property
    def prior(self) -> Path:
        """The fitted level-T prior of sample_start = "prior" (science/priors.py)."""
        return self.path / "prior.pt"

    @property
    def log(self) -> Path:
        return self.path / "log.txt"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def load_spec(self) -> RunSpec:
        """The run's spec, older configs migrated (config/saved.py)."""
        return saved.read_spec(self.config_path)

    def read_status(self) -> dict:
        return runstate.read(self.status_path)

    def write_status(self, **fields) -> dict:
        """Change these fields of status.json (under its lock: storage/runstate.py)."""
        return runstate.update(self.status_path, **fields)

    @property
    def state(self) -> RunState:
        """The recorded state."""
        return runstate.parse(self.read_status().get("state"))

    def is_locked(self) -> bool:
        """True while a live process holds the training lock."""
        if not self.lock_path.exists():
            return False
        with open(self.lock_path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    def lock(self):
        """An exclusive lock held for the whole training process (released by the OS when
        the process dies, so a killed run never stays locked)."""
        f = open(self.lock_path, "a")
        # A status probe (is_locked) holds the lock for microseconds: retry briefly before
        # concluding that another trainer owns the run.
        deadline = time.monotonic() + 2.0
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    f.close()
                    raise RunBusyError(f"run {self.path} is being trained by another process") from None
                time.sleep(0.05)
        f.seek(0)
        f.truncate()
        f.write(f"{socket.gethostname()} {os.getpid()}\n")
        f.flush()
        return f

    def effective_state(self) -> RunState:
        """The recorded state, except a running run whose process is gone on this host reads
        interrupted (killed before it could say so)."""
        status = self.read_status()
        state = runstate.parse(status.get("state"))
        if state == RunState.RUNNING and status.get("host") == socket.gethostname() and not self.is_locked():
            return RunState.INTERRUPTED
        return state


def write_run_config(run_dir: RunDir, spec: RunSpec, *, run_id: str, sweep: str, axes: dict, label: str) -> None:
    """Create the run directory. An existing one must hold the same resolved config: its
    results are never overwritten."""
    run_dir.path.mkdir(parents=True, exist_ok=True)
    if run_dir.config_path.exists():
        existing = run_dir.load_spec()
        if existing.run_identity() != spec.run_identity():
            raise SpecError(
                f"{run_dir.config_path} holds a different config than run {run_id}; refusing to overwrite it"
            )
        if existing == spec:
            return
        # Same run, other settings outside its identity ([slurm], [eval], [log]): the new ones.
    atomic_write_bytes(run_dir.config_path, saved.render(spec, run_id=run_id, sweep=sweep, axes=axes, label=label))
    if not run_dir.status_path.exists():
        run_dir.write_status(state=RunState.PENDING, epoch=0, epochs=spec.train.epochs)


def read_run_meta(run_dir: RunDir) -> dict:
    return saved.read_header(run_dir.config_path)


def manifest_path(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / "sweep.json"


def read_manifest(sweep_dir: Path) -> dict:
    try:
        return json.loads(manifest_path(sweep_dir).read_text())
    except FileNotFoundError:
        return {}


def update_manifest(sweep_dir: Path, sweep, source_text: str) -> None:
    """Add this expansion's runs to the manifest; runs from earlier expansions stay listed."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(sweep_dir)
    runs = manifest.get("runs", {})
    for run in sweep.runs:
        runs[run.run_id] = {"axes": run.axes, "label": run.label}
    varying = list(dict.fromkeys(list(manifest.get("varying", [])) + list(sweep.varying)))
    manifest.update({"name": sweep.name, "source": sweep.source, "runs": runs, "varying": varying})
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    atomic_write_bytes(manifest_path(sweep_dir), data)
    src = source_text.encode()
    atomic_write_bytes(sweep_dir / "sweep.toml", src)


def sweep_run_dirs(sweep_dir: Path) -> list[RunDir]:
    """Every run of a sweep directory (from the manifest, plus any run directory on disk)."""
    sweep_dir = Path(sweep_dir)
    ids = list(read_manifest(sweep_dir).get("runs", {}))
    if sweep_dir.is_dir():
        for p in sorted(sweep_dir.iterdir()):
            if (p / "config.toml").is_file() and p.name not in ids:
                ids.append(p.name)
    return [RunDir(sweep_dir / i) for i in ids if (sweep_dir / i / "config.toml").is_file()]
