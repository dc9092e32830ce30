"""The shipped sweep files: they expand, validate, and every run trains for one epoch."""

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hpcdiff.cli import main
from hpcdiff.resolve import load_sweep
from hpcdiff.storage import archive

JOBS = Path(__file__).resolve().parent.parent / "jobs"
# One epoch on a few real MNIST digits; everything that defines the experiment stays as shipped.
SMOKE = ["data.name=mnist-5k", "data.subset=160", "train.epochs=1", "train.n_samples=2", "eval.samples=8"]
# part1's ancestral chains are 100-2000 steps of the big CNN (minutes on CI's 2 cores): its
# smoke run samples with 5 DDIM steps instead and leaves the metrics (checked on quick and
# part2) out; the ancestral sampler itself is tested in test_diffusion.py.
SMOKE_BY_JOB = {
    "quick": SMOKE,
    "part2": SMOKE,
    "mnist-equal-time": SMOKE,
    "cold-diffusion": SMOKE,
    "part1": SMOKE + ["eval.metrics=[]", "diffusion.sampler=ddim", "diffusion.sample_steps=5"],
}


@pytest.mark.parametrize(
    "name,count", [("quick", 3), ("part1", 5), ("part2", 10), ("mnist-equal-time", 4), ("cold-diffusion", 11)]
)
def test_job_file_dry_run(name, count, tmp_path):
    result = CliRunner().invoke(main, ["sweep", str(JOBS / f"{name}.toml"), "--dry-run", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"{count} runs" in result.output
    assert not any(tmp_path.iterdir())


def test_part2_covers_every_cold_degradation():
    from hpcdiff.science.degradations import DEGRADATIONS

    names = {r.spec.degradation.name for r in load_sweep(JOBS / "part2.toml").runs}
    assert names == set(DEGRADATIONS.names()) - {"gaussian"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quick", "part1", "part2", "mnist-equal-time", "cold-diffusion"])
def test_every_run_trains_one_epoch(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["sweep", str(JOBS / f"{name}.toml"), "--executor", "debug", "--output", str(tmp_path)]
    for s in SMOKE_BY_JOB[name]:
        args += ["--set", s]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    sweep = load_sweep(JOBS / f"{name}.toml", SMOKE_BY_JOB[name])
    for run in sweep.runs:
        data = archive.read(tmp_path / name / run.run_id / "archive.h5")
        assert data["metrics"]["epoch"].tolist() == [1], run.label
        sample = data["samples"][1]
        assert sample["images"].shape == (2, 28, 28)
        if run.spec.eval.metrics:
            assert np.isfinite(data["metrics"]["fid_classifier"]).all(), run.label
            assert 1.0 <= data["metrics"]["inception_score"][0] <= 10.0
            # scored by the shipped classifier: a fresh machine trains none
            assert data["attrs"]["classifier"] == "mnist-reference-v1" and data["attrs"]["classifier_from_epoch"] == 1
        if run.spec.degradation.name != "gaussian":
            assert {"recon_direct_mse", "recon_full_mse", "recon_degraded_mse"} <= set(data["metrics"])
        expected_start = {
            "noise": "noise",
            "channel_mean": "channel-mean",
            "prior": "prior",
            "degraded_test": "degraded",
        }[run.spec.diffusion.sample_start]
        assert expected_start in sample["attrs"]["start"], run.label
    _check_console_tables(tmp_path / name, sweep, result.output)


def _check_console_tables(sweep_dir, sweep, sweep_output):
    """status and analyze of the trained sweep, at 80 columns and piped (CliRunner is not a
    terminal): one line per run plus a header (title, column names, rule) and a footer,
    nothing cut; the sweep's own summary ends with the same status table."""
    n = len(sweep.runs)
    env = {"COLUMNS": "80"}
    os.chdir(sweep_dir.parent)  # relative paths: the titles are short, as in a user's shell
    status = CliRunner(env=env).invoke(main, ["status", sweep_dir.name])
    lines = status.output.splitlines()
    assert status.exit_code == 0 and len(lines) == 3 + n + 1, status.output
    assert lines[1].split()[:4] == ["run", "label", "state", "progress"] or lines[1].split()[:2] == ["run", "label"]
    assert lines[-1] == f"{n} done ({n} runs)"
    assert "…" not in status.output and all(len(line) <= 80 for line in lines), status.output
    # the sweep's summary (its own width, piped) holds the same rows
    assert all(line in sweep_output.splitlines() for line in lines[3 : 3 + n]), sweep_output
    for line in lines[3 : 3 + n]:  # one epoch ended each run (the smoke settings), not a budget
        assert "  1/1 ep" in line, line
    analysis = CliRunner(env=env).invoke(main, ["analyze", sweep_dir.name, "--out", "analysis"])
    lines = analysis.output.splitlines()
    assert analysis.exit_code == 0, analysis.output
    assert "…" not in analysis.output and all(len(line) <= 80 for line in lines), analysis.output
    assert lines[1].split()[:3] == ["#", "run", "label"] and set(lines[2]) <= {"-", " "}
    ranked = [line.split()[1] for line in lines[3 : 3 + n]]
    assert sorted(ranked) == sorted(run.run_id for run in sweep.runs)
    assert lines[3 + n].startswith("ranked by ") and lines[-1].startswith("wrote ")
    footer = lines[3 + n :]
    assert all(line.startswith(("ranked by", "(not shown", "warning:", "wrote")) for line in footer), footer


def test_shipped_cold_sweeps_generate_and_restore():
    """part2 keeps the reports' settings (restorations, labelled) and adds generative
    variants; the results sweep has both kinds for every degradation that can generate."""
    from hpcdiff.config.spec import start_measures

    for name in ("part2", "cold-diffusion"):
        kinds = {r.label: start_measures(r.spec.diffusion.sample_start) for r in load_sweep(JOBS / f"{name}.toml").runs}
        assert kinds["impulse-generative"] == "generation" and kinds["inpaint-generative"] == "generation"
        assert kinds["blur-bansal"] == kinds["downsample"] == "generation"
        assert kinds["inpaint-bansal"] == "restoration"
    part2 = {r.label: r.spec for r in load_sweep(JOBS / "part2.toml").runs}
    assert part2["impulse-dropout-plateau"].degradation.params["rho_end"] == 0.25  # report C4, as it was
