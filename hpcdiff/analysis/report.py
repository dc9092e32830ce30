"""Archives of a sweep -> tables and figures. Never imports train or launch.

``analyze(sweep_dir, out)`` writes into ``out`` (default ``analysis/<sweep>/``):

* ``runs.csv`` / ``runs.md`` / ``runs.tex``: one row per run, sorted by a chosen column;
* ``configs.csv`` / ``.md`` / ``.tex`` when ``train.seed`` varies: one row per config (the
  other varying axes), mean and sample std (ddof=1) over its seeds of every numeric column;
* ``per_class.csv`` / ``.md`` / ``.tex`` when archives hold per-class metrics (``class_<k>``,
  ``recon_full_mse_class_<k>``, ...): their values at the last epoch that has them;
* figures, each as PNG and PDF: ``loss_curves``, ``metric_<name>`` (each quality metric vs
  epoch, all runs), ``<column>_vs_<axis>`` (the sort metric and best val loss against each
  varying axis), ``samples`` (the last sample grid of every run side by side, real held-out
  images first), ``samples_<run_id>`` (one run's start and samples), ``class_histograms``,
  ``strip_<degradation>`` and ``degradation_strips`` (:mod:`hpcdiff.analysis.strips`);
* ``index.md``: every table and figure in one page.

Works on partly finished sweeps: a run with no archive yet, one killed mid-epoch, one epoch
only or NaN metrics still gets its row, marked by its state (anything but ``done`` is
incomplete), and figures draw what exists.

Columns. Training series (``train_loss``, ``val_loss``, ``lr``, ``images_per_second``,
``*_seconds``) give ``final_/best_train_loss``, ``final_/best_val_loss``,
``best_val_loss_epoch`` and ``wall_seconds``. Every other metric in an archive is a quality
metric: ``best_<m>`` and ``final_<m>`` (the last finite value: metrics evaluated every k
epochs are NaN in between), or ``final_<m>`` only when "best" has no meaning, following
:data:`DIRECTION_RULES`. The sort column's epoch of best is added as ``<column>_epoch``.
Per-class metrics stay out of the runs table (a column per class and metric would bury
it): they go to ``per_class.*`` and the class histograms.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field, fields as dataclass_fields
from pathlib import Path

import numpy as np

from hpcdiff.storage import archive
from hpcdiff.config import tomlio
from hpcdiff.config.registry import nearest
from hpcdiff.storage.rundir import read_manifest, read_run_meta, sweep_run_dirs

#: Per-epoch series that describe training rather than sample quality (plus ``*_seconds``).
TRAINING_SERIES = frozenset({"epoch", "train_loss", "val_loss", "lr", "images_per_second"})

#: Which value of a metric is its best, first matching rule wins. "final": no best (a
#: spread, a diagnostic whose ideal is a target value, or an unknown metric): only the
#: final value is reported.
DIRECTION_RULES: tuple[tuple[str, str], ...] = (
    (r"_std$", "final"),                          # spreads of another metric
    (r"(^|_)class_\d+$", "final"),                # per-class fractions / per-class values
    (r"(^|_)(fid|kid|mse|loss)(_|$)", "min"),     # distances and errors
    (r"(^|_)(inception_score|ssim)(_|$)", "max"),  # IS, structural similarity
    (r"^class_entropy$", "max"),                  # 1 = samples spread evenly over classes
    (r"^diversity", "final"),                     # target is the real data's value, not max
)

#: Quality metrics listed first, in this order; the rest follow alphabetically.
METRIC_ORDER = ("fid_classifier", "fid_inception", "kid_classifier", "inception_score", "class_entropy",
                "diversity_trace", "ssim")

PER_CLASS = re.compile(r"^(?:(?P<family>.+)_)?class_(?P<k>\d+)$")

FIGURE_FORMATS = ("png", "pdf")


def metric_direction(name: str) -> str:
    """'min', 'max' or 'final' for a metric name (see :data:`DIRECTION_RULES`)."""
    for pattern, direction in DIRECTION_RULES:
        if re.search(pattern, name):
            return direction
    return "final"


def is_quality_metric(name: str) -> bool:
    return name not in TRAINING_SERIES and not name.endswith("_seconds")


@dataclass
class AnalysisResult:
    out_dir: Path
    columns: list[str]
    rows: list[dict]
    files: list[Path] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    sort_by: str = ""
    config_columns: list[str] = field(default_factory=list)
    configs: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # How the runs' metrics were computed (sample count, sampler, steps), one line per variant.
    evaluation: list[str] = field(default_factory=list)


@dataclass
class _Run:
    run_id: str
    row: dict
    config: dict
    metrics: dict
    samples: dict
    axes: dict = field(default_factory=dict)  # the sweep axes the run was expanded with

    @property
    def complete(self) -> bool:
        return self.row["state"] == "done"


class PlusMinus:
    """A mean and a spread, rendered ``mean ± std`` (``$\\pm$`` in LaTeX)."""

    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def parts(self) -> tuple[str, str]:
        return _fmt(self.mean), _fmt(self.std, digits=2)


def _fmt(v, digits: int = 5) -> str:
    if v is None:
        return ""
    if isinstance(v, PlusMinus):
        mean, std = v.parts()
        return f"{mean} ± {std}" if mean and std else mean
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.{digits}g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _axis_value(meta_axes: dict, config: dict, key: str):
    if key in meta_axes:
        return meta_axes[key]
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _series(metrics: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of a metric, finite values only."""
    values = np.asarray(metrics.get(name, []), dtype=np.float64)
    epochs = np.asarray(metrics.get("epoch", []))
    if len(epochs) != len(values):
        epochs = np.arange(1, len(values) + 1)
    ok = np.isfinite(values)
    return epochs[ok].astype(np.int64), values[ok]


