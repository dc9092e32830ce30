"""The state of every run of a sweep, read from the files on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .rundir import RunDir, read_manifest, read_run_meta, sweep_run_dirs


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


def collect_status(sweep_dir: str | Path) -> tuple[list[str], list[RunStatus]]:
    """(varying axis names, one RunStatus per run)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a sweep directory")
    manifest = read_manifest(sweep_dir)
    rows = []
    for rd in sweep_run_dirs(sweep_dir):
        st = rd.read_status()
        meta = read_run_meta(rd)
        rows.append(RunStatus(
            run_id=rd.run_id, label=meta.get("label", ""), axes=meta.get("axes", {}),
            state=rd.effective_state(), epoch=int(st.get("epoch", 0)), epochs=int(st.get("epochs", 0)),
            last_loss=st.get("last_loss"), val_loss=st.get("val_loss"), error=st.get("error"),
            restarts=int(st.get("restarts", 0) or 0),
        ))
    return list(manifest.get("varying", [])), rows


def summary(rows: list[RunStatus]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    return counts


__all__ = ["collect_status", "summary", "RunStatus", "RunDir"]
