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

from hpcdiff.science.degradation_registry import (COMMON_KWARGS, DEGRADATION_INFO, DEGRADATIONS, PROCESSES,
                                                  DegradationInfo, check_params, default_schedule,
                                                  degradation_params, degrade, info_of, is_gaussian, process_of,
                                                  register_degradation)
from hpcdiff.science.image_ops import (BLUR_PADDINGS, blur_by_convolution, blur_circular_fft, downsample_factor,
                                       gaussian_kernel1d, levels, normal, per_sample, pixel_swap_loop_reference,
                                       pixelate, swap_half_width, tile_pairing, uniform)
from hpcdiff.science.schedules import ddpm_schedule, schedule_fraction, strength

__all__ = [  # the registry's names are re-exported: import them from here (this fills it)
    "DEGRADATIONS", "DEGRADATION_INFO", "DegradationInfo", "PROCESSES", "COMMON_KWARGS", "degrade",
    "check_params", "degradation_params", "default_schedule", "info_of", "process_of", "is_gaussian",
    "ddpm_alpha_bar", "gaussian_kernel1d", "blur_by_convolution", "pixel_swap_loop_reference",
]


# --------------------------------------------------------------------------- gaussian


def ddpm_alpha_bar(n_steps: int, beta1: float, beta2: float, device=None) -> Tensor:
    """``alpha_bar_t`` for ``t = 0..n_steps`` of :func:`hpcdiff.science.schedules.ddpm_schedule`."""
    return ddpm_schedule(n_steps, beta1, beta2, device=device)[1]


@register_degradation("gaussian", process="gaussian", draws="independent", n_steps=1000,
                      prior="standard normal N(0, I)", keeps_image=lambda params, n_steps, shape: None)
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
        return (f"at rho_end = {rho} level T corrupts {2 * rho:.0%} of the pixels and the digit is still "
                f"visible; set degradation.params.rho_end = 0.5 (every pixel corrupted at level T)")
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
    return ("a permutation keeps every pixel's value, so level T still holds the digit's ink (how much of "
            "the image is stroke); no pixel_swap setting forgets it")


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
    return (f"level T masks about {masked:.0%} of the pixels (dropout = {params['dropout']}) and leaves the "
            f"rest of the digit as it was; no luminance_mask setting masks every pixel")


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


# --------------------------------------------------------------------------- blur


#: A level-T image whose slowest spatial pattern keeps more than this fraction of its contrast
#: still shows where the digit was.
FORGOTTEN_CONTRAST = 0.02


def _blur_keeps_image(params, n_steps, shape):
    # The slowest pattern of a circular image, cos(2 pi j / N), is damped by the kernel's
    # response at that frequency once per level (non-circular paddings damp it about as much).
    size = max(shape[-2:])
    g = gaussian_kernel1d(params["kernel_size"], params["sigma"])
    offsets = torch.arange(len(g), dtype=torch.float64) - len(g) // 2
    response = float((g.double() * torch.cos(2 * torch.pi * offsets / size)).sum().abs())
    kept = response**n_steps
    if kept > FORGOTTEN_CONTRAST:
        import math

        need = math.ceil(math.log(FORGOTTEN_CONTRAST) / math.log(response)) if response < 1 else None
        fix = f"set diffusion.n_T >= {need} (or raise sigma)" if need else "raise degradation.params.sigma"
        return (f"after {n_steps} blurs the image's slowest pattern keeps {kept:.0%} of its contrast, so "
                f"level T still shows the digit's position; {fix}")
    return None


@register_degradation(
    "blur",
    draws="none",
    n_steps=20,
    prior="per-channel mean image (x_T is nearly constant) plus small Gaussian noise",
    keeps_image=_blur_keeps_image,
)
def blur(
    x0: Tensor,
    t: Tensor,
    *,
    n_steps: int,
    schedule: str = "linear",
    generator: torch.Generator | None = None,
    kernel_size: int = 11,
    sigma: float = 7.0,
    padding: str = "circular",
) -> Tensor:
    """Cumulative Gaussian blur: ``x_t = G^t x0`` (Bansal et al. 2022, MNIST: T=20, 11x11, sigma 7).

    The same ``kernel_size x kernel_size`` Gaussian is applied ``t`` times (Bansal's
    "Constant" routine; ``schedule`` is ignored) as a depthwise convolution with
    ``padding``: "circular" as in Bansal's code (nn.Conv2d padding_mode='circular'), or
    "reflect" / "replicate" / "zeros". Circular padding keeps every channel's mean exactly,
    so ``x_T`` tends to the per-channel mean image: the start used for sampling.

    Circular padding is computed in closed form with FFTs (cost independent of ``t``); the
    other paddings apply the blur cumulatively (:func:`blur_by_convolution`). The two agree
    for circular padding to float32 rounding.
    """
    if padding not in BLUR_PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(BLUR_PADDINGS)}, got {padding!r}")
    t = levels(x0, t)
    if padding == "circular":
        gaussian_kernel1d(kernel_size, sigma)  # validates the arguments
        return blur_circular_fft(x0, t, kernel_size, sigma)
    return blur_by_convolution(x0, t, n_steps=n_steps, kernel_size=kernel_size, sigma=sigma, padding=padding)


