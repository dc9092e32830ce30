"""storage/checkpoint.py: atomic full-state checkpoints and the latest complete one."""

from contextlib import contextmanager

import pytest
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


@contextmanager
def _storages_tagged_cuda():
    """torch.save writes every storage with the location "cuda:0", as on a GPU node (the
    file is then what a GPU run writes, made on a machine without one)."""
    from torch import serialization

    entry = (1, lambda obj: "cuda:0" if obj.device.type == "cpu" else None, lambda obj, location: None)
    serialization._package_registry.append(entry)
    serialization._package_registry.sort(key=lambda e: e[0])
    try:
        yield
    finally:
        serialization._package_registry.remove(entry)


def _tiny_state(seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).square().sum().backward()
    opt.step()
    return model, opt


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows the CPU-only machine's side")
def test_checkpoint_written_on_a_gpu_resumes_on_a_cpu_only_machine(tmp_path):
    model, opt = _tiny_state(0)
    state = {
        "epoch": 1,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.zeros(16, dtype=torch.uint8)},
    }
    with _storages_tagged_cuda():
        checkpoint.save(state, tmp_path, 1, keep=2)
    path = checkpoint.path_for(tmp_path, 1)
    with pytest.raises(RuntimeError, match="CUDA"):  # the file really says cuda:0
        torch.load(path, weights_only=True)
    epoch, loaded = checkpoint.load_latest(tmp_path)
    assert epoch == 1 and loaded["model"]["weight"].device.type == "cpu"
    fresh, fresh_opt = _tiny_state(1)
    fresh.load_state_dict(loaded["model"])
    fresh_opt.load_state_dict(loaded["optimizer"])
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    moments = fresh_opt.state_dict()["state"][0]
    assert moments["exp_avg"].device.type == "cpu"
    assert torch.equal(moments["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_a_checkpoint_that_does_not_load_is_said_not_skipped_silently(tmp_path, caplog):
    checkpoint.save({"epoch": 1}, tmp_path, 1, keep=2)
    checkpoint.path_for(tmp_path, 2).write_bytes(b"torn")
    with caplog.at_level("WARNING", logger="hpcdiff.storage.checkpoint"):
        assert checkpoint.load_latest(tmp_path)[0] == 1
    assert "epoch_00002.pt does not load" in caplog.text
