"""The compact runs table: what `hpcdiff analyze` prints and what runs.md / runs.tex hold.

One row per run in the ranking's order: its rank, the run, its label, only what varies
within a label (the model as one value such as ``unet 16x(1,2,4) 0.48M``), what its samples
measure when a sweep holds both kinds, its state, progress in the unit that ends it (steps
under a step budget, minutes under a time budget, epochs otherwise), the headline metrics
(classifier-FID, IS, best validation loss, and the sort column when it is another) and wall
time. Everything else stays in runs.csv (and ``load_results``).
"""

from __future__ import annotations

import math

from hpcdiff.analysis.load import MEASURES, Run
from hpcdiff.config.text_table import (
    Column,
    Fixed,
    dropped_note,
    duration,
    fit,
    format_value,
    progress_text,
    short_headers,
    varying_within_labels,
)
from hpcdiff.storage.runstate import RunState

# column of the full runs table -> (header, decimals)
HEADLINE = {"best_fid_classifier": ("FID", 1), "best_inception_score": ("IS", 2), "best_val_loss": ("val loss", 4)}
SHORT_MEASURES = {"generation": "generates", "restoration": "restores"}


def compact_table(runs: list[Run], varying: list[str], sort_by: str) -> tuple[list[Column], list[dict]]:
    """(columns, rows) of the compact table; ``runs`` in ranked order. Metric cells are
    numbers shown with fixed decimals (:class:`Fixed`; Markdown right-aligns them), others text."""
    flat = [{"label": r.row.get("label", ""), **{k: repr(r.row.get(k)) for k in varying}} for r in runs]
    within = varying_within_labels(flat, varying)
    model_varies = any(k.startswith("model.") for k in within)
    within = [k for k in within if not k.startswith("model.")]
    headers = short_headers(within)
    headline = dict(HEADLINE)
    if sort_by not in headline:
        headline = {sort_by: (sort_by.removeprefix("best_").removeprefix("final_"), 4), **headline}
    kinds = {r.row.get("measures") for r in runs} & set(MEASURES)
    columns = [
        Column("rank", "#", right=True),
        Column("run_id", "run"),
        Column("label", "label"),
        *(Column(k, headers[k], drop_order=3) for k in within),
        *([Column("model", "model", drop_order=4)] if model_varies else []),
        *([Column("measures", "measures")] if len(kinds) > 1 else []),
        Column("state", "state"),
        Column("progress", "progress", drop_order=2),
        *(
            Column(k, h, right=True, drop_order=5 if k == "best_val_loss" and sort_by != k else 0)
            for k, (h, _) in headline.items()
        ),
        Column("wall", "wall", right=True, drop_order=6),
    ]
    rows = []
    rank = {kind: 0 for kind in (*MEASURES, None)}
    for run in runs:
        kind = run.row.get("measures")
        kind = kind if kind in rank else None
        rank[kind] += 1
        cells = {
            "rank": rank[kind],
            "run_id": run.run_id,
            "label": run.row.get("label", ""),
            **{k: format_value(run.row.get(k)) for k in within},
            "measures": SHORT_MEASURES.get(kind, ""),
            "state": run.row.get("state", ""),
            "progress": _progress(run),
            "wall": duration(run.row.get("wall_seconds")),
        }
        if model_varies:
            cells["model"] = _model(run.config)
        for key, (_, digits) in headline.items():
            value = run.row.get(key)
            cells[key] = Fixed(value, digits) if _finite(value) else None
        rows.append(cells)
    return columns, rows


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _progress(run: Run) -> str:
    epochs = str(run.row.get("epochs", "0/0"))
    done, _, total = epochs.partition("/")
    steps = run.metrics.get("optimizer_steps")
    last_steps = None
    if steps is not None and len(steps):
        finite = [float(x) for x in steps if math.isfinite(float(x))]
        last_steps = int(finite[-1]) if finite else None
    return progress_text(
        run.config.get("train", {}),
        epoch=int(done or 0),
        epochs=int(total or 0),
        steps=last_steps,
        seconds=run.row.get("wall_seconds"),
        ended=run.row.get("state") == RunState.DONE,
        stopped_by=run.stopped_by,
    )


def _model(config: dict) -> str:
    from hpcdiff.config.spec import RunSpec
    from hpcdiff.science.models import describe_model

    try:
        return describe_model(RunSpec.from_dict({"model": config.get("model", {})}).model)
    except ValueError:
        return ""


def console_text(sweep_dir, result, width: int) -> str:
    """What `hpcdiff analyze` prints: the ranking as a compact table, and a footer (the sort
    column, incomplete runs, columns left out, warnings, where the files are)."""
    lines, dropped = fit(result.compact_columns, result.compact_rows, width)
    apart = any(c.key == "measures" for c in result.compact_columns)
    footer = [
        f"ranked by {result.sort_by}"
        + (" (generations and restorations ranked apart)" if apart else "")
        + (f"; incomplete: {', '.join(result.incomplete)}" if result.incomplete else ""),
        *[n for n in [dropped_note(dropped, "runs.csv")] if n],
        *(f"warning: {w}" for w in result.warnings),
        f"wrote {len(result.files)} files to {result.out_dir} (open index.md)",
    ]
    return "\n".join([str(sweep_dir), *lines, *footer])