def _summary(metrics: dict, name: str, direction: str) -> tuple[float | None, int | None, float | None]:
    """(best, epoch of best, final) of a metric; None where it has no finite value."""
    epochs, values = _series(metrics, name)
    if not len(values):
        return None, None, None
    final = float(values[-1])
    if direction == "final":
        return None, None, final
    i = int(np.argmin(values) if direction == "min" else np.argmax(values))
    return float(values[i]), int(epochs[i]), final


# --------------------------------------------------------------------------- loading


def _load_runs(sweep_dir: Path, varying: list[str], warnings: list[str]) -> list[_Run]:
    runs = []
    for rd in sweep_run_dirs(sweep_dir):
        try:
            meta = read_run_meta(rd)
            config = tomlio.load(rd.config_path)
        except Exception as err:  # a hand-edited or half-written config: still list the run
            warnings.append(f"{rd.run_id}: unreadable config.toml ({err})")
            meta, config = {}, {}
        status = rd.read_status()
        data, damaged = None, False
        if rd.archive.exists():
            try:
                data = archive.read(rd.archive)
            except Exception as err:  # noqa: BLE001 - h5py raises several types on damage
                warnings.append(f"{rd.run_id}: unreadable archive.h5 ({type(err).__name__}: {err})")
                damaged = True
        metrics = data["metrics"] if data else {}
        samples = data["samples"] if data else {}
        row = {"run_id": rd.run_id, "label": meta.get("label", "")}
        for key in varying:
            row[key] = _axis_value(meta.get("axes", {}), config, key)
        epochs = np.asarray(metrics.get("epoch", []))
        total = status.get("epochs") or config.get("train", {}).get("epochs") or 0
        # A damaged archive makes even a finished run incomplete: its numbers are missing.
        row["state"] = rd.effective_state() + (" (archive unreadable)" if damaged else "")
        row["epochs"] = f"{int(epochs[-1]) if len(epochs) else 0}/{int(total)}"
        best, _, final = _summary(metrics, "train_loss", "min")
        row["final_train_loss"], row["best_train_loss"] = final, best
        best, best_epoch, final = _summary(metrics, "val_loss", "min")
        row["final_val_loss"], row["best_val_loss"], row["best_val_loss_epoch"] = final, best, best_epoch
        row["wall_seconds"] = _summary(metrics, "elapsed_seconds", "final")[2]
        for name in metrics:
            if not is_quality_metric(name) or PER_CLASS.match(name):
                continue
            direction = metric_direction(name)
            best, best_epoch, final = _summary(metrics, name, direction)
            if direction != "final":
                row[f"best_{name}"], row[f"best_{name}_epoch"] = best, best_epoch
            row[f"final_{name}"] = final
        runs.append(_Run(rd.run_id, row, config, metrics, samples, dict(meta.get("axes", {}))))
    return runs


