"""The state of every run of a sweep, read from the files on disk (plus squeue, when there
is one, for the state of each run's SLURM job)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .launch import slurm
from .rundir import read_manifest, read_run_meta, sweep_run_dirs

ENDED = ("done", "failed", "timeout", "interrupted", "diverged")
COLOURS = {"done": "green", "running": "cyan", "failed": "red", "diverged": "magenta", "timeout": "yellow",
           "interrupted": "yellow", "pending": "white", "queued": "white"}


@dataclass
class RunStatus:
    run_id: str
    label: str
    axes: dict
    state: str
    epoch: int
    epochs: int
    last_loss: float | None
    val_loss: float | None
    error: str | None
    restarts: int
    job_id: str | None = None
    job_state: str | None = None
    requeues: int = 0


def collect_status(sweep_dir: str | Path) -> tuple[list[str], list[RunStatus]]:
    """(varying axis names, one RunStatus per run)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a sweep directory")
    manifest = read_manifest(sweep_dir)
    answered = slurm.query_queue()
    queue = answered or {}
    rows = []
    for rd in sweep_run_dirs(sweep_dir):
        st = rd.read_status()
        meta = read_run_meta(rd)
        job_id = st.get("job_id")
        job_state = queue.get(str(job_id)) if job_id else None
        state = rd.effective_state()
        if state in ("timeout", "pending") and job_state in slurm.ACTIVE_STATES:
            state = "queued"  # waiting for its (re)start
        elif (state == "running" and job_id and answered is not None and str(job_id) not in queue
              and not rd.is_locked()):
            # Its job has left the queue without the run saying how it ended: killed without
            # a signal it could handle (out of memory, node failure, scancel -s KILL).
            state = "interrupted"
        rows.append(RunStatus(
            run_id=rd.run_id, label=meta.get("label", ""), axes=meta.get("axes", {}),
            state=state, epoch=int(st.get("epoch", 0)), epochs=int(st.get("epochs", 0)),
            last_loss=st.get("last_loss"), val_loss=st.get("val_loss"), error=st.get("error"),
            restarts=int(st.get("restarts", 0) or 0), job_id=job_id, job_state=job_state,
            requeues=int(st.get("requeues", 0) or 0),
        ))
    return list(manifest.get("varying", [])), rows


def summary(rows: list[RunStatus]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    return counts


def is_finished(rows: list[RunStatus]) -> bool:
    """Nothing left that will still change by itself."""
    return all(r.state in ENDED and r.job_state not in slurm.ACTIVE_STATES for r in rows)


def status_table(sweep_dir, varying: list[str], rows: list[RunStatus]):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    slurm_cols = any(r.job_id for r in rows)
    labels = any(r.label for r in rows)
    table = Table(title=str(sweep_dir))
    columns = ["run id", *(["label"] if labels else []), *varying, "state", "epoch", "last loss", "val loss"]
    columns += ["job", "job state", "requeues"] if slurm_cols else ["restarts"]
    columns.append("error")
    for col in columns:
        table.add_column(col)
    for r in rows:
        cells = [r.run_id, *([r.label] if labels else []), *[_short(r.axes.get(k, "")) for k in varying],
                 f"[{COLOURS.get(r.state, 'white')}]{r.state}[/]", f"{r.epoch}/{r.epochs}",
                 f"{r.last_loss:.4f}" if isinstance(r.last_loss, float) else "",
                 f"{r.val_loss:.4f}" if isinstance(r.val_loss, float) else ""]
        cells += [r.job_id or "", r.job_state or "", str(r.requeues)] if slurm_cols else [str(r.restarts)]
        cells.append((r.error or "")[:60])
        table.add_row(*cells)
    counts = summary(rows)
    line = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f" ({len(rows)} runs)"
    return Group(table, Text(line))


def _short(v) -> str:
    text = str(v)
    return text if len(text) <= 40 else text[:37] + "..."


def cancel_sweep(sweep_dir: str | Path) -> list[str]:
    """scancel the jobs of every run that has not finished; returns the job ids."""
    _, rows = collect_status(sweep_dir)
    ids = [r.job_id for r in rows if r.job_id and r.state != "done" and r.job_state in slurm.ACTIVE_STATES]
    slurm.cancel(ids)
    return ids
