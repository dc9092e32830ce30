"""Equal-compute budgets (train.max_steps, train.max_minutes) on real tiny runs: where a run
stops, what it writes there, that the budget counts across resumes, and the analysis of runs
against optimiser steps and training time."""

import numpy as np
import pytest
import torch

from hpcdiff.analysis.report import analyze
from hpcdiff.storage import archive, checkpoint
from hpcdiff.training.loop import train

from helpers import cli, make_run_dir, resume_with


def _budget_sweep(tiny_sweep, settings: str, **kwargs):
    path = tiny_sweep(**kwargs)
    path.write_text(path.read_text().replace("[train]\n", f"[train]\n{settings}\n", 1))
    return path


# subset 320: 256 training images, 4 batches of 64 per epoch.
@pytest.mark.parametrize(
    "accumulation,max_steps,batches,steps_per_row",
    [
        (1, 7, 7, [4, 7]),  # step 7: three steps after the epoch-end check, not an interval check
        (2, 3, 6, [2, 3]),  # 2 optimiser steps per epoch: step 3 ends after batch 6
    ],
)
def test_max_steps_stops_exactly_at_its_step_with_a_checkpoint(
    tiny_sweep, tmp_path, accumulation, max_steps, batches, steps_per_row
):
    path = _budget_sweep(tiny_sweep, f"max_steps = {max_steps}\ngrad_accumulation = {accumulation}", epochs=5)
    rd = make_run_dir(path, tmp_path / "runs")
    assert train(rd.path) == "done"
    status = rd.read_status()
    assert status["state"] == "done" and status["stopped_by"] == "max_steps" and status["epoch"] == 2
    data = archive.read(rd.archive)
    assert data["metrics"]["epoch"].tolist() == [1, 2]
    assert data["metrics"]["optimizer_steps"].tolist() == steps_per_row
    assert data["attrs"]["stopped_by"] == "max_steps" and data["attrs"]["finished"]
    assert 2 in data["samples"]  # the stop epoch is the last: samples drawn, as at any run's end
    assert checkpoint.list_epochs(rd.checkpoints)[-1] == 2
    state = torch.load(rd.checkpoints / "epoch_00002.pt", weights_only=False)
    assert state["step"] == batches and state["partial"] is None
    # Resumed once its budget is met (as after a requeue that came too late): no more training.
    assert train(rd.path) == "done"
    assert resume_with(rd) == "done"
    assert archive.read(rd.archive)["metrics"]["epoch"].tolist() == [1, 2]
    assert rd.read_status()["stopped_by"] == "max_steps"


def test_max_minutes_stops_at_the_first_check_past_it(tiny_sweep, tmp_path):
    """20 batches per epoch: the first interval check (after 10 optimiser steps) is past a
    budget of a few milliseconds, so the run ends there, mid-epoch, with that epoch as its last."""
    path = _budget_sweep(tiny_sweep, "max_minutes = 0.0001", epochs=3, subset=1600)
    rd = make_run_dir(path, tmp_path / "runs")
    assert train(rd.path) == "done"
    assert rd.read_status()["stopped_by"] == "max_minutes"
    m = archive.read(rd.archive)["metrics"]
    assert m["epoch"].tolist() == [1] and m["optimizer_steps"].tolist() == [10]
    assert m["elapsed_seconds"][-1] >= 0.006
    assert checkpoint.list_epochs(rd.checkpoints) == [1]


def test_the_time_budget_counts_across_a_resume(tiny_sweep, tmp_path):
    path = tiny_sweep(epochs=1, subset=1600)  # 20 batches per epoch, no budget
    rd = make_run_dir(path, tmp_path / "runs")
    assert train(rd.path) == "done"
    first = float(archive.read(rd.archive)["metrics"]["elapsed_seconds"][-1])
    # A budget the first epoch already spent: the resumed run trains no more.
    assert resume_with(rd, epochs=3, max_minutes=first / 2 / 60) == "done"
    assert rd.read_status()["stopped_by"] == "max_minutes"
    assert archive.read(rd.archive)["metrics"]["epoch"].tolist() == [1]
    # A budget just past it: the resumed run stops at its first check (10 steps into epoch 2),
    # which it would not if the clock had restarted at the resume (half an epoch < one epoch).
    assert resume_with(rd, epochs=3, max_minutes=(first + 1e-4) / 60) == "done"
    m = archive.read(rd.archive)["metrics"]
    assert m["epoch"].tolist() == [1, 2] and m["optimizer_steps"].tolist() == [20, 30]
    assert m["elapsed_seconds"][-1] >= first + 1e-4
    assert rd.read_status()["stopped_by"] == "max_minutes"


