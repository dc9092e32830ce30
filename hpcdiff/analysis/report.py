"""Archives of a sweep -> tables and figures. Never imports training or launch.

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
epochs are NaN in between), or ``final_<m>`` only when "best" has no meaning, as
hpcdiff.config.catalog declares for each series. The sort column's epoch of best is added as
``<column>_epoch``. Per-class metrics stay out of the runs table (a column per class and
metric would bury it): they go to ``per_class.*`` and the class histograms.

Modules: :mod:`~hpcdiff.analysis.load` (run directories -> rows and series),
:mod:`~hpcdiff.analysis.tables`, :mod:`~hpcdiff.analysis.figures`,
:mod:`~hpcdiff.analysis.strips`; this one ties them together and writes ``index.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hpcdiff.analysis.compact import compact_table
from hpcdiff.analysis.figures import write_figures
from hpcdiff.analysis.load import (
    MEASURES,
    TRAINING_COLUMNS,
    Run,
    is_quality_metric,
    load_runs,
    metric_direction,
    quality_metrics,
)
from hpcdiff.analysis.tables import config_table, fmt, frame, is_descending, per_class_table, sort_rows, write_tables
from hpcdiff.config.registry import nearest
from hpcdiff.storage.rundir import read_manifest
from hpcdiff.storage.runstate import RunState


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
    # The compact table (analysis.compact): what the console shows and runs.md / runs.tex hold.
    compact_columns: list = field(default_factory=list)
    compact_rows: list[dict] = field(default_factory=list)


def analyze(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    *,
    sort_by: str | None = None,
    figures: bool = True,
    training_scores: bool = False,
) -> AnalysisResult:
    """Tables, figures and an index of a sweep directory (see the module docstring).

    ``sort_by``: a column of the runs table (default ``best_fid_classifier`` when some run
    has it, else ``best_val_loss``); best-first for metrics, ascending otherwise. An
    unknown column raises ValueError naming the valid ones, before anything is written.
    ``training_scores``: the metrics computed while the runs trained, even where a later
    `hpcdiff evaluate` re-scored a run's last checkpoint (whose results are used otherwise).
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a sweep directory")
    manifest = read_manifest(sweep_dir)
    name = manifest.get("name", sweep_dir.name)
    varying = list(manifest.get("varying", []))
    warnings: list[str] = []
    runs = load_runs(sweep_dir, varying, warnings, evaluations=not training_scores)
    quality = quality_metrics(runs)
    columns = _runs_columns(varying, quality)
    sort_by = _sort_column(sort_by, columns)
    rows = rank_rows([r.row for r in runs], sort_by)
    by_id = {r.run_id: r for r in runs}
    runs = [by_id[row["run_id"]] for row in rows]

    out_dir = Path(out) if out else Path("analysis") / name
    out_dir.mkdir(parents=True, exist_ok=True)
    incomplete = [r["run_id"] for r in rows if r["state"] != RunState.DONE]
    result = AnalysisResult(
        out_dir=out_dir,
        columns=columns,
        rows=rows,
        incomplete=incomplete,
        sort_by=sort_by,
        warnings=warnings,
        evaluation=_evaluation_settings(runs),
    )
    result.compact_columns, result.compact_rows = compact_table(runs, varying, sort_by)
    _write_sweep_tables(result, name, runs, varying)
    figure_list: list[tuple[str, str, Path]] = []
    if figures:
        writer = write_figures(out_dir, runs, varying, quality, sort_by, warnings)
        result.files += writer.files
        figure_list = writer.entries
    result.files.append(_write_index(out_dir, name, result, figure_list))
    return result


def rank_rows(rows: list[dict], sort_by: str) -> list[dict]:
    """Rows ranked by ``sort_by`` within each kind of result: generations first, then
    restorations of test images (whose IS/FID measure recovery of a visible digit and are
    never ranked beside generations); a row of unknown kind (unreadable config) last."""
    ranked = []
    for kind in (*MEASURES, None):
        ranked += sort_rows([r for r in rows if r.get("measures") == kind], sort_by, is_descending(sort_by))
    return ranked


def _runs_columns(varying: list[str], quality: list[str]) -> list[str]:
    """The runs table's columns: identity, axes, what the samples measure, state, losses,
    then each quality metric."""
    columns = ["run_id", "label", *varying, "measures", "state", "epochs", *TRAINING_COLUMNS]
    for m in quality:
        columns += ([f"best_{m}"] if metric_direction(m) != "final" else []) + [f"final_{m}"]
    return columns


def _sort_column(sort_by: str | None, columns: list[str]) -> str:
    """The column to sort by (the default when None; ValueError when unknown). A best-of
    column gets its epoch column beside it in ``columns``."""
    if sort_by is None:
        sort_by = "best_fid_classifier" if "best_fid_classifier" in columns else "best_val_loss"
    elif sort_by not in columns:
        guess = nearest(sort_by, columns)
        raise ValueError(
            f"unknown sort column {sort_by!r}"
            + (f" (did you mean {guess!r}?)" if guess else "")
            + f"; valid: {', '.join(columns)}"
        )
    epoch_col = f"{sort_by}_epoch"
    if sort_by.startswith("best_") and epoch_col not in columns:
        columns.insert(columns.index(sort_by) + 1, epoch_col)
    return sort_by


