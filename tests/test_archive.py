"""storage/archive.py: the HDF5 archive of a run."""

import numpy as np

from hpcdiff.storage import archive


def test_append_truncate_and_read(tmp_path):
    path = tmp_path / "archive.h5"
    archive.create(path, {"run_id": "abc", "config": "x = 1\n"})
    for epoch in (1, 2, 3):
        archive.append_epoch(path, epoch, {"train_loss": 1.0 / epoch},
                             samples={"images": np.full((2, 4, 4), epoch, np.uint8)})
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
