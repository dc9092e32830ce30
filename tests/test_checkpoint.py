"""storage/checkpoint.py: atomic full-state checkpoints and the latest complete one."""

import torch

from hpcdiff.storage import checkpoint


def test_checkpoints_keep_last_k_and_skip_corrupt(tmp_path):
    for epoch in range(1, 5):
        checkpoint.save({"epoch": epoch, "w": torch.full((3,), float(epoch))}, tmp_path, epoch, keep=2)
    assert checkpoint.list_epochs(tmp_path) == [3, 4]
    checkpoint.path_for(tmp_path, 4).write_bytes(b"garbage")
    epoch, state = checkpoint.load_latest(tmp_path)
    assert epoch == 3 and state["w"].tolist() == [3.0, 3.0, 3.0]
    assert not list(tmp_path.glob("*.tmp*"))
