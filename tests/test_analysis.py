"""`hpcdiff analyze` and the degradation strips, on real tiny runs of the real trainer on
real Fashion-MNIST IDX files.

One sweep (2 cases x 2 seeds) is trained once for the module: two runs finish, one is
cut back to its first epoch and marked failed (a run killed mid-sweep), one is never
launched (pending). Quality metrics that need a trained classifier (FID, IS, class
histogram) are too slow for a unit test, so a copy of the sweep gets INJECTED rows of them,
with known values, written through the real archive API; diversity_trace is real (the
trainer computes it at the last epoch).
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpcdiff.analysis.load import metric_direction
from hpcdiff.analysis.report import analyze
from hpcdiff.analysis.strips import DPI, degradation_strips, strip_figure_size, strip_levels
from hpcdiff.config.spec import DataSpec
from hpcdiff.science.degradations import DEGRADATION_INFO, DEGRADATIONS
from hpcdiff.storage import archive
from hpcdiff.storage.rundir import RunDir

from helpers import fabricate_status

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SWEEP = """
[sweep]
name = "ana"
seeds = [0, 1]

[[sweep.cases]]
label = "lr_lo & 50%"
train = {{ lr = 1e-3 }}

[[sweep.cases]]
label = "lr_hi #2"
train = {{ lr = 2e-3 }}

[data]
name = "idx"
root = "{root}"
subset = 256

[model]
hidden = [4, 4]

[diffusion]
n_T = 10

[train]
epochs = 2
batch_size = 64
n_samples = 4
sample_every = 1

