"""`hpcdiff evaluate`: a finished run's latest checkpoint scored again. With the run's own
settings it reproduces the training-time metrics exactly (same weights, same streams); with
other [eval] settings it adds a record beside them, which `analyze` then reports; a run being
trained, a key outside [eval] and a typo change nothing."""

import math

import numpy as np
import pytest

from hpcdiff.analysis.load import apply_evaluation
from hpcdiff.analysis.report import analyze
from hpcdiff.storage import archive
from hpcdiff.storage.rundir import RunBusyError, sweep_run_dirs
from hpcdiff.training.rescore import evaluate_run

from helpers import cli, resume_with

# Report metrics at every epoch, so that an evaluation of the last epoch can be told from the best of several.
EVERY_EPOCH = """
[eval]
every = 1
samples = 64
"""


@pytest.fixture
def trained_run(tiny_sweep, fashion_classifier, tmp_path):
    """A tiny run trained with the default metrics (the user's path), evaluated every epoch."""
    sweep = tiny_sweep(EVERY_EPOCH, epochs=2, metrics=True)
    result = cli("sweep", sweep, "-o", tmp_path / "runs", "--executor", "local")
    assert result.exit_code == 0, result.output
    (rd,) = sweep_run_dirs(tmp_path / "runs" / "tiny")
    return rd


def _last_row(rd) -> dict:
    metrics = archive.read(rd.archive)["metrics"]
    return {k: float(v[-1]) for k, v in metrics.items()}


def test_the_runs_own_settings_reproduce_its_training_time_metrics(trained_run):
    rd = trained_run
    row = _last_row(rd)
    result = evaluate_run(rd.path, device="cpu")
    assert result.epoch == 2 and result.classifier == fashion_classifier_key(rd)
    names = set(result.metrics) - {"eval_seconds"}
    assert {"fid_classifier", "inception_score", "class_0", "class_9"} <= names
    for name in names:
        assert result.metrics[name] == pytest.approx(row[name], rel=1e-9, abs=1e-12), name
    assert result.before["fid_classifier"] == row["fid_classifier"]
    # Recorded beside the training-time rows, which stay as they were.
    data = archive.read(rd.archive)
    assert list(data["evaluations"]) == [result.key] and _last_row(rd) == row
    record = data["evaluations"][result.key]
    assert record["attrs"]["epoch"] == 2 and record["attrs"]["checkpoint"] == "epoch_00002.pt"
    assert record["metrics"]["fid_classifier"] == result.metrics["fid_classifier"]
    # The same again replaces the record rather than adding one.
    assert evaluate_run(rd.path, device="cpu").key == result.key
    assert list(archive.read(rd.archive)["evaluations"]) == [result.key]


def fashion_classifier_key(rd) -> str:
    return archive.read_attrs(rd.archive)["classifier"]


