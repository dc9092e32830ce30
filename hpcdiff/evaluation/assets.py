"""Everything a job needs offline, fetched or built once on a machine with internet (a
login node): torchvision datasets, torch-fidelity's Inception-v3 weights for
``fid_inception``, and the per-dataset classifier of the classifier metrics.

``prepare`` is idempotent: what is already cached is reused, not fetched or trained again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from pathlib import Path

import torch

from hpcdiff.config.catalog import DATASETS, METRICS
from hpcdiff.config.spec import DataSpec
from hpcdiff.data import load_splits
from hpcdiff.evaluation.classifier import MissingAssetError, default_cache_dir, get_classifier
from hpcdiff.evaluation.metrics import INCEPTION_WEIGHTS_URL
from hpcdiff.evaluation.reference import load_reference, reference_for
from hpcdiff.storage.atomic import atomic_path

#: Datasets `prepare` downloads (the others are read from files the user has or ship inside
#: the package).
DOWNLOADABLE = tuple(name for name, f in DATASETS.items() if f.torchvision)


@dataclasses.dataclass
class Needs:
    """What a set of runs needs before they can run offline."""

    datasets: dict = dataclasses.field(default_factory=dict)  # (name, root) -> DataSpec
    inception: bool = False
    classifier_epochs: int | None = None
    trained: set = dataclasses.field(default_factory=set)  # datasets scored by their own classifier


def needs_of(specs, datasets=(), root: str | None = None) -> Needs:
    """The datasets, Inception weights and classifiers of ``specs`` (RunSpecs), plus the
    ``datasets`` named on the command line (under ``root``). Raises SpecError for a bad name."""
    needs = Needs()
    for spec in specs:
        d = spec.data
        needs.datasets[(d.name, d.root)] = DataSpec(name=d.name, root=d.root, download=d.name in DOWNLOADABLE)
        needs.inception |= any(METRICS[m].needs_inception for m in spec.eval.metrics)
        needs.classifier_epochs = spec.eval.classifier_epochs or needs.classifier_epochs
        if spec.eval.classifier == "trained":
            needs.trained.add(d.name)
    for name in datasets:
        d = DataSpec(name=name, download=name in DOWNLOADABLE, **({"root": root} if root else {}))
        d.validate("--dataset")
        needs.datasets[(d.name, d.root)] = d
    return needs


def prepare(
    datasets: list[DataSpec],
    cache_dir=None,
    *,
    inception: bool,
    device="cpu",
    classifier_epochs: int | None = None,
    inception_url: str | None = None,
    log=None,
    trained: frozenset[str] = frozenset(),
) -> dict:
    """Download the datasets (torchvision ones with ``download=True``), the Inception weights
    (if ``inception``) and train + cache each dataset's classifier, except where a reference
    classifier ships with hpcdiff (checked, not trained) and ``trained`` (dataset names whose
    runs ask for ``eval.classifier = "trained"``) does not name the dataset.

    Returns a report: {"cache_dir", "datasets": [{name, root, classifier_key, classifier_path,
    test_accuracy, seconds}], "inception": {"path", "downloaded"} or None}."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: None)
    report: dict = {"cache_dir": str(cache_dir), "datasets": [], "inception": None}
    for spec in datasets:
        tic = time.perf_counter()
        if spec.name in DOWNLOADABLE:
            say(f"fetching {spec.name} into {spec.root}")
            load_splits(dataclasses.replace(spec, download=True))  # torchvision skips what exists
        ref = reference_for(spec.name) if spec.name not in trained else None
        if ref is not None:
            say(f"classifier for {spec.name}: {ref.name}, shipped with hpcdiff")
            model, path = load_reference(ref, device), ref.path
        else:
            say(f"classifier for {spec.name} (trained unless cached)")
            model = get_classifier(
                dataclasses.replace(spec, download=False),
                cache_dir,
                device,
                train_if_missing=True,
                epochs=classifier_epochs,
                log=say,
            )
            path = cache_dir / f"classifier-{model.cache_key}.pt"
        report["datasets"].append(
            {
                "name": spec.name,
                "root": spec.root,
                "classifier_key": model.cache_key,
                "classifier_path": str(path),
                "test_accuracy": model.test_accuracy,
                "seconds": time.perf_counter() - tic,
            }
        )
        say(f"{spec.name}: classifier test accuracy {model.test_accuracy:.4f}")
    if inception:
        report["inception"] = prepare_inception(cache_dir, url=inception_url, log=say)
    return report


def prepare_inception(cache_dir=None, *, url: str | None = None, log=None) -> dict:
    """Put torch-fidelity's Inception-v3 weights at ``<cache_dir>/inception/<file>``.

    Taken from torch hub's checkpoint directory when torch-fidelity already fetched them
    there, otherwise downloaded from ``url`` (default: ``$HPCDIFF_INCEPTION_URL`` or
    torch-fidelity's release; a ``file://`` URL or a local path serves an offline mirror).
    The file is loaded into torchmetrics' Inception network before it is put in place, so
    the cache never holds a truncated or wrong file; ``fid_inception`` looks in both places.

    Returns {"path", "downloaded", "source", "sha256"}."""
    from hpcdiff.evaluation.metrics import INCEPTION_WEIGHTS_FILE, _require_torch_fidelity

    say = log or (lambda msg: None)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache_dir / "inception" / INCEPTION_WEIGHTS_FILE
    if target.is_file():
        return {"path": str(target), "downloaded": False, "source": str(target), "sha256": _sha256(target)}
    _require_torch_fidelity()
    target.parent.mkdir(parents=True, exist_ok=True)
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    # Fetched and checked under a temporary name: the cache never holds a partial file.
    with atomic_path(target) as tmp:
        source, downloaded = str(hub_file), False
        if hub_file.is_file():
            shutil.copyfile(hub_file, tmp)
            try:
                _check_inception_weights(tmp, source)
            except MissingAssetError as err:
                say(f"ignoring {hub_file}: {err}")
                tmp.unlink()
        if not tmp.is_file():
            source, downloaded = inception_url(url), True
            say(f"downloading Inception-v3 weights from {source}")
            if Path(source).is_file():  # a plain path to a mirror copy
                shutil.copyfile(source, tmp)
            else:
                try:
                    torch.hub.download_url_to_file(source, str(tmp), progress=log is not None)
                except (OSError, ValueError) as err:  # URLError and HTTPError are OSErrors
                    raise MissingAssetError(
                        f"could not download the Inception weights from {source}: {err}. On a machine "
                        f"without internet, fetch {INCEPTION_WEIGHTS_URL} elsewhere and pass its path or "
                        f"URL with `hpcdiff prepare --inception-url` (or $HPCDIFF_INCEPTION_URL)."
                    ) from None
            _check_inception_weights(tmp, source)
    say(f"Inception weights cached at {target}")
    return {"path": str(target), "downloaded": downloaded, "source": source, "sha256": _sha256(target)}


def inception_url(url: str | None = None) -> str:
    return url or os.environ.get("HPCDIFF_INCEPTION_URL") or INCEPTION_WEIGHTS_URL


def _check_inception_weights(path: Path, source: str) -> None:
    """Load the file into torchmetrics' Inception feature extractor (a strict state-dict
    load): a truncated download, an HTML error page or another network's weights fail here."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    try:
        FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path))
    except Exception as err:  # torch.load / load_state_dict raise many kinds
        raise MissingAssetError(
            f"{source} did not give torch-fidelity's Inception-v3 weights "
            f"({type(err).__name__}: {str(err)[:300]}); nothing was cached"
        ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
