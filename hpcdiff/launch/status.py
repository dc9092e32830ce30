"""The state of every run of a sweep, read from the files on disk (plus squeue, when there
is one, for the state of each run's SLURM job)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcdiff.config import tomlio
from hpcdiff.config.text_table import Column, dropped_note, duration, number, progress_text
from hpcdiff.launch import slurm
from hpcdiff.launch.run_table import RunRow, compact, lookup, render, with_model_name
from hpcdiff.storage.rundir import read_manifest, read_run_meta, sweep_run_dirs
from hpcdiff.storage.runstate import RunState

COLOURS = {
    RunState.DONE: "green",
    RunState.RUNNING: "cyan",
    RunState.FAILED: "red",
    RunState.DIVERGED: "magenta",
    RunState.TIMEOUT: "yellow",
    RunState.INTERRUPTED: "yellow",
    RunState.PENDING: "white",
    RunState.QUEUED: "white",
    RunState.BUSY: "cyan",
}


@dataclass
class RunStatus:
    run_id: str
    label: str
    axes: dict
    state: RunState
    epoch: int
    epochs: int
    last_loss: float | None
    val_loss: float | None
    error: str | None
    restarts: int
    job_id: str | None = None
    job_state: str | None = None
    requeues: int = 0
    # The run's resolved value of each varying key (from its config.toml; its axes where
    # that cannot be read).
    values: dict | None = None
    steps: int | None = None  # optimiser steps done (status.json; absent before hpcdiff wrote it)
    stopped_by: str | None = None  # the budget that ended it
    elapsed: float | None = None  # seconds of training
    train: dict | None = None  # the run's [train] section (its budgets)
    model: object = None  # its ModelSpec, when config.toml reads


def collect_status(sweep_dir: str | Path) -> tuple[list[str], list[RunStatus]]:
    """(varying axis names, one RunStatus per run)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a sweep directory")
    manifest = read_manifest(sweep_dir)
    answered = slurm.query_queue()
    queue = answered or {}
    varying = list(manifest.get("varying", []))
    rows = []
    for rd in sweep_run_dirs(sweep_dir):
        st = rd.read_status()
        meta = read_run_meta(rd)
        job_id = st.get("job_id")
        job_state = queue.get(str(job_id)) if job_id else None
        state = rd.effective_state()
        if state in (RunState.TIMEOUT, RunState.PENDING) and job_state in slurm.ACTIVE_STATES:
            state = RunState.QUEUED  # waiting for its (re)start
        elif (
            state == RunState.RUNNING
            and job_id
            and answered is not None
            and str(job_id) not in queue
            and not rd.is_locked()
        ):
            # Its job has left the queue without the run saying how it ended: killed without
            # a signal it could handle (out of memory, node failure, scancel -s KILL).
            state = RunState.INTERRUPTED
        rows.append(
            RunStatus(
                run_id=rd.run_id,
                label=meta.get("label", ""),
                axes=meta.get("axes", {}),
                state=state,
                epoch=int(st.get("epoch", 0)),
                epochs=int(st.get("epochs", 0)),
                last_loss=st.get("last_loss"),
                val_loss=st.get("val_loss"),
                error=st.get("error"),
                restarts=int(st.get("restarts", 0) or 0),
                job_id=job_id,
                job_state=job_state,
                requeues=int(st.get("requeues", 0) or 0),
                steps=st.get("steps"),
                elapsed=st.get("elapsed"),
                stopped_by=st.get("stopped_by"),
                **_config_facts(rd, varying, meta.get("axes", {})),
            )
        )
    return varying, rows


def _config_facts(rd, varying: list[str], axes: dict) -> dict:
    """The run's varying values, [train] section and ModelSpec, from its config.toml (its
    axes where that cannot be read)."""
    try:
        config = tomlio.load(rd.config_path)
    except (OSError, ValueError):  # no or unreadable config.toml (tomllib's error is a ValueError)
        return {"values": {k: axes.get(k) for k in varying}, "train": {}, "model": None}
    try:
        from hpcdiff.config.spec import RunSpec

        model = RunSpec.from_dict({"model": config.get("model", {})}).model
    except ValueError:
        model = None
    return {"values": with_model_name(lookup(config, varying), model), "train": config.get("train", {}), "model": model}


