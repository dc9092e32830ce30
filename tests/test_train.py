"""Training-loop semantics that need no cluster: gradient accumulation windows and resume."""

import numpy as np

from hpcdiff.storage import archive
from hpcdiff.training.loop import train

from helpers import make_run_dir, resume_with


def _losses(rd):
    return np.asarray(archive.read(rd.archive)["metrics"]["train_loss"])


def test_accumulation_windows_end_with_the_epoch_so_a_resume_is_exact(tiny_sweep, tmp_path):
    """4 batches per epoch in windows of 3: the last window of an epoch is one batch, so the
    epoch-end checkpoint holds no pending gradients. A run stopped after epoch 1 and resumed
    gives the uninterrupted run's losses."""
    base = tiny_sweep(epochs=3).read_text().replace("[train]\n", "[train]\ngrad_accumulation = 3\n", 1)
    assert "grad_accumulation = 3" in base
    whole_file = tmp_path / "whole.toml"
    whole_file.write_text(base.replace('name = "tiny"', 'name = "whole"'))
    whole = make_run_dir(whole_file, tmp_path / "runs")
    assert train(whole.path) == "done"

    split_file = tmp_path / "split.toml"
    split_file.write_text(base.replace('name = "tiny"', 'name = "split"').replace("epochs = 3", "epochs = 1"))
    split = make_run_dir(split_file, tmp_path / "runs")
    assert train(split.path) == "done"
    # Now as if it had been stopped at that epoch end: 3 epochs asked for, state timeout.
    assert resume_with(split, epochs=3) == "done"

    a, b = _losses(whole), _losses(split)
    assert len(a) == len(b) == 3
    np.testing.assert_allclose(b, a, rtol=1e-5)
