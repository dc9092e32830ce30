"""The HDF5 archive of a run. The only module that touches h5py.

Layout of ``archive.h5``:
    attrs:   config (resolved TOML), run_id, hpcdiff_version, torch_version, created, ...
    metrics/<name>   float64 [n_epochs]; metrics/epoch int64 [n_epochs]
    samples/epoch_NNNN  uint8 [n, H, W] (attrs: epoch, start = where sampling started)
    sample_starts/epoch_NNNN  uint8 [n, H, W]: the x_T each sample started from
    evaluations/<key>   one `hpcdiff evaluate` of a checkpoint (attrs: epoch, classifier,
                        settings, created, ...; its metrics as the attrs of <key>/metrics)

HDF5 files can be corrupted by a kill in the middle of a write, so nothing is changed in
place. While a run trains, each epoch's row, sample grid and attribute changes go to a small
file of their own, ``archive.h5.epochs/epoch_NNNNN.h5``, written atomically (temporary file,
fsync, rename): an epoch costs the same at epoch 500 as at epoch 1. When a training process
ends (done, stopped, failed) or starts again, :func:`consolidate` folds those files into
``archive.h5`` through a copy that is fsynced and renamed over it, then deletes them; a kill
in between leaves files that the next read or consolidation applies again with the same
result. :func:`read` merges both, so a reader (``load_run``, ``analyze``, a resumed run)
always sees the last complete epoch; a notebook opening ``archive.h5`` with h5py itself sees
the epochs up to the training process's last start, and all of them once it has ended.
"""

from __future__ import annotations

import re
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
    """The archive's attributes only (no series, no images), with the epoch files' changes."""
    with h5py.File(path, "r") as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
    for _, seg in _segments(path):
        with h5py.File(seg, "r") as f:
            attrs.update({k: _plain(v) for k, v in f["attrs"].attrs.items()})
    return attrs


def set_attrs(path: Path, attrs: dict) -> None:
    """Change archive attributes (after folding in the epoch files, whose changes are older)."""
    consolidate(path)
    with _update(path) as f:
        for k, v in attrs.items():
            f.attrs[k] = v


def epochs_dir(path: Path) -> Path:
    """Where a training process writes its epochs until they are folded into the archive."""
    path = Path(path)
    return path.with_name(path.name + ".epochs")


_SEGMENT = re.compile(r"^epoch_(\d{5})\.h5$")


def _segments(path: Path) -> list[tuple[int, Path]]:
    directory = epochs_dir(path)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _SEGMENT.match(p.name))]
    return sorted(found)


