"""Forward degradations ``x0 -> x_t``, one function per name.

Every degradation has the signature

    fn(x0, t, *, n_steps, schedule, generator, <params with defaults>) -> x_t

* ``x0``: float tensor ``[B, C, H, W]``, data in ``[low, high] = [-0.5, 0.5]``;
* ``t``: int64 tensor ``[B]`` with values in ``0..n_steps`` (one level per sample);
* ``schedule``: name in :data:`hpcdiff.science.schedules.SCHEDULES`, mapping ``t`` to a strength fraction;
* ``generator``: optional :class:`torch.Generator`. Random numbers are drawn on the
  generator's device (in float32) and moved to ``x0``'s device, so a CPU generator gives the
  same numbers whether ``x0`` lives on the CPU or a GPU; with ``generator=None`` they are
  drawn from the global RNG of ``x0``'s device.

The result has ``x0``'s shape, dtype and device; ``t = 0`` returns ``x0`` exactly and the
severity grows with ``t``. Everything is batched on the device: no Python loop over samples
or pixels (blur loops over its ``n_steps`` levels because it is cumulative; downsample loops
over the distinct levels present in the batch, at most ``max_factor``).

Use :func:`degrade` from other modules: it checks the parameter names and the inputs. Each
degradation registers its facts (process, recipe, prior) with itself
(:mod:`hpcdiff.science.degradation_registry`); the tensor kernels they share are in
:mod:`hpcdiff.science.image_ops`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hpcdiff.science.degradation_registry import (
    COMMON_KWARGS,
    DEGRADATION_INFO,
    DEGRADATIONS,
    PROCESSES,
    DegradationInfo,
    check_params,
    default_schedule,
    degradation_params,
    degrade,
    info_of,
    is_gaussian,
    process_of,
    register_degradation,
)
from hpcdiff.science.image_ops import (
    blur_by_convolution,
    gaussian_kernel1d,
    levels,
    normal,
    per_sample,
    pixel_swap_loop_reference,
    swap_half_width,
    tile_pairing,
    uniform,
)
from hpcdiff.science.schedules import ddpm_schedule, schedule_fraction, strength

__all__ = [  # the registry's names are re-exported: import them from here (this fills it)
    "DEGRADATIONS",
    "DEGRADATION_INFO",
    "DegradationInfo",
    "PROCESSES",
    "COMMON_KWARGS",
    "degrade",
    "check_params",
    "degradation_params",
    "default_schedule",
    "info_of",
    "process_of",
    "is_gaussian",
    "ddpm_alpha_bar",
    "gaussian_kernel1d",
    "blur_by_convolution",
    "pixel_swap_loop_reference",
]


# --------------------------------------------------------------------------- gaussian


def ddpm_alpha_bar(n_steps: int, beta1: float, beta2: float, device=None) -> Tensor:
    """``alpha_bar_t`` for ``t = 0..n_steps`` of :func:`hpcdiff.science.schedules.ddpm_schedule`."""
    return ddpm_schedule(n_steps, beta1, beta2, device=device)[1]


@register_degradation(
    "gaussian",
    process="gaussian",
    draws="independent",
    n_steps=1000,
    prior="standard normal N(0, I)",
    keeps_image=lambda params, n_steps, shape: None,
)
def gaussian(
    x0: Tensor,
    t: Tensor,
    *,
    n_steps: int,
    schedule: str = "linear",
    generator: torch.Generator | None = None,
    beta1: float = 1e-4,
    beta2: float = 0.02,
) -> Tensor:
    """DDPM forward process ``z_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps``, ``eps ~ N(0, I)``.

    ``ab_t`` from :func:`ddpm_alpha_bar` (the starter's linear betas); ``schedule`` is ignored.
    ``t = 0`` is special-cased to return ``x0`` (the starter's ``ab_0`` is ``1 - beta1``).
    """
    t = levels(x0, t)
    ab = per_sample(ddpm_alpha_bar(n_steps, beta1, beta2, device=x0.device)[t]).to(x0.dtype)
    eps = normal(x0.shape, generator, x0.device).to(x0.dtype)
    z = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return torch.where(per_sample(t == 0), x0, z)


# --------------------------------------------------------------------------- impulse


def _impulse_keeps_image(params, n_steps, shape):
    rho = params["rho_end"]
    if rho < 0.5:
        return (
            f"at rho_end = {rho} level T corrupts {2 * rho:.0%} of the pixels and the digit is still "
            f"visible; set degradation.params.rho_end = 0.5 (every pixel corrupted at level T)"
        )
    return None


@register_degradation("impulse", draws="shared", n_steps=150, keeps_image=_impulse_keeps_image)
def impulse(
    x0: Tensor,
    t: Tensor,
    *,
    n_steps: int,
    schedule: str = "cosine",
    generator: torch.Generator | None = None,
    rho_start: float = 0.05,
    rho_end: float = 0.25,
    low: float = -0.5,
    high: float = 0.5,
) -> Tensor:
    """Salt-and-pepper noise of density ``rho_t`` (report C's wording).

    Each pixel (all channels together) becomes ``high`` with probability ``rho_t`` and
    ``low`` with probability ``rho_t``, so a fraction ``2 rho_t`` is corrupted.
    ``rho_t = rho_start + (rho_end - rho_start) * schedule(t)`` for ``t >= 1`` and 0 at ``t = 0``.
    One uniform number per pixel decides, so with a fixed seed the corrupted set only grows with ``t``.
    """
    if not (0 <= rho_start <= 0.5 and 0 <= rho_end <= 0.5):
        raise ValueError(f"impulse densities must lie in [0, 0.5], got {rho_start}, {rho_end}")
    t = levels(x0, t)
    B, _, H, W = x0.shape
    rho = strength(schedule, t, n_steps, rho_start, rho_end)
    rho = per_sample(torch.where(t == 0, torch.zeros_like(rho), rho))
    u = uniform((B, 1, H, W), generator, x0.device)
    out = torch.where(u < 2 * rho, torch.full_like(x0, low), x0)
    return torch.where(u < rho, torch.full_like(x0, high), out)


# --------------------------------------------------------------------------- pixel swap


def _pixel_swap_keeps_image(params, n_steps, shape):
    return (
        "a permutation keeps every pixel's value, so level T still holds the digit's ink (how much of "
        "the image is stroke); no pixel_swap setting forgets it"
    )


@register_degradation("pixel_swap", draws="shared", n_steps=100, keeps_image=_pixel_swap_keeps_image)
def pixel_swap(
    x0: Tensor,
    t: Tensor,
    *,
    n_steps: int,
    schedule: str = "linear",
    generator: torch.Generator | None = None,
    max_half_width: int = 0,
) -> Tensor:
    """Pixels swapped in pairs; the reach ``w_t`` of a swap grows with ``t``.

    One draw pairs every pixel of an image with a random partner in its tile (a random
    perfect matching of each tile's pixels: a random permutation read two by two). Tiles are
    squares of side ``max_half_width + 1`` from the top-left corner (the last row and column
    of tiles may be smaller); ``max_half_width = 0`` means one tile, the whole image. At
    level ``t`` the pairs whose Chebyshev distance is at most ``w_t`` are swapped, the others
    stay: ``w_t = 1 + round((w_max - 1) * schedule(t))`` for ``t >= 1``, 0 at ``t = 0``
    (nothing swapped), with ``w_max = max_half_width`` (``max(H, W) - 1`` for one tile), so
    at ``t = n_steps`` every pixel has left its place: the whole image (or each tile) is a
    random shuffle of its own pixels, values kept, never duplicated. Channels move together.
    Local tiles are the users' "local pixel swap" (report B): level T keeps each tile's
    mean, the digit's coarse shape; one tile forgets everything but the ink.

    Why pairs with a fixed partner: for one draw the swapped set only grows with ``t`` and
    each pixel moves once along a trajectory, so a cold sampler that shares the draw across
    levels (``draws = "shared"``) puts each pixel back once, carrying the restorer's error
    of that one step. (The earlier form, two "jittered sorts" of rows and columns whose
    reach grew with ``t``, moved a pixel again at every growth of the reach: its samples
    stayed salt-and-pepper noise.) The users' sequential per-pixel swap loop
    (:func:`pixel_swap_loop_reference`) is kept for benchmarks.
    """
    t = levels(x0, t)
    B, C, H, W = x0.shape
    n = H * W
    side = max_half_width + 1 if max_half_width > 0 else max(H, W)
    reach = per_sample(swap_half_width(t, n_steps, schedule, side - 1)).view(B, 1)
    k = torch.arange(n, device=x0.device)
    tile, mate = tile_pairing(H, W, side, x0.device)
    # Pixels in random order, then grouped by tile (a stable sort keeps the random order
    # within a tile); with one tile this is the plain random order.
    order = torch.argsort(uniform((B, n), generator, x0.device), dim=1)
    if side < max(H, W):
        order = order.gather(1, torch.argsort(tile[order], dim=1, stable=True))
    partner = torch.empty_like(order).scatter_(1, order, order.gather(1, mate.expand(B, n)))
    distance = torch.maximum((partner // W - k // W).abs(), (partner % W - k % W).abs())
    source = torch.where(distance <= reach, partner, k)
    out = x0.flatten(2).gather(2, source.unsqueeze(1).expand(B, C, n))
    return out.view(B, C, H, W)


# --------------------------------------------------------------------------- luminance mask


def _luminance_mask_keeps_image(params, n_steps, shape):
    masked = min(1.0, params["dropout"] / 2) if params["dropout"] <= 1 else 1 - 1 / (2 * params["dropout"])
    return (
        f"level T masks about {masked:.0%} of the pixels (dropout = {params['dropout']}) and leaves the "
        f"rest of the digit as it was; no luminance_mask setting masks every pixel"
    )


@register_degradation("luminance_mask", draws="shared", n_steps=100, keeps_image=_luminance_mask_keeps_image)
def luminance_mask(
    x0: Tensor,
    t: Tensor,
    *,
    n_steps: int,
    schedule: str = "linear",
    generator: torch.Generator | None = None,
    dropout: float = 0.2,
    low_shift: float = -0.1,
    high_shift: float = 0.2,
    low: float = -0.5,
    high: float = 0.5,
) -> Tensor:
    """Report A's Bernoulli luminance mask, with strength growing with ``t``.

    Per pixel (channels together): ``n ~ U(0, 1)``, masked with probability
    ``p = schedule(t) * dropout * n``. A masked pixel becomes
    ``clamp(mean(x0_image) + U(low_shift, high_shift), low, high)`` (the shift re-centred on
    the image's mean luminance); others keep ``x0``. With a fixed seed the masked set only
    grows with ``t``.
    """
    if low_shift > high_shift:
        raise ValueError(f"need low_shift <= high_shift, got {low_shift} > {high_shift}")
    t = levels(x0, t)
    B, _, H, W = x0.shape
    frac = per_sample(schedule_fraction(schedule, t, n_steps))
    n, u, s = uniform((3, B, 1, H, W), generator, x0.device)
    mask = u < frac * dropout * n  # frac = 0 (t = 0): u < 0 never holds
    mean = x0.mean(dim=(1, 2, 3), keepdim=True)
    shift = (low_shift + (high_shift - low_shift) * s).to(x0.dtype)
    return torch.where(mask, (mean + shift).clamp(low, high), x0)


# Blur, inpaint and downsample (degradations that act on the image's geometry) register
# themselves from their own module; importing this one registers every degradation.
from hpcdiff.science import spatial_degradations  # noqa: E402, F401
