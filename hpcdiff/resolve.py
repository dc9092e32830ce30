"""Checks and "auto" resolution that need the registries of science/ and evaluation/.

config/ validates what a setting may hold without importing torch; this module knows every
registry (degradations and their parameters, schedules, samplers, metrics) and turns "use
the recipe" values into explicit ones, so that a run's saved config.toml says exactly what
was run. It sits above science/ and evaluation/ so that config/ stays at the bottom.
"""

from __future__ import annotations

import dataclasses
import math

from hpcdiff.config import sweep as sweep_files
from hpcdiff.config.catalog import DATASETS
from hpcdiff.config.log_spec import tracker_install_problem
from hpcdiff.config.registry import unknown_message, unknown_name_message
from hpcdiff.config.spec import RunSpec, SpecError, check_text
from hpcdiff.evaluation.reference import reference_for, references
from hpcdiff.science.degradations import (
    DEGRADATION_INFO,
    DEGRADATIONS,
    check_params,
    default_schedule,
    degradation_params,
    is_gaussian,
    process_of,
)
from hpcdiff.science.diffusion import SAMPLER_KIND, SAMPLERS
from hpcdiff.science.models import image_size_problem
from hpcdiff.science.schedules import SCHEDULES


def resolve_spec(spec: RunSpec) -> RunSpec:
    """Fill the "use the recipe" values (n_T = 0, schedule "", sampler/start "auto") with
    what they mean for this degradation, so the saved config is explicit."""
    name = spec.degradation.name
    d = spec.diffusion
    gaussian = is_gaussian(name)
    n_T = d.n_T or DEGRADATION_INFO[name].n_steps
    sampler = d.sampler if d.sampler != "auto" else ("ancestral" if gaussian else "cold_alg2")
    start = d.sample_start
    if start == "auto":
        # Cold diffusion restores held-out test images unless a sweep asks for "prior", and
        # every table says so. "auto" keeps that meaning because sample_start is part of the
        # run id: were "auto" to become "prior" wherever level T forgets the digit, every
        # existing blur and downsample run would get a new id and be trained again.
        start = "noise" if gaussian else "degraded_test"
    schedule = spec.degradation.schedule or default_schedule(name)
    eval_sampler = spec.eval.sampler
    if eval_sampler == "auto":
        eval_sampler = "ddim" if gaussian else sampler
    return spec.replace(
        diffusion=dataclasses.replace(d, n_T=n_T, sampler=sampler, sample_start=start),
        degradation=dataclasses.replace(spec.degradation, schedule=schedule),
        eval=dataclasses.replace(spec.eval, sampler=eval_sampler),
    )


# The integer parameters of the degradations are pixel counts (kernel sizes, window widths,
# pooling factors) on 28x28 images; a value past this allocates gigabytes for nothing.
MAX_PIXEL_PARAM = 1024


def _check_param_values(spec: RunSpec) -> None:
    """Run the degradation once with the run's parameters: its own range checks raise here.
    The error names the parameter it mentions, or the only one set."""
    deg = spec.degradation
    n_T = spec.diffusion.n_T or DEGRADATION_INFO[deg.name].n_steps
    try:
        check_params(deg.name, n_steps=n_T, schedule=deg.schedule or None, **deg.params)
    except (ValueError, RuntimeError) as err:
        named = [k for k in deg.params if k in str(err)] or list(deg.params)
        path = f"degradation.params.{named[0]}" if len(named) == 1 else "degradation.params"
        raise SpecError(f"rejected by degradation {deg.name!r}: {err}", path=path) from None


def _check_param_types(deg) -> None:
    """The degradation's parameters against its registered signature: known names, the
    default's type, and the same rules as every other setting (config.checks.coerce): params are a
    free table, so they are checked here."""
    valid = degradation_params(deg.name)
    if is_gaussian(deg.name) and deg.params:
        raise SpecError(
            f"the {deg.name} degradation takes its betas from diffusion.beta1/beta2",
            path=f"degradation.params.{next(iter(deg.params))}",
        )
    for key, value in deg.params.items():
        path = f"degradation.params.{key}"
        if key not in valid:
            raise SpecError(unknown_message("parameter", key, sorted(valid), of=f"degradation {deg.name!r}"), path=path)
        default = valid[key]
        ok = (isinstance(value, bool) == isinstance(default, bool)) and (
            isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int))
        )
        if default is not None and not ok:
            raise SpecError(f"expected {type(default).__name__}, got {value!r}", path=path)
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"must be a finite number, got {value}", path=path)
        if type(default) is int and abs(value) > MAX_PIXEL_PARAM:
            raise SpecError(f"must be in [-{MAX_PIXEL_PARAM}, {MAX_PIXEL_PARAM}], got {value}", path=path)
        if isinstance(value, str):
            check_text(value, path)


