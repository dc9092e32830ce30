"""A sweep and a run as pandas objects, for notebooks: ``hpcdiff.load_results(sweep_dir)``
and ``hpcdiff.load_run(run_dir)``.

They read what ``hpcdiff analyze`` reads (:mod:`hpcdiff.analysis.load`: config.toml,
status.json, archive.h5), so the columns mean the same thing as the runs table's, and they
work on partly finished sweeps: a pending run has its row with missing numbers, a running or
killed one has the epochs it finished. Nothing here imports torch (a notebook on a login node
starts in a second); h5py, numpy and pandas only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcdiff.analysis.load import load_runs, read_run
from hpcdiff.storage import runstate
from hpcdiff.storage.rundir import RunDir, read_manifest


def load_results(sweep_dir: str | Path):
    """One row per run of a sweep directory, indexed by run id (a pandas DataFrame).

    Columns: ``label``, the sweep's varying axes (``train.lr``, ``train.seed``...),
    ``state``, ``epoch`` (epochs finished) and ``epochs`` (planned), the runs table's
    summary columns (``final_/best_train_loss``, ``final_/best_val_loss``,
    ``best_val_loss_epoch``, ``wall_seconds``, ``best_<metric>``, ``best_<metric>_epoch``,
    ``final_<metric>``), then the paths ``run_dir``, ``config`` and ``archive`` (missing
    before a run has written one). ``df.attrs``: ``sweep`` (its name), ``varying`` and
    ``warnings`` (runs that could not be read)."""
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a sweep directory")
    manifest = read_manifest(sweep_dir)
    varying = list(manifest.get("varying", []))
    warnings: list[str] = []
    rows = []
    for run in load_runs(sweep_dir, varying, warnings):
        row = dict(run.row)
        done, _, planned = row.pop("epochs").partition("/")
        row["epoch"], row["epochs"] = int(done), int(planned)
        rd = RunDir(sweep_dir / run.run_id)
        row.update(
            run_dir=str(rd.path), config=str(rd.config_path), archive=str(rd.archive) if rd.archive.exists() else None
        )
        rows.append(row)
    head = ["run_id", "label", *varying, "state", "epoch", "epochs"]
    columns = (
        head
        + sorted({c for r in rows for c in r} - set(head) - {"run_dir", "config", "archive"}, key=_column_order)
        + ["run_dir", "config", "archive"]
    )
    df = pd.DataFrame(rows, columns=columns).set_index("run_id")
    df = df.infer_objects()  # numeric columns with missing values become float with NaN
    df.attrs.update(sweep=manifest.get("name", sweep_dir.name), varying=varying, warnings=warnings)
    return df


def _column_order(column: str) -> tuple:
    """Losses and wall time first (as in the runs table), then the metrics by name."""
    from hpcdiff.analysis.load import TRAINING_COLUMNS

    if column in TRAINING_COLUMNS:
        return (0, TRAINING_COLUMNS.index(column), "")
    return (1, 0, column)


# Training series first, in the order the trainer records them; quality metrics after, by name.
_TRAINING_ORDER = (
    "train_loss",
    "val_loss",
    "lr",
    "epoch_seconds",
    "elapsed_seconds",
    "optimizer_steps",
    "images_per_second",
)


def _series_order(name: str) -> tuple:
    return (0, _TRAINING_ORDER.index(name), "") if name in _TRAINING_ORDER else (1, 0, name)


@dataclass
class RunResults:
    """One run, read back: ``metrics`` (a DataFrame indexed by epoch, one column per
    series: train_loss, val_loss, lr, images_per_second, elapsed_seconds, optimizer_steps
    and every quality metric; NaN where a metric was not computed), ``samples`` (epoch ->
    uint8 array [n, H, W] of that epoch's sample grid), ``config`` (the resolved config as
    a dict, as in config.toml), ``status`` (status.json), ``axes`` and ``label``."""

    run_id: str
    path: Path
    metrics: object
    samples: dict[int, np.ndarray]
    config: dict
    status: dict
    axes: dict = field(default_factory=dict)
    label: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        return str(runstate.parse(self.status.get("state")))


def load_run(run_dir: str | Path) -> RunResults:
    """A run directory's per-epoch metrics, sample grids and resolved config (see
    :class:`RunResults`). A run without an archive yet has an empty ``metrics``."""
    import pandas as pd

    rd = RunDir(Path(run_dir))
    if not rd.config_path.is_file():
        raise FileNotFoundError(f"{rd.path} is not a run directory (no config.toml)")
    warnings: list[str] = []
    run = read_run(rd, [], warnings)
    names = sorted((k for k in run.metrics if k != "epoch"), key=_series_order)
    series = {k: np.asarray(run.metrics[k]) for k in names}
    epochs = pd.Index(np.asarray(run.metrics.get("epoch", []), dtype=np.int64), name="epoch")
    metrics = pd.DataFrame(series, index=epochs)
    samples = {epoch: entry["images"] for epoch, entry in run.samples.items()}
    return RunResults(
        run_id=rd.run_id,
        path=rd.path,
        metrics=metrics,
        samples=samples,
        config=run.config,
        status=rd.read_status(),
        axes=run.axes,
        label=run.row.get("label", ""),
        warnings=warnings,
    )
