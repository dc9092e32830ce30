"""The reference classifier shipped with hpcdiff: its recorded facts are true, it scores MNIST
and mnist-5k runs by default without training anything, a damaged file is refused, and the
archive and the analysis say which classifier scored a run."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcdiff.config.spec import DataSpec, RunSpec, SpecError
from hpcdiff.data import mnist_5k_arrays
from hpcdiff.evaluation.classifier import MissingAssetError, evaluate_accuracy
from hpcdiff.evaluation.reference import FACTS, load_reference, mnist_reference_data, reference_for, scoring_classifier
from hpcdiff.resolve import validate_spec


def test_the_mnist_reference_is_shipped_with_its_facts():
    facts = json.loads(FACTS.read_text())["mnist"]
    ref = reference_for("mnist-5k")
    assert ref is reference_for("mnist-5k") or ref == reference_for("mnist")
    assert ref.name == facts["name"] == "mnist-reference-v1" and set(ref.datasets) == {"mnist", "mnist-5k"}
    assert ref.path.is_file() and ref.path.stat().st_size < 2_000_000
    assert facts["test_accuracy"] >= 0.99 and "hpcdiff prepare --train-reference mnist" in facts["retrain"]
    assert reference_for("idx") is None and reference_for("fashion-mnist") is None


def test_the_reference_scores_mnist_5k_as_recorded_and_trains_nothing(tmp_path, monkeypatch):
    """Loaded by default (eval.classifier = "auto") with an empty cache: nothing is trained or
    written, and its accuracy on all 5,000 digits of mnist-5k is the one its facts record."""
    import hpcdiff.evaluation.classifier as clf_mod

    monkeypatch.setenv("HPCDIFF_CACHE", str(tmp_path))
    monkeypatch.setattr(clf_mod, "train_classifier", lambda *a, **k: pytest.fail("trained a classifier"))
    model = scoring_classifier(DataSpec(name="mnist-5k"))
    assert model.cache_key == "mnist-reference-v1" and list(tmp_path.iterdir()) == []
    x, y = mnist_5k_arrays()
    from hpcdiff.data import Dataset

    subset = Dataset(torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))
    recorded = reference_for("mnist-5k").facts["mnist_5k_accuracy"]
    assert evaluate_accuracy(model, subset) == pytest.approx(recorded, abs=2e-4)
    # "trained" asks for the dataset's own classifier: the control
    with pytest.raises(pytest.fail.Exception, match="trained a classifier"):
        scoring_classifier(DataSpec(name="mnist-5k"), "trained")


def test_the_reference_reaches_its_recorded_accuracy_on_full_mnist():
    """On MNIST's 10,000 test digits (the real IDX files); its training set left out every
    digit of mnist-5k, whose held-out split FID compares against."""
    root = os.environ.get("HPCDIFF_TEST_MNIST_ROOT")
    if not root or not os.path.isfile(os.path.join(root, "MNIST", "raw", "train-images-idx3-ubyte")):
        pytest.skip("full MNIST not present: tests/fetch-full-mnist.sh DIR and HPCDIFF_TEST_MNIST_ROOT=DIR")
    ref = reference_for("mnist")
    train, test = mnist_reference_data(Path(root))
    assert len(train) == 55_000 and len(test) == 10_000
    subset = {image.tobytes() for image in mnist_5k_arrays()[0]}
    assert not any(image.numpy().tobytes() in subset for image in train.images[:, 0])
    accuracy = evaluate_accuracy(load_reference(ref), test)
    assert accuracy == pytest.approx(ref.test_accuracy, abs=2e-4) and accuracy >= 0.99


def test_a_damaged_reference_is_refused(tmp_path):
    ref = reference_for("mnist")
    copy = tmp_path / ref.file
    data = bytearray(ref.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    damaged = dataclasses.replace(ref, file=str(copy))  # an absolute file name replaces the assets folder
    with pytest.raises(MissingAssetError, match="sha256"):
        load_reference(damaged)
    assert load_reference(ref).cache_key == ref.name


def test_asking_for_a_reference_where_none_ships_fails_at_validation(fashion_dir):
    spec = RunSpec.from_dict({"data": {"name": "idx", "root": str(fashion_dir)}, "eval": {"classifier": "reference"}})
    with pytest.raises(SpecError) as err:
        validate_spec(spec)
    assert err.value.path == "eval.classifier" and "mnist-5k" in str(err.value)
    validate_spec(RunSpec.from_dict({"data": {"name": "mnist-5k"}, "eval": {"classifier": "reference"}}))
    with pytest.raises(SpecError, match="eval.classifier"):
        RunSpec.from_dict({"eval": {"classifier": "shipped"}})
