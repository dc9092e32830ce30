"""A sweep directory with KNOWN numbers, written through the real planner, run-directory and
archive code without training anything: the deterministic input of the golden analysis
tables (tests/golden/analysis/) and of the notebook API's tests.

Four runs (2 cases x 2 seeds): two done, one timed out after its first epoch, one pending
(no archive). The values are chosen to exercise the table formatting: 5 significant digits,
NaN between evaluations, tiny and huge numbers, a label with CSV and TeX special characters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers import fabricate_status

SWEEP = """
[sweep]
name = "golden"
seeds = [0, 1]

[[sweep.cases]]
label = "lr_lo, \\"q\\" & 50%"
train = { lr = 1e-3 }

[[sweep.cases]]
label = "lr_hi #2 ~x^y"
train = { lr = 2e-3 }

[data]
name = "mnist-5k"

[model]
hidden = [4, 4]

[diffusion]
n_T = 10

[train]
epochs = 3
batch_size = 64

[eval]
metrics = ["fid_classifier", "inception_score", "class_histogram", "diversity"]
every = 2
samples = 8
"""

LABELS = ['lr_lo, "q" & 50%', "lr_hi #2 ~x^y"]
# (label index, seed) -> (state, epochs written)
RUNS = {(0, 0): ("done", 3), (0, 1): ("done", 3), (1, 0): ("timeout", 1), (1, 1): ("pending", 0)}


def epoch_metrics(case: int, seed: int, epoch: int) -> dict[str, float]:
    """The archive row of one epoch: training series every epoch, quality metrics at the
    epochs [eval] every = 2 evaluates (2 and the last, 3)."""
    k = 1 + case + 2 * seed
    row = {
        "train_loss": 1.0 / (epoch + k) + 1e-7 * k,
        "val_loss": 1.1 / (epoch + k) + (0.3 if epoch == 3 else 0),
        "lr": 1e-3 * (1 + case),
        "epoch_seconds": 12.345678 * k,
        "elapsed_seconds": 12.345678 * k * epoch,
        "optimizer_steps": 62.0 * epoch,
        "images_per_second": 123456.789 / k,
    }
    if epoch in (2, 3):
        row.update(
            {
                "fid_classifier": 40.0 / (k + epoch) + 0.123456789,
                "inception_score": 2.0 + 0.25 * k * epoch,
                "inception_score_std": 0.0123456,
                "class_entropy": 0.9 - 0.01 * epoch,
                "diversity_trace": 1234567.891 * k,
            }
        )
        p = np.full(10, 0.05)
        p[(k + epoch) % 10] = 0.55
        row.update({f"class_{c}": float(p[c]) for c in range(10)})
    else:
        row["fid_classifier"] = float("nan")
    return row


def build(root: Path) -> Path:
    """Write the sweep under ``root``; returns the sweep directory."""
    from hpcdiff.launch.plan import plan_sweep
    from hpcdiff.storage import archive
    from hpcdiff.storage.rundir import RunDir, update_manifest, write_run_config

    sweep_file = Path(root) / "golden.toml"
    sweep_file.write_text(SWEEP)
    plan = plan_sweep(sweep_file, output=Path(root) / "runs")
    for run in plan.sweep.runs:
        rd = RunDir(plan.sweep_dir / run.run_id)
        write_run_config(rd, run.spec, run_id=run.run_id, sweep=plan.sweep.name, axes=run.axes, label=run.label)
        case, seed = LABELS.index(run.label), run.axes["train.seed"]
        state, epochs = RUNS[(case, seed)]
        fabricate_status(rd, state=state, epoch=epochs, epochs=3)
        if not epochs:
            continue
        archive.create(rd.archive, {"run_id": run.run_id, "config": rd.config_path.read_text()})
        for epoch in range(1, epochs + 1):
            grid = (np.arange(4 * 28 * 28).reshape(4, 28, 28) * (epoch + seed)) % 256
            archive.append_epoch(
                rd.archive,
                epoch,
                epoch_metrics(case, seed, epoch),
                {"images": grid.astype(np.uint8), "attrs": {"start": "noise"}},
            )
        if state == "done":
            archive.set_attrs(rd.archive, {"finished": True})
    update_manifest(plan.sweep_dir, plan.sweep, SWEEP)
    return plan.sweep_dir
