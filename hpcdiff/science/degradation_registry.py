"""The degradation registry: the facts each degradation registers with itself, and the
checked entry point ``degrade`` (called every training step).

The degradations themselves are in :mod:`hpcdiff.science.degradations`, which registers them
here on import and re-exports everything below: import from there, so that the registry is
filled.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from hpcdiff.config.registry import Registry, unknown_message
from hpcdiff.science.schedules import SCHEDULES

DegradationFn = Callable[..., Tensor]

DEGRADATIONS: Registry[DegradationFn] = Registry("degradation")

#: keyword-only arguments that every degradation takes and that are not its own parameters
COMMON_KWARGS = ("n_steps", "schedule", "generator")

#: The diffusion process a degradation is trained with: "gaussian", the DDPM (the network
#: predicts the noise, sampling starts from N(0, I)), or "cold", Bansal et al.'s cold
#: diffusion (the network restores x0, the samplers alternate restoring and degrading).
PROCESSES = ("gaussian", "cold")

#: How a degradation's random draws relate across levels, which is what a cold sampler
#: needs to know to degrade its running estimate consistently:
#:   "none"         deterministic: x_t depends on (x0, t) only, the generator is unused;
#:   "shared"       one draw per sample trajectory serves every level, and with that draw the
#:                  corruption only grows with t (impulse noise's corrupted set, a mask, a
#:                  permutation's reach): Algorithm 2 then uncovers what level s-1 no longer
#:                  corrupts instead of re-corrupting half of the pixels at every step;
#:   "independent"  every level takes its own draw (Gaussian noise).
LEVEL_DRAWS = ("none", "shared", "independent")

#: ``keeps_image(params, n_steps, image_shape) -> str | None``: why level ``n_steps`` still
#: shows the image (a start from a prior fitted at that level would not be a generation),
#: with the setting that makes it forget; None when level ``n_steps`` forgets the image.
KeepsImage = Callable[[Mapping[str, Any], int, tuple], "str | None"]


@dataclass(frozen=True)
class DegradationInfo:
    """What the rest of hpcdiff needs to know about a degradation besides its function."""

    name: str
    process: str  # one of PROCESSES
    draws: str  # one of LEVEL_DRAWS
    has_known_prior: bool  # x_T can be sampled without data (a start for sampling)
    prior: str | None  # how to sample x_T, in words, when has_known_prior
    n_steps: int  # the recipe's number of levels (the reports' / Bansal's settings)
    # Read from the function's signature once, at registration (degrade runs every step).
    params: Mapping[str, Any]  # its own keyword parameters and their defaults
    default_schedule: str  # the schedule it uses when none is given
    keeps_image: KeepsImage | None = None  # None: level T never forgets the image

    @property
    def deterministic(self) -> bool:
        """x_t depends on (x0, t) only: the generator is not used."""
        return self.draws == "none"

    def level_T_keeps_image(self, params: Mapping[str, Any], n_steps: int, image_shape: tuple) -> str | None:
        """Why a start fitted at level ``n_steps`` would still carry the image (None: it
        would not, so sampling from it generates)."""
        if self.keeps_image is None:
            return f"no setting of {self.name!r} forgets the image at its last level"
        return self.keeps_image({**self.params, **params}, n_steps, tuple(image_shape))


DEGRADATION_INFO: dict[str, DegradationInfo] = {}


def _keyword_defaults(fn: DegradationFn) -> dict[str, Any]:
    kinds = inspect.signature(fn).parameters.values()
    found = {p.name: p.default for p in kinds if p.kind is inspect.Parameter.KEYWORD_ONLY}
    missing = [k for k in COMMON_KWARGS if k not in found]
    if missing:
        raise TypeError(f"degradation {fn.__name__} lacks the keyword arguments {missing}")
    return found


def register_degradation(
    name: str,
    *,
    draws: str,
    n_steps: int,
    prior: str | None = None,
    process: str = "cold",
    keeps_image: KeepsImage | None = None,
):
    if process not in PROCESSES:
        raise ValueError(f"process must be one of {PROCESSES}, got {process!r}")
    if draws not in LEVEL_DRAWS:
        raise ValueError(f"draws must be one of {LEVEL_DRAWS}, got {draws!r}")

    def decorator(fn: DegradationFn) -> DegradationFn:
        kw = _keyword_defaults(fn)
        DEGRADATIONS.register(name)(fn)
        DEGRADATION_INFO[name] = info = DegradationInfo(
            name=name,
            process=process,
            draws=draws,
            has_known_prior=prior is not None,
            prior=prior,
            n_steps=n_steps,
            default_schedule=kw["schedule"],
            keeps_image=keeps_image,
            params=MappingProxyType({k: v for k, v in kw.items() if k not in COMMON_KWARGS}),
        )
        fn.deterministic = info.deterministic  # type: ignore[attr-defined]
        fn.has_known_prior = info.has_known_prior  # type: ignore[attr-defined]
        return fn

    return decorator


# --------------------------------------------------------------------------- entry points


def info_of(name: str) -> DegradationInfo:
    """The registered facts of a degradation (KeyError with a suggestion for unknown names)."""
    DEGRADATIONS.get(name)
    return DEGRADATION_INFO[name]


def process_of(name: str) -> str:
    """The diffusion process the degradation belongs to: "gaussian" or "cold" (PROCESSES)."""
    return info_of(name).process


def is_gaussian(name: str) -> bool:
    """Whether the degradation is trained as the Gaussian DDPM (not as cold diffusion)."""
    return process_of(name) == "gaussian"


def degradation_params(name: str) -> dict[str, Any]:
    """The degradation's own parameters and their defaults (without n_steps/schedule/generator)."""
    return dict(info_of(name).params)


