"""A run's saved ``config.toml``: its ``[run]`` header (id, sweep, label, sweep axes), the
resolved spec, and the migrations that keep configs written by older versions of hpcdiff
readable. Storage reads and writes the bytes; what they mean is decided here. Stdlib only.
"""

from __future__ import annotations

import json
from pathlib import Path

from hpcdiff.config import tomlio
from hpcdiff.config.spec import RunSpec, SpecError


def _eval_sampler_and_steps(raw: dict) -> None:
    # Written before eval.sampler/eval.steps existed: those runs evaluated with their own
    # sampler on their own steps. Kept, so that one run's metric curve is never half one
    # method and half another after a resume.
    ev = raw.get("eval")
    if isinstance(ev, dict) and "sampler" not in ev and "steps" not in ev:
        d = raw.get("diffusion", {})
        ev.update(sampler=d.get("sampler", "auto"), steps=d.get("sample_steps", 0))


#: Applied in order to every config read back; each one changes only configs that predate it.
MIGRATIONS = (_eval_sampler_and_steps,)


def upgrade(raw: dict) -> dict:
    """A saved config's spec sections (``[run]`` dropped) as today's RunSpec reads them."""
    raw = {k: v for k, v in raw.items() if k != "run"}
    for migrate in MIGRATIONS:
        migrate(raw)
    return raw


def read_spec(path: Path) -> RunSpec:
    if not path.is_file():
        raise SpecError(f"no config.toml in {path.parent}: not a run directory")
    return RunSpec.from_dict(upgrade(tomlio.load(path)), source=str(path))


def read_header(path: Path) -> dict:
    """The ``[run]`` table, its sweep axes decoded."""
    meta = dict(tomlio.load(path).get("run", {}))
    meta["axes"] = json.loads(meta.get("axes", "{}"))
    return meta


def render(spec: RunSpec, *, run_id: str, sweep: str, axes: dict, label: str) -> bytes:
    header = f"hpcdiff run {run_id} of sweep {sweep}" + (f" ({label})" if label else "")
    return tomlio.dumps(
        {
            "run": {"id": run_id, "sweep": sweep, "label": label, "axes": json.dumps(axes, sort_keys=True)},
            **spec.to_dict(),
        },
        header=header,
    ).encode()
