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

Use :func:`degrade` from other modules: it checks the parameter names and the inputs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from hpcdiff.config.registry import Registry, unknown_message
from hpcdiff.science.schedules import SCHEDULES, ddpm_schedule, schedule_fraction, strength

DegradationFn = Callable[..., Tensor]

DEGRADATIONS: Registry[DegradationFn] = Registry("degradation")

#: keyword-only arguments that every degradation takes and that are not its own parameters
COMMON_KWARGS = ("n_steps", "schedule", "generator")


@dataclass(frozen=True)
class DegradationInfo:
    """What the rest of hpcdiff needs to know about a degradation besides its function."""

    name: str
    deterministic: bool  # x_t depends on (x0, t) only: the generator is not used
    has_known_prior: bool  # x_T can be sampled without data (a start for sampling)
    prior: str | None  # how to sample x_T, in words, when has_known_prior
    n_steps: int  # the recipe's number of levels (the reports' / Bansal's settings)


DEGRADATION_INFO: dict[str, DegradationInfo] = {}


def _degradation(name: str, *, deterministic: bool, n_steps: int, prior: str | None = None):
    def decorator(fn: DegradationFn) -> DegradationFn:
        DEGRADATIONS.register(name)(fn)
        info = DegradationInfo(
            name=name,
            deterministic=deterministic,
            has_known_prior=prior is not None,
            prior=prior,
            n_steps=n_steps,
        )
        DEGRADATION_INFO[name] = info
        fn.deterministic = deterministic  # type: ignore[attr-defined]
        fn.has_known_prior = info.has_known_prior  # type: ignore[attr-defined]
        return fn

    return decorator


# --------------------------------------------------------------------------- helpers


def _per_sample(v: Tensor) -> Tensor:
    """``[B] -> [B, 1, 1, 1]`` for broadcasting against images."""
    return v.view(-1, 1, 1, 1)


def _uniform(shape, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) float32 of ``shape`` on ``device``, drawn on the generator's device."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where, dtype=torch.float32).to(device)


def _normal(shape, generator: torch.Generator | None, device: torch.device) -> Tensor:
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where, dtype=torch.float32).to(device)


def _levels(x0: Tensor, t: Tensor) -> Tensor:
    return t.to(device=x0.device, dtype=torch.long)


# --------------------------------------------------------------------------- gaussian


def ddpm_alpha_bar(n_steps: int, beta1: float, beta2: float, device=None) -> Tensor:
    """``alpha_bar_t`` for ``t = 0..n_steps`` of :func:`hpcdiff.science.schedules.ddpm_schedule`."""
    return ddpm_schedule(n_steps, beta1, beta2, device=device)[1]


@_degradation("gaussian", deterministic=False, n_steps=1000, prior="standard normal N(0, I)")
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
    t = _levels(x0, t)
    ab = _per_sample(ddpm_alpha_bar(n_steps, beta1, beta2, device=x0.device)[t]).to(x0.dtype)
    eps = _normal(x0.shape, generator, x0.device).to(x0.dtype)
    z = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return torch.where(_per_sample(t == 0), x0, z)


# --------------------------------------------------------------------------- impulse


@_degradation("impulse", deterministic=False, n_steps=150)
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
    t = _levels(x0, t)
    B, _, H, W = x0.shape
    rho = strength(schedule, t, n_steps, rho_start, rho_end)
    rho = _per_sample(torch.where(t == 0, torch.zeros_like(rho), rho))
    u = _uniform((B, 1, H, W), generator, x0.device)
    out = torch.where(u < 2 * rho, torch.full_like(x0, low), x0)
    return torch.where(u < rho, torch.full_like(x0, high), out)


# --------------------------------------------------------------------------- pixel swap


def _swap_half_width(t: Tensor, n_steps: int, schedule: str, full: int) -> Tensor:
    """Window half-width per sample: 0 at t=0, 1 at t=1 (linear), ``full`` at t=n_steps."""
    hw = 1 + torch.round((full - 1) * schedule_fraction(schedule, t, n_steps)).long()
    return torch.where(t == 0, torch.zeros_like(hw), hw)


