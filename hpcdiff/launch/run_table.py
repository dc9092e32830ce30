"""The run tables of `hpcdiff sweep` (the plan a dry run shows) and `hpcdiff status`, as
plain text for a given width.

By default one compact line per run (:func:`compact`, laid out by
:mod:`hpcdiff.config.text_table`): the run, its label, only what varies *within* a label
(the seed, say), the model as one value when it does, then the caller's columns (action, or
state, progress, loss and wall time). ``--long`` shows every varying key (:func:`render`):
every value verbatim and compactly, never cut, a table when its natural width fits, else
one block per run:

    a5264cdf2e  impulse-dropout-plateau  new
        diffusion.n_T      = 150
        degradation.params = rho_end=0.25 rho_start=0.05

Only the columns whose shown values differ between runs appear. With ``fuse`` > 1 a "group"
column numbers the fused groups ("alone" for a run that trains by itself), and the lines
under the table say how many processes that makes and why each lone run is alone.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

from hpcdiff.config.text_table import Column, dropped_note, fit, format_value, short_headers, varying_within_labels

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
    # The run's ModelSpec, described in one value when the model varies within a label.
    model: object = None


def plan_rows(plan) -> list[RunRow]:
    """The rows of a SweepPlan (hpcdiff.launch.plan), one per run, in the plan's order."""
    by_id = {r.run_id: r for r in plan.sweep.runs}
    groups = group_labels(plan)
    rows = []
    for pr in plan.runs:
        run = by_id[pr.run_dir.run_id]
        values = with_model_name(lookup(run.spec.to_dict(), plan.sweep.varying), run.spec.model)
        after = {"action": pr.action, **({"group": groups.get(run.run_id, "")} if groups else {})}
        rows.append(RunRow(run.run_id, run.label, values, after, model=run.spec.model))
    return rows


def plan_text(plan, width: int, *, long: bool = False) -> str:
    """What `hpcdiff sweep` prints first: a title and the plan's runs with their action (and
    fused group), then how the runs to launch are fused."""
    title = f"sweep {plan.sweep.name}: {len(plan.runs)} runs -> {plan.sweep_dir}"
    if long:
        return "\n".join([render(title, plan_rows(plan), width), *fusion_lines(plan, width)])
    lines, dropped = compact(plan_rows(plan), [Column("action", "action"), Column("group", "group")], width)
    return "\n".join([title, *lines, *[n for n in [dropped_note(dropped)] if n], *fusion_lines(plan, width)])


def group_labels(plan) -> dict[str, str]:
    """Run id -> its fused group's number ("1", "2", ...; "alone" for a run by itself), for
    the runs to launch; {} when fusion is off."""
    if getattr(plan, "fuse", 1) <= 1:
        return {}
    labels = {rid: "alone" for group in plan.fusion.groups for rid in group}
    for number, group in enumerate(plan.fusion.fused, start=1):
        labels.update({rid: str(number) for rid in group})
    return labels


def fusion_lines(plan, width: int) -> list[str]:
    """With fuse > 1: the runs to launch, fused into how many processes, and why each run
    left alone is alone (wrapped to ``width``)."""
    fusion = plan.fusion
    if getattr(plan, "fuse", 1) <= 1 or not fusion.groups:
        return []
    runs = sum(len(g) for g in fusion.groups)
    sizes = " + ".join(str(len(g)) for g in fusion.fused)
    summary = (
        f"fuse = {plan.fuse}: {_count(runs, 'run')} to train in {_count(len(fusion.groups), 'process', 'es')}: "
        + (f"{_count(len(fusion.fused), 'fused group')} ({sizes} runs)" if fusion.fused else "no fused group")
        + (f", {len(fusion.alone)} alone:" if fusion.alone else "")
    )
    lines = textwrap.wrap(summary, width, subsequent_indent=INDENT, break_long_words=False, break_on_hyphens=False)
    for rid, why in fusion.alone.items():
        lines += textwrap.wrap(
            f"{rid}{GAP}{why}",
            width,
            initial_indent=GAP,
            subsequent_indent=" " * (len(GAP) * 2 + len(rid)),
            break_long_words=False,
            break_on_hyphens=False,
        )
    return lines


def with_model_name(values: dict, model) -> dict:
    """A CNN's config leaves out ``name`` (its config.toml is what it was before the UNet):
    the table says "cnn" rather than "-"."""
    if "model.name" in values and values["model.name"] is None and model is not None:
        values = {**values, "model.name": model.name}
    return values


def _count(n: int, noun: str, plural: str = "s") -> str:
    return f"{n} {noun}{'' if n == 1 else plural}"


def compact(rows: list[RunRow], columns: list[Column], width: int) -> tuple[list[str], list[str]]:
    """One line per run: run id, label, what varies within a label (the model as one
    compact value), then ``columns`` (keys of each row's ``after``). Returns (lines, headers
    of the columns left out to fit ``width``)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.values if k not in keys]
    flat = [{"label": r.label, **r.values} for r in rows]
    within = varying_within_labels(flat, keys)
    model_varies = any(k.startswith("model.") for k in within)
    within = [k for k in within if not k.startswith("model.")]
    headers = short_headers(within)
    cells = []
    for r in rows:
        cell = {"run_id": r.run_id, "label": r.label, **{k: format_value(r.values.get(k)) for k in within}, **r.after}
        if model_varies:
            cell["model"] = _model_text(r.model)
        cells.append(cell)
    table = [
        Column("run_id", "run"),
        Column("label", "label"),
        *(Column(k, headers[k], drop_order=3) for k in within),
        *([Column("model", "model", drop_order=4)] if model_varies else []),
        *columns,
    ]
    return fit(table, cells, width)


def _model_text(model) -> str:
    if model is None:
        return ""
    from hpcdiff.science.models import describe_model

    return describe_model(model)


def lookup(tree: dict, keys) -> dict:
    """Dotted key -> the value at that path of a nested dict (None where there is none)."""
    out = {}
    for key in keys:
        node = tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[key] = node
    return out


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
    cells = [
        [
            r.run_id,
            *([r.label] if labels else []),
            *(format_value(r.values.get(k)) for k in keys),
            *(r.after.get(k, "") for k in head + rest),
        ]
        for r in rows
    ]
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
