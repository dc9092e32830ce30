"""hpcdiff.load_results / hpcdiff.load_run on a partly finished sweep of KNOWN numbers
(tests/synthetic_sweep.py: two runs done, one timed out after epoch 1, one pending), and
without torch. The same API on a real finished sweep is tested in tests/test_trackers.py,
against the curves the trainer sent to TensorBoard."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hpcdiff

import synthetic_sweep

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return synthetic_sweep.build(tmp_path_factory.mktemp("nb"))


def _key(df, run_id):
    return synthetic_sweep.LABELS.index(df.loc[run_id, "label"]), int(df.loc[run_id, "train.seed"])


def test_load_results_one_row_per_run_with_axes_state_metrics_and_paths(sweep):
    df = hpcdiff.load_results(sweep)
    assert isinstance(df, pd.DataFrame) and df.index.name == "run_id" and len(df) == 4
    assert list(df.columns[:6]) == ["label", "train.lr", "train.seed", "state", "epoch", "epochs"]
    assert list(df.columns[-3:]) == ["run_dir", "config", "archive"]
    assert df.attrs["sweep"] == "golden" and df.attrs["varying"] == ["train.lr", "train.seed"]
    for column in (
        "train.lr",
        "epoch",
        "final_train_loss",
        "best_fid_classifier",
        "best_fid_classifier_epoch",
        "final_diversity_trace",
    ):
        assert pd.api.types.is_numeric_dtype(df[column]), column
    by_key = {_key(df, rid): df.loc[rid] for rid in df.index}
    for (case, seed), (state, epochs) in synthetic_sweep.RUNS.items():
        row = by_key[(case, seed)]
        assert (row["state"], row["epoch"], row["epochs"]) == (state, epochs, 3)
        assert row["train.lr"] == pytest.approx(1e-3 * (1 + case))
        assert Path(row["run_dir"]).name == row.name and Path(row["config"]).is_file()
        if not epochs:  # pending: its row, with nothing measured
            assert pd.isna(row["archive"]) and math.isnan(row["final_train_loss"])
            continue
        assert Path(row["archive"]).is_file()
        last = synthetic_sweep.epoch_metrics(case, seed, epochs)
        assert row["final_train_loss"] == pytest.approx(last["train_loss"])
    # Best FID of a run evaluated at epochs 2 and 3: the smaller, and when.
    done = by_key[(0, 1)]
    fids = {e: synthetic_sweep.epoch_metrics(0, 1, e)["fid_classifier"] for e in (2, 3)}
    best_epoch = min(fids, key=fids.get)
    assert done["best_fid_classifier"] == pytest.approx(fids[best_epoch])
    assert done["best_fid_classifier_epoch"] == best_epoch
    assert math.isnan(by_key[(1, 0)]["best_fid_classifier"])  # timed out before its first evaluation


def test_load_run_metrics_samples_config(sweep):
    df = hpcdiff.load_results(sweep)
    rid = next(r for r in df.index if _key(df, r) == (0, 1))
    run = hpcdiff.load_run(df.loc[rid, "run_dir"])
    assert run.run_id == rid and run.state == "done" and run.axes["train.seed"] == 1
    assert run.config["train"]["lr"] == 1e-3 and run.config["diffusion"]["n_T"] == 10
    m = run.metrics
    assert list(m.index) == [1, 2, 3] and m.index.name == "epoch"
    assert list(m.columns[:3]) == ["train_loss", "val_loss", "lr"]
    for epoch in (1, 2, 3):
        expected = synthetic_sweep.epoch_metrics(0, 1, epoch)
        for name, value in expected.items():
            got = m.loc[epoch, name]
            assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value), (epoch, name)
    assert math.isnan(m.loc[1, "inception_score"])  # not evaluated at epoch 1
    assert sorted(run.samples) == [1, 2, 3]
    grid = run.samples[2]
    assert grid.dtype == np.uint8 and grid.shape == (4, 28, 28)
    assert np.array_equal(grid, ((np.arange(4 * 28 * 28).reshape(4, 28, 28) * 3) % 256).astype(np.uint8))


def test_load_run_on_unfinished_runs(sweep):
    df = hpcdiff.load_results(sweep)
    by_key = {_key(df, rid): rid for rid in df.index}
    timed_out = hpcdiff.load_run(sweep / by_key[(1, 0)])
    assert timed_out.state == "timeout" and list(timed_out.metrics.index) == [1] and list(timed_out.samples) == [1]
    pending = hpcdiff.load_run(sweep / by_key[(1, 1)])
    assert pending.state == "pending" and pending.metrics.empty and pending.samples == {}
    assert pending.config["train"]["lr"] == 2e-3
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        hpcdiff.load_run(sweep)
    with pytest.raises(FileNotFoundError, match="not a sweep directory"):
        hpcdiff.load_results(sweep / "missing")


def test_notebook_api_never_imports_torch(sweep):
    code = (
        "import sys, hpcdiff\n"
        f"df = hpcdiff.load_results({str(sweep)!r})\n"
        "runs = [hpcdiff.load_run(p) for p in df['run_dir']]\n"
        "assert len(df) == 4 and sum(len(r.metrics) for r in runs) == 7\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_import_hpcdiff_stays_light():
    """`import hpcdiff` (every command, every job) pulls in neither pandas nor h5py."""
    code = (
        "import sys, hpcdiff\nheavy = [m for m in ('torch', 'pandas', 'h5py') if m in sys.modules]\n"
        "assert not heavy, heavy\nassert callable(hpcdiff.load_results) and 'load_run' in dir(hpcdiff)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
