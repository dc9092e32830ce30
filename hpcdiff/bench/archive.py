"""What recording one epoch costs as a run grows: time and bytes written at chosen epochs of a
synthetic run (a row of metrics and a 25-image grid with its starts per epoch).

Baseline, measured in the same process: the archive as hpcdiff wrote it before the epoch
files (every epoch a copy of the whole archive, changed and renamed over it). Bytes written
are the process's ``write_bytes`` from /proc (what reached the file system), time is wall
time including fsyncs.

Library function only (CLI: `hpcdiff bench archive`): ``benchmark_archive(...) -> list[dict]``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from hpcdiff.config import catalog
from hpcdiff.storage import archive
from hpcdiff.storage.atomic import atomic_path

# What a run with the default metrics writes each epoch.
METRICS = (*catalog.default_series(), "epoch_seconds", "elapsed_seconds")


def _written_bytes() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _epoch(epoch: int, rng: np.random.Generator) -> tuple[dict, dict]:
    metrics = {name: float(rng.random()) for name in METRICS}
    images = rng.integers(0, 256, size=(25, 28, 28), dtype=np.uint8)
    images[:, :4] = 0  # digits have empty borders: gzip has something to do, as with real grids
    return metrics, {
        "images": images,
        "starts": rng.integers(0, 256, size=(25, 28, 28), dtype=np.uint8),
        "attrs": {"start": "noise"},
    }


def _copy_on_write_append(path: Path, epoch: int, metrics: dict, samples: dict) -> None:
    """The baseline: the whole archive copied, the epoch appended, the copy renamed over it."""
    import h5py

    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            archive._append_row(f, epoch, metrics, samples, {"best_epoch": epoch})
            f.flush()


def benchmark_archive(at=(1, 100, 500), *, directory: str | None = None, seed: int = 0) -> list[dict]:
    """One row per (method, epoch in ``at``): ms and kB written for that epoch."""
    rows = []
    last = max(at)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for method in ("copy-on-write (before)", "epoch files (now)"):
            path = Path(tmp) / method.split()[0] / "archive.h5"
            path.parent.mkdir()
            archive.create(path, {"run_id": "bench", "config": "x = 1\n"})
            rng = np.random.default_rng(seed)
            for epoch in range(1, last + 1):
                metrics, samples = _epoch(epoch, rng)
                before, tic = _written_bytes(), time.perf_counter()
                if method.startswith("copy"):
                    _copy_on_write_append(path, epoch, metrics, samples)
                else:
                    archive.append_epoch(path, epoch, metrics, samples, attrs={"best_epoch": epoch})
                seconds = time.perf_counter() - tic
                after = _written_bytes()
                if epoch in at:
                    rows.append(
                        {
                            "method": method,
                            "epoch": epoch,
                            "ms": seconds * 1e3,
                            "kB written": (after - before) / 1e3 if before is not None else float("nan"),
                        }
                    )
            tic = time.perf_counter()
            archive.consolidate(path)
            data = archive.read(path)
            assert len(data["metrics"]["epoch"]) == last and len(data["samples"]) == last
            rows.append(
                {
                    "method": method,
                    "epoch": "fold + read all",
                    "ms": (time.perf_counter() - tic) * 1e3,
                    "kB written": float("nan"),
                    "archive kB": path.stat().st_size / 1e3,
                }
            )
    return rows
