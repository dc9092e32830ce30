"""The HDF5 archive of a run. The only module that touches h5py.

Layout of ``archive.h5``:
    attrs:   config (resolved TOML), run_id, hpcdiff_version, torch_version, created, ...
    metrics/<name>   float64 [n_epochs]; metrics/epoch int64 [n_epochs]
    samples/epoch_NNNN  uint8 [n, H, W] (attrs: epoch, start = where sampling started)
    sample_starts/epoch_NNNN  uint8 [n, H, W]: the x_T each sample started from
    evaluations/<key>   one `hpcdiff evaluate` of a checkpoint (attrs: epoch, classifier,
                        settings, created, ...; its metrics as the attrs of <key>/metrics)

HDF5 files can be corrupted by a kill in the middle of a write, so every update goes to a
copy that is fsynced and renamed over the archive: a reader (or a resumed run) always sees
the last complete epoch. The archives are small (metrics plus a few uint8 grids per epoch),
so the copy costs milliseconds.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from hpcdiff.storage.atomic import atomic_path


@contextmanager
def _update(path: Path):
    """Copy-on-write: the archive is copied to the atomic writer's temporary file, changed
    there and renamed over it. A full disk fails the copy, HDF5's writes or the flush: each
    leaves the archive as it was and surfaces as a StorageError naming it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.exists():
            shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            yield f
            f.flush()


def create(path: Path, attrs: dict) -> None:
    """Create the archive if it does not exist; an existing archive keeps its contents."""
    if Path(path).exists():
        return
    with _update(path) as f:
        for k, v in attrs.items():
            f.attrs[k] = v
        f.require_group("metrics")
        f.require_group("samples")


def read_attrs(path: Path) -> dict:
    """The archive's attributes only (cheap: no series, no images)."""
    with h5py.File(path, "r") as f:
        return {k: _plain(v) for k, v in f.attrs.items()}


def set_attrs(path: Path, attrs: dict) -> None:
    with _update(path) as f:
        for k, v in attrs.items():
            f.attrs[k] = v


def append_epoch(path: Path, epoch: int, metrics: dict[str, float], samples: dict | None = None,
                 attrs: dict | None = None) -> None:
    """Record one epoch. Rows at or after ``epoch`` (left by an epoch that was trained but
    never checkpointed before a crash) are dropped first, so a resumed run never duplicates."""
    with _update(path) as f:
        _truncate(f, epoch - 1)
        group = f.require_group("metrics")
        n = group["epoch"].shape[0] if "epoch" in group else 0
        row = {"epoch": epoch, **metrics}
        for name, value in row.items():
            if name not in group:
                dtype = np.int64 if name == "epoch" else np.float64
                ds = group.create_dataset(name, shape=(n,), maxshape=(None,), dtype=dtype,
                                          fillvalue=np.nan if dtype == np.float64 else 0)
                if n:
                    ds[:] = np.nan if dtype == np.float64 else 0
            ds = group[name]
            ds.resize((n + 1,))
            ds[n] = value
        for name in group:
            if name not in row:  # a metric not computed this epoch
                ds = group[name]
                ds.resize((n + 1,))
                ds[n] = np.nan
        if samples is not None:
            sgroup = f.require_group("samples")
            key = f"epoch_{epoch:04d}"
            if key in sgroup:
                del sgroup[key]
            ds = sgroup.create_dataset(key, data=np.asarray(samples["images"], dtype=np.uint8),
                                       compression="gzip")
            ds.attrs["epoch"] = epoch
            for k, v in samples.get("attrs", {}).items():
                ds.attrs[k] = v
            if samples.get("starts") is not None:
                # What sampling started from (noise or degraded test images), for the figures.
                starts = f.require_group("sample_starts")
                if key in starts:
                    del starts[key]
                sds = starts.create_dataset(key, data=np.asarray(samples["starts"], dtype=np.uint8),
                                            compression="gzip")
                sds.attrs["epoch"] = epoch
        for k, v in (attrs or {}).items():
            f.attrs[k] = v


def truncate_after(path: Path, epoch: int) -> None:
    """Drop every row and sample grid after ``epoch`` (used when resuming from a checkpoint)."""
    if not Path(path).exists():
        return
    with _update(path) as f:
        _truncate(f, epoch)


def _truncate(f: h5py.File, epoch: int) -> None:
    group = f.require_group("metrics")
    if "epoch" in group:
        epochs = group["epoch"][:]
        keep = int(np.sum(epochs <= epoch))
        if keep < len(epochs):
            for name in group:
                group[name].resize((keep,))
    for group_name in ("samples", "sample_starts"):
        sgroup = f.require_group(group_name)
        for key in list(sgroup):
            if int(sgroup[key].attrs.get("epoch", 0)) > epoch:
                del sgroup[key]


def add_evaluation(path: Path, key: str, attrs: dict, metrics: dict[str, float]) -> None:
    """Record a later evaluation of one checkpoint beside the training-time rows (which stay
    as they were). The same key again replaces it: re-evaluating with the same settings
    never adds a duplicate."""
    with _update(path) as f:
        group = f.require_group("evaluations")
        if key in group:
            del group[key]
        entry = group.create_group(key)
        for k, v in attrs.items():
            entry.attrs[k] = v
        values = entry.create_group("metrics")
        for k, v in metrics.items():
            values.attrs[k] = float(v)


def read(path: Path) -> dict:
    """Everything in the archive as numpy arrays and plain attributes (``evaluations``: the
    `hpcdiff evaluate` records by key, each ``{"attrs": ..., "metrics": ...}``)."""
    with h5py.File(path, "r") as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        metrics = {k: f["metrics"][k][:] for k in f.get("metrics", {})}
        samples = {}
        for key in f.get("samples", {}):
            ds = f["samples"][key]
            entry = {"images": ds[:], "attrs": {k: _plain(v) for k, v in ds.attrs.items()}}
            if key in f.get("sample_starts", {}):
                entry["starts"] = f["sample_starts"][key][:]
            samples[int(ds.attrs["epoch"])] = entry
        evaluations = {key: {"attrs": {k: _plain(v) for k, v in group.attrs.items()},
                             "metrics": {k: float(v) for k, v in group["metrics"].attrs.items()}}
                       for key, group in f.get("evaluations", {}).items()}
    return {"attrs": attrs, "metrics": metrics, "samples": dict(sorted(samples.items())),
            "evaluations": evaluations}


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v
