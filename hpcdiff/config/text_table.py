"""Plain-text tables for the console: one line per run, that fit a width, never cut a value.

Used by `hpcdiff sweep` (its plan and its end-of-sweep summary), `hpcdiff status` and
`hpcdiff analyze`, so that all four read the same way. A table that would be wider than the
terminal drops whole columns, the least important first (each column says how important it
is), and its footer names them; a value is never shortened and no cell is an ellipsis.
Piped output is laid out for 80 columns (``PIPED_WIDTH``).

Stdlib only: the facts a row shows are gathered by the callers (launch, analysis).
"""

from __future__ import annotations

from dataclasses import dataclass

GAP = "  "
PIPED_WIDTH = 80


class Fixed(float):
    """A number shown with a fixed count of decimals (``224.7``, ``5.80``) wherever it is
    written as text: console tables, Markdown and LaTeX."""

    def __new__(cls, value: float, digits: int):
        obj = super().__new__(cls, value)
        obj.digits = digits
        return obj

    def __str__(self) -> str:
        return f"{float(self):.{self.digits}f}"

    __format__ = lambda self, spec: format(str(self), spec)  # noqa: E731


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    # 0: always shown; a higher number is dropped first when the table does not fit.
    drop_order: int = 0
    right: bool = False  # numbers are right-aligned


def fit(columns: list[Column], rows: list[dict], width: int) -> tuple[list[str], list[str]]:
    """(lines: header, rule and one line per row; headers of the columns left out to fit
    ``width``). A column with no value in any row is left out silently."""
    shown = [c for c in columns if any(str(r.get(c.key, "") or "") for r in rows)]
    dropped: list[str] = []
    while _width(shown, rows) > width:
        candidates = [c for c in shown if c.drop_order > 0]
        if not candidates:
            break
        last = max(candidates, key=lambda c: (c.drop_order, shown.index(c)))
        shown.remove(last)
        dropped.append(last.header)
    widths = [_column_width(c, rows) for c in shown]
    lines = [
        _line([c.header for c in shown], widths, [c.right for c in shown]),
        _line(["-" * w for w in widths], widths, [False] * len(widths)),
    ]
    for row in rows:
        lines.append(_line([str(row.get(c.key, "") or "") for c in shown], widths, [c.right for c in shown]))
    return lines, dropped


def _column_width(column: Column, rows: list[dict]) -> int:
    return max([len(column.header), *(len(str(r.get(column.key, "") or "")) for r in rows)])


def _width(columns: list[Column], rows: list[dict]) -> int:
    return sum(_column_width(c, rows) for c in columns) + len(GAP) * max(0, len(columns) - 1)


def _line(texts: list[str], widths: list[int], right: list[bool]) -> str:
    return GAP.join(t.rjust(w) if r else t.ljust(w) for t, w, r in zip(texts, widths, right)).rstrip()


def dropped_note(dropped: list[str], flag: str = "--long") -> str:
    """The footer line for columns left out, or ""."""
    if not dropped:
        return ""
    return f"(not shown at this width: {', '.join(dropped)}; {flag} shows every column)"


# --------------------------------------------------------------------------- cells


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


def varying_within_labels(rows: list[dict], keys: list[str], label_key: str = "label") -> list[str]:
    """The keys whose values differ between rows that share a label (rows without a label
    form one group): what tells apart the runs a label names, e.g. the seed."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row.get(label_key) or "", []).append(row)
    return [k for k in keys if any(len({repr(r.get(k)) for r in group}) > 1 for group in groups.values())]


def short_headers(keys: list[str]) -> dict[str, str]:
    """Dotted keys -> their shortest unambiguous dotted suffix (``train.seed`` -> ``seed``)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if sum(1 for other in keys if other == suffix or other.endswith("." + suffix)) == 1:
                out[key] = suffix
                break
        else:
            out[key] = key
    return out


def progress_numbers(
    train: dict,
    *,
    epoch: int,
    epochs: int,
    steps: int | None,
    seconds: float | None,
    ended: bool = False,
    stopped_by: str | None = None,
) -> tuple[float | None, float, str]:
    """(done, total, unit) in the unit that ends the run (``train``: its [train] section):
    for an ended run the budget that stopped it (``stopped_by``: "max_steps",
    "max_minutes"), else its epochs; for one still to end, its step or time budget when it
    has one (``epochs`` is then only a ceiling), else its epochs. ``done`` is None when
    unknown (a run an older hpcdiff wrote no step count for)."""
    max_steps = int(train.get("max_steps", 0) or 0)
    max_minutes = float(train.get("max_minutes", 0) or 0)
    unit = stopped_by if ended else ("max_steps" if max_steps else "max_minutes" if max_minutes else None)
    if unit == "max_steps" and max_steps:
        return steps, max_steps, "steps"
    if unit == "max_minutes" and max_minutes:
        return (seconds / 60 if seconds is not None else None), max_minutes, "min"
    return epoch, int(epochs or train.get("epochs", 0) or 0), "ep"


def progress_text(train: dict, **facts) -> str:
    """``1300/1300 steps``, ``30/30 min``, ``11/100 ep`` (see :func:`progress_numbers`)."""
    done, total, unit = progress_numbers(train, **facts)
    shown = "?" if done is None else f"{done:.0f}" if unit == "min" else str(int(done))
    return f"{shown}/{total:g} {unit}"


def duration(seconds: float | None) -> str:
    """``42s``, ``12m05s``, ``3h07m``; "" when unknown."""
    if seconds is None or seconds != seconds:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def number(value, digits: int) -> str:
    """A metric with ``digits`` decimals; "" for none or NaN."""
    if value is None or value == "":
        return ""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "" if x != x else f"{x:.{digits}f}"