def default_schedule(name: str) -> str:
    """The schedule a degradation uses when none is given."""
    return info_of(name).default_schedule


def check_params(name: str, *, n_steps: int, schedule: str | None = None, **params: Any) -> None:
    """Degrade one blank 28x28 image with these parameters, so that a value the degradation
    rejects (a density above 0.5, an even kernel, an unknown padding) fails while the sweep is
    validated rather than in the first training step of every run. Each degradation checks
    its own parameters; this only calls it. Levels 0 and 1 are enough to reach those checks
    and keep the cost independent of ``n_steps``."""
    x0 = torch.zeros(2, 1, 28, 28)
    degrade(
        name,
        x0,
        torch.tensor([0, 1]),
        n_steps=n_steps,
        schedule=schedule,
        generator=torch.Generator().manual_seed(0),
        **params,
    )


def _checked_levels(t: Tensor | int, x0: Tensor, n_steps: int) -> Tensor:
    """``t`` as an int64 tensor ``[B]`` on ``x0``'s device, in ``0..n_steps``.

    Never waits for the device: an int or a CPU tensor is checked on the host; a tensor
    already on an accelerator is checked there (``torch._assert_async``), and a level out of
    range fails at the next synchronisation instead of on this line."""
    if isinstance(t, int):
        if not 0 <= t <= n_steps:
            raise ValueError(f"t must lie in 0..{n_steps}, got {t}")
        return torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
    if t.shape != (x0.shape[0],) or t.is_floating_point() or t.is_complex():
        raise ValueError(f"t must be an integer tensor of shape ({x0.shape[0]},), got {tuple(t.shape)} {t.dtype}")
    if t.numel() and t.device.type == "cpu":
        lo, hi = int(t.min()), int(t.max())  # host memory: nothing to wait for
        if lo < 0 or hi > n_steps:
            raise ValueError(f"t must lie in 0..{n_steps}, got {lo}..{hi}")
    t = t.to(device=x0.device, dtype=torch.long)
    if t.numel() and t.device.type != "cpu":
        torch._assert_async(((t >= 0) & (t <= n_steps)).all(), f"t must lie in 0..{n_steps}")
    return t


def degrade(
    name: str,
    x0: Tensor,
    t: Tensor | int,
    *,
    n_steps: int,
    schedule: str | None = None,
    generator: torch.Generator | None = None,
    **params: Any,
) -> Tensor:
    """Apply the named degradation after checking its parameters and inputs.

    ``t`` may be an int (the same level for the whole batch); ``schedule=None`` uses the
    degradation's default. Unknown names raise KeyError, unknown parameters ValueError, both
    with a "did you mean" suggestion. Called every training step: it reads the facts kept at
    registration and never synchronises with the device.
    """
    fn, info = DEGRADATIONS.get(name), DEGRADATION_INFO[name]
    for key in params:
        if key not in info.params:
            raise ValueError(unknown_message("parameter", key, sorted(info.params), of=f"degradation {name!r}"))
    if schedule is None:
        schedule = info.default_schedule
    SCHEDULES.get(schedule)  # KeyError with a suggestion
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if x0.dim() != 4 or not x0.is_floating_point():
        raise ValueError(f"x0 must be a float tensor [B, C, H, W], got {tuple(x0.shape)} {x0.dtype}")
    t = _checked_levels(t, x0, n_steps)
    return fn(x0, t, n_steps=n_steps, schedule=schedule, generator=generator, **params)