[eval]
metrics = ["diversity"]
samples = 8
reconstruction = false
"""

# INJECTED quality metrics (not computed by a model): fid_classifier per epoch, chosen so
# that the best epoch differs between runs and the order is known.
INJECTED_FID = {("lr_lo & 50%", 0): [30.0, 20.0], ("lr_lo & 50%", 1): [15.0, 25.0], ("lr_hi #2", 0): [40.0]}
INJECTED_IS = {("lr_lo & 50%", 0): 3.0, ("lr_lo & 50%", 1): 5.0}


def _data_spec() -> DataSpec:
    return DataSpec(name="idx", root=str(FASHION_DIR))


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    from hpcdiff.launch.plan import execute_plan, plan_sweep

    root = tmp_path_factory.mktemp("analysis")
    sweep_file = root / "ana.toml"
    sweep_file.write_text(SWEEP.format(root=FASHION_DIR))
    plan = plan_sweep(sweep_file, output=root / "runs")
    assert len(plan.runs) == 4
    key = lambda pr: (pr.label, pr.axes["train.seed"])  # noqa: E731
    never = next(pr for pr in plan.runs if key(pr) == ("lr_hi #2", 1))
    never.action = "skip-done"  # its directory is written, but it is never trained
    report = execute_plan(plan, executor="debug", show_progress=False)
    assert sorted(report.results.values()) == ["done"] * 3
    # A run killed after its first epoch: archive cut back to epoch 1, status failed.
    cut = RunDir(next(pr for pr in plan.runs if key(pr) == ("lr_hi #2", 0)).run_dir.path)
    archive.truncate_after(cut.archive, 1)
    fabricate_status(cut, state="failed", epoch=1)
    return plan.sweep_dir


def _run_keys(sweep_dir: Path) -> dict[str, tuple[str, int]]:
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    return {rid: (r["label"], r["axes"]["train.seed"]) for rid, r in manifest["runs"].items()}


def _inject(path: Path, extra: dict[int, dict[str, float]]) -> None:
    """Rewrite every epoch of an archive with the INJECTED metrics added (samples kept)."""
    data = archive.read(path)
    m = data["metrics"]
    for i, epoch in enumerate(m["epoch"].tolist()):
        row = {k: float(v[i]) for k, v in m.items() if k != "epoch"}
        row.update(extra.get(epoch, {}))
        s = data["samples"].get(epoch)
        samples = None if s is None else {"images": s["images"], "attrs": s["attrs"], "starts": s.get("starts")}
        archive.append_epoch(path, epoch, row, samples)


@pytest.fixture(scope="module")
def injected(sweep_dir, tmp_path_factory) -> Path:
    """A copy of the sweep with INJECTED fid_classifier / inception_score / class_k rows."""
    copy = tmp_path_factory.mktemp("injected") / "ana"
    shutil.copytree(sweep_dir, copy)
    for rid, key in _run_keys(copy).items():
        path = copy / rid / "archive.h5"
        if not path.exists():
            continue
        extra: dict[int, dict[str, float]] = {}
        for i, fid in enumerate(INJECTED_FID.get(key, [])):
            extra.setdefault(i + 1, {})["fid_classifier"] = fid
        if key in INJECTED_IS:
            p = np.full(10, 0.05)
            p[key[1] + 3] = 0.55  # seed 0 -> class 3, seed 1 -> class 4
            extra.setdefault(2, {}).update(
                {
                    "inception_score": INJECTED_IS[key],
                    "inception_score_std": 0.1,
                    "class_entropy": 0.8,
                    **{f"class_{c}": p[c] for c in range(10)},
                }
            )
        _inject(path, extra)
    return copy


@pytest.fixture(scope="module")
def full(injected, tmp_path_factory):
    """analyze with every table and figure, on the injected copy."""
    out = tmp_path_factory.mktemp("out")
    return analyze(injected, out), _run_keys(injected)


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_runs_table_rows_columns_states_on_real_runs(sweep_dir, tmp_path):
    result = analyze(sweep_dir, tmp_path, figures=False)
    keys = _run_keys(sweep_dir)
    rows = {r["run_id"]: r for r in _csv(tmp_path / "runs.csv")}
    assert set(rows) == set(keys)
    header = list(next(iter(rows.values())))
    for col in (
        "run_id",
        "label",
        "train.lr",
        "train.seed",
        "state",
        "epochs",
        "final_train_loss",
        "best_val_loss",
        "best_val_loss_epoch",
        "wall_seconds",
        "final_diversity_trace",
    ):
        assert col in header, col
    assert "best_diversity_trace" not in header  # diversity has no "best" (direction: final)
    by_key = {keys[rid]: r for rid, r in rows.items()}
    assert by_key[("lr_lo & 50%", 0)]["state"] == "done" and by_key[("lr_lo & 50%", 0)]["epochs"] == "2/2"
    assert by_key[("lr_hi #2", 0)]["state"] == "failed" and by_key[("lr_hi #2", 0)]["epochs"] == "1/2"
    assert by_key[("lr_hi #2", 1)]["state"] == "pending" and by_key[("lr_hi #2", 1)]["epochs"] == "0/2"
    assert by_key[("lr_hi #2", 1)]["best_val_loss"] == ""  # no archive: empty, not a crash
    assert float(by_key[("lr_lo & 50%", 1)]["train.lr"]) == 1e-3
    # Real diversity only where the last epoch was evaluated.
    assert float(by_key[("lr_lo & 50%", 0)]["final_diversity_trace"]) > 0
    assert by_key[("lr_hi #2", 0)]["final_diversity_trace"] == ""
    assert sorted(result.incomplete) == sorted(rid for rid, k in keys.items() if k[0] == "lr_hi #2")
    # Default sort without FID: best val loss ascending, the run without one last.
    vals = [r["best_val_loss"] for r in _csv(tmp_path / "runs.csv")]
    assert vals[-1] == "" and [float(v) for v in vals[:-1]] == sorted(float(v) for v in vals[:-1])
    assert result.sort_by == "best_val_loss"


def test_quality_columns_and_sort_order(full, injected, tmp_path):
    result, keys = full
    assert result.sort_by == "best_fid_classifier"
    cols = result.columns
    for col in (
        "best_fid_classifier",
        "best_fid_classifier_epoch",
        "final_fid_classifier",
        "best_inception_score",
        "final_inception_score",
        "final_inception_score_std",
        "best_class_entropy",
        "final_diversity_trace",
    ):
        assert col in cols, col
    assert not any(re.fullmatch(r"(best|final)_class_\d+", c) for c in cols)  # per-class -> per_class.csv
    rows = _csv(result.out_dir / "runs.csv")
    order = [keys[r["run_id"]] for r in rows]
    # best FID: (lo,1)=15 @1, (lo,0)=20 @2, (hi,0)=40 @1, pending run last.
    assert order == [("lr_lo & 50%", 1), ("lr_lo & 50%", 0), ("lr_hi #2", 0), ("lr_hi #2", 1)]
    assert [r["best_fid_classifier"] for r in rows] == ["15", "20", "40", ""]
    assert [r["final_fid_classifier"] for r in rows] == ["25", "20", "40", ""]
    assert [r["best_fid_classifier_epoch"] for r in rows] == ["1", "2", "1", ""]

    by_is = analyze(injected, tmp_path / "is", sort_by="best_inception_score", figures=False)
    assert metric_direction("inception_score") == "max"
    assert [keys[r["run_id"]] for r in by_is.rows][:2] == [("lr_lo & 50%", 1), ("lr_lo & 50%", 0)]  # 5 > 3
    assert "best_inception_score_epoch" in by_is.columns
    by_lr = analyze(injected, tmp_path / "lr", sort_by="train.lr", figures=False)
    assert [r["train.lr"] for r in by_lr.rows] == [1e-3, 1e-3, 2e-3, 2e-3]

    per_class = _csv(result.out_dir / "per_class.csv")
    assert len(per_class) == 2 and {r["metric"] for r in per_class} == {"class"}
    for r in per_class:
        assert float(r[str(keys[r["run_id"]][1] + 3)]) == pytest.approx(0.55)


def test_unknown_sort_column_raises_before_writing(injected, tmp_path):
    with pytest.raises(ValueError, match=r"best_fid_classifier.*valid: .*best_val_loss"):
        analyze(injected, tmp_path / "x", sort_by="best_fid")
    assert not (tmp_path / "x").exists()


def test_configs_table_mean_std_over_seeds(full):
    result, keys = full
    rows = _csv(result.out_dir / "configs.csv")
    assert [r["label"] for r in rows] == ["lr_lo & 50%", "lr_hi #2"]  # sorted by best FID mean
    lo, hi = rows
    assert (lo["n_seeds"], lo["n_incomplete"], lo["seeds"]) == ("2", "0", "(0, 1)")
    assert (hi["n_seeds"], hi["n_incomplete"]) == ("2", "2")
    assert float(lo["best_fid_classifier_mean"]) == pytest.approx(17.5)
    assert float(lo["best_fid_classifier_std"]) == pytest.approx(np.std([15.0, 20.0], ddof=1), rel=1e-4)
    runs = [r for r in result.rows if r["label"] == "lr_lo & 50%"]
    vals = [r["best_val_loss"] for r in runs]
    assert float(lo["best_val_loss_mean"]) == pytest.approx(np.mean(vals), rel=1e-4)
    assert float(lo["best_val_loss_std"]) == pytest.approx(np.std(vals, ddof=1), rel=1e-3)
    # One seed with a value: a mean, no std.
    assert float(hi["best_fid_classifier_mean"]) == 40.0 and hi["best_fid_classifier_std"] == ""
    md = (result.out_dir / "configs.md").read_text()
    assert "17.5 ± 3.5" in md


def test_latex_tables_escape_special_characters(full):
    result, _ = full
    for stem in ("runs", "configs", "per_class"):
        tex = (result.out_dir / f"{stem}.tex").read_text()
        assert "\\begin{tabular}" in tex and "\\toprule" in tex and "\\end{tabular}" in tex
        body = [line for line in tex.splitlines() if line.endswith("\\\\")]
        n_cols = body[0].count(" & ") + 1
        for line in body:
            assert line.count(" & ") == n_cols - 1, line  # the label's '&' is escaped, not a column
            assert not re.search(r"(?<!\\)[_%#$]", line.replace("$\\pm$", "")), line
    runs_tex = (result.out_dir / "runs.tex").read_text()
    assert "val loss" in runs_tex and r"lr\_lo \& 50\%" in runs_tex and r"lr\_hi \#2" in runs_tex


def test_figures_are_valid_pngs_with_pdfs_and_indexed(full):
    result, keys = full
    out = result.out_dir
    pngs = {p.name for p in out.glob("*.png")}
    with_archive = [rid for rid, k in keys.items() if k != ("lr_hi #2", 1)]
    expected = {
        "loss_curves.png",
        "samples.png",
        "metric_fid_classifier.png",
        "metric_inception_score.png",
        "metric_class_entropy.png",
        "metric_diversity_trace.png",
        "best_fid_classifier_vs_train.lr.png",
        "best_val_loss_vs_train.lr.png",
        "class_histograms.png",
        "strip_gaussian.png",
        "degradation_strips.png",
        *{f"samples_{rid}.png" for rid in with_archive},
    }
    # At equal compute: loss and each metric vs optimiser steps and vs training time.
    for axis in ("optimizer_steps", "training_time"):
        expected |= {
            f"loss_vs_{axis}.png",
            *(
                f"metric_{m}_vs_{axis}.png"
                for m in ("fid_classifier", "inception_score", "class_entropy", "diversity_trace")
            ),
        }
    assert pngs == expected, pngs ^ expected
    assert {p.name for p in result.files if p.suffix == ".png"} == expected
    index = (out / "index.md").read_text()
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 2000, name
        w, h = Image.open(out / name).size
        assert w > 100 and h > 100, name
        pdf = (out / name).with_suffix(".pdf")
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000, pdf
        assert f"]({name})" in index, name
    # Every table is shown, the incomplete runs are named, and the real images were found.
    for stem in ("runs", "configs", "per_class"):
        assert (out / f"{stem}.md").read_text() in index
    for rid in result.incomplete:
        assert f"`{rid}`" in index
    assert "real held-out images first" in index and not result.warnings
    # Which samples the metrics came from, read off the runs' resolved configs.
    assert result.evaluation == [
        "8 samples per evaluation, drawn with `ddim` on all n_T steps; every run at its last epoch only"
    ]
    assert result.evaluation[0] in index


def test_degradation_strips_one_png_per_degradation(tmp_path):
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    names = DEGRADATIONS.names()
    files = degradation_strips(None, tmp_path, data_spec=_data_spec(), n_images=3, n_levels=5, n_steps={"blur": 10})
    assert [p.name for p in files] == [f"strip_{n}.png" for n in names] + ["degradation_strips.png"]
    width, height = strip_figure_size(3, 5)
    for name, path in zip(names, files):
        img = Image.open(path)
        meta = json.loads(img.info["Description"])
        T = 10 if name == "blur" else DEGRADATION_INFO[name].n_steps
        assert meta["degradation"] == name and meta["rows"] == 3 and meta["n_steps"] == T
        assert meta["levels"] == strip_levels(T, 5) and meta["levels"][0] == 0 and meta["levels"][-1] == T
        assert len(meta["levels"]) == 5
        assert img.size == (round(width * DPI), round(height * DPI))  # 3 x 5 panels
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
        assert pixels.std() > 10  # not blank
    combined = Image.open(files[-1])
    meta = json.loads(combined.info["Description"])
    assert meta["degradations"] == names and meta["rows"] == len(names)
    w, h = strip_figure_size(len(names), 5)
    assert combined.size == (round(w * DPI), round(h * DPI))

    # A pure function of its inputs: same seed, same picture; another seed, other images.
    again = degradation_strips(["impulse"], tmp_path / "again", data_spec=_data_spec(), n_images=3, n_levels=5)
    assert again[0].read_bytes() == files[names.index("impulse")].read_bytes()
    other = degradation_strips(["impulse"], tmp_path / "other", data_spec=_data_spec(), n_images=3, n_levels=5, seed=1)
    assert other[0].read_bytes() != again[0].read_bytes()
    with pytest.raises(KeyError, match="did you mean"):
        degradation_strips(["impluse"], tmp_path, data_spec=_data_spec())


def test_strip_levels_are_even_and_inclusive():
    assert strip_levels(1000, 8) == [0, 143, 286, 429, 571, 714, 857, 1000]
    assert strip_levels(20, 5) == [0, 5, 10, 15, 20]
    assert strip_levels(3, 8) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        strip_levels(0, 8)
    assert math.isclose(
        strip_figure_size(2, 4)[0] - strip_figure_size(2, 3)[0], strip_figure_size(3, 4)[1] - strip_figure_size(2, 4)[1]
    )


def test_damaged_archive_and_nan_metrics_do_not_crash(sweep_dir, tmp_path):
    copy = tmp_path / "ana"
    shutil.copytree(sweep_dir, copy)
    keys = _run_keys(copy)
    damaged = next(rid for rid, k in keys.items() if k == ("lr_lo & 50%", 0))
    (copy / damaged / "archive.h5").write_bytes(b"not an HDF5 file")
    nan_run = next(rid for rid, k in keys.items() if k == ("lr_lo & 50%", 1))
    _inject(copy / nan_run / "archive.h5", {1: {"fid_classifier": float("nan")}, 2: {"fid_classifier": float("nan")}})
    result = analyze(copy, tmp_path / "out", sort_by="final_fid_classifier")
    assert any(damaged in w and "archive" in w for w in result.warnings)
    rows = {r["run_id"]: r for r in _csv(tmp_path / "out" / "runs.csv")}
    assert len(rows) == 4 and rows[nan_run]["final_fid_classifier"] == "" and rows[damaged]["epochs"] == "0/2"
    assert rows[damaged]["state"] == "done (archive unreadable)" and damaged in result.incomplete
    assert f"`{damaged}`: done (archive unreadable)" in (tmp_path / "out" / "index.md").read_text()
    assert (tmp_path / "out" / "loss_curves.png").read_bytes()[:8] == PNG_MAGIC


def test_titles_beside_a_label_show_only_what_varies_within_it():
    """A CNN case beside a UNet case varies a dozen keys; the label names them, so a title
    is the label and what differs among that label's runs (the seed, a product axis)."""
    from hpcdiff.analysis.figures import _short_title, title_keys
    from hpcdiff.analysis.load import Run

    def run(rid, label, **row):
        return Run(rid, {"label": label, "state": "done", **row}, {}, {}, {})

    varying = ["model.hidden", "model.channel_mults", "train.lr", "train.seed"]
    runs = [run("a", "cnn", **{"model.hidden": [16, 32], "train.lr": 2e-4, "train.seed": s}) for s in (0, 1)]
    runs += [
        run(f"u{s}{lr}", "unet", **{"model.channel_mults": [1, 2], "train.lr": lr, "train.seed": s})
        for s in (0, 1)
        for lr in (1e-3, 2e-3)
    ]
    keys = title_keys(runs, varying)
    assert keys == ["train.lr", "train.seed"]
    assert _short_title(runs[0], keys) == "cnn lr=0.0002 seed=0"
    assert _short_title(runs[2], keys) == "unet lr=0.001 seed=0"
    unlabeled = [run("x", "", **{"train.lr": 1e-3, "model.hidden": [4]}), run("y", "", **{"train.lr": 2e-3})]
    assert title_keys(unlabeled, varying[:3]) == varying[:3]
    assert _short_title(unlabeled[1], varying[:3]) == "lr=0.002"  # no "hidden=" for a key it lacks


MIXED_SWEEP = """
[sweep]
name = "mixed"

[[sweep.cases]]
label = "ddpm"

[[sweep.cases]]
label = "inpaint-restores"
degradation = { name = "inpaint" }
diffusion = { n_T = 10, loss = "l1" }

[[sweep.cases]]
label = "blur-generates"
degradation = { name = "blur" }
diffusion = { n_T = 20, loss = "l1", sample_start = "prior" }

[data]
name = "mnist-5k"

[model]
hidden = [4, 4]

[diffusion]
n_T = 10

[train]
epochs = 1

[eval]
metrics = ["fid_classifier", "inception_score"]
samples = 8
"""


def test_restorations_are_labelled_and_ranked_apart_from_generations(tmp_path):
    """Inpainting from degraded test images has the best FID of the sweep (the digit is still
    visible at its start), yet it is ranked only among restorations: the runs table says what
    each run's samples measure, generations come first, and the index ranks each kind on its
    own; figures name the restoration."""
    import csv

    import numpy as np

    from hpcdiff.analysis.report import analyze
    from hpcdiff.launch.plan import plan_sweep
    from hpcdiff.storage import archive
    from hpcdiff.storage.rundir import RunDir, update_manifest, write_run_config

    sweep_file = tmp_path / "mixed.toml"
    sweep_file.write_text(MIXED_SWEEP)
    plan = plan_sweep(sweep_file, output=tmp_path / "runs")
    fid = {"ddpm": 290.0, "inpaint-restores": 33.0, "blur-generates": 500.0}
    for run in plan.sweep.runs:
        rd = RunDir(plan.sweep_dir / run.run_id)
        write_run_config(rd, run.spec, run_id=run.run_id, sweep=plan.sweep.name, axes=run.axes, label=run.label)
        fabricate_status(rd, state="done", epoch=1, epochs=1)
        archive.create(rd.archive, {"run_id": run.run_id, "config": rd.config_path.read_text()})
        archive.append_epoch(
            rd.archive,
            1,
            {"train_loss": 0.1, "fid_classifier": fid[run.label], "inception_score": 3.0},
            {"images": np.zeros((4, 28, 28), np.uint8), "attrs": {"start": "x"}},
        )
    update_manifest(plan.sweep_dir, plan.sweep, MIXED_SWEEP)
    result = analyze(plan.sweep_dir, tmp_path / "out")
    order = [(r["label"], r["measures"]) for r in result.rows]
    assert order == [("ddpm", "generation"), ("blur-generates", "generation"), ("inpaint-restores", "restoration")]
    with open(tmp_path / "out" / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["measures"] for r in rows] == ["generation", "generation", "restoration"]
    index = (tmp_path / "out" / "index.md").read_text()
    gen = index.index("**Generations")
    rest = index.index("**Restorations of held-out test images (not comparable with generations)")
    assert gen < rest and "1. `" in index[rest:] and "inpaint-restores: 33" in index[rest:]
    assert "inpaint-restores" not in index[gen:rest]
    assert "inpaint-restores (restoration)" in index


