"""Which runs of a sweep can train as one fused group (training/fused.py), and why a run
cannot. Stdlib only: the dry run answers before torch is imported.

Members share everything that fixes the code and the tensor shapes (model and its sizes,
dataset and image size, batch size, the degradation and its process, loss, precision,
device, the job's resources) and may differ in what becomes a per-member tensor or a
per-member draw: :data:`PER_MEMBER`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpcdiff.config.sweep import flatten_settings

#: Dotted keys that may differ between the members of a group.
PER_MEMBER = frozenset(
    {
        "train.lr",
        "train.optimizer",  # Adam and AdamW differ only in where the weight decay goes
        "train.weight_decay",
        "train.ema_decay",
        "train.seed",
        "train.epochs",
        "train.max_steps",
        "train.max_minutes",
        "train.early_stopping_patience",
        "train.early_stopping_min_delta",
        "train.lr_plateau_patience",
        "train.lr_plateau_factor",
        "train.grad_clip",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.sample_every",
        "diffusion.n_T",
        "diffusion.beta1",
        "diffusion.beta2",
        "diffusion.sampler",
        "diffusion.sample_steps",
        "diffusion.start_noise",
        "degradation.schedule",
    }
)
#: Sections outside the computation that still must agree: one job runs the group.
SHARED_SECTIONS = ("slurm",)
#: Sections each member keeps for itself (what is measured and logged).
OWN_SECTIONS = ("eval", "log")


def shared_settings(spec_dict: dict) -> dict:
    """The settings members must share, flattened (``RunSpec.to_dict()`` in)."""
    flat = flatten_settings(spec_dict)
    return {k: repr(v) for k, v in flat if k not in PER_MEMBER and k.split(".", 1)[0] not in OWN_SECTIONS}


@dataclass
class FusionPlan:
    groups: list[list[str]] = field(default_factory=list)  # run ids, at most `fuse` each
    alone: dict[str, str] = field(default_factory=dict)  # run id -> why it trains alone

    @property
    def fused(self) -> list[list[str]]:
        """The groups of more than one run."""
        return [g for g in self.groups if len(g) > 1]


def one_process_reason(processes: int = 1, gpus: int = 1) -> str | None:
    """Why a run that asks for ``processes`` processes (DDP ranks: ``--processes``, or a
    SLURM task's nodes x tasks per node) or ``gpus`` GPUs cannot join a fused group, which
    trains in one process on one device; None when it can."""
    if processes > 1:
        return f"fused groups train in one process ({processes} processes per run asked)"
    if gpus > 1:
        return f"fused groups train on one device ({gpus} GPUs per run asked)"
    return None


def plan_groups(runs: list[tuple[str, dict]], fuse: int, *, apart: dict[str, str] | None = None) -> FusionPlan:
    """Runs ``(run id, RunSpec.to_dict())`` in sweep order -> groups of up to ``fuse``
    members that share :func:`shared_settings`, in order of first appearance; a run in a
    group of one gets the reason (the nearest run's differing shared settings). ``apart``:
    runs that train alone whatever they share, with why (how they are launched:
    :func:`one_process_reason`); it applies when ``fuse`` > 1."""
    plan = FusionPlan()
    if fuse < 1:
        raise ValueError(f"fuse must be >= 1, got {fuse}")
    apart = dict(apart or {}) if fuse > 1 else {}
    settings = {rid: shared_settings(d) for rid, d in runs if rid not in apart}
    classes: dict[tuple, list[str]] = {}
    for rid, _ in runs:
        if rid in apart:
            classes[("apart", rid)] = [rid]
        else:
            classes.setdefault(tuple(sorted(settings[rid].items())), []).append(rid)
    for members in classes.values():
        for i in range(0, len(members), fuse):
            plan.groups.append(members[i : i + fuse])
    for group in plan.groups:
        if len(group) == 1:
            rid = group[0]
            plan.alone[rid] = apart[rid] if rid in apart else _why_alone(rid, settings, fuse, bool(apart))
    return plan


def differing_keys(mine: dict, theirs: dict) -> list[str]:
    """The keys of two runs' shared settings (``shared_settings``) whose values differ, sorted."""
    return sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))


def _why_alone(rid: str, settings: dict, fuse: int, others_apart: bool = False) -> str:
    if fuse == 1:
        return "fusion is off (fuse = 1)"
    mine = settings[rid]
    others = [o for o in settings if o != rid]
    if not others:
        return "the other runs to train cannot fuse" if others_apart else "the only run to train"

    nearest = min(others, key=lambda o: len(differing_keys(mine, settings[o])))
    keys = differing_keys(mine, settings[nearest])
    if not keys:
        return f"its group filled up ({fuse} members each) and it is the one left"
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    return f"differs from every other run in what members must share (from {nearest} in {shown})"
