"""Runs in memory -> matplotlib figures, each saved as PNG and PDF and listed for the index.

``loss_curves``, ``metric_<name>`` (each quality metric vs epoch, all runs), the same
against optimiser steps and training time (:mod:`hpcdiff.analysis.compute_axes`),
``<column>_vs_<axis>`` (a column of the runs table against each varying axis), ``samples``
(the last sample grid of every run side by side, real held-out images first),
``samples_<run_id>`` (one run's start and samples), ``class_histograms``, and the
degradation strips of :mod:`hpcdiff.analysis.strips`. Incomplete runs are drawn dashed,
hollow or with a red title. matplotlib is imported when the first figure is drawn.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields as dataclass_fields
from pathlib import Path

import numpy as np

from hpcdiff.analysis.compute_axes import compute_axis_figures
from hpcdiff.analysis.load import PER_CLASS, Run, metric_direction, series
from hpcdiff.analysis.tables import fmt, is_num

FIGURE_FORMATS = ("png", "pdf")


def write_figures(
    out_dir: Path, runs: list[Run], varying: list[str], quality: list[str], sort_by: str, warnings: list[str]
) -> Figures:
    """Every figure of a sweep into ``out_dir``; the returned writer lists the files and the
    index entries. Figures that cannot be drawn add a line to ``warnings``."""
    fw = Figures(out_dir)
    titled = title_keys(runs, varying)
    with_data = [r for r in runs if len(r.metrics.get("epoch", []))]
    if with_data:
        _loss_curves(fw, with_data, titled)
    with_samples = [r for r in runs if r.samples]
    if with_samples:
        _samples_side_by_side(fw, with_samples, titled, warnings)
    for m in quality:
        if not m.endswith("_std") or m[: -len("_std")] not in quality:
            _metric_vs_epoch(fw, with_data, titled, m)
    compute_axis_figures(fw, with_data, titled, quality, warnings, _short_title)
    axes = _plot_axes(runs, varying)
    for column in dict.fromkeys([sort_by, "best_val_loss"]):
        if any(is_num(r.row.get(column)) for r in runs):
            for axis in axes:
                _metric_vs_axis(fw, runs, varying, column, axis)
    _class_histograms(fw, with_data, titled)
    _degradation_strips(fw, runs, warnings)
    for r in with_samples:
        _run_samples(fw, r, titled)
    return fw


def title_keys(runs: list[Run], varying: list[str]) -> list[str]:
    """The varying keys a run's title shows. A case's label already names everything the
    case sets (a CNN's four model keys, its lr, its n_T...), so beside a label only the keys
    that vary among the runs of that label are shown (the seed, a product axis)."""
    if not any(r.row.get("label") for r in runs):
        return list(varying)
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.row.get("label") or "", []).append(r)
    return [k for k in varying if any(len({fmt(r.row.get(k)) for r in group}) > 1 for group in groups.values())]


class Figures:
    """Saves each figure as PNG and PDF and remembers it for the index."""

    def __init__(self, out_dir: Path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.out_dir = out_dir
        self.files: list[Path] = []
        self.entries: list[tuple[str, str, Path]] = []  # (section, title, png)

    def save(self, fig, stem: str, section: str, title: str) -> None:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem)
        for ext in FIGURE_FORMATS:
            path = self.out_dir / f"{stem}.{ext}"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            self.files.append(path)
        self.plt.close(fig)
        self.entries.append((section, title, self.out_dir / f"{stem}.png"))

    def add(self, paths: list[Path], section: str, titles: dict[str, str]) -> None:
        self.files += paths
        for p in paths:
            if p.suffix == ".png":
                self.entries.append((section, titles.get(p.stem, p.stem), p))


def _short_title(run: Run, varying: list[str]) -> str:
    parts = [
        f"{k.split('.')[-1]}={fmt(run.row.get(k))}" for k in varying if k != "train.seed" and run.row.get(k) is not None
    ]
    if "train.seed" in varying:
        parts.append(f"seed={run.row.get('train.seed')}")
    text = " ".join(([run.row["label"]] if run.row.get("label") else []) + parts) or run.run_id
    text += " (restoration)" if run.restores else ""
    return text + ("" if run.complete else f" [{run.row['state']}]")


def _run_title(run: Run, varying: list[str]) -> str:
    return run.run_id + "\n" + _short_title(run, varying)


def _data_spec(config: dict):
    from hpcdiff.config.spec import DataSpec

    known = {f.name for f in dataclass_fields(DataSpec)}
    return DataSpec(**{k: v for k, v in config.get("data", {}).items() if k in known})


def _real_images(runs: list[Run], n: int, warnings: list[str]):
    """n real held-out images of the first run's dataset (uint8 [n, H, W]), or None."""
    from hpcdiff.analysis.strips import held_out_images

    if not runs or n < 1:
        return None
    try:
        images, _ = held_out_images(_data_spec(runs[0].config), n)
    except Exception as err:  # noqa: BLE001 - DataError, ImportError, a bad data section ...
        warnings.append(f"real images not shown: {type(err).__name__}: {err}")
        return None
    return images[:, 0].numpy()


def _grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _loss_curves(fw: Figures, runs: list[Run], varying) -> None:
    plt = fw.plt
    nrows, cols = _grid_shape(len(runs))
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, runs):
        ls = "-" if r.complete else "--"
        for name in ("train_loss", "val_loss"):
            e, v = series(r.metrics, name)
            if len(v):
                ax.plot(e, v, ls=ls, marker=".", label=name.replace("_loss", ""))
        ax.set_title(_run_title(r, varying), fontsize=8, color="black" if r.complete else "tab:red")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(runs) :]:
        ax.axis("off")
    fig.tight_layout()
    fw.save(fig, "loss_curves", "Training", "Loss curves (dashed, red title: incomplete run)")