def test_ssim_from_before_the_standard_definition_is_flagged(tmp_path):
    """An archive without `ssim_standard_from_epoch` (written by an older hpcdiff) holds
    torchmetrics' padded SSIM: analyze says so instead of mixing it with standard values;
    one resumed across the change says from which epoch its values are standard."""
    from hpcdiff.analysis.load import read_run
    from hpcdiff.storage import archive
    from hpcdiff.storage.rundir import RunDir

    rd = RunDir(tmp_path / "abc")
    rd.path.mkdir()
    archive.create(rd.archive, {"run_id": "abc"})
    for epoch in (1, 2):
        archive.append_epoch(rd.archive, epoch, {"train_loss": 0.1, "recon_full_ssim": 0.8})
    warnings: list[str] = []
    read_run(rd, [], warnings)
    assert any("SSIM of every epoch is torchmetrics' padded" in w for w in warnings), warnings
    archive.set_attrs(rd.archive, {"ssim_standard_from_epoch": 2})
    warnings.clear()
    read_run(rd, [], warnings)
    assert any("SSIM before epoch 2" in w for w in warnings), warnings
    archive.set_attrs(rd.archive, {"ssim_standard_from_epoch": 1})
    warnings.clear()
    read_run(rd, [], warnings)
    assert not any("SSIM" in w for w in warnings), warnings


