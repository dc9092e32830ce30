"""Everything a job needs offline, fetched or built once on a machine with internet (a
login node): torchvision datasets, torch-fidelity's Inception-v3 weights for
``fid_inception``, and the per-dataset classifier of the classifier metrics.

``prepare`` is idempotent: what is already cached is reused, not fetched or trained again.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import torch

from .classifier import MissingAssetError, default_cache_dir, get_classifier
from .data import load_splits
from .spec import DataSpec

TORCHVISION_DATASETS = ("mnist", "fashion-mnist")


def prepare(datasets: list[DataSpec], cache_dir=None, *, inception: bool, device="cpu",
            classifier_epochs: int | None = None, log=None) -> dict:
    """Download the datasets (torchvision ones with ``download=True``), the Inception weights
    (if ``inception``) and train + cache each dataset's classifier.

    Returns a report: {"cache_dir", "datasets": [{name, root, classifier_key, classifier_path,
    test_accuracy, seconds}], "inception": {"path", "downloaded"} or None}."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: None)
    report: dict = {"cache_dir": str(cache_dir), "datasets": [], "inception": None}
    for spec in datasets:
        tic = time.perf_counter()
        if spec.name in TORCHVISION_DATASETS:
            say(f"fetching {spec.name} into {spec.root}")
            load_splits(dataclasses.replace(spec, download=True))  # torchvision skips what exists
        say(f"classifier for {spec.name} (trained unless cached)")
        model = get_classifier(dataclasses.replace(spec, download=False), cache_dir, device,
                               train_if_missing=True, epochs=classifier_epochs, log=say)
        report["datasets"].append({
            "name": spec.name, "root": spec.root, "classifier_key": model.cache_key,
            "classifier_path": str(cache_dir / f"classifier-{model.cache_key}.pt"),
            "test_accuracy": model.test_accuracy, "seconds": time.perf_counter() - tic,
        })
        say(f"{spec.name}: classifier test accuracy {model.test_accuracy:.4f}")
    if inception:
        report["inception"] = prepare_inception(cache_dir, log=say)
    return report


def prepare_inception(cache_dir=None, *, log=None) -> dict:
    """Put torch-fidelity's Inception-v3 weights at ``<cache_dir>/inception/<file>``.

    Instantiating torchmetrics' FrechetInceptionDistance makes torch-fidelity download them
    (``torch.hub.load_state_dict_from_url``) into ``<torch.hub.get_dir()>/checkpoints/``;
    they are then copied into the hpcdiff cache, which jobs may see on shared storage even
    when ``~/.cache/torch`` differs. ``fid_inception`` looks in both places."""
    from .metrics import INCEPTION_WEIGHTS_FILE, _require_torch_fidelity

    say = log or (lambda msg: None)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache_dir / "inception" / INCEPTION_WEIGHTS_FILE
    if target.is_file():
        return {"path": str(target), "downloaded": False}
    _require_torch_fidelity()
    from torchmetrics.image.fid import FrechetInceptionDistance

    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    downloaded = not hub_file.is_file()
    say(f"fetching Inception-v3 weights via torchmetrics/torch-fidelity into {hub_file.parent}")
    FrechetInceptionDistance(feature=2048)  # the real download path (no-op when hub_file exists)
    if not hub_file.is_file():
        raise MissingAssetError(f"torchmetrics' FID was built but {hub_file} is not there; "
                                f"torch-fidelity may store its weights elsewhere in this version")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(hub_file, tmp)
    os.replace(tmp, target)
    say(f"Inception weights cached at {target}")
    return {"path": str(target), "downloaded": downloaded}