# --------------------------------------------------------------------------- inpaint


#: MNIST-family digits are drawn inside the image less a border of this many pixels.
DIGIT_BORDER = 4


def _inpaint_keeps_image(params, n_steps, shape):
    import math

    H, W = shape[-2:]
    r2 = ((H - 1) / 2 - DIGIT_BORDER) ** 2 + ((W - 1) / 2 - DIGIT_BORDER) ** 2  # a corner of the digit box
    kept = 1 - math.exp(-r2 / (2 * params["max_sigma"] ** 2))
    if kept > 0.05:
        need = math.ceil(math.sqrt(r2 / (2 * -math.log(1 - 0.05))))
        return (f"at max_sigma = {params['max_sigma']} level T keeps up to {kept:.0%} of the digit's contrast "
                f"at the edge of the digit box; set degradation.params.max_sigma >= {need}")
    return None


@register_degradation("inpaint", draws="none", n_steps=50, keeps_image=_inpaint_keeps_image)
def inpaint(
    x0: Tensor,
    t: Tensor,
    *,
    n_steps: int,
    schedule: str = "linear",
    generator: torch.Generator | None = None,
    max_sigma: float = 14.0,
    fill: float = -0.5,
) -> Tensor:
    """Centred Gaussian "defading" mask (Bansal et al. 2022 inpainting, MNIST T=50).

    ``x_t = fill + (x0 - fill) * m_t`` with ``m_t = 1 - G_t / max(G_t)``, ``G_t`` a Gaussian
    centred on the image with ``sigma_t = max_sigma * schedule(t)``: the centre pixels go to
    ``fill`` (the background, -0.5) first and the hole widens with ``t``; ``m_0 = 1``. The
    default ``max_sigma = 14`` suits 28x28: at ``t = n_steps`` the mean of the mask is ~0.27
    (about three quarters of the image is faded out, the corners least).
    """
    if max_sigma <= 0:
        raise ValueError(f"max_sigma must be > 0, got {max_sigma}")
    t = levels(x0, t)
    H, W = x0.shape[-2:]
    sigma = per_sample(strength(schedule, t, n_steps, 0.0, max_sigma))
    sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))  # t = 0 handled below
    yy = torch.arange(H, device=x0.device, dtype=torch.float32) - (H - 1) / 2
    xx = torch.arange(W, device=x0.device, dtype=torch.float32) - (W - 1) / 2
    r2 = yy.view(H, 1) ** 2 + xx.view(1, W) ** 2
    # G / max(G) computed as exp(-(r2 - min r2) / 2 sigma^2): no underflow for tiny sigma
    mask = 1 - torch.exp(-(r2 - r2.min()) / (2 * sigma**2))
    out = fill + (x0 - fill) * mask.to(x0.dtype)
    return torch.where(per_sample(t == 0), x0, out)


# --------------------------------------------------------------------------- downsample


#: A level-T image of at most this many blocks across is a summary small enough for a
#: mixture fitted on it to generate from (the prior models exactly what level T keeps).
MAX_PRIOR_BLOCKS = 7


def _downsample_keeps_image(params, n_steps, shape):
    f = params["max_factor"]
    across = -(-max(shape[-2:]) // f) if f > 1 else max(shape[-2:])
    if across > MAX_PRIOR_BLOCKS:
        need = -(-max(shape[-2:]) // MAX_PRIOR_BLOCKS)
        return (f"max_factor = {f} leaves {across}x{across} blocks at level T, too much of the digit for a "
                f"fitted prior; set degradation.params.max_factor >= {need}")
    return None


@register_degradation("downsample", draws="none", n_steps=20, keeps_image=_downsample_keeps_image)
def downsample(
    x0: Tensor,
    t: Tensor,
    *,
    n_steps: int,
    schedule: str = "linear",
    generator: torch.Generator | None = None,
    max_factor: int = 7,
) -> Tensor:
    """Super-resolution degradation: average-pool by ``f_t``, nearest-upsample back to ``H x W``.

    ``f_t = 1 + ceil((max_factor - 1) * schedule(t))`` (integer, 1 at ``t = 0``, at least 2
    for ``t >= 1``, ``max_factor`` at ``t = n_steps``). Pooling uses ``f x f`` blocks on a
    grid centred on the image (partial border blocks when ``f`` does not divide the size), so
    28x28 goes to 14, 10, 7, 6, 5, 4 blocks across for f = 2..7. (Resampling to
    ``round(H / f)`` with area interpolation instead misaligns the blocks for f = 3 and made
    the error non-monotone in f on MNIST.) The loop runs over the factors 2..max_factor, not
    over samples: each pixelates the whole batch and the samples at that level take it. No
    value is read back to the host and every shape is fixed (a training step on a GPU is not
    held up by it and can be captured in a CUDA graph); a training batch holds nearly every
    level anyway, so this costs about what pixelating only the levels present would.
    """
    if max_factor < 1:
        raise ValueError(f"max_factor must be >= 1, got {max_factor}")
    t = levels(x0, t)
    factor = per_sample(downsample_factor(t, n_steps, schedule, max_factor))
    out = x0
    for f in range(2, max_factor + 1):
        out = torch.where(factor == f, pixelate(x0, f), out)
    return out