def _quality_metrics(runs: list[_Run]) -> list[str]:
    names = {n for r in runs for n in r.metrics if is_quality_metric(n) and not PER_CLASS.match(n)}
    first = [n for n in METRIC_ORDER if n in names]
    return first + sorted(names - set(first))


def _column_metric(column: str) -> str | None:
    for prefix in ("best_", "final_"):
        if column.startswith(prefix) and not column.endswith("_epoch"):
            return column[len(prefix):]
    return None


def _descending(column: str) -> bool:
    metric = _column_metric(column)
    return metric is not None and metric_direction(metric) == "max"


def _sort_rows(rows: list[dict], column: str, descending: bool) -> list[dict]:
    """Rows with a value first (numbers numerically, anything else as text), missing last."""
    present = [r for r in rows if not _missing(r.get(column))]
    missing = [r for r in rows if _missing(r.get(column))]
    if all(_is_num(r[column]) for r in present):
        present.sort(key=lambda r: float(r[column]), reverse=descending)
    else:
        present.sort(key=lambda r: _fmt(r[column]), reverse=descending)
    return present + missing


# --------------------------------------------------------------------------- analyze


def analyze(sweep_dir: str | Path, out: str | Path | None = None, *, sort_by: str | None = None,
            figures: bool = True) -> AnalysisResult:
    """Tables, figures and an index of a sweep directory (see the module docstring).

    ``sort_by``: a column of the runs table (default ``best_fid_classifier`` when some run
    has it, else ``best_val_loss``); best-first for metrics, ascending otherwise. An
    unknown column raises ValueError naming the valid ones, before anything is written.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a sweep directory")
    manifest = read_manifest(sweep_dir)
    name = manifest.get("name", sweep_dir.name)
    varying = list(manifest.get("varying", []))
    warnings: list[str] = []
    runs = _load_runs(sweep_dir, varying, warnings)

    quality = _quality_metrics(runs)
    columns = ["run_id", "label", *varying, "state", "epochs", "final_train_loss", "best_train_loss",
               "final_val_loss", "best_val_loss", "best_val_loss_epoch", "wall_seconds"]
    for m in quality:
        columns += ([f"best_{m}"] if metric_direction(m) != "final" else []) + [f"final_{m}"]
    if sort_by is None:
        sort_by = "best_fid_classifier" if "best_fid_classifier" in columns else "best_val_loss"
    elif sort_by not in columns:
        guess = nearest(sort_by, columns)
        raise ValueError(f"unknown sort column {sort_by!r}" + (f" (did you mean {guess!r}?)" if guess else "")
                         + f"; valid: {', '.join(columns)}")
    epoch_col = f"{sort_by}_epoch"
    if sort_by.startswith("best_") and epoch_col not in columns:
        columns.insert(columns.index(sort_by) + 1, epoch_col)
    descending = _descending(sort_by)
    rows = _sort_rows([r.row for r in runs], sort_by, descending)
    by_id = {r.run_id: r for r in runs}
    runs = [by_id[row["run_id"]] for row in rows]

    out_dir = Path(out) if out else Path("analysis") / name
    out_dir.mkdir(parents=True, exist_ok=True)
    incomplete = [r["run_id"] for r in rows if r["state"] != "done"]
    result = AnalysisResult(out_dir=out_dir, columns=columns, rows=rows, incomplete=incomplete,
                            sort_by=sort_by, warnings=warnings, evaluation=_evaluation_settings(runs))
    result.files += _write_tables(out_dir, "runs", columns, rows,
                                  caption=f"Runs of sweep {name}, sorted by {sort_by}")
    if "train.seed" in varying:
        csv_cols, display_cols, configs, display = _config_table(rows, columns, varying, sort_by, descending)
        result.config_columns, result.configs = csv_cols, configs
        result.files += _write_tables(out_dir, "configs", display_cols, display, csv_columns=csv_cols,
                                      csv_rows=configs,
                                      caption=f"Configs of sweep {name}: mean +- std over seeds")
    per_class_cols, per_class = _per_class_table(runs)
    if per_class:
        result.files += _write_tables(out_dir, "per_class", per_class_cols, per_class,
                                      caption=f"Per-class metrics of sweep {name} (last epoch that has them)")
    figure_list: list[tuple[str, str, Path]] = []
    if figures:
        writer = _Figures(out_dir)
        _write_figures(writer, runs, varying, quality, sort_by, warnings)
        result.files += writer.files
        figure_list = writer.entries
    result.files.append(_write_index(out_dir, name, result, figure_list))
    return result


# --------------------------------------------------------------------------- tables


def _config_table(rows, columns, varying, sort_by, descending):
    """One row per config (the varying axes other than the seed): mean and std over seeds."""
    key_cols = (["label"] if any(r.get("label") for r in rows) else []) + [k for k in varying if k != "train.seed"]
    skip = {"run_id", "label", "state", "epochs", *varying}
    numeric = [c for c in columns if c not in skip and any(_is_num(r.get(c)) for r in rows)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(_fmt(r.get(k)) for k in key_cols), []).append(r)
    configs, display = [], []
    for members in groups.values():
        c = {k: members[0].get(k) for k in key_cols}
        c["n_seeds"] = len(members)
        c["n_incomplete"] = sum(m["state"] != "done" for m in members)
        c["seeds"] = sorted(m.get("train.seed") for m in members if m.get("train.seed") is not None)
        d = dict(c)
        for col in numeric:
            vals = np.array([float(m[col]) for m in members if _is_num(m.get(col)) and math.isfinite(float(m[col]))])
            mean = float(vals.mean()) if len(vals) else None
            std = float(vals.std(ddof=1)) if len(vals) >= 2 else None
            c[f"{col}_mean"], c[f"{col}_std"] = mean, std
            d[col] = PlusMinus(mean, std)
        configs.append(c)
        display.append(d)
    if sort_by in numeric:
        key = f"{sort_by}_mean"
        order = _sort_rows(configs, key, descending)
        display = [display[configs.index(c)] for c in order]
        configs = order
    head = key_cols + ["n_seeds", "n_incomplete", "seeds"]
    csv_cols = head + [f"{c}_{s}" for c in numeric for s in ("mean", "std")]
    return csv_cols, head + numeric, configs, display


def _per_class_table(runs: list[_Run]):
    n_classes = 0
    rows = []
    for r in runs:
        families: dict[str, dict[int, str]] = {}
        for name in r.metrics:
            m = PER_CLASS.match(name)
            if m and is_quality_metric(name):
                families.setdefault(m.group("family") or "class", {})[int(m.group("k"))] = name
        for family, by_class in sorted(families.items()):
            epochs = np.asarray(r.metrics.get("epoch", []))
            finite = np.zeros(len(epochs), dtype=bool)
            for name in by_class.values():
                values = np.asarray(r.metrics[name], dtype=np.float64)
                if len(values) == len(finite):
                    finite |= np.isfinite(values)
            if not finite.any():
                continue
            i = int(np.nonzero(finite)[0][-1])
            row = {"run_id": r.run_id, "label": r.row.get("label", ""), "metric": family, "epoch": int(epochs[i])}
            for k, name in by_class.items():
                v = float(r.metrics[name][i])
                row[str(k)] = v if math.isfinite(v) else None
                n_classes = max(n_classes, k + 1)
            rows.append(row)
    return ["run_id", "label", "metric", "epoch", *[str(k) for k in range(n_classes)]], rows


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX_ESCAPES[m.group()], text)


def _tex_cell(v) -> str:
    if isinstance(v, PlusMinus):
        mean, std = v.parts()
        return f"{tex_escape(mean)} $\\pm$ {tex_escape(std)}" if mean and std else tex_escape(mean)
    return tex_escape(_fmt(v))


def _write_tables(out_dir: Path, stem: str, columns: list[str], rows: list[dict], *, caption: str = "",
                  csv_columns: list[str] | None = None, csv_rows: list[dict] | None = None) -> list[Path]:
    """``<stem>.csv`` (``csv_columns``/``csv_rows`` when given: plain values for machines),
    ``<stem>.md`` and ``<stem>.tex`` (a LaTeX tabular; caption as a comment)."""
    csv_path = out_dir / f"{stem}.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(csv_columns or columns)
        for row in (csv_rows if csv_rows is not None else rows):
            writer.writerow([_fmt(row.get(c)) for c in (csv_columns or columns)])
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(_md_table(columns, rows))
    numeric = [all(_is_num(r.get(c)) or isinstance(r.get(c), PlusMinus) or _missing(r.get(c)) for r in rows)
               for c in columns]
    lines = [f"% {tex_escape(caption)}" if caption else "% generated by hpcdiff analyze",
             "\\begin{tabular}{" + "".join("r" if n else "l" for n in numeric) + "}", "\\hline",
             " & ".join(tex_escape(c) for c in columns) + " \\\\", "\\hline"]
    lines += [" & ".join(_tex_cell(row.get(c)) for c in columns) + " \\\\" for row in rows]
    lines += ["\\hline", "\\end{tabular}", ""]
    tex_path = out_dir / f"{stem}.tex"
    tex_path.write_text("\n".join(lines))
    return [csv_path, md_path, tex_path]


def _md_table(columns: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figures


class _Figures:
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
        for fmt in FIGURE_FORMATS:
            path = self.out_dir / f"{stem}.{fmt}"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            self.files.append(path)
        self.plt.close(fig)
        self.entries.append((section, title, self.out_dir / f"{stem}.png"))

    def add(self, paths: list[Path], section: str, titles: dict[str, str]) -> None:
        self.files += paths
        for p in paths:
            if p.suffix == ".png":
                self.entries.append((section, titles.get(p.stem, p.stem), p))


def _short_title(run: _Run, varying: list[str]) -> str:
    parts = [f"{k.split('.')[-1]}={_fmt(run.row.get(k))}" for k in varying if k != "train.seed"]
    if "train.seed" in varying:
        parts.append(f"seed={run.row.get('train.seed')}")
    text = " ".join(([run.row["label"]] if run.row.get("label") else []) + parts) or run.run_id
    return text + ("" if run.complete else f" [{run.row['state']}]")


def _run_title(run: _Run, varying: list[str]) -> str:
    return run.run_id + "\n" + _short_title(run, varying)


def _data_spec(config: dict):
    from hpcdiff.config.spec import DataSpec

    known = {f.name for f in dataclass_fields(DataSpec)}
    return DataSpec(**{k: v for k, v in config.get("data", {}).items() if k in known})


def _real_images(runs: list[_Run], n: int, warnings: list[str]):
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


def _write_figures(fw: _Figures, runs: list[_Run], varying: list[str], quality: list[str], sort_by: str,
                   warnings: list[str]) -> None:
    with_data = [r for r in runs if len(r.metrics.get("epoch", []))]
    if with_data:
        _loss_curves(fw, with_data, varying)
    with_samples = [r for r in runs if r.samples]
    if with_samples:
        _samples_side_by_side(fw, with_samples, varying, warnings)
    for m in quality:
        if not m.endswith("_std") or m[: -len("_std")] not in quality:
            _metric_vs_epoch(fw, with_data, varying, m)
    axes = _plot_axes(runs, varying)
    for column in dict.fromkeys([sort_by, "best_val_loss"]):
        if any(_is_num(r.row.get(column)) for r in runs):
            for axis in axes:
                _metric_vs_axis(fw, runs, varying, column, axis)
    _class_histograms(fw, with_data, varying)
    _degradation_strips(fw, runs, warnings)
    for r in with_samples:
        _run_samples(fw, r, varying)


def _grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _loss_curves(fw: _Figures, runs: list[_Run], varying) -> None:
    plt = fw.plt
    nrows, cols = _grid_shape(len(runs))
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, runs):
        ls = "-" if r.complete else "--"
        for name in ("train_loss", "val_loss"):
            e, v = _series(r.metrics, name)
            if len(v):
                ax.plot(e, v, ls=ls, marker=".", label=name.replace("_loss", ""))
        ax.set_title(_run_title(r, varying), fontsize=8, color="black" if r.complete else "tab:red")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(runs):]:
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
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = img
    return out


def _samples_side_by_side(fw: _Figures, runs: list[_Run], varying, warnings) -> None:
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
    fw.save(fig, "samples", "Samples", "Last sample grid of every run" + (", real held-out images first"
                                                                          if real is not None else ""))


def _run_samples(fw: _Figures, r: _Run, varying) -> None:
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

    return MaxNLocator(integer=True)


def _legend(ax, n: int) -> None:
    if n:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _metric_vs_epoch(fw: _Figures, runs: list[_Run], varying, metric: str) -> None:
    fig, ax = fw.plt.subplots(figsize=(7, 4))
    drawn = 0
    for r in runs:
        e, v = _series(r.metrics, metric)
        if not len(v):
            continue
        ls = "-" if r.complete else "--"
        es, s = _series(r.metrics, f"{metric}_std")
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


def _determines(runs: list[_Run], a: str, b: str) -> bool:
    """True when the value of axis ``a`` fixes the value of axis ``b`` in every run."""
    seen: dict[str, str] = {}
    return all(seen.setdefault(_fmt(r.row.get(a)), _fmt(r.row.get(b))) == _fmt(r.row.get(b)) for r in runs)


def _plot_axes(runs: list[_Run], varying: list[str]) -> list[str]:
    """The varying axes worth a metric-vs-axis figure: more than one value, not the seed,
    and not fixed by an axis already chosen (diffusion.sampler follows degradation.name when
    the sweep varies the degradation). Axes written in the sweep file come first, then the
    finer ones."""
    in_sweep = {k for r in runs for k in r.axes}
    n_values = {k: len({_fmt(r.row.get(k)) for r in runs}) for k in varying}
    candidates = sorted((k for k in varying if k != "train.seed" and n_values[k] > 1),
                        key=lambda k: (k not in in_sweep, -n_values[k]))
    chosen: list[str] = []
    for k in candidates:
        if not any(_determines(runs, c, k) for c in chosen):
            chosen.append(k)
    return [k for k in varying if k in chosen]


def _metric_vs_axis(fw: _Figures, runs: list[_Run], varying, column: str, axis: str) -> None:
    """Every run's value as a point (hollow: incomplete) and, per series (the other varying
    axes but the seed), the mean over seeds at each axis value as a line."""
    points = [(r, r.row.get(axis), float(r.row[column])) for r in runs
              if _is_num(r.row.get(column)) and math.isfinite(float(r.row[column]))]
    if not points:
        return
    numeric = all(_is_num(x) for _, x, _ in points)
    if numeric:
        to_x = float
        labels = None
    else:
        cats = list(dict.fromkeys(_fmt(r.row.get(axis)) for r in runs))  # every run's, even without a value
        to_x = lambda x: cats.index(_fmt(x))  # noqa: E731
        labels = cats
    # Series: the other axes, except those the plotted axis fixes (no series of one point).
    others = [k for k in varying if k not in (axis, "train.seed") and not _determines(runs, axis, k)]
    series: dict[str, list] = {}
    for r, x, y in points:
        name = " ".join(f"{k.split('.')[-1]}={_fmt(r.row.get(k))}" for k in others) or column
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


def _class_histograms(fw: _Figures, runs: list[_Run], varying) -> None:
    hists = []
    for r in runs:
        names = sorted((int(m.group("k")), n) for n in r.metrics
                       if (m := PER_CLASS.match(n)) and m.group("family") is None)
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
    for ax in list(axes.flat)[len(hists):]:
        ax.axis("off")
    for ax, (r, epoch, classes, p) in zip(axes.flat, hists):
        ax.bar(classes, np.nan_to_num(p), color="tab:blue" if r.complete else "tab:gray")
        ax.axhline(1 / len(classes), color="k", ls=":", lw=1)
        ax.set_xticks(classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("fraction of samples")
        ax.set_title(f"{_run_title(r, varying)}, epoch {epoch}", fontsize=7)
    fig.tight_layout()
    fw.save(fig, "class_histograms", "Class histograms",
            "Predicted classes of the samples at the last evaluated epoch (dotted: uniform)")


def _degradation_strips(fw: _Figures, runs: list[_Run], warnings) -> None:
    """Strips of the degradations the sweep uses, each with the first such run's level count
    (diffusion.n_T), schedule and parameters (gaussian: its betas), on the sweep's data."""
    from hpcdiff.analysis.strips import degradation_strips

    names, params, n_steps, schedules = [], {}, {}, {}
    for r in runs:
        deg = r.config.get("degradation", {})
        name = deg.get("name", "gaussian") if r.config else None
        if not name or name in names:
            continue
        names.append(name)
        params[name] = dict(deg.get("params", {}))
        diff = r.config.get("diffusion", {})
        if name == "gaussian":
            params[name].update({k: diff[k] for k in ("beta1", "beta2") if k in diff})
        if diff.get("n_T"):
            n_steps[name] = int(diff["n_T"])
        if deg.get("schedule"):
            schedules[name] = deg["schedule"]
    if not names:
        return
    try:
        paths = degradation_strips(names, fw.out_dir, data_spec=_data_spec(runs[0].config), params=params,
                                   n_steps=n_steps, schedules=schedules, formats=FIGURE_FORMATS)
    except Exception as err:  # noqa: BLE001 - no data here, or a degradation renamed since
        warnings.append(f"degradation strips not drawn: {type(err).__name__}: {err}")
        return
    titles = {f"strip_{n}": f"{n}: held-out test images at t = 0..{n_steps.get(n, '')}" for n in names}
    titles["degradation_strips"] = "Every degradation of the sweep on one held-out image"
    fw.add(paths, "Degradation strips", titles)