@_degradation("pixel_swap", deterministic=False, n_steps=100)
def pixel_swap(
    x0: Tensor,
    t: Tensor,
    *,
    n_steps: int,
    schedule: str = "linear",
    generator: torch.Generator | None = None,
    max_half_width: int = 0,
) -> Tensor:
    """Local random permutation of the pixels; the window's half-width ``w_t`` grows with ``t``.

    ``w_t = 1 + round((w_max - 1) * schedule(t))`` for ``t >= 1`` (so 1 at ``t = 1``), 0 at
    ``t = 0``; ``max_half_width = 0`` means ``w_max = max(H, W) - 1``: at ``t = n_steps`` any
    pixel can reach any position.

    Vectorised as two "jittered sorts": within every row, pixel ``j`` gets the key
    ``j + (w + 1) * u`` with ``u ~ U[0, 1)`` and the row is reordered by key; then the same
    within every column. Each pass is a permutation moving a pixel at most ``w`` places (a
    pixel can only overtake ones fewer than ``w + 1`` places away), so the result is a
    permutation of each image's pixels (values are exchanged, never duplicated: the multiset
    of values is kept) with every pixel inside its ``(2w+1) x (2w+1)`` window. Channels move
    together. This replaces the users' sequential per-pixel swap loop
    (:func:`pixel_swap_loop_reference`), which is also a permutation but not local: a pixel
    can be swapped several times.
    """
    t = _levels(x0, t)
    B, C, H, W = x0.shape
    full = max_half_width if max_half_width > 0 else max(H, W) - 1
    amp = _per_sample((_swap_half_width(t, n_steps, schedule, full) + 1).to(torch.float32))
    u = _uniform((2, B, 1, H, W), generator, x0.device)
    cols = torch.arange(W, device=x0.device, dtype=torch.float32)
    rows = torch.arange(H, device=x0.device, dtype=torch.float32).view(H, 1)
    # amp = 1 (t = 0) gives keys j + u with u < 1: already sorted, so the identity
    src_col = torch.argsort(cols + amp * u[0], dim=-1)
    x = torch.gather(x0, -1, src_col.expand(B, C, H, W))
    src_row = torch.argsort(rows + amp * u[1], dim=-2)
    return torch.gather(x, -2, src_row.expand(B, C, H, W))


def pixel_swap_loop_reference(
    x0: Tensor,
    t: Tensor,
    *,
    n_steps: int,
    schedule: str = "linear",
    generator: torch.Generator | None = None,
    max_half_width: int = 0,
) -> Tensor:
    """The users' per-pixel Python loop, kept only to benchmark :func:`pixel_swap` against.

    For each sample, visit the pixels in raster order and swap each with the pixel at a random
    offset ``(di, dj)``, each uniform in ``[-w_t, w_t]`` (same ``w_t`` as :func:`pixel_swap`),
    clamped to the image. A sequence of swaps, hence a permutation of each image's pixels.
    """
    t = _levels(x0, t)
    B, C, H, W = x0.shape
    full = max_half_width if max_half_width > 0 else max(H, W) - 1
    half_widths = _swap_half_width(t, n_steps, schedule, full).tolist()
    gen_device = generator.device if generator is not None else x0.device
    out = x0.clone()
    for b in range(B):
        w = half_widths[b]
        if w == 0:
            continue
        img = out[b]
        for i in range(H):
            for j in range(W):
                di, dj = torch.randint(-w, w + 1, (2,), generator=generator, device=gen_device).tolist()
                ni = min(max(i + di, 0), H - 1)
                nj = min(max(j + dj, 0), W - 1)
                tmp = img[:, i, j].clone()
                img[:, i, j] = img[:, ni, nj]
                img[:, ni, nj] = tmp
    return out


# --------------------------------------------------------------------------- luminance mask


@_degradation("luminance_mask", deterministic=False, n_steps=100)
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
    t = _levels(x0, t)
    B, _, H, W = x0.shape
    frac = _per_sample(schedule_fraction(schedule, t, n_steps))
    n, u, s = _uniform((3, B, 1, H, W), generator, x0.device)
    mask = u < frac * dropout * n  # frac = 0 (t = 0): u < 0 never holds
    mean = x0.mean(dim=(1, 2, 3), keepdim=True)
    shift = (low_shift + (high_shift - low_shift) * s).to(x0.dtype)
    return torch.where(mask, (mean + shift).clamp(low, high), x0)


# --------------------------------------------------------------------------- blur


