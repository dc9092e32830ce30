"""Start and stop the real one-node SLURM cluster of ``slurm/dev-cluster.sh`` for tests.

Stdlib only. In ``tests/conftest.py`` (pytest puts ``tests/`` on ``sys.path`` when it
has no ``__init__.py``; with one, import ``tests.slurm_cluster`` instead)::

    import pytest
    from slurm_cluster import slurm_cluster_fixture

    slurm_cluster = pytest.fixture(scope="session")(slurm_cluster_fixture)

A test that asks for ``slurm_cluster`` gets the environment clients need (``SLURM_CONF``,
``HPCDIFF_SLURM_STATE``) as a dict; the cluster starts once per session, in a fresh state
directory (``/tmp/hpcdiff-slurm-*``: pytest's own tmp dirs are mode 0700, which munged,
running as user "munge", cannot enter), and is stopped and removed at the end. It is
skipped, with the reason, only where this machine cannot run the cluster (see
``cluster_unavailable_reason``); any other failure to start is an error. The fixture does
not touch ``os.environ``: tests put the values in place, e.g. ``for k, v in
slurm_cluster.items(): monkeypatch.setenv(k, v)``, before calling sbatch or submitit (which
run ``sbatch``/``sacct`` with the process environment).

Set ``HPCDIFF_SKIP_SLURM=1`` to skip those tests on purpose.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "slurm" / "dev-cluster.sh"

#: dev-cluster.sh exits with this code when the machine cannot run the cluster
#: (not root, packages cannot be installed).
EXIT_UNAVAILABLE = 3

#: What dev-cluster.sh needs on PATH; it installs the Debian packages when one is missing.
REQUIRED_BINARIES = (
    "slurmctld",
    "slurmd",
    "slurmdbd",
    "sbatch",
    "sinfo",
    "squeue",
    "scontrol",
    "scancel",
    "sacct",
    "sacctmgr",
    "munged",
    "munge",
    "unmunge",
    "mariadbd",
    "mariadb-install-db",
    "mariadb-admin",
    "runuser",
    "flock",
)

# Installing the packages on a fresh machine takes ~15-30 s, starting ~3 s.
START_TIMEOUT_S = 900
STOP_TIMEOUT_S = 180

_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])

# A failed install is not retried within one process.
_install_failure: str | None = None


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the dev cluster; the message says why."""


def _missing_binaries() -> list[str]:
    return [b for b in REQUIRED_BINARIES if shutil.which(b, path=_SEARCH_PATH) is None]


def cluster_unavailable_reason() -> str | None:
    """Why this machine cannot run the dev cluster, or None if it can (or may, after
    installing the packages: ``start_cluster`` then raises ``ClusterUnavailable`` if the
    install fails)."""
    if os.environ.get("HPCDIFF_SKIP_SLURM", "").strip() not in ("", "0"):
        return "HPCDIFF_SKIP_SLURM is set"
    if not sys.platform.startswith("linux"):
        return f"the SLURM dev cluster needs Linux (this is {sys.platform})"
    if not SCRIPT.is_file():
        return f"{SCRIPT} is missing"
    if shutil.which("bash") is None:
        return "bash is not installed"
    if _install_failure is not None:
        return _install_failure
    missing = _missing_binaries()
    if os.geteuid() != 0:
        if missing:
            return f"the SLURM dev cluster needs root, and its packages are missing ({', '.join(missing)})"
        return "the SLURM dev cluster needs root (SlurmUser=root, munged via runuser)"
    if missing and shutil.which("apt-get", path=_SEARCH_PATH) is None:
        return f"SLURM binaries missing ({', '.join(missing)}) and no apt-get to install them"
    return None


def _run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cluster_env(state_dir: Path | str) -> dict[str, str]:
    """The environment clients of the cluster in ``state_dir`` need (``SLURM_CONF`` etc.)."""
    proc = _run_script("env", str(state_dir), timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"dev-cluster.sh env failed:\n{proc.stderr}")
    env: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            env[key] = value
    if "SLURM_CONF" not in env:
        raise RuntimeError(f"dev-cluster.sh env printed no SLURM_CONF:\n{proc.stdout}")
    return env


def start_cluster(state_dir: Path | str, timeout: float = START_TIMEOUT_S) -> dict[str, str]:
    """Start (installing packages if needed) the cluster with all its state under
    ``state_dir``; return once jobs can run and sacct answers. Returns the client
    environment (see ``cluster_env``). Raises ``ClusterUnavailable`` where the machine
    cannot run it, ``RuntimeError`` (with the daemon's log tail) on any other failure."""
    global _install_failure
    state_dir = Path(state_dir).resolve()
    proc = _run_script("start", str(state_dir), timeout=timeout)
    if proc.returncode == EXIT_UNAVAILABLE:
        _install_failure = f"SLURM dev cluster unavailable: {proc.stderr.strip()}"
        raise ClusterUnavailable(_install_failure)
    if proc.returncode != 0:
        raise RuntimeError(
            f"dev-cluster.sh start {state_dir} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return cluster_env(state_dir)


def stop_cluster(state_dir: Path | str, purge: bool = False, keep_jobs: bool = False) -> None:
    """Stop the cluster's daemons (cancelling its jobs first unless ``keep_jobs``);
    remove ``state_dir`` too if ``purge``."""
    args = ["stop"]
    if purge:
        args.append("--purge")
    if keep_jobs:
        args.append("--keep-jobs")
    proc = _run_script(*args, str(Path(state_dir).resolve()), timeout=STOP_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(
            f"dev-cluster.sh stop {state_dir} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )


def _searchable_by_others(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def _fresh_state_dir(tmp_path_factory=None) -> Path:
    """A new, empty state directory that munged (user "munge") can reach. pytest's own
    tmp dirs are mode 0700, so unless they are searchable, use a mkdtemp dir in /tmp."""
    if tmp_path_factory is not None:
        base = Path(tmp_path_factory.getbasetemp()).resolve()
        if _searchable_by_others(base):
            return tmp_path_factory.mktemp("slurm")
    parent = Path(tempfile.gettempdir())
    if not _searchable_by_others(parent):
        parent = Path("/tmp")
    path = Path(tempfile.mkdtemp(prefix="hpcdiff-slurm-", dir=parent))
    path.chmod(0o755)
    return path


def slurm_cluster_fixture(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Body of a session-scoped pytest fixture (see the module docstring): starts the
    cluster once in a fresh directory, yields its client environment, stops it at the
    end of the session. Skips only when the machine cannot run the cluster."""
    import pytest  # only the test suite needs it

    reason = cluster_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    state_dir = _fresh_state_dir(tmp_path_factory)
    try:
        env = start_cluster(state_dir)
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    except BaseException:
        try:  # do not leave half a cluster running
            stop_cluster(state_dir)
        except Exception:  # noqa: BLE001 - the start failure is the error to report
            pass
        raise
    try:
        yield env
    finally:
        stop_cluster(state_dir, purge=True)
