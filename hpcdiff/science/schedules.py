"""Per-step strength schedules for the degradations.

A schedule maps an integer step ``t`` in ``0..n_steps`` to a *fraction* in [0, 1]:
exactly 0 at ``t = 0``, exactly 1 at ``t = n_steps``, non-decreasing in between.
A degradation turns the fraction into its own parameter with :func:`strength`
(e.g. impulse density ``rho_start -> rho_end``, pixel-swap window half-width).

The Gaussian DDPM's linear beta schedule lives here too (:func:`ddpm_schedule`): the
Gaussian degradation and ``GaussianDDPM`` both take it from this one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from hpcdiff.config.registry import Registry

ScheduleFn = Callable[[Tensor, int], Tensor]

SCHEDULES: Registry[ScheduleFn] = Registry("schedule")


def _as_fraction(t: Tensor, n_steps: int) -> Tensor:
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    # float64 so that t / n_steps is exact at the endpoints for any realistic n_steps
    return t.to(torch.float64) / n_steps


@SCHEDULES.register("linear")
def linear(t: Tensor, n_steps: int) -> Tensor:
    """``t / n_steps``."""
    return _as_fraction(t, n_steps).clamp(0.0, 1.0).to(torch.float32)


@SCHEDULES.register("cosine")
def cosine(t: Tensor, n_steps: int, s: float = 0.008) -> Tensor:
    """``1 - alpha_bar(t)`` with Nichol & Dhariwal (2021)'s cosine ``alpha_bar``.

    ``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2)``: slow
    at the start, fastest in the middle, slow again near the end.
    """
    u = _as_fraction(t, n_steps)
    f = torch.cos((u + s) / (1 + s) * (math.pi / 2)) ** 2
    f0 = math.cos(s / (1 + s) * (math.pi / 2)) ** 2
    frac = (1.0 - f / f0).clamp(0.0, 1.0)
    # pin the endpoints exactly (cos(pi/2) is ~6e-17, not 0, in floating point)
    frac = torch.where(t <= 0, torch.zeros_like(frac), frac)
    frac = torch.where(t >= n_steps, torch.ones_like(frac), frac)
    return frac.to(torch.float32)


def schedule_fraction(schedule_name: str, t: Tensor, n_steps: int) -> Tensor:
    """The named schedule's fraction for each entry of ``t`` (float32, same device)."""
    return SCHEDULES.get(schedule_name)(t, n_steps)


def strength(schedule_name: str, t: Tensor, n_steps: int, start: float, end: float) -> Tensor:
    """``start + (end - start) * fraction(t)`` (float32, same shape/device as ``t``)."""
    return start + (end - start) * schedule_fraction(schedule_name, t, n_steps)


def ddpm_schedule(n_steps: int, beta1: float, beta2: float, device=None) -> tuple[Tensor, Tensor]:
    """The coursework starter's DDPM schedule ``(beta_t, alpha_bar_t)`` for ``t = 0..n_steps``
    (float32, ``n_steps + 1`` entries each).

    ``beta_t = beta1 + (beta2 - beta1) * t / n_steps`` and
    ``alpha_bar_t = exp(cumsum(log(1 - beta_t)))``; note ``alpha_bar_0 = 1 - beta1``.
    ``beta1 == beta2`` (constant betas) is allowed; the run config asks for ``beta1 < beta2``.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not 0 < beta1 <= beta2 < 1:
        raise ValueError(f"need 0 < beta1 <= beta2 < 1, got beta1={beta1}, beta2={beta2}")
    beta = (beta2 - beta1) * torch.arange(0, n_steps + 1, dtype=torch.float32, device=device) / n_steps + beta1
    return beta, torch.exp(torch.cumsum(torch.log(1 - beta), dim=0))
