"""Reference classifiers shipped with hpcdiff: one per dataset family, so that the same
samples get the same IS, classifier-FID, KID and class histogram on every machine.

Each is the :class:`~hpcdiff.evaluation.classifier.Classifier` of this package, trained by
:func:`train_reference` with a fixed recipe, its weights in ``hpcdiff/assets/`` and its facts
(name, version, sha256 of the weights, test accuracy, what it was trained on, the command that
retrains it) in ``hpcdiff/assets/classifiers.json``. Loading checks the sha256: a damaged or
replaced file is an error, never a silent change of every number.

The MNIST reference is trained on MNIST's 60,000 training digits *minus* the 5,000 of
``mnist-5k`` (all of which come from MNIST's training set): mnist-5k's held-out digits, the
real images its FID is computed against, are then held out from the classifier too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hpcdiff.config.catalog import family_datasets
from hpcdiff.data import DataError, Dataset, load_idx_dir, mnist_5k_arrays
from hpcdiff.evaluation.classifier import (
    Classifier,
    MissingAssetError,
    evaluate_accuracy,
    get_classifier,
    load_classifier,
    train_classifier,
)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
FACTS = ASSETS / "classifiers.json"
#: The recipe every reference is trained with (train_classifier's arguments).
RECIPE = {"epochs": 6, "batch_size": 128, "lr": 2e-3, "max_shift": 2, "seed": 0}


@dataclass(frozen=True)
class ReferenceClassifier:
    name: str  # e.g. "mnist-reference-v1": what archives record
    family: str
    datasets: tuple[str, ...]  # data.name values it scores by default
    file: str
    sha256: str
    test_accuracy: float
    facts: dict

    @property
    def path(self) -> Path:
        return ASSETS / self.file


def _read_facts() -> dict:
    try:
        return json.loads(FACTS.read_text())
    except FileNotFoundError:
        return {}


@functools.lru_cache(maxsize=1)
def references() -> dict[str, ReferenceClassifier]:
    """The shipped references by family."""
    out = {}
    for family, f in _read_facts().items():
        out[family] = ReferenceClassifier(
            name=f["name"],
            family=family,
            datasets=tuple(f["datasets"]),
            file=f["file"],
            sha256=f["sha256"],
            test_accuracy=float(f["test_accuracy"]),
            facts=f,
        )
    return out


def reference_for(data_name: str) -> ReferenceClassifier | None:
    """The shipped classifier that scores ``data_name`` by default, if there is one."""
    return next((r for r in references().values() if data_name in r.datasets), None)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_reference(ref: ReferenceClassifier, device="cpu") -> Classifier:
    if not ref.path.is_file():
        raise MissingAssetError(f"the reference classifier {ref.name} ({ref.path}) is missing: reinstall hpcdiff")
    got = _sha256(ref.path)
    if got != ref.sha256:
        raise MissingAssetError(
            f"the reference classifier {ref.path} has sha256 {got[:16]}..., not the "
            f"{ref.sha256[:16]}... that {FACTS.name} records: reinstall hpcdiff, or retrain "
            f"it with `{ref.facts.get('retrain', 'hpcdiff prepare --train-reference')}`"
        )
    model = load_classifier(ref.path, device)
    model.cache_key = ref.name
    return model


def scoring_classifier(
    data_spec, choice: str = "auto", *, device="cpu", train_if_missing: bool = True, epochs: int | None = None, log=None
) -> Classifier:
    """The classifier that scores a run (``eval.classifier``): the shipped reference of the
    dataset's family for "auto" and "reference", else (or for "trained") the one trained on
    the dataset and cached (:func:`~hpcdiff.evaluation.classifier.get_classifier`)."""
    ref = reference_for(data_spec.name) if choice in ("auto", "reference") else None
    if ref is not None:
        return load_reference(ref, device)
    if choice == "reference":
        raise MissingAssetError(f"hpcdiff ships no reference classifier for {data_spec.name!r}")
    return get_classifier(data_spec, device=device, train_if_missing=train_if_missing, epochs=epochs, log=log)


# --------------------------------------------------------------------------- training


def mnist_reference_data(root: Path) -> tuple[Dataset, Dataset]:
    """(MNIST's training digits without mnist-5k's 5,000, MNIST's 10,000 test digits), from
    the original IDX files in ``root`` (``root/MNIST/raw``, where torchvision puts them)."""
    raw = Path(root).expanduser() / "MNIST" / "raw"
    try:
        train, test = load_idx_dir(raw if raw.is_dir() else Path(root).expanduser())
    except DataError as err:
        raise MissingAssetError(
            f"{err}: download MNIST first (hpcdiff prepare --dataset mnist --root {root})"
        ) from None
    subset, _ = mnist_5k_arrays()
    held_out = {image.tobytes() for image in subset}
    keep = torch.tensor([image.numpy().tobytes() not in held_out for image in train.images[:, 0]])
    return Dataset(train.images[keep].contiguous(), train.labels[keep].contiguous()), test


def train_reference(
    family: str, root: Path, *, out_dir: Path = ASSETS, version: int = 1, device="cpu", log=None
) -> dict:
    """Train the ``family`` reference with :data:`RECIPE`, write its weights and its facts
    (beside the other families' in ``classifiers.json``) to ``out_dir``; return the facts."""
    if family != "mnist":
        raise ValueError(f"no reference recipe for {family!r} (known: mnist)")
    train, test = mnist_reference_data(root)
    tic = time.perf_counter()
    model, accuracy = train_classifier(None, data=(train, test), device=device, log=log, **RECIPE)
    seconds = time.perf_counter() - tic
    subset_x, subset_y = mnist_5k_arrays()
    subset = Dataset(torch.from_numpy(subset_x).unsqueeze(1), torch.from_numpy(subset_y.astype(np.int64)))
    name = f"{family}-reference-v{version}"
    file = f"classifier-{name}.pt"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Saved without timestamps or paths: the same weights give the same bytes (and sha256).
    torch.save(
        {
            "key": name,
            "arch": model.arch,
            "test_accuracy": accuracy,
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        },
        out_dir / file,
    )
    facts = {
        "name": name,
        "datasets": family_datasets(family),
        "file": file,
        "sha256": _sha256(out_dir / file),
        "test_accuracy": round(accuracy, 4),
        "mnist_5k_accuracy": round(evaluate_accuracy(model, subset, device), 4),
        "trained_on": f"MNIST training set without mnist-5k's digits ({len(train)} images)",
        "tested_on": f"MNIST test set ({len(test)} images)",
        "recipe": RECIPE,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(seconds, 1),
        "torch_version": str(torch.__version__),
        "retrain": f"hpcdiff prepare --train-reference {family} --root DIR  (DIR holding MNIST's IDX files)",
    }
    all_facts = json.loads((out_dir / FACTS.name).read_text()) if (out_dir / FACTS.name).is_file() else {}
    all_facts[family] = facts
    (out_dir / FACTS.name).write_text(json.dumps(all_facts, indent=2, sort_keys=True) + "\n")
    return facts
