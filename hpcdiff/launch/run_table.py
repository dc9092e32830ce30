"""The run tables of `hpcdiff sweep` (the plan a dry run shows) and `hpcdiff status`, as
plain text for a given width.

Pure functions, no rich, no torch. Every value is shown verbatim and compactly, never cut:
a table when its natural width fits, else one block per run:

    a5264cdf2e  impulse-dropout-plateau  new
        diffusion.n_T      = 150
        degradation.params = rho_end=0.25 rho_start=0.05

Only the columns whose shown values differ between runs appear.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GAP = "  "
INDENT = "    "


@dataclass(frozen=True)
class RunRow:
    run_id: str
    label: str
    # Dotted key path -> value, for the keys that may vary (a sweep's `varying`).
    values: dict = field(default_factory=dict)
    # Columns after the values, name -> text: the first one (the plan's action, a run's
    # state) heads the run's block; the others are left out where every run has none.
    after: dict = field(default_factory=dict)


def plan_rows(plan) -> list[RunRow]:
    """The rows of a SweepPlan (hpcdiff.launch.plan), one per run, in the plan's order."""
    by_id = {r.run_id: r for r in plan.sweep.runs}
    rows = []
    for pr in plan.runs:
        run = by_id[pr.run_dir.run_id]
        values = lookup(run.spec.to_dict(), plan.sweep.varying)
        rows.append(RunRow(run.run_id, run.label, values, {"action": pr.action}))
    return rows


def lookup(tree: dict, keys) -> dict:
    """Dotted key -> the value at that path of a nested dict (None where there is none)."""
    out = {}
    for key in keys:
        node = tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[key] = node
    return out


def format_value(value) -> str:
    """Compact and verbatim: `kernel_size=11 sigma=7.0` (a table, keys sorted),
    `[16, 32, 32, 16]`, 0.0002 and 1e-5 (floats as a TOML file would write them),
    true/false, strings bare, `-` for no value."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _format_float(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        return " ".join(f"{k}={_format_nested(value[k])}" for k in sorted(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def _format_nested(value) -> str:
    # A table inside a table keeps its braces so that its items stay together.
    return "{" + format_value(value) + "}" if isinstance(value, dict) and value else format_value(value)


def _format_float(x: float) -> str:
    text = repr(x)  # the shortest text that reads back as x: 0.0002, 7.0, 1e-05, inf
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"  # 1e-05 -> 1e-5
    return text


def varying_columns(rows: list[RunRow]) -> list[str]:
    """The keys whose shown values differ between rows, in the rows' key order (a key
    listed as varying whose values all read the same is left out)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.values if k not in keys]
    return [k for k in keys if len({format_value(r.values.get(k)) for r in rows}) > 1]


def render(title: str, rows: list[RunRow], width: int) -> str:
    """The title, then a table of the runs if its natural width fits in `width`, else one
    block per run. Nothing is cut or wrapped; a single very long value can still make a
    block line longer than `width` (the terminal wraps it, the value stays whole)."""
    keys = varying_columns(rows)
    after: list[str] = []
    for row in rows:
        after += [k for k in row.after if k not in after]
    head, rest = after[:1], [k for k in after[1:] if any(r.after.get(k) for r in rows)]
    labels = any(r.label for r in rows)
    header = ["run id", *(["label"] if labels else []), *keys, *head, *rest]
    cells = [[r.run_id, *([r.label] if labels else []), *(format_value(r.values.get(k)) for k in keys),
              *(r.after.get(k, "") for k in head + rest)] for r in rows]
    widths = [max(len(text) for text in column) for column in zip(header, *cells)]
    if sum(widths) + len(GAP) * (len(widths) - 1) <= width:
        lines = [_line(header, widths), _line(["-" * w for w in widths], widths)]
        lines += [_line(c, widths) for c in cells]
    else:
        key_width = max((len(k) for k in keys + rest), default=0)
        lines = []
        for row in rows:
            lines.append(GAP.join(t for t in (row.run_id, row.label, *(row.after.get(k, "") for k in head)) if t))
            lines += [f"{INDENT}{k.ljust(key_width)} = {format_value(row.values.get(k))}" for k in keys]
            lines += [f"{INDENT}{k.ljust(key_width)} = {row.after[k]}" for k in rest if row.after.get(k)]
    return "\n".join([title, *lines])


def _line(texts: list[str], widths: list[int]) -> str:
    return GAP.join(t.ljust(w) for t, w in zip(texts, widths)).rstrip()