def summary(rows: list[RunStatus]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    return counts


def is_finished(rows: list[RunStatus]) -> bool:
    """Nothing left that will still change by itself."""
    return all(r.state.ended and r.job_state not in slurm.ACTIVE_STATES for r in rows)


def status_table(sweep_dir, varying: list[str], rows: list[RunStatus], width: int = 100, *, long: bool = False):
    """One compact line per run (state, progress in the unit that ends it, validation loss,
    wall time) and a footer: the counts, each failed run's error, columns left out.
    ``long``: every varying key and every status field (one block per run when a table
    would not fit in ``width``)."""
    from rich.console import Group
    from rich.text import Text

    slurm_cols = any(r.job_id for r in rows)
    shared = shared_jobs(rows)
    table_rows = []
    for r in rows:
        values = r.values if r.values is not None else {k: r.axes.get(k) for k in varying}
        if long:
            after = {
                "state": r.state,
                "epoch": f"{r.epoch}/{r.epochs}",
                "last loss": f"{r.last_loss:.4f}" if isinstance(r.last_loss, float) else "",
                "val loss": f"{r.val_loss:.4f}" if isinstance(r.val_loss, float) else "",
            }
            if slurm_cols:
                after.update(
                    {
                        "job": r.job_id or "",
                        "job state": r.job_state or "",
                        "requeues": str(r.requeues),
                        "runs in job": str(len(shared[r.job_id])) if r.job_id in shared else "",
                    }
                )
            else:
                after["restarts"] = str(r.restarts)
            after["error"] = _headline(r.error)
        else:
            after = {
                "state": r.state,
                "job": r.job_id or "",
                "progress": progress_text(
                    r.train or {},
                    epoch=r.epoch,
                    epochs=r.epochs,
                    steps=_steps(r),
                    seconds=r.elapsed,
                    ended=r.state.ended,
                    stopped_by=r.stopped_by,
                ),
                "val loss": number(r.val_loss, 4),
                "wall": duration(r.elapsed),
            }
        table_rows.append(RunRow(r.run_id, r.label, values, after, model=r.model))
    counts = summary(rows)
    footer = [", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f" ({len(rows)} runs)"]
    if long:
        body = render(str(sweep_dir), table_rows, width)
    else:
        lines, dropped = compact(
            table_rows,
            [
                Column("state", "state"),
                Column("job", "job", drop_order=5),
                Column("progress", "progress"),
                Column("val loss", "val loss", drop_order=2, right=True),
                Column("wall", "wall", drop_order=1, right=True),
            ],
            width,
        )
        body = "\n".join([str(sweep_dir), *lines])
        footer += [f"{r.run_id} {r.state}: {_headline(r.error)}" for r in rows if r.error and r.state != RunState.DONE]
        footer += [note for note in [dropped_note(dropped)] if note]
    text = Text(body)
    for state, colour in COLOURS.items():
        text.highlight_words([f"  {state}"], style=colour)
    line = "\n".join(footer)
    if shared:
        line += "\nruns that share a job (slurm.runs_per_gpu):\n" + "\n".join(
            f"  {job}: {', '.join(ids)}" for job, ids in shared.items()
        )
    return Group(text, Text(line))


def _steps(r: RunStatus) -> int | None:
    """Optimiser steps done; a run that an older hpcdiff stopped at its step budget did them all."""
    if r.steps is not None:
        return int(r.steps)
    return int((r.train or {}).get("max_steps", 0)) if r.stopped_by == "max_steps" else None


def shared_jobs(rows: list[RunStatus]) -> dict[str, list[str]]:
    """Job id -> the run ids it trains, for the jobs that train several (packed runs)."""
    jobs: dict[str, list[str]] = {}
    for r in rows:
        if r.job_id:
            jobs.setdefault(str(r.job_id), []).append(r.run_id)
    return {job: ids for job, ids in jobs.items() if len(ids) > 1}


def _headline(error: str | None, limit: int = 100) -> str:
    """An error's first sentence on one line (what went wrong and where); status.json and
    log.txt hold all of it."""
    text = " ".join((error or "").split())
    first = text.split(". ", 1)[0]
    return first if len(first) <= limit else first[: limit - 3] + "..."


def cancel_sweep(sweep_dir: str | Path) -> list[str]:
    """scancel the jobs of every run that has not finished; returns the job ids."""
    _, rows = collect_status(sweep_dir)
    # Runs packed into one task share its job id: each job once.
    ids = list(
        dict.fromkeys(
            r.job_id for r in rows if r.job_id and r.state != RunState.DONE and r.job_state in slurm.ACTIVE_STATES
        )
    )
    slurm.cancel(ids)
    return ids
