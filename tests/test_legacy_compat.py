"""Run directories written by an older hpcdiff are still read, resumed and analysed the same way.

tests/fixtures/legacy holds a sweep directory written by the hpcdiff of commit 7dd801f (before
the package was split into subpackages), with the CLI as a user would, by its make.py: run A
trained to the end, run B stopped by SIGTERM in the middle of epoch 2 (state "timeout", a
checkpoint with a `partial` entry). The files are checked in and never regenerated: if a test
here fails, the code has stopped reading what users' existing run directories hold.

Only the CLI (click's CliRunner on hpcdiff.cli.main) and the files themselves (json, csv,
h5py, torch.load) are used, no hpcdiff internals, so that the test survives moves of modules.
Each test works on a copy of the fixture sweep directory under tmp_path.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hpcdiff.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "legacy"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
SWEEP_FILE = FIXTURES / EXPECTED["sweep_file"]
NAME = EXPECTED["sweep_name"]
A, B = EXPECTED["runs"]["A"], EXPECTED["runs"]["B"]
RUN_ID = re.compile(r"^([0-9a-f]{10})\s")


def cli(*args):
    # Wide enough for the run tables to be tables (one line per run), whatever the terminal.
    result = CliRunner(env={"COLUMNS": "200"}).invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def run_column(output: str, column: str) -> dict[str, str]:
    """run id -> the value of `column` in the run table of `sweep --dry-run` or `status`."""
    lines = output.splitlines()
    header = next(
        i
        for i, line in enumerate(lines)
        if re.match(r"run(\s|$)", line) and i + 1 < len(lines) and set(lines[i + 1]) <= {"-", " "}
    )
    start = lines[header].index(column)
    values = {}
    for line in lines[header + 2 :]:
        m = RUN_ID.match(line)
        if not m:
            break
        values[m.group(1)] = line[start:].split()[0]
    return values


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def metrics(archive: Path) -> dict[str, np.ndarray]:
    with h5py.File(archive, "r") as f:
        return {k: f["metrics"][k][:] for k in f["metrics"]}


@pytest.fixture
def sweep_dir(tmp_path, fashion_dir):
    """A copy of the fixture sweep directory, at <tmp>/out/<sweep name> (where `hpcdiff sweep
    --output <tmp>/out` looks for it). The runs' data.root is the Fashion-MNIST of fashion_dir."""
    dest = tmp_path / "out" / NAME
    shutil.copytree(FIXTURES / "sweeps" / NAME, dest)
    return dest


def test_fixture_is_what_make_py_wrote():
    """The premises, read from the files alone: two runs, no leftovers of the writing machine,
    run B's checkpoint stopped in the middle of an epoch, run A's archive as recorded."""
    sweep = FIXTURES / "sweeps" / NAME
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == sorted([A["id"], B["id"]])
    assert not [p for p in sweep.rglob("*") if p.name in (".lock", "stdout.txt", "slurm")]
    state = torch.load(sweep / B["id"] / "checkpoints" / B["checkpoint"], map_location="cpu", weights_only=True)
    assert state["epoch"] == B["checkpoint_epoch"] == 1
    assert state["partial"] == B["partial"] and 0 < state["partial"]["batch"]
    for run in (A, B):
        got = metrics(sweep / run["id"] / "archive.h5")
        assert sorted(got) == sorted(run["archive_metrics"])
        for k, v in run["archive_metrics"].items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_dry_run_finds_the_fixture_runs(sweep_dir):
    before = snapshot(sweep_dir)
    output = cli("sweep", SWEEP_FILE, "--dry-run", "--executor", "local", "--output", sweep_dir.parent)
    assert run_column(output, "action") == {A["id"]: "skip-done", B["id"]: "resume"}
    assert snapshot(sweep_dir) == before


def test_status_reads_the_states(sweep_dir):
    assert run_column(cli("status", sweep_dir), "state") == {A["id"]: "done", B["id"]: "timeout"}
    assert A["state"] == "done" and B["state"] == "timeout"


def test_training_a_done_run_changes_nothing(sweep_dir):
    run = sweep_dir / A["id"]
    before = snapshot(run)
    output = cli("train", run)
    assert output.strip().endswith(": done"), output
    after = snapshot(run)
    # The log says "already done"; the lock file is the training process's (host and pid).
    log_before = before.pop("log.txt")
    log_after = after.pop("log.txt")
    after.pop(".lock", None)
    assert log_after.startswith(log_before)
    assert after == before  # archive.h5, checkpoints, status.json, config.toml: same bytes
    assert run_column(cli("status", sweep_dir), "state")[A["id"]] == "done"


def test_resuming_the_stopped_run_gives_the_uninterrupted_losses(sweep_dir):
    run = sweep_dir / B["id"]
    output = cli("train", run)
    assert output.strip().endswith(": done"), output
    got = metrics(run / "archive.h5")
    ref = B["uninterrupted"]
    assert got["epoch"].tolist() == ref["epoch"] == [1, 2, 3]
    # Bit-identical on the generator's machine with OMP_NUM_THREADS=2 (the tests' default).
    # Another thread count, or another CPU (AVX2 vs AVX-512 kernels: seen 1.02e-6 relative on
    # epoch 3's val_loss), sums in another order and moves the last bits; a resume that went
    # wrong (another batch order, lost optimiser state) moves them by 1e-3 or more.
    np.testing.assert_allclose(got["train_loss"], ref["train_loss"], rtol=1e-5, atol=0)
    np.testing.assert_allclose(got["val_loss"], ref["val_loss"], rtol=1e-5, atol=0)
    # Epoch 1 was in the archive before the resume and is kept as it was.
    assert got["train_loss"][0] == B["archive_metrics"]["train_loss"][0]
    assert (run / "checkpoints" / "epoch_00003.pt").is_file()
    assert run_column(cli("status", sweep_dir), "state") == {A["id"]: "done", B["id"]: "done"}


def test_analyze_writes_the_same_runs_table(sweep_dir, tmp_path):
    """runs.csv of the sweep as it stands (A done, B timeout). Every column is compared:
    wall_seconds is the archives' recorded elapsed_seconds, not a clock read by analyze, so
    it is fixed by the fixture too."""
    out = tmp_path / "analysis"
    cli("analyze", sweep_dir, "--out", out)
    with open(out / "runs.csv", newline="") as f:
        got = list(csv.DictReader(f))
    with open(FIXTURES / "expected_runs.csv", newline="") as f:
        expected = list(csv.DictReader(f))
    assert [r["run_id"] for r in expected] and len(got) == len(expected) == 2
    assert list(got[0]) == list(expected[0])
    assert got == expected
