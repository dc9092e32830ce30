import numpy as np
import torch

from hpcdiff.storage import archive, checkpoint


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


def test_checkpoints_keep_last_k_and_skip_corrupt(tmp_path):
    for epoch in range(1, 5):
        checkpoint.save({"epoch": epoch, "w": torch.full((3,), float(epoch))}, tmp_path, epoch, keep=2)
    assert checkpoint.list_epochs(tmp_path) == [3, 4]
    checkpoint.path_for(tmp_path, 4).write_bytes(b"garbage")
    epoch, state = checkpoint.load_latest(tmp_path)
    assert epoch == 3 and state["w"].tolist() == [3.0, 3.0, 3.0]
    assert not list(tmp_path.glob("*.tmp*"))
