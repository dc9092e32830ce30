"""The degradations that act on the image's geometry: blur (Bansal et al.'s cumulative
Gaussian blur), inpaint (a growing centred mask), downsample (ever coarser blocks). Same
signature and rules as :mod:`hpcdiff.science.degradations` (which imports this module, so
that importing it registers every degradation)."""

from __future__ import annotations

import torch
from torch import Tensor

from hpcdiff.science.degradation_registry import register_degradation
from hpcdiff.science.image_ops import (
    BLUR_PADDINGS,
    blur_by_convolution,
    blur_circular_fft,
    downsample_factor,
    gaussian_kernel1d,
    levels,
    per_sample,
    pixelate,
)
from hpcdiff.science.schedules import strength

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
        return (
            f"after {n_steps} blurs the image's slowest pattern keeps {kept:.0%} of its contrast, so "
            f"level T still shows the digit's position; {fix}"
        )
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
        return (
            f"at max_sigma = {params['max_sigma']} level T keeps up to {kept:.0%} of the digit's contrast "
            f"at the edge of the digit box; set degradation.params.max_sigma >= {need}"
        )
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
        return (
            f"max_factor = {f} leaves {across}x{across} blocks at level T, too much of the digit for a "
            f"fitted prior; set degradation.params.max_factor >= {need}"
        )
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