def gaussian_kernel1d(kernel_size: int, sigma: float, dtype=torch.float32, device=None) -> Tensor:
    """Normalised 1-D Gaussian of odd length (the 2-D kernel is its outer product, as in
    torchgeometry/kornia's ``get_gaussian_kernel2d`` that Bansal et al. use)."""
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    x = torch.arange(kernel_size, dtype=torch.float64, device=device) - (kernel_size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


_BLUR_PADDINGS = ("circular", "reflect", "replicate", "zeros")


def blur_by_convolution(
    x0: Tensor, t: Tensor, *, n_steps: int, kernel_size: int = 11, sigma: float = 7.0, padding: str = "circular"
) -> Tensor:
    """``G^t x0`` by applying the depthwise (separable) blur ``t`` times; any padding.

    Per-sample ``t``: samples are sorted by ``t`` and step ``k`` blurs only those with
    ``t >= k`` (a prefix), so the cost is ``sum(t)`` image-convolutions, not ``B * max(t)``.
    """
    if padding not in _BLUR_PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(_BLUR_PADDINGS)}, got {padding!r}")
    t = _levels(x0, t)
    C = x0.shape[1]
    g = gaussian_kernel1d(kernel_size, sigma, x0.dtype, x0.device)
    w_rows, w_cols = g.view(1, 1, -1, 1).expand(C, 1, -1, 1), g.view(1, 1, 1, -1).expand(C, 1, 1, -1)
    p = kernel_size // 2

    def conv(x: Tensor) -> Tensor:
        x = F.pad(x, (p, p, p, p), mode="constant" if padding == "zeros" else padding)
        return F.conv2d(F.conv2d(x, w_rows, groups=C), w_cols, groups=C)

    order = torch.argsort(t, descending=True)
    active = (t.view(-1, 1) >= torch.arange(n_steps + 1, device=t.device)).sum(0).tolist()  # one sync
    x = x0[order]
    for k in range(1, n_steps + 1):
        m = active[k]
        if m == 0:
            break
        x = torch.cat([conv(x[:m]), x[m:]]) if m < x.shape[0] else conv(x)
    out = torch.empty_like(x0)
    out[order] = x
    return out