def append_epoch(
    path: Path, epoch: int, metrics: dict[str, float], samples: dict | None = None, attrs: dict | None = None
) -> None:
    """Record one epoch in a file of its own (cost independent of the archive's size). Rows
    at or after ``epoch`` (left by an epoch that was trained but never checkpointed before a
    crash) are dropped first, so a resumed run never duplicates."""
    path = Path(path)
    for e, seg in _segments(path):
        if e >= epoch:
            seg.unlink()
    if _last_epoch(path) >= epoch:  # rare: rows folded in by an earlier process
        truncate_after(path, epoch - 1)
    directory = epochs_dir(path)
    directory.mkdir(exist_ok=True)
    with atomic_path(directory / f"epoch_{epoch:05d}.h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["epoch"] = epoch
            row = f.create_group("metrics")
            for k, v in metrics.items():
                row.attrs[k] = float(v)
            changed = f.create_group("attrs")
            for k, v in (attrs or {}).items():
                changed.attrs[k] = v
            if samples is not None:
                ds = f.create_dataset("samples", data=np.asarray(samples["images"], dtype=np.uint8), compression="gzip")
                for k, v in samples.get("attrs", {}).items():
                    ds.attrs[k] = v
                if samples.get("starts") is not None:
                    f.create_dataset(
                        "sample_starts", data=np.asarray(samples["starts"], dtype=np.uint8), compression="gzip"
                    )
            f.flush()


def _read_segment(seg: Path) -> tuple[int, dict, dict | None, dict]:
    """(epoch, metrics, samples entry or None, attribute changes) of one epoch file."""
    with h5py.File(seg, "r") as f:
        epoch = int(f.attrs["epoch"])
        metrics = {k: float(v) for k, v in f["metrics"].attrs.items()}
        changed = {k: _plain(v) for k, v in f["attrs"].attrs.items()}
        samples = None
        if "samples" in f:
            samples = {"images": f["samples"][:], "attrs": {k: _plain(v) for k, v in f["samples"].attrs.items()}}
            if "sample_starts" in f:
                samples["starts"] = f["sample_starts"][:]
    return epoch, metrics, samples, changed


def consolidate(path: Path) -> None:
    """Fold the epoch files into ``archive.h5`` (written once, whole, atomically: the merged
    contents, so the cost is one pass over the archive), then delete them."""
    path = Path(path)
    segments = _segments(path)
    if not segments:
        return
    data = read(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_all(f, data)
            f.flush()
    for _, seg in segments:
        seg.unlink(missing_ok=True)
    try:
        epochs_dir(path).rmdir()
    except OSError:
        pass  # a file that is not ours, or a writer that already started again


def _write_all(f: h5py.File, data: dict) -> None:
    """An archive holding ``data`` (what :func:`read` returns)."""
    for k, v in data["attrs"].items():
        f.attrs[k] = v
    group = f.create_group("metrics")
    for name, values in data["metrics"].items():
        values = np.asarray(values, dtype=np.int64 if name == "epoch" else np.float64)
        group.create_dataset(name, data=values, maxshape=(None,), chunks=True)
    grids, starts = f.create_group("samples"), f.require_group("sample_starts")
    for epoch, entry in data["samples"].items():
        key = f"epoch_{epoch:04d}"
        ds = grids.create_dataset(key, data=np.asarray(entry["images"], dtype=np.uint8), compression="gzip")
        for k, v in entry["attrs"].items():
            ds.attrs[k] = v
        ds.attrs["epoch"] = epoch
        if entry.get("starts") is not None:
            sds = starts.create_dataset(key, data=np.asarray(entry["starts"], dtype=np.uint8), compression="gzip")
            sds.attrs["epoch"] = epoch
    if data["evaluations"]:
        evaluations = f.create_group("evaluations")
        for key, record in data["evaluations"].items():
            entry = evaluations.create_group(key)
            for k, v in record["attrs"].items():
                entry.attrs[k] = v
            values = entry.create_group("metrics")
            for k, v in record["metrics"].items():
                values.attrs[k] = v


def _last_epoch(path: Path) -> int:
    if not Path(path).exists():
        return 0
    with h5py.File(path, "r") as f:
        epochs = f["metrics"]["epoch"] if "metrics" in f and "epoch" in f["metrics"] else None
        return int(epochs[-1]) if epochs is not None and epochs.shape[0] else 0


def _append_row(f: h5py.File, epoch: int, metrics: dict[str, float], samples: dict | None, attrs: dict) -> None:
    group = f.require_group("metrics")
    n = group["epoch"].shape[0] if "epoch" in group else 0
    row = {"epoch": epoch, **metrics}
    for name, value in row.items():
        if name not in group:
            dtype = np.int64 if name == "epoch" else np.float64
            ds = group.create_dataset(
                name, shape=(n,), maxshape=(None,), dtype=dtype, fillvalue=np.nan if dtype == np.float64 else 0
            )
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
        ds = sgroup.create_dataset(key, data=np.asarray(samples["images"], dtype=np.uint8), compression="gzip")
        ds.attrs["epoch"] = epoch
        for k, v in samples.get("attrs", {}).items():
            ds.attrs[k] = v
        if samples.get("starts") is not None:
            # What sampling started from (noise or degraded test images), for the figures.
            starts = f.require_group("sample_starts")
            if key in starts:
                del starts[key]
            sds = starts.create_dataset(key, data=np.asarray(samples["starts"], dtype=np.uint8), compression="gzip")
            sds.attrs["epoch"] = epoch
    for k, v in attrs.items():
        f.attrs[k] = v


def truncate_after(path: Path, epoch: int) -> None:
    """Drop every row and sample grid after ``epoch`` (used when resuming from a checkpoint)."""
    for e, seg in _segments(path):
        if e > epoch:
            seg.unlink()
    if not Path(path).exists() or _last_epoch(path) <= epoch and not _grids_after(path, epoch):
        return
    with _update(path) as f:
        _truncate(f, epoch)


def _grids_after(path: Path, epoch: int) -> bool:
    with h5py.File(path, "r") as f:
        return any(
            int(ds.attrs.get("epoch", 0)) > epoch
            for name in ("samples", "sample_starts")
            for ds in f.get(name, {}).values()
        )


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
        evaluations = {
            key: {
                "attrs": {k: _plain(v) for k, v in group.attrs.items()},
                "metrics": {k: float(v) for k, v in group["metrics"].attrs.items()},
            }
            for key, group in f.get("evaluations", {}).items()
        }
    for _, seg in _segments(path):
        epoch, row, entry, changed = _read_segment(seg)
        metrics = _merge_row(metrics, epoch, row)
        samples = {e: v for e, v in samples.items() if e < epoch}
        if entry is not None:
            entry["attrs"] = {"epoch": epoch, **entry["attrs"]}
            samples[epoch] = entry
        attrs.update(changed)
    return {"attrs": attrs, "metrics": metrics, "samples": dict(sorted(samples.items())), "evaluations": evaluations}


def _merge_row(metrics: dict, epoch: int, row: dict) -> dict:
    """``metrics`` (name -> array over epochs) with rows at or after ``epoch`` dropped and
    ``row`` appended, as :func:`_append_row` does in the file."""
    epochs = np.asarray(metrics.get("epoch", np.zeros(0, np.int64)))
    keep = int(np.sum(epochs < epoch))
    out = {k: np.asarray(v)[:keep] for k, v in metrics.items()}
    out["epoch"] = np.append(epochs[:keep], np.int64(epoch)).astype(np.int64)
    for name in set(out) | set(row):
        if name == "epoch":
            continue
        before = out.get(name, np.full(keep, np.nan))
        out[name] = np.append(before.astype(np.float64), row.get(name, np.nan))
    return out


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v
