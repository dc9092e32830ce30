"""Rows in memory -> tables: CSV (plain values, for machines), Markdown, LaTeX, the terminal.

Three tables come from a sweep: the runs table (one row per run), the configs table (one
row per config, mean ± std over its seeds, when the sweep varies ``train.seed``) and the
per-class table (per-class metrics at the last epoch that has them).
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np

from hpcdiff.analysis.load import PER_CLASS, Run, is_quality_metric, metric_direction


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
            return column[len(prefix):]
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
    key_cols = (["label"] if any(r.get("label") for r in rows) else []) + [k for k in varying if k != "train.seed"]
    skip = {"run_id", "label", "state", "epochs", *varying}
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
        order = sort_rows(configs, f"{sort_by}_mean", descending)
        display = [display[configs.index(c)] for c in order]
        configs = order
    head = key_cols + ["n_seeds", "n_incomplete", "seeds"]
    csv_cols = head + [f"{c}_{s}" for c in numeric for s in ("mean", "std")]
    return csv_cols, head + numeric, configs, display


def _config_row(members: list[dict], key_cols: list[str], numeric: list[str]) -> tuple[dict, dict]:
    """(CSV row, display row) of one config from the rows of its seeds."""
    c = {k: members[0].get(k) for k in key_cols}
    c["n_seeds"] = len(members)
    c["n_incomplete"] = sum(m["state"] != "done" for m in members)
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


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX_ESCAPES[m.group()], text)


def _tex_cell(v) -> str:
    if isinstance(v, PlusMinus):
        mean, std = v.parts()
        return f"{tex_escape(mean)} $\\pm$ {tex_escape(std)}" if mean and std else tex_escape(mean)
    return tex_escape(fmt(v))


def write_tables(out_dir: Path, stem: str, columns: list[str], rows: list[dict], *, caption: str = "",
                 csv_columns: list[str] | None = None, csv_rows: list[dict] | None = None) -> list[Path]:
    """``<stem>.csv`` (``csv_columns``/``csv_rows`` when given: plain values for machines),
    ``<stem>.md`` and ``<stem>.tex`` (a LaTeX tabular; caption as a comment)."""
    csv_path = out_dir / f"{stem}.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(csv_columns or columns)
        for row in (csv_rows if csv_rows is not None else rows):
            writer.writerow([fmt(row.get(c)) for c in (csv_columns or columns)])
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(md_table(columns, rows))
    tex_path = out_dir / f"{stem}.tex"
    tex_path.write_text(tex_table(columns, rows, caption))
    return [csv_path, md_path, tex_path]


def md_table(columns: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def tex_table(columns: list[str], rows: list[dict], caption: str = "") -> str:
    """A LaTeX tabular, numeric columns right-aligned; the caption as a comment above it."""
    numeric = [all(is_num(r.get(c)) or isinstance(r.get(c), PlusMinus) or missing(r.get(c)) for r in rows)
               for c in columns]
    lines = [f"% {tex_escape(caption)}" if caption else "% generated by hpcdiff analyze",
             "\\begin{tabular}{" + "".join("r" if n else "l" for n in numeric) + "}", "\\hline",
             " & ".join(tex_escape(c) for c in columns) + " \\\\", "\\hline"]
    lines += [" & ".join(_tex_cell(row.get(c)) for c in columns) + " \\\\" for row in rows]
    lines += ["\\hline", "\\end{tabular}", ""]
    return "\n".join(lines)


def console_table(title: str, columns: list[str], rows: list[dict]):
    """The runs table for the terminal (a rich Table)."""
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*[fmt(row.get(c)) for c in columns])
    return table
