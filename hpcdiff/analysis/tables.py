"""Rows in memory -> tables: CSV (plain values, for machines), Markdown, LaTeX, the terminal.

Three tables come from a sweep: the runs table (one row per run), the configs table (one
row per config, mean ± std over its seeds, when the sweep varies ``train.seed``) and the
per-class table (per-class metrics at the last epoch that has them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from hpcdiff.analysis.load import MEASURES, PER_CLASS, Run, is_quality_metric, metric_direction
from hpcdiff.config.text_table import Fixed
from hpcdiff.storage.runstate import RunState


class PlusMinus:
    """A mean and a spread, rendered ``mean ± std`` (``$\\pm$`` in LaTeX)."""

    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def parts(self) -> tuple[str, str]:
        return fmt(self.mean), fmt(self.std, digits=2)


def fmt(v, digits: int = 5) -> str:
    """A cell's text: 5 significant digits, empty for missing or NaN."""
    if v is None:
        return ""
    if isinstance(v, PlusMinus):
        mean, std = v.parts()
        return f"{mean} ± {std}" if mean and std else mean
    if isinstance(v, Fixed):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.{digits}g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(fmt(x) for x in v) + ")"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def is_descending(column: str) -> bool:
    """Whether a column sorts best-first from the top down (a metric where higher is better)."""
    metric = _column_metric(column)
    return metric is not None and metric_direction(metric) == "max"


def _column_metric(column: str) -> str | None:
    for prefix in ("best_", "final_"):
        if column.startswith(prefix) and not column.endswith("_epoch"):
            return column[len(prefix) :]
    return None


def sort_rows(rows: list[dict], column: str, descending: bool) -> list[dict]:
    """Rows with a value first (numbers numerically, anything else as text), missing last."""
    present = [r for r in rows if not missing(r.get(column))]
    absent = [r for r in rows if missing(r.get(column))]
    if all(is_num(r[column]) for r in present):
        present.sort(key=lambda r: float(r[column]), reverse=descending)
    else:
        present.sort(key=lambda r: fmt(r[column]), reverse=descending)
    return present + absent


# --------------------------------------------------------------------------- configs


def config_table(rows, columns, varying, sort_by, descending):
    """One row per config (the varying axes other than the seed): mean and std over seeds.

    Returns (CSV columns, display columns, CSV rows with ``<col>_mean``/``<col>_std``,
    display rows with a :class:`PlusMinus` per numeric column)."""
    key_cols = (
        (["label"] if any(r.get("label") for r in rows) else [])
        + [k for k in varying if k != "train.seed"]
        + (["measures"] if any(r.get("measures") for r in rows) else [])
    )
    skip = {"run_id", "label", "measures", "state", "epochs", *varying}
    numeric = [c for c in columns if c not in skip and any(is_num(r.get(c)) for r in rows)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(fmt(r.get(k)) for k in key_cols), []).append(r)
    configs, display = [], []
    for members in groups.values():
        c, d = _config_row(members, key_cols, numeric)
        configs.append(c)
        display.append(d)
    if sort_by in numeric:
        ranked = sort_rows(configs, f"{sort_by}_mean", descending)
        # each kind of result ranked on its own (generations, then restorations)
        order = [c for kind in (*MEASURES, None) for c in ranked if c.get("measures") == kind]
        display = [display[configs.index(c)] for c in order]
        configs = order
    head = key_cols + ["n_seeds", "n_incomplete", "seeds"]
    csv_cols = head + [f"{c}_{s}" for c in numeric for s in ("mean", "std")]
    return csv_cols, head + numeric, configs, display


def _config_row(members: list[dict], key_cols: list[str], numeric: list[str]) -> tuple[dict, dict]:
    """(CSV row, display row) of one config from the rows of its seeds."""
    c = {k: members[0].get(k) for k in key_cols}
    c["n_seeds"] = len(members)
    c["n_incomplete"] = sum(m["state"] != RunState.DONE for m in members)
    c["seeds"] = sorted(m.get("train.seed") for m in members if m.get("train.seed") is not None)
    d = dict(c)
    for col in numeric:
        vals = np.array([float(m[col]) for m in members if is_num(m.get(col)) and math.isfinite(float(m[col]))])
        mean = float(vals.mean()) if len(vals) else None
        std = float(vals.std(ddof=1)) if len(vals) >= 2 else None
        c[f"{col}_mean"], c[f"{col}_std"] = mean, std
        d[col] = PlusMinus(mean, std)
    return c, d


# --------------------------------------------------------------------------- per class