def _blur_circular_fft(x0: Tensor, t: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Closed form of ``t`` circular blurs: ``x_t = IFFT(FFT(x0) * Ghat^t)``, any ``t`` at once.

    A circular convolution is diagonal in Fourier space; the symmetric Gaussian's transform
    ``Ghat`` is real (the kernel is wrapped onto the H x W torus, so it may exceed the image).
    """
    H, W = x0.shape[-2:]
    work = x0.dtype if x0.dtype == torch.float64 else torch.float32
    p = kernel_size // 2
    g = gaussian_kernel1d(kernel_size, sigma, work, x0.device)
    taps = torch.arange(kernel_size, device=x0.device) - p
    g_h = torch.zeros(H, dtype=work, device=x0.device).index_add_(0, taps % H, g)
    g_w = torch.zeros(W, dtype=work, device=x0.device).index_add_(0, taps % W, g)
    ghat = torch.fft.fft(g_h).real.view(H, 1) * torch.fft.rfft(g_w).real.view(1, -1)
    power = ghat ** _per_sample(t.to(work))  # [B, 1, H, W//2 + 1]
    out = torch.fft.irfft2(torch.fft.rfft2(x0.to(work)) * power, s=(H, W))
    return torch.where(_per_sample(t == 0), x0, out.to(x0.dtype))


@_degradation(
    "blur",
    deterministic=True,
    n_steps=20,
    prior="per-channel mean image (x_T is nearly constant) plus small Gaussian noise",
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
    if padding not in _BLUR_PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(_BLUR_PADDINGS)}, got {padding!r}")
    t = _levels(x0, t)
    if padding == "circular":
        gaussian_kernel1d(kernel_size, sigma)  # validates the arguments
        return _blur_circular_fft(x0, t, kernel_size, sigma)
    return blur_by_convolution(x0, t, n_steps=n_steps, kernel_size=kernel_size, sigma=sigma, padding=padding)


# --------------------------------------------------------------------------- inpaint


@_degradation("inpaint", deterministic=True, n_steps=50)
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
    t = _levels(x0, t)
    H, W = x0.shape[-2:]
    sigma = _per_sample(strength(schedule, t, n_steps, 0.0, max_sigma))
    sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))  # t = 0 handled below
    yy = torch.arange(H, device=x0.device, dtype=torch.float32) - (H - 1) / 2
    xx = torch.arange(W, device=x0.device, dtype=torch.float32) - (W - 1) / 2
    r2 = yy.view(H, 1) ** 2 + xx.view(1, W) ** 2
    # G / max(G) computed as exp(-(r2 - min r2) / 2 sigma^2): no underflow for tiny sigma
    mask = 1 - torch.exp(-(r2 - r2.min()) / (2 * sigma**2))
    out = fill + (x0 - fill) * mask.to(x0.dtype)
    return torch.where(_per_sample(t == 0), x0, out)


# --------------------------------------------------------------------------- downsample


def _downsample_factor(t: Tensor, n_steps: int, schedule: str, max_factor: int) -> Tensor:
    """1 at t=0, 2 from t=1, ``max_factor`` at t=n_steps (non-decreasing)."""
    frac = schedule_fraction(schedule, t, n_steps)
    f = 1 + torch.ceil((max_factor - 1) * frac - 1e-4).clamp(min=0).long()
    f = torch.where(t >= 1, f.clamp(min=min(2, max_factor)), torch.ones_like(f))
    return f


def _pixelate(x: Tensor, f: int) -> Tensor:
    """Average over ``f x f`` blocks on a grid centred on the image, then repeat each block mean.

    When ``f`` does not divide the size, the border blocks are partial and average only the
    pixels they cover (zero padding divided by the covered count).
    """
    H, W = x.shape[-2:]
    ph, pw = -H % f, -W % f
    top, left = ph // 2, pw // 2
    pad = (left, pw - left, top, ph - top)
    sums = F.avg_pool2d(F.pad(x, pad), f)
    counts = F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), pad), f)
    y = (sums / counts).repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)
    return y[..., top : top + H, left : left + W]


@_degradation("downsample", deterministic=True, n_steps=20)
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
    the error non-monotone in f on MNIST.) The loop runs over the distinct factors present
    in the batch (at most ``max_factor``), not over samples.
    """
    if max_factor < 1:
        raise ValueError(f"max_factor must be >= 1, got {max_factor}")
    t = _levels(x0, t)
    factor = _downsample_factor(t, n_steps, schedule, max_factor)
    out = x0.clone()
    for f in torch.unique(factor).tolist():
        if f == 1:
            continue
        sel = torch.nonzero(factor == f).squeeze(1)
        out[sel] = _pixelate(x0[sel], f)
    return out


# --------------------------------------------------------------------------- entry points


def _signature_defaults(name: str) -> dict[str, Any]:
    sig = inspect.signature(DEGRADATIONS.get(name))
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def degradation_params(name: str) -> dict[str, Any]:
    """The degradation's own parameters and their defaults (without n_steps/schedule/generator)."""
    return {k: v for k, v in _signature_defaults(name).items() if k not in COMMON_KWARGS}


def check_params(name: str, *, n_steps: int, schedule: str | None = None, **params: Any) -> None:
    """Degrade one blank 28x28 image with these parameters, so that a value the degradation
    rejects (a density above 0.5, an even kernel, an unknown padding) fails while the sweep is
    validated rather than in the first training step of every run. Each degradation checks
    its own parameters; this only calls it. Levels 0 and 1 are enough to reach those checks
    and keep the cost independent of ``n_steps``."""
    x0 = torch.zeros(2, 1, 28, 28)
    degrade(name, x0, torch.tensor([0, 1]), n_steps=n_steps, schedule=schedule,
            generator=torch.Generator().manual_seed(0), **params)


def default_schedule(name: str) -> str:
    """The schedule a degradation uses when none is given."""
    return _signature_defaults(name)["schedule"]


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
    with a "did you mean" suggestion.
    """
    fn = DEGRADATIONS.get(name)
    valid = degradation_params(name)
    for key in params:
        if key not in valid:
            raise ValueError(unknown_message("parameter", key, sorted(valid), of=f"degradation {name!r}"))
    if schedule is None:
        schedule = default_schedule(name)
    SCHEDULES.get(schedule)  # KeyError with a suggestion
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if x0.dim() != 4 or not x0.is_floating_point():
        raise ValueError(f"x0 must be a float tensor [B, C, H, W], got {tuple(x0.shape)} {x0.dtype}")
    if isinstance(t, int):
        t = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
    if t.shape != (x0.shape[0],) or t.is_floating_point() or t.is_complex():
        raise ValueError(f"t must be an integer tensor of shape ({x0.shape[0]},), got {tuple(t.shape)} {t.dtype}")
    t = t.to(device=x0.device, dtype=torch.long)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > n_steps):
        raise ValueError(f"t must lie in 0..{n_steps}, got {int(t.min())}..{int(t.max())}")
    return fn(x0, t, n_steps=n_steps, schedule=schedule, generator=generator, **params)