# --------------------------------------------------------------------------- index


def _evaluation_settings(runs: list[_Run]) -> list[str]:
    """One line per distinct evaluation setting among the runs that computed metrics: a
    metric drawn with 50 DDIM steps is not comparable with one drawn with all 1000."""
    variants: dict[str, int] = {}
    for run in runs:
        ev = run.config.get("eval", {})
        if not ev.get("metrics") or not any(is_quality_metric(k) for k in run.metrics):
            continue
        n_T = run.config.get("diffusion", {}).get("n_T", 0)
        steps = ev.get("steps", 0)
        on = "all n_T steps" if not steps or steps >= n_T else f"{steps} evenly spaced steps"
        text = (f"{ev.get('samples', '?')} samples per evaluation, drawn with `{ev.get('sampler', '?')}` on "
                f"{on}; every "
                + (f"{ev['every']} epochs" if ev.get("every") else "run at its last epoch only"))
        variants[text] = variants.get(text, 0) + 1
    if len(variants) == 1:
        return list(variants)
    return [f"{text} ({n} runs)" for text, n in variants.items()]


def _write_index(out_dir: Path, name: str, result: AnalysisResult, figures: list[tuple[str, str, Path]]) -> Path:
    lines = [f"# Sweep `{name}`", ""]
    done = sum(1 for r in result.rows if r["state"] == "done")
    lines.append(f"{len(result.rows)} runs, {done} done. Runs sorted by `{result.sort_by}`"
                 + (" (higher is better)." if _descending(result.sort_by) else "."))
    if result.incomplete:
        lines += ["", "**Incomplete runs** (their numbers are from the epochs they finished):", ""]
        lines += [f"- `{r['run_id']}`: {r['state']}, epochs {r['epochs']}" for r in result.rows
                  if r["run_id"] in result.incomplete]
    if result.evaluation:
        lines += ["", "**How the metrics were computed** (the `[eval]` section):", ""]
        lines += [f"- {line}" for line in result.evaluation]
    if result.warnings:
        lines += ["", "**Warnings**:", ""] + [f"- {w}" for w in result.warnings]
    tables = [("Runs", "runs"), ("Configs: mean ± std over seeds", "configs"),
              ("Per-class metrics", "per_class")]
    for title, stem in tables:
        if (out_dir / f"{stem}.md").exists() and any(f.name == f"{stem}.md" for f in result.files):
            lines += ["", f"## {title}", "", f"[CSV]({stem}.csv) · [LaTeX]({stem}.tex)", "",
                      (out_dir / f"{stem}.md").read_text()]
    section = None
    for sec, title, png in figures:
        if sec != section:
            lines += ["", f"## {sec}"]
            section = sec
        alt = title.replace("[", "(").replace("]", ")")
        lines += ["", f"### {title}", "", f"![{alt}]({png.name})", "",
                  f"[PDF]({png.with_suffix('.pdf').name})"]
    path = out_dir / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path