def _mosaic(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 [n, H, W] (or [n, 1, H, W]) -> one [rows*(H+pad)-pad, cols*(W+pad)-pad] image."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[:, 0]
    n, h, w = images.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = img
    return out


def _samples_side_by_side(fw: Figures, runs: list[Run], varying, warnings) -> None:
    plt = fw.plt
    last = [(r, *list(r.samples.items())[-1]) for r in runs]
    n = len(last[0][2]["images"])
    panels = []
    real = _real_images(runs, n, warnings)
    if real is not None:
        panels.append(("real held-out test images", _mosaic(real)))
    for r, epoch, grid in last:
        panels.append((f"{_run_title(r, varying)}\nepoch {epoch}", _mosaic(grid["images"])))
    nrows, cols = _grid_shape(len(panels), max_cols=6)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.4 * cols, 2.9 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, img) in zip(axes.flat, panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fw.save(
        fig,
        "samples",
        "Samples",
        "Last sample grid of every run" + (", real held-out images first" if real is not None else ""),
    )


def _run_samples(fw: Figures, r: Run, varying) -> None:
    epoch, grid = list(r.samples.items())[-1]
    panels = []
    if grid.get("starts") is not None:
        panels.append((f"start ({grid['attrs'].get('start', '?')})", _mosaic(grid["starts"])))
    panels.append(("samples", _mosaic(grid["images"])))
    fig, axes = fw.plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.1), squeeze=False)
    for ax, (title, img) in zip(axes.flat, panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{_run_title(r, varying)}, epoch {epoch}", fontsize=8)
    fig.tight_layout()
    fw.save(fig, f"samples_{r.run_id}", "Samples of each run", f"{r.run_id}: {_short_title(r, varying)}")


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    # min_n_ticks=1: an axis holding one epoch shows that epoch, not fractions of it.
    return MaxNLocator(integer=True, min_n_ticks=1)


def _legend(ax, n: int) -> None:
    if n:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _metric_vs_epoch(fw: Figures, runs: list[Run], varying, metric: str) -> None:
    fig, ax = fw.plt.subplots(figsize=(7, 4))
    drawn = 0
    for r in runs:
        e, v = series(r.metrics, metric)
        if not len(v):
            continue
        ls = "-" if r.complete else "--"
        es, s = series(r.metrics, f"{metric}_std")
        if len(s) == len(v) and np.array_equal(es, e):
            ax.errorbar(e, v, yerr=s, ls=ls, marker="o", ms=3, capsize=2, label=_short_title(r, varying))
        else:
            ax.plot(e, v, ls=ls, marker="o", ms=3, label=_short_title(r, varying))
        drawn += 1
    if not drawn:
        fw.plt.close(fig)
        return
    direction = metric_direction(metric)
    ax.set_title(metric + {"min": " (lower is better)", "max": " (higher is better)"}.get(direction, ""), fontsize=9)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel(metric)
    _legend(ax, drawn)
    fig.tight_layout()
    fw.save(fig, f"metric_{metric}", "Quality metrics vs epoch", metric)


def _determines(runs: list[Run], a: str, b: str) -> bool:
    """True when the value of axis ``a`` fixes the value of axis ``b`` in every run."""
    seen: dict[str, str] = {}
    return all(seen.setdefault(fmt(r.row.get(a)), fmt(r.row.get(b))) == fmt(r.row.get(b)) for r in runs)


def _plot_axes(runs: list[Run], varying: list[str]) -> list[str]:
    """The varying axes worth a metric-vs-axis figure: more than one value, not the seed,
    and not fixed by an axis already chosen (diffusion.sampler follows degradation.name when
    the sweep varies the degradation). Axes written in the sweep file come first, then the
    finer ones."""
    in_sweep = {k for r in runs for k in r.axes}
    n_values = {k: len({fmt(r.row.get(k)) for r in runs}) for k in varying}
    candidates = sorted(
        (k for k in varying if k != "train.seed" and n_values[k] > 1), key=lambda k: (k not in in_sweep, -n_values[k])
    )
    chosen: list[str] = []
    for k in candidates:
        if not any(_determines(runs, c, k) for c in chosen):
            chosen.append(k)
    return [k for k in varying if k in chosen]


def _metric_vs_axis(fw: Figures, runs: list[Run], varying, column: str, axis: str) -> None:
    """Every run's value as a point (hollow: incomplete) and, per series (the other varying
    axes but the seed), the mean over seeds at each axis value as a line."""
    points = [
        (r, r.row.get(axis), float(r.row[column]))
        for r in runs
        if is_num(r.row.get(column)) and math.isfinite(float(r.row[column]))
    ]
    if not points:
        return
    numeric = all(is_num(x) for _, x, _ in points)
    if numeric:
        to_x = float
        labels = None
    else:
        cats = list(dict.fromkeys(fmt(r.row.get(axis)) for r in runs))  # every run's, even without a value
        to_x = lambda x: cats.index(fmt(x))  # noqa: E731
        labels = cats
    # Series: the other axes, except those the plotted axis fixes (no series of one point).
    others = [k for k in varying if k not in (axis, "train.seed") and not _determines(runs, axis, k)]
    series: dict[str, list] = {}
    for r, x, y in points:
        name = " ".join(f"{k.split('.')[-1]}={fmt(r.row.get(k))}" for k in others) or column
        series.setdefault(name, []).append((r, to_x(x), y))
    fig, ax = fw.plt.subplots(figsize=(6.5, 4))
    for i, (name, pts) in enumerate(series.items()):
        color = f"C{i % 10}"
        for r, x, y in pts:
            ax.scatter([x], [y], s=25, color=color, facecolors=color if r.complete else "none", zorder=3)
        xs = sorted({x for _, x, _ in pts})
        means = [float(np.mean([y for _, px, y in pts if px == x])) for x in xs]
        label = f"{name} (mean over seeds)" if "train.seed" in varying else name
        if labels is None:
            ax.plot(xs, means, color=color, label=label)
        else:  # categories: no line between them, a bar at each mean
            ax.scatter(xs, means, color=color, marker="_", s=400, label=label, zorder=2)
    if labels is not None:
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30 if max(map(len, labels)) > 8 else 0, fontsize=8)
    elif min(x for _, x, _ in points) > 0 and max(x for _, x, _ in points) >= 10 * min(x for _, x, _ in points):
        ax.set_xscale("log")
    ax.set_xlabel(axis)
    ax.set_ylabel(column)
    ax.set_title(f"{column} vs {axis} (hollow: incomplete run)", fontsize=9)
    _legend(ax, len(series))
    fig.tight_layout()
    fw.save(fig, f"{column}_vs_{axis}", "Metrics vs sweep axes", f"{column} vs {axis}")


