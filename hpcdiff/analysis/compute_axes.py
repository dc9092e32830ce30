"""Runs on a common compute axis: loss and every quality metric against optimiser steps and
against training time, so that runs of different speeds (a CNN and a UNet, two batch sizes)
are compared at equal compute rather than at equal epochs.

The x values are the archive's per-epoch ``optimizer_steps`` and ``elapsed_seconds`` (both
count across resumes). Archives written before ``optimizer_steps`` was recorded get it
derived from their config (whole epochs x optimiser steps per epoch: those runs had no
budgets, so every row ends a whole epoch) when the training-set size follows from the
config; otherwise the run is left out of the steps figures, with a warning.
"""

from __future__ import annotations

import math

import numpy as np

from hpcdiff.analysis.load import Run, metric_direction
from hpcdiff.config.catalog import DATASETS

# (series in the archive, axis label, scale, file-name slug)
AXES = (
    ("optimizer_steps", "optimizer steps", 1.0, "optimizer_steps"),
    ("elapsed_seconds", "training time (minutes)", 1 / 60, "training_time"),
)


def derived_optimizer_steps(config: dict, epochs: np.ndarray) -> np.ndarray | None:
    """Optimiser steps at the end of each whole epoch, from the run's config, or None."""
    data, train = config.get("data", {}), config.get("train", {})
    facts = DATASETS.get(data.get("name"))
    full = facts.train_images if facts else None  # only for deriving optimizer_steps of older archives
    if full is None or "batch_size" not in train:
        return None
    images = min(int(data.get("subset") or full), full)
    n_train = images - int(round(images * float(data.get("val_fraction", 0.2))))
    batches = max(1, n_train // train["batch_size"]) if n_train >= train["batch_size"] else 1
    return np.asarray(epochs, dtype=np.float64) * math.ceil(batches / int(train.get("grad_accumulation", 1)))


def axis_values(run: Run, axis: str) -> np.ndarray | None:
    """The run's x values on ``axis``, one per archive row, or None when unknown."""
    epochs = np.asarray(run.metrics.get("epoch", []))
    values = run.metrics.get(axis)
    derived = derived_optimizer_steps(run.config, epochs) if axis == "optimizer_steps" else None
    if values is not None and len(values) == len(epochs) and np.isfinite(values).any():
        values = np.asarray(values, dtype=np.float64)
        # An older run resumed by this version: its first rows predate the series.
        return values if derived is None else np.where(np.isfinite(values), values, derived)
    return derived


def series_on(run: Run, name: str, axis: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(x, values) of a metric on ``axis``, rows where both are finite."""
    x = axis_values(run, axis)
    values = np.asarray(run.metrics.get(name, []), dtype=np.float64)
    if x is None or len(x) != len(values):
        return np.empty(0), np.empty(0)
    ok = np.isfinite(x) & np.isfinite(values)
    return x[ok] * scale, values[ok]


def compute_axis_figures(fw, runs: list[Run], varying, quality: list[str], warnings: list[str], title) -> None:
    """``loss_vs_<axis>`` and ``metric_<m>_vs_<axis>`` for both axes. ``title(run, varying)``
    labels a run's line (figures.py's short title)."""
    for axis, label, scale, slug in AXES:
        placed = [r for r in runs if axis_values(r, axis) is not None]
        left_out = [r.run_id for r in runs if axis_values(r, axis) is None]
        if left_out:
            warnings.append(
                f"no {label} recorded for {', '.join(left_out)} (older archives): left out of the figures vs {label}"
            )
        if not placed:
            continue
        _loss_figure(fw, placed, varying, axis, label, scale, slug, title)
        for m in quality:
            if not m.endswith("_std"):
                _metric_figure(fw, placed, varying, m, (axis, label, scale, slug), title)


def _line(ax, run: Run, x, y, label) -> None:
    ax.plot(x, y, ls="-" if run.complete else "--", marker=".", label=label)


def _loss_figure(fw, runs, varying, axis, label, scale, slug, title) -> None:
    fig, axes = fw.plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    for ax, name in zip(axes.flat, ("train_loss", "val_loss")):
        for r in runs:
            x, y = series_on(r, name, axis, scale)
            if len(y):
                _line(ax, r, x, y, title(r, varying))
        ax.set_title(f"{name} vs {label}", fontsize=9)
        ax.set_xlabel(label)
        ax.set_ylabel(name)
    axes.flat[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fw.save(fig, f"loss_vs_{slug}", "At equal compute", f"Loss vs {label} (dashed: incomplete run)")


def _metric_figure(fw, runs, varying, metric: str, axis_spec, title) -> None:
    axis, label, scale, slug = axis_spec
    fig, ax = fw.plt.subplots(figsize=(7, 4))
    drawn = 0
    for r in runs:
        x, y = series_on(r, metric, axis, scale)
        if len(y):
            _line(ax, r, x, y, title(r, varying))
            drawn += 1
    if not drawn:
        fw.plt.close(fig)
        return
    better = {"min": " (lower is better)", "max": " (higher is better)"}.get(metric_direction(metric), "")
    ax.set_title(f"{metric} vs {label}{better}", fontsize=9)
    ax.set_xlabel(label)
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fw.save(fig, f"metric_{metric}_vs_{slug}", "At equal compute", f"{metric} vs {label}")