def per_class_table(runs: list[Run]) -> tuple[list[str], list[dict]]:
    """(columns, rows): per run and per-class metric family, its values at the last epoch
    where any class has a finite value; one column per class."""
    n_classes = 0
    rows = []
    for r in runs:
        for family, by_class in sorted(_per_class_families(r.metrics).items()):
            row = _per_class_row(r, family, by_class)
            if row is not None:
                rows.append(row)
                n_classes = max(n_classes, max(by_class) + 1)
    return ["run_id", "label", "metric", "epoch", *[str(k) for k in range(n_classes)]], rows


def _per_class_families(metrics: dict) -> dict[str, dict[int, str]]:
    """family ('class' for the histogram) -> class -> metric name."""
    families: dict[str, dict[int, str]] = {}
    for name in metrics:
        m = PER_CLASS.match(name)
        if m and is_quality_metric(name):
            families.setdefault(m.group("family") or "class", {})[int(m.group("k"))] = name
    return families


def _per_class_row(r: Run, family: str, by_class: dict[int, str]) -> dict | None:
    epochs = np.asarray(r.metrics.get("epoch", []))
    finite = np.zeros(len(epochs), dtype=bool)
    for name in by_class.values():
        values = np.asarray(r.metrics[name], dtype=np.float64)
        if len(values) == len(finite):
            finite |= np.isfinite(values)
    if not finite.any():
        return None
    i = int(np.nonzero(finite)[0][-1])
    row = {"run_id": r.run_id, "label": r.row.get("label", ""), "metric": family, "epoch": int(epochs[i])}
    for k, name in by_class.items():
        v = float(r.metrics[name][i])
        row[str(k)] = v if math.isfinite(v) else None
    return row


# --------------------------------------------------------------------------- writers


def frame(columns: list[str], rows: list[dict]):
    """A table as a pandas DataFrame of the rows' own values (object columns: an int stays an
    int and a missing value stays None, so the written text does not depend on dtypes)."""
    import pandas as pd

    return pd.DataFrame([[row.get(c) for c in columns] for row in rows], columns=columns, dtype=object)


def write_tables(out_dir: Path, stem: str, table, *, caption: str = "", csv_table=None) -> list[Path]:
    """``<stem>.csv`` (``csv_table`` when given: plain values for machines), ``<stem>.md``
    and ``<stem>.tex`` (a booktabs tabular; the caption as a comment above it), all written
    by pandas from DataFrames (:func:`frame`); every cell is :func:`fmt`'s text."""
    csv_path = out_dir / f"{stem}.csv"
    # csv.writer's "\r\n" (RFC 4180): the files stay byte-for-byte what hpcdiff always wrote.
    (csv_table if csv_table is not None else table).map(fmt).to_csv(csv_path, index=False, lineterminator="\r\n")
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(md_table(table))
    tex_path = out_dir / f"{stem}.tex"
    tex_path.write_text(tex_table(table, caption))
    return [csv_path, md_path, tex_path]


def _numeric_columns(table) -> list[bool]:
    """Per column: whether every present value is a number (those columns align right)."""
    return [all(is_num(v) or isinstance(v, PlusMinus) or missing(v) for v in table[c]) for c in table.columns]


def md_table(table) -> str:
    """A GitHub pipe table (pandas' to_markdown, through tabulate). Cells are fmt's text,
    verbatim: tabulate must not re-read "3.7037e+06" as a number and print it its own way."""
    text = table.map(lambda v: fmt(v).replace("|", "\\|"))
    align = ["right" if n else "left" for n in _numeric_columns(table)]
    return text.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"


def _tex_cell(v) -> str:
    """A LaTeX cell: text arrives already escaped by pandas (escape="latex"); a mean and its
    spread are numbers joined by a math-mode ±."""
    if isinstance(v, PlusMinus):
        mean, std = v.parts()
        return f"{mean} $\\pm$ {std}" if mean and std else mean
    return v


def tex_table(table, caption: str = "") -> str:
    """A booktabs tabular (\\toprule, \\midrule, \\bottomrule: ``\\usepackage{booktabs}``)
    by pandas' Styler, with TeX's special characters in headers and cells escaped by pandas;
    numeric columns right-aligned; the caption as a comment above it."""
    cells = table.map(lambda v: v if isinstance(v, PlusMinus) else fmt(v))
    styler = cells.style.format(_tex_cell, escape="latex").format_index(escape="latex", axis=1).hide(axis="index")
    align = "".join("r" if n else "l" for n in _numeric_columns(table))
    comment = f"% {caption}" if caption else "% generated by hpcdiff analyze"
    return comment.replace("\n", " ") + "\n" + styler.to_latex(column_format=align, hrules=True)