def _class_histograms(fw: Figures, runs: list[Run], varying) -> None:
    hists = []
    for r in runs:
        names = sorted(
            (int(m.group("k")), n) for n in r.metrics if (m := PER_CLASS.match(n)) and m.group("family") is None
        )
        if not names:
            continue
        table = np.stack([np.asarray(r.metrics[n], dtype=np.float64) for _, n in names])  # [K, epochs]
        ok = np.nonzero(np.isfinite(table).any(0))[0]
        if not len(ok):
            continue
        i = int(ok[-1])
        hists.append((r, int(np.asarray(r.metrics["epoch"])[i]), [k for k, _ in names], table[:, i]))
    if not hists:
        return
    nrows, cols = _grid_shape(len(hists))
    fig, axes = fw.plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.9 * nrows), squeeze=False)
    for ax in list(axes.flat)[len(hists) :]:
        ax.axis("off")
    for ax, (r, epoch, classes, p) in zip(axes.flat, hists):
        ax.bar(classes, np.nan_to_num(p), color="tab:blue" if r.complete else "tab:gray")
        ax.axhline(1 / len(classes), color="k", ls=":", lw=1)
        ax.set_xticks(classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("fraction of samples")
        ax.set_title(f"{_run_title(r, varying)}, epoch {epoch}", fontsize=7)
    fig.tight_layout()
    fw.save(
        fig,
        "class_histograms",
        "Class histograms",
        "Predicted classes of the samples at the last evaluated epoch (dotted: uniform)",
    )


def _degradation_strips(fw: Figures, runs: list[Run], warnings) -> None:
    """Strips of the degradations the sweep uses, each with the first such run's level count
    (diffusion.n_T), schedule and parameters (gaussian: its betas), on the sweep's data."""
    from hpcdiff.analysis.strips import degradation_strips, sweep_degradations

    names, params, n_steps, schedules = sweep_degradations([r.config for r in runs])
    if not names:
        return
    try:
        paths = degradation_strips(
            names,
            fw.out_dir,
            data_spec=_data_spec(runs[0].config),
            params=params,
            n_steps=n_steps,
            schedules=schedules,
            formats=FIGURE_FORMATS,
        )
    except Exception as err:  # noqa: BLE001 - no data here, or a degradation renamed since
        warnings.append(f"degradation strips not drawn: {type(err).__name__}: {err}")
        return
    titles = {f"strip_{n}": f"{n}: held-out test images at t = 0..{n_steps.get(n, '')}" for n in names}
    titles["degradation_strips"] = "Every degradation of the sweep on one held-out image"
    fw.add(paths, "Degradation strips", titles)