def test_other_settings_add_a_record_that_analyze_reports(trained_run, tmp_path):
    rd = trained_run
    row = _last_row(rd)
    trained = archive.read(rd.archive)["metrics"]
    best_fid = float(np.nanmin(trained["fid_classifier"]))
    result = cli("evaluate", rd.path, "--set", "eval.samples=96", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert rd.run_id in result.output and "FID then -> now" in result.output
    (record,) = archive.read(rd.archive)["evaluations"].values()
    now = record["metrics"]["fid_classifier"]
    assert now != row["fid_classifier"]  # 96 samples, not 64: a new computation, not a copy
    assert "samples = 96" in record["attrs"]["settings"]
    report = analyze(rd.path.parent, tmp_path / "an", figures=False)
    (out,) = report.rows
    assert out["best_fid_classifier"] == out["final_fid_classifier"] == now
    assert out["best_fid_classifier_epoch"] == 2
    assert any("later `hpcdiff evaluate`" in w for w in report.warnings)
    assert any("96 samples" in line and "evaluated after training" in line for line in report.evaluation)
    # --training-scores: the values computed while it trained (the best of its two epochs)
    (old,) = analyze(rd.path.parent, tmp_path / "an2", figures=False, training_scores=True).rows
    assert old["best_fid_classifier"] == best_fid and old["final_fid_classifier"] == row["fid_classifier"]


def test_an_evaluation_of_an_earlier_epoch_is_not_reported(trained_run, tmp_path):
    """Trained on after it was evaluated: the record describes weights the run no longer ends with."""
    rd = trained_run
    evaluate_run(rd.path, ["eval.samples=96"], device="cpu")
    resume_with(rd, epochs=3)
    report = analyze(rd.path.parent, tmp_path / "an", figures=False)
    (out,) = report.rows
    assert out["final_fid_classifier"] == _last_row(rd)["fid_classifier"]
    assert any("earlier epoch" in w for w in report.warnings)


def test_a_run_being_trained_or_a_bad_setting_changes_nothing(trained_run):
    rd = trained_run
    before = rd.archive.read_bytes()
    lock = rd.lock()  # what a training process holds
    try:
        with pytest.raises(RunBusyError):
            evaluate_run(rd.path, device="cpu")
        out = cli("evaluate", rd.path.parent)
        assert out.exit_code == 0 and f"skipped {rd.run_id}" in out.output
    finally:
        lock.close()
    out = cli("evaluate", rd.path, "--set", "model.hidden=[4, 4]")
    assert out.exit_code == 2 and "only [eval] keys" in out.output
    out = cli("evaluate", rd.path, "--set", "eval.sampels=10")
    assert out.exit_code == 2 and "eval.samples" in out.output
    assert rd.archive.read_bytes() == before


def test_an_evaluation_replaces_every_value_it_holds_and_drops_another_classifiers():
    """The archive read as analyze sees it: only the evaluated epoch carries the evaluated
    metrics (no best-of over two classifiers), and a classifier metric the evaluation did
    not compute is dropped when the classifier changed; the loss series stay."""
    data = {
        "attrs": {"classifier": "old"},
        "metrics": {
            "epoch": np.array([1, 2, 3]),
            "train_loss": np.array([3.0, 2.0, 1.0]),
            "fid_classifier": np.array([50.0, 10.0, 20.0]),
            "inception_score": np.array([2.0, 3.0, 2.5]),
            "class_3": np.array([0.1, 0.1, 0.1]),
            "diversity_trace": np.array([1.0, 1.0, 1.0]),
        },
    }
    apply_evaluation(
        data,
        {
            "attrs": {"epoch": 3, "classifier": "new", "standard_ssim": True},
            "metrics": {"fid_classifier": 30.0, "eval_seconds": 4.0},
        },
    )
    m = data["metrics"]
    assert list(m["train_loss"]) == [3.0, 2.0, 1.0] and list(m["diversity_trace"]) == [1.0, 1.0, 1.0]
    assert math.isnan(m["fid_classifier"][0]) and math.isnan(m["fid_classifier"][1]) and m["fid_classifier"][2] == 30
    assert "inception_score" not in m and "class_3" not in m and "eval_seconds" not in m
    assert data["attrs"]["classifier"] == "new" and data["attrs"]["classifier_from_epoch"] == 3
    # Same classifier: the metrics it did not compute keep their series.
    same = {"attrs": {"classifier": "c"}, "metrics": {"epoch": np.array([1]), "inception_score": np.array([2.0])}}
    apply_evaluation(same, {"attrs": {"epoch": 1, "classifier": "c"}, "metrics": {"fid_classifier": 5.0}})
    assert list(same["metrics"]["inception_score"]) == [2.0]


def test_a_cold_run_from_its_prior_is_evaluated_from_the_same_prior(tiny_sweep, fashion_classifier, tmp_path):
    """Blur generating from its level-T prior, with metrics and reconstructions on: the
    evaluation draws its starts from the run's prior.pt (not a new fit) and reproduces the
    training-time numbers."""
    sweep = tiny_sweep('[degradation]\nname = "blur"\n' + EVERY_EPOCH, epochs=1, metrics=True)
    sweep.write_text(sweep.read_text().replace("n_T = 20", 'n_T = 20\nsample_start = "prior"'))
    assert cli("sweep", sweep, "-o", tmp_path / "runs", "--executor", "local").exit_code == 0
    (rd,) = sweep_run_dirs(tmp_path / "runs" / "tiny")
    row = _last_row(rd)
    prior = rd.prior.read_bytes()
    result = evaluate_run(rd.path, device="cpu")
    assert rd.prior.read_bytes() == prior
    assert {"fid_classifier", "recon_full_ssim", "recon_direct_ssim"} <= set(result.metrics)
    for name in set(result.metrics) - {"eval_seconds"}:
        assert result.metrics[name] == pytest.approx(row[name], rel=1e-9, abs=1e-12), name
    assert archive.read(rd.archive)["evaluations"][result.key]["attrs"]["samples_measure"] == "generation"