def _check_sampling(spec: RunSpec) -> None:
    """Samplers and the sampling start fit the degradation's process."""
    name, d = spec.degradation.name, spec.diffusion
    process = process_of(name)
    for path, sampler in (("diffusion.sampler", d.sampler), ("eval.sampler", spec.eval.sampler)):
        if sampler == "auto":
            continue
        if sampler not in SAMPLERS:
            raise SpecError(unknown_name_message("sampler", sampler, ["auto", *SAMPLERS.names()]), path=path)
        if SAMPLER_KIND[sampler] != process:
            fitting = [n for n, k in SAMPLER_KIND.items() if k == process]
            raise SpecError(
                f"sampler {sampler!r} does not apply to degradation {name!r}; use one of: {', '.join(fitting)}",
                path=path,
            )
    if is_gaussian(name) and d.sample_start not in ("auto", "noise"):
        raise SpecError("the Gaussian DDPM starts sampling from noise", path="diffusion.sample_start")
    if d.sample_start == "channel_mean" and not DEGRADATION_INFO[name].has_known_prior:
        raise SpecError(f"'channel_mean' is a start for blur, not {name!r}", path="diffusion.sample_start")
    if d.sample_start == "prior":
        keeps = _level_T_keeps_image(spec)
        if keeps:
            raise SpecError(
                f"a start from a prior fitted at level T would not be a generation: {keeps}; or use "
                f'sample_start = "degraded_test" (a restoration of test images)',
                path="diffusion.sample_start",
            )


def _level_T_keeps_image(spec: RunSpec) -> str | None:
    """Why level T of the run's degradation still shows the image (None: it forgets it)."""
    deg = spec.degradation
    info = DEGRADATION_INFO[deg.name]
    shape = DATASETS[spec.data.name].image_shape or (1, 28, 28)
    return info.level_T_keeps_image(deg.params, spec.diffusion.n_T or info.n_steps, shape)


def validate_spec(spec: RunSpec) -> RunSpec:
    """Checks that need the registries; returns the resolved spec."""
    deg = spec.degradation
    if deg.name not in DEGRADATIONS:
        raise SpecError(unknown_name_message("degradation", deg.name, DEGRADATIONS.names()), path="degradation.name")
    if deg.schedule and deg.schedule not in SCHEDULES:
        raise SpecError(unknown_name_message("schedule", deg.schedule, SCHEDULES.names()), path="degradation.schedule")
    _check_param_types(deg)
    _check_param_values(spec)
    _check_sampling(spec)
    shape = DATASETS[spec.data.name].image_shape
    problem = image_size_problem(spec.model, shape) if shape else None
    if problem:
        raise SpecError(f"{problem} (data.name = {spec.data.name!r})", path="model.channel_mults")
    if spec.eval.classifier == "reference" and reference_for(spec.data.name) is None:
        shipped = sorted({d for r in references().values() for d in r.datasets})
        raise SpecError(
            f"hpcdiff ships no reference classifier for data.name = {spec.data.name!r} (it ships "
            f'one for {", ".join(shipped) or "none"}); use "auto" or "trained" to score with a '
            f"classifier trained on the dataset",
            path="eval.classifier",
        )
    for i, name in enumerate(spec.log.trackers):
        problem = tracker_install_problem(name)
        if problem:
            raise SpecError(problem, path=f"log.trackers[{i}]")
    return resolve_spec(spec)


def load_sweep(path, overrides=()) -> sweep_files.Sweep:
    """A sweep file expanded into runs whose specs are validated against the registries and
    resolved (the run ids hash these): what every command that plans runs uses."""
    return sweep_files.load_sweep(path, overrides, resolve=validate_spec)


def expand(raw: dict, **kwargs) -> sweep_files.Sweep:
    """``config.sweep.expand`` with every run resolved (for sweeps built in code)."""
    return sweep_files.expand(raw, resolve=validate_spec, **kwargs)