def test_a_sweep_scored_by_several_classifiers_says_which_runs_each_scored(tmp_path):
    """IS and classifier-FID compare only within one classifier: runs scored by the shipped
    reference beside runs of an older hpcdiff (a classifier trained where they ran) are
    named by group; one resumed across the change says from which epoch. One classifier
    for every run: no warning (the control)."""
    from hpcdiff.analysis.load import check_classifiers, read_run

    runs, warnings = [], []
    for name, attrs in (
        ("old", {}),
        ("new", {"classifier": "mnist-reference-v1", "classifier_from_epoch": 1}),
        ("resumed", {"classifier": "mnist-reference-v1", "classifier_from_epoch": 2}),
    ):
        rd = RunDir(tmp_path / name)
        rd.path.mkdir()
        archive.create(rd.archive, {"run_id": name})
        for epoch in (1, 2):
            archive.append_epoch(rd.archive, epoch, {"train_loss": 0.1, "fid_classifier": 50.0 - epoch})
        archive.set_attrs(rd.archive, attrs)
        runs.append(read_run(rd, [], warnings))
    assert [r.scored_by for r in runs] == ["", "mnist-reference-v1", "mnist-reference-v1"]
    assert [w for w in warnings if "config.toml" not in w] == [
        "resumed: IS/FID before epoch 2 were scored by another classifier than mnist-reference-v1 "
        "(the run was resumed across the change)"
    ]
    check_classifiers(runs, warnings)
    assert "2 classifiers" in warnings[-1] and "mnist-reference-v1: new, resumed" in warnings[-1]
    assert "unrecorded (trained where the run ran): old" in warnings[-1]
    warnings.clear()
    check_classifiers(runs[1:], warnings)
    assert warnings == []


@pytest.mark.parametrize("epochs", [[4], [1, 2, 3, 10]])
def test_epoch_axes_show_whole_epochs_even_when_one_epoch_was_scored(epochs):
    """Metrics scored only at the last epoch (the default) put one point per run on the
    epoch axis: its ticks must be that epoch, not 3.80, 3.85, ..."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpcdiff.analysis.figures import _integer_ticks

    fig, ax = plt.subplots()
    ax.plot(epochs, [1.0] * len(epochs), "o")
    ax.xaxis.set_major_locator(_integer_ticks())
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    visible = [float(t) for t in ax.get_xticks() if lo <= t <= hi]
    plt.close(fig)
    assert visible and all(t.is_integer() for t in visible)
    if len(epochs) == 1:
        assert visible == epochs
