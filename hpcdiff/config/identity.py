"""The rule of run identity: which settings decide what a run computes, and therefore its id.

A run id is a hash of ``run_identity(spec)``. Re-running a sweep finds its finished runs by
that id, so the rule is a contract with every sweep directory already on disk:

1. Only the sections that say *what is computed* take part: IDENTITY_SECTIONS. Sections
   about *how a run is executed or observed* ([slurm], [eval], [log] and any later one)
   never do: asking for more time or another metric finds the same runs.
2. The keys that existed when the rule was set (IDENTITY_V1 below) always take part, at
   their default values too: that is how every existing id was computed.
3. A key added later takes part only while it differs from its default. A new setting
   therefore leaves every existing run's id alone, and changes the id only of runs that
   use it. Never add a key to IDENTITY_V1.
4. A key inside an identity section that only says *how* the same computation executes
   (EXECUTION_KEYS, e.g. ``train.compile``: CUDA graphs or eager) never takes part.
"""

from __future__ import annotations

from dataclasses import fields

IDENTITY_SECTIONS = ("data", "model", "diffusion", "degradation", "train")

IDENTITY_V1: dict[str, frozenset[str]] = {
    "data": frozenset({"name", "root", "download", "subset", "val_fraction"}),
    "model": frozenset({"hidden", "activation", "kernel_size", "last_kernel_size", "dropout"}),
    "diffusion": frozenset({"n_T", "beta1", "beta2", "loss", "sampler", "sample_steps", "sample_start", "start_noise"}),
    "degradation": frozenset({"name", "schedule", "params"}),
    "train": frozenset(
        {
            "epochs",
            "batch_size",
            "lr",
            "optimizer",
            "weight_decay",
            "seed",
            "early_stopping_patience",
            "early_stopping_min_delta",
            "lr_plateau_patience",
            "lr_plateau_factor",
            "checkpoint_every",
            "keep_checkpoints",
            "sample_every",
            "n_samples",
            "device",
            "mixed_precision",
            "grad_clip",
            "ema_decay",
            "grad_accumulation",
        }
    ),
}


# Keys of identity sections that choose how a step executes, never what it computes.
EXECUTION_KEYS: dict[str, frozenset[str]] = {"train": frozenset({"compile"})}


def section_identity(name: str, section, as_dict: dict) -> dict:
    """The identity part of one section (``as_dict``: the section as written to config.toml)."""
    always = IDENTITY_V1.get(name, frozenset())
    execution = EXECUTION_KEYS.get(name, frozenset())
    defaults = {f.name: f for f in fields(type(section))}
    out = {}
    for key, value in as_dict.items():
        if key in execution:
            continue
        if key in always or getattr(section, key) != _default(defaults[key]):
            out[key] = value
    return out


def run_identity(spec, as_dict: dict) -> dict:
    """``as_dict``: ``spec.to_dict()``."""
    return {name: section_identity(name, getattr(spec, name), as_dict[name]) for name in IDENTITY_SECTIONS}


def _default(f):
    from dataclasses import MISSING

    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING
