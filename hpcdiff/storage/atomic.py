"""The atomic writer every run file goes through, and the error a failed write becomes.

A file is written to a temporary name beside its target, fsynced, renamed over the target
and the directory fsynced: a kill or a full disk at any moment leaves either the old file or
the new one, never a torn one. Stdlib only (status and config writers must not need torch).
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path

# A full disk and an exceeded quota are the common failures on shared cluster storage.
_FULL = {errno.ENOSPC, errno.EDQUOT}


class StorageError(OSError):
    """A run file could not be written. ``str(err)`` names the path, the cause and, for a full
    disk or quota, what to do; the previous version of the file is intact."""

    def __init__(self, path: Path, cause: OSError):
        self.path = Path(path)
        self.cause = cause
        reason = cause.strerror or str(cause)
        message = f"cannot write {self.path}: {reason}"
        if cause.errno in _FULL:
            message += (
                " (the file system is full or your quota is exceeded: free space, then rerun; "
                "the run resumes from its last complete checkpoint)"
            )
        super().__init__(cause.errno, message)

    def __str__(self) -> str:
        return self.strerror

    @property
    def disk_full(self) -> bool:
        return self.cause.errno in _FULL


@contextmanager
def storage_errors(path: Path):
    """Any OSError in the block becomes a StorageError naming ``path`` (one already raised
    for a more precise path passes through)."""
    try:
        yield
    except StorageError:
        raise
    except OSError as err:
        raise StorageError(path, err) from err


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path):
    """A temporary path beside ``path`` for code that must write a file by name (a download,
    a library's save): on success it is fsynced and renamed over ``path``; on any error it
    is removed. Errors are StorageErrors."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with storage_errors(path):
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        fsync_dir(path.parent)


def atomic_write(path: Path, write) -> None:
    """``write(binary file object)`` into a temporary file, then as ``atomic_path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))