def test_analyze_puts_runs_on_steps_and_time_axes(tiny_sweep, tmp_path):
    path = _budget_sweep(tiny_sweep, "max_steps = 6", epochs=3)
    path.write_text(path.read_text() + "[sweep.product]\ntrain.lr = [2e-4, 1e-3]\n")
    result = cli("sweep", path, "--output", tmp_path / "runs", "--executor", "debug")
    assert result.exit_code == 0, result.output
    out = analyze(tmp_path / "runs" / "tiny", tmp_path / "analysis")
    names = {p.name for p in out.files}
    assert {"loss_vs_optimizer_steps.png", "loss_vs_training_time.png"} <= names
    index = (tmp_path / "analysis" / "index.md").read_text()
    assert "## At equal compute" in index


def test_older_archives_get_their_steps_from_the_config():
    from hpcdiff.analysis.compute_axes import derived_optimizer_steps

    config = {
        "data": {"name": "mnist-5k", "subset": 320, "val_fraction": 0.2},
        "train": {"batch_size": 64, "grad_accumulation": 3},
    }
    np.testing.assert_array_equal(derived_optimizer_steps(config, np.array([1, 2])), [2, 4])
    assert derived_optimizer_steps({"data": {"name": "idx"}, "train": {"batch_size": 64}}, np.array([1])) is None


def test_a_stop_signal_at_the_budget_step_resumes_to_a_closed_epoch(tiny_sweep, tmp_path):
    """A stop signal's mid-epoch checkpoint taken at the very step the budget ends on (the
    signal wins that check): the resume closes that epoch (row, samples, checkpoint) without
    another batch. The checkpoint is written here as the signal handler writes it."""
    path = tiny_sweep(epochs=1)  # 4 batches per epoch
    rd = make_run_dir(path, tmp_path / "runs")
    assert train(rd.path) == "done"
    epoch, state = checkpoint.load_latest(rd.checkpoints)
    state.update(step=state["step"] + 2, partial={"epoch": 2, "batch": 2, "loss_sum": 2 * 0.5})
    checkpoint.save_object(state, checkpoint.path_for(rd.checkpoints, epoch))
    assert resume_with(rd, epochs=3, max_steps=6) == "done"
    assert rd.read_status()["stopped_by"] == "max_steps"
    m = archive.read(rd.archive)["metrics"]
    assert m["epoch"].tolist() == [1, 2] and m["optimizer_steps"].tolist() == [4, 6]
    assert m["train_loss"][-1] == pytest.approx(0.5)  # the two batches before the signal, none after
    assert torch.load(rd.checkpoints / "epoch_00002.pt", weights_only=False)["step"] == 6


def test_rows_from_before_the_series_get_derived_steps():
    from hpcdiff.analysis.compute_axes import axis_values
    from hpcdiff.analysis.load import Run

    config = {"data": {"name": "mnist-5k", "subset": 320}, "train": {"batch_size": 64}}
    run = Run("r", {}, config, {"epoch": np.array([1, 2, 3]), "optimizer_steps": np.array([np.nan, 8.0, 12.0])}, {})
    np.testing.assert_array_equal(axis_values(run, "optimizer_steps"), [4, 8, 12])
    assert axis_values(Run("r", {}, config, {"epoch": np.array([1])}, {}), "elapsed_seconds") is None


@pytest.mark.parametrize("every", [0.0, float("inf")])
def test_a_running_run_writes_its_steps_to_status_between_epoch_ends(tiny_sweep, tmp_path, monkeypatch, every):
    """`hpcdiff status` reads a running run's steps from status.json: the interval checks
    (every 10 optimiser steps) write them there at most every STATUS_EVERY seconds, so a
    long epoch shows progress before it ends. With the interval infinite only the epoch
    ends write (the control)."""
    from hpcdiff.storage.rundir import RunDir
    from hpcdiff.training import loop

    monkeypatch.setattr(loop, "STATUS_EVERY", every)
    writes = []
    real = RunDir.write_status

    def recording(self, **fields):
        writes.append(dict(fields))
        return real(self, **fields)

    monkeypatch.setattr(RunDir, "write_status", recording)
    path = _budget_sweep(tiny_sweep, "", epochs=2, subset=1600)  # 20 batches per epoch
    rd = make_run_dir(path, tmp_path / "runs")
    assert train(rd.path) == "done"
    steps = [w["steps"] for w in writes if "steps" in w]
    live = [w for w in writes if "steps" in w and "state" not in w]
    if every == 0.0:
        assert steps == [10, 20, 20, 30, 40, 40]  # checks at 10, 20 (epoch end), 30, 40; epoch ends at 20, 40
        assert all(w["elapsed"] > 0 for w in live)
        assert [w["elapsed"] for w in live] == sorted(w["elapsed"] for w in live)
    else:
        assert steps == [20, 40] and not live
    assert rd.read_status()["steps"] == 40
