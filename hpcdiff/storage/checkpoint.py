"""Atomic full-state checkpoints and discovery of the latest complete one.

A checkpoint is written through ``atomic.atomic_write``, so a kill or a full disk at any
moment leaves either the old set or the new one, never a torn file. Files are loaded with
``weights_only=True``: no pickled code is executed.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import torch

from hpcdiff.storage.atomic import atomic_write, storage_errors

log = logging.getLogger(__name__)

PATTERN = re.compile(r"^epoch_(\d{5})\.pt$")


def path_for(directory: Path, epoch: int) -> Path:
    return Path(directory) / f"epoch_{epoch:05d}.pt"


def save_object(obj, path: Path) -> None:
    """torch.save through the atomic writer. Serialised in memory first: torch.save straight
    into a file that hits a full disk ends in an unrelated RuntimeError from its zip writer
    instead of the OSError."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def save(state: dict, directory: Path, epoch: int, keep: int) -> Path:
    directory = Path(directory)
    target = path_for(directory, epoch)
    with storage_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
    save_object(state, target)
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
    hand) is skipped in favour of the one before it.

    Loaded to the CPU whatever device wrote it (``map_location``): a GPU run's checkpoint
    resumes on a machine without a GPU, and ``load_state_dict`` of the model, the optimiser
    (torch moves its state to each parameter's device) and the EMA copies every tensor to
    the device of what it fills, so a CPU run's checkpoint resumes on a GPU as well."""
    for epoch in reversed(list_epochs(directory)):
        try:
            state = torch.load(path_for(directory, epoch), map_location=map_location, weights_only=True)
        except Exception as err:
            # Said, not silent: a checkpoint that no longer loads makes the run start over.
            log.warning(
                "checkpoint %s does not load (%s: %s); trying the one before it",
                path_for(directory, epoch),
                type(err).__name__,
                err,
            )
            continue
        return epoch, state
    return None
