"""Atomic full-state checkpoints and discovery of the latest complete one.

A checkpoint is written to a temporary file, fsynced, then renamed into place (and the
directory fsynced), so a kill at any moment leaves either the old set or the new one, never
a torn file. Files are loaded with ``weights_only=True``: no pickled code is executed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

PATTERN = re.compile(r"^epoch_(\d{5})\.pt$")


def path_for(directory: Path, epoch: int) -> Path:
    return Path(directory) / f"epoch_{epoch:05d}.pt"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write) -> None:
    """``write(file_object)`` into ``path.tmp``, fsync, rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def save(state: dict, directory: Path, epoch: int, keep: int) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = path_for(directory, epoch)
    atomic_write_bytes(target, lambda f: torch.save(state, f))
    for old in list_epochs(directory)[:-keep]:
        path_for(directory, old).unlink(missing_ok=True)
    return target


def list_epochs(directory: Path) -> list[int]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    epochs = [int(m.group(1)) for p in directory.iterdir() if (m := PATTERN.match(p.name))]
    return sorted(epochs)


def load_latest(directory: Path, map_location="cpu") -> tuple[int, dict] | None:
    """The newest checkpoint that loads; an unreadable one (a disk error, a file copied in by
    hand) is skipped in favour of the one before it."""
    for epoch in reversed(list_epochs(directory)):
        try:
            state = torch.load(path_for(directory, epoch), map_location=map_location, weights_only=True)
        except Exception:
            continue
        return epoch, state
    return None