def _write_sweep_tables(result: AnalysisResult, name: str, runs: list[Run], varying: list[str]) -> None:
    """runs.*, configs.* (when the sweep varies the seed) and per_class.* (when there are
    per-class metrics) into ``result.out_dir``; their paths go to ``result.files``."""
    out_dir, sort_by = result.out_dir, result.sort_by
    compact = frame([c.key for c in result.compact_columns], result.compact_rows)
    compact.columns = [c.header for c in result.compact_columns]
    result.files += write_tables(
        out_dir,
        "runs",
        compact,
        csv_table=frame(result.columns, result.rows),
        caption=f"Runs of sweep {name}, ranked by {sort_by} (every column: runs.csv)",
    )
    if "train.seed" in varying:
        csv_cols, display_cols, configs, display = config_table(
            result.rows, result.columns, varying, sort_by, is_descending(sort_by)
        )
        result.config_columns, result.configs = csv_cols, configs
        result.files += write_tables(
            out_dir,
            "configs",
            frame(display_cols, display),
            csv_table=frame(csv_cols, configs),
            caption=f"Configs of sweep {name}: mean +- std over seeds",
        )
    per_class_cols, per_class = per_class_table(runs)
    if per_class:
        result.files += write_tables(
            out_dir,
            "per_class",
            frame(per_class_cols, per_class),
            caption=f"Per-class metrics of sweep {name} (last epoch that has them)",
        )


# --------------------------------------------------------------------------- index


def _evaluation_settings(runs: list[Run]) -> list[str]:
    """One line per distinct evaluation setting among the runs that computed metrics: a
    metric drawn with 50 DDIM steps is not comparable with one drawn with all 1000."""
    variants: dict[str, int] = {}
    for run in runs:
        ev = run.eval_settings
        if not ev.get("metrics") or not any(is_quality_metric(k) for k in run.metrics):
            continue
        n_T = run.config.get("diffusion", {}).get("n_T", 0)
        steps = ev.get("steps", 0)
        on = "all n_T steps" if not steps or steps >= n_T else f"{steps} evenly spaced steps"
        text = (
            f"{ev.get('samples', '?')} samples per evaluation, drawn with `{ev.get('sampler', '?')}` on "
            f"{on}; every "
            + (f"{ev['every']} epochs" if ev.get("every") else "run at its last epoch only")
            + ("" if not run.evaluation else ", evaluated after training (`hpcdiff evaluate`)")
        )
        variants[text] = variants.get(text, 0) + 1
    if len(variants) == 1:
        return list(variants)
    return [f"{text} ({n} runs)" for text, n in variants.items()]


def _rankings(result: AnalysisResult) -> list[str]:
    """Index lines ranking each kind of result on its own when a sweep holds both: a
    restoration's IS/FID say how well visible test digits were recovered, not how well a
    model generates."""
    kinds = {r.get("measures") for r in result.rows} & set(MEASURES)
    if len(kinds) < 2:
        return []
    col = result.sort_by
    lines = []
    titles = {
        "generation": "Generations (from noise or a fitted prior), ranked by",
        "restoration": "Restorations of held-out test images (not comparable with generations), ranked by",
    }
    for kind in MEASURES:
        rows = [r for r in result.rows if r.get("measures") == kind]
        if not rows:
            continue
        lines += ["", f"**{titles[kind]} `{col}`**:", ""]
        lines += [
            f"{i}. `{r['run_id']}` {r.get('label') or ''}: {fmt(r.get(col)) or 'no value'}"
            for i, r in enumerate(rows, 1)
        ]
    return lines


def _write_index(out_dir: Path, name: str, result: AnalysisResult, figures: list[tuple[str, str, Path]]) -> Path:
    lines = [f"# Sweep `{name}`", ""]
    done = sum(1 for r in result.rows if r["state"] == RunState.DONE)
    lines.append(
        f"{len(result.rows)} runs, {done} done. Runs sorted by `{result.sort_by}`"
        + (" (higher is better)." if is_descending(result.sort_by) else ".")
    )
    if result.incomplete:
        lines += ["", "**Incomplete runs** (their numbers are from the epochs they finished):", ""]
        lines += [
            f"- `{r['run_id']}`: {r['state']}, epochs {r['epochs']}"
            for r in result.rows
            if r["run_id"] in result.incomplete
        ]
    lines += _rankings(result)
    if result.evaluation:
        lines += ["", "**How the metrics were computed** (the `[eval]` section):", ""]
        lines += [f"- {line}" for line in result.evaluation]
    if result.warnings:
        lines += ["", "**Warnings**:", ""] + [f"- {w}" for w in result.warnings]
    tables = [("Runs", "runs"), ("Configs: mean ± std over seeds", "configs"), ("Per-class metrics", "per_class")]
    for title, stem in tables:
        if (out_dir / f"{stem}.md").exists() and any(f.name == f"{stem}.md" for f in result.files):
            lines += [
                "",
                f"## {title}",
                "",
                f"[CSV]({stem}.csv) · [LaTeX]({stem}.tex)",
                "",
                (out_dir / f"{stem}.md").read_text(),
            ]
    section = None
    for sec, title, png in figures:
        if sec != section:
            lines += ["", f"## {sec}"]
            section = sec
        alt = title.replace("[", "(").replace("]", ")")
        lines += ["", f"### {title}", "", f"![{alt}]({png.name})", "", f"[PDF]({png.with_suffix('.pdf').name})"]
    path = out_dir / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path
