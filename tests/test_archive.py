"""storage/archive.py: the HDF5 archive of a run."""

import h5py
import numpy as np
import pytest

from hpcdiff.storage import archive


def test_append_truncate_and_read(tmp_path):
    path = tmp_path / "archive.h5"
    archive.create(path, {"run_id": "abc", "config": "x = 1\n"})
    for epoch in (1, 2, 3):
        archive.append_epoch(
            path, epoch, {"train_loss": 1.0 / epoch}, samples={"images": np.full((2, 4, 4), epoch, np.uint8)}
        )
    archive.truncate_after(path, 2)
    archive.append_epoch(path, 3, {"train_loss": 0.25, "val_loss": 0.5})
    d = archive.read(path)
    assert d["attrs"]["run_id"] == "abc"
    assert d["metrics"]["epoch"].tolist() == [1, 2, 3]
    assert d["metrics"]["train_loss"].tolist() == [1.0, 0.5, 0.25]
    # A metric first recorded at epoch 3 is NaN before.
    assert np.isnan(d["metrics"]["val_loss"][:2]).all() and d["metrics"]["val_loss"][2] == 0.5
    assert list(d["samples"]) == [1, 2]
    # Re-appending an epoch replaces it instead of duplicating it.
    archive.append_epoch(path, 3, {"train_loss": 0.2})
    assert archive.read(path)["metrics"]["epoch"].tolist() == [1, 2, 3]


def _grid(epoch):
    return {
        "images": np.full((25, 28, 28), epoch % 256, np.uint8),
        "starts": np.zeros((25, 28, 28), np.uint8),
        "attrs": {"start": "noise"},
    }


def test_an_epoch_costs_the_same_at_epoch_300_as_at_epoch_1(tmp_path):
    """Each epoch is its own small file until the run's process folds them in: the bytes an
    epoch adds do not grow with the archive (the copy of before wrote the whole archive:
    the control, its size at epoch 300 is many epoch files)."""
    path = tmp_path / "archive.h5"
    archive.create(path, {"run_id": "abc"})
    sizes = {}
    for epoch in range(1, 301):
        archive.append_epoch(
            path, epoch, {"train_loss": 1.0 / epoch}, samples=_grid(epoch), attrs={"best_epoch": epoch}
        )
        if epoch in (1, 300):
            sizes[epoch] = (archive.epochs_dir(path) / f"epoch_{epoch:05d}.h5").stat().st_size
    assert sizes[300] <= 1.1 * sizes[1]
    whole = path.stat().st_size + sum(p.stat().st_size for p in archive.epochs_dir(path).iterdir())
    assert whole > 100 * sizes[300]
    merged = archive.read(path)  # readers see every epoch before the fold
    assert merged["metrics"]["epoch"].tolist() == list(range(1, 301)) and len(merged["samples"]) == 300
    assert merged["attrs"]["best_epoch"] == 300 and merged["samples"][7]["images"][0, 0, 0] == 7
    archive.consolidate(path)
    assert not archive.epochs_dir(path).exists()
    folded = archive.read(path)
    assert folded["metrics"]["train_loss"].tolist() == merged["metrics"]["train_loss"].tolist()
    assert (folded["samples"][300]["starts"] == 0).all() and folded["attrs"]["best_epoch"] == 300
    with h5py.File(path, "r") as f:  # what a notebook opening it with h5py sees once folded
        assert f["metrics"]["epoch"].shape == (300,) and "epoch_0300" in f["samples"]


def test_a_fold_killed_before_it_deleted_the_epoch_files_reads_the_same(tmp_path):
    """The fold renames the new archive.h5 first and deletes the epoch files after: a kill in
    between leaves both, and applying the files again changes nothing."""
    path = tmp_path / "archive.h5"
    archive.create(path, {"run_id": "abc"})
    for epoch in (1, 2, 3):
        archive.append_epoch(path, epoch, {"train_loss": float(epoch)}, samples=_grid(epoch))
    kept = {p.name: p.read_bytes() for p in archive.epochs_dir(path).iterdir()}
    archive.consolidate(path)
    before = archive.read(path)
    archive.epochs_dir(path).mkdir()
    for name, data in kept.items():  # as if the process died right after the rename
        (archive.epochs_dir(path) / name).write_bytes(data)
    after = archive.read(path)
    assert after["metrics"]["epoch"].tolist() == [1, 2, 3] == before["metrics"]["epoch"].tolist()
    assert after["metrics"]["train_loss"].tolist() == [1.0, 2.0, 3.0] and sorted(after["samples"]) == [1, 2, 3]
    archive.consolidate(path)
    assert archive.read(path)["metrics"]["epoch"].tolist() == [1, 2, 3]
    # A resume from the checkpoint of epoch 2 drops epoch 3 from the folded file too.
    archive.truncate_after(path, 2)
    archive.append_epoch(path, 3, {"train_loss": 9.0})
    d = archive.read(path)
    assert d["metrics"]["train_loss"].tolist() == [1.0, 2.0, 9.0] and sorted(d["samples"]) == [1, 2]


def test_the_archive_benchmark_reports_flat_bytes_per_epoch(tmp_path):
    from hpcdiff.bench.archive import benchmark_archive

    rows = {(r["method"].split()[0], r["epoch"]): r for r in benchmark_archive((1, 60), directory=str(tmp_path))}
    if rows[("epoch", 1)]["kB written"] != rows[("epoch", 1)]["kB written"]:
        pytest.skip("no /proc/self/io write_bytes on this machine")
    assert rows[("epoch", 60)]["kB written"] < 2 * rows[("epoch", 1)]["kB written"] + 50
    assert rows[("copy-on-write", 60)]["kB written"] > 20 * rows[("epoch", 60)]["kB written"]
