"""Tensor kernels the degradations are built from, with no registry: random draws on the
generator's device, the Gaussian blur (separable convolution and closed-form FFT), block
pixelation, pixel-swap windows, and the users' per-pixel swap loop kept for benchmarks.

:mod:`hpcdiff.science.degradations` registers the degradations made of these; use its
``degrade`` from elsewhere.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from hpcdiff.science.schedules import schedule_fraction


def per_sample(v: Tensor) -> Tensor:
    """``[B] -> [B, 1, 1, 1]`` for broadcasting against images."""
    return v.view(-1, 1, 1, 1)


def uniform(shape, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) float32 of ``shape`` on ``device``, drawn on the generator's device."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where, dtype=torch.float32).to(device)


def normal(shape, generator: torch.Generator | None, device: torch.device) -> Tensor:
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where, dtype=torch.float32).to(device)


def levels(x0: Tensor, t: Tensor) -> Tensor:
    return t.to(device=x0.device, dtype=torch.long)


def swap_half_width(t: Tensor, n_steps: int, schedule: str, full: int) -> Tensor:
    """Window half-width per sample: 0 at t=0, 1 at t=1 (linear), ``full`` at t=n_steps."""
    hw = 1 + torch.round((full - 1) * schedule_fraction(schedule, t, n_steps)).long()
    return torch.where(t == 0, torch.zeros_like(hw), hw)


@functools.lru_cache(maxsize=16)
def tile_pairing(H: int, W: int, side: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For square tiles of ``side`` pixels: each pixel's tile, and which position of the
    tile-grouped order each position is paired with (two by two within a tile; an odd tile
    leaves its last one alone). The same for every draw, so it is built once on the host
    (reading no value on the device, and before any graph capture) and kept."""
    k = torch.arange(H * W)
    tile = (k // W // side) * -(-W // side) + (k % W // side)
    counts = torch.bincount(tile)
    tile_of_position = torch.repeat_interleave(torch.arange(len(counts)), counts)
    start = (torch.cumsum(counts, 0) - counts)[tile_of_position]
    rank = k - start
    mate = torch.where((rank ^ 1) < counts[tile_of_position], start + (rank ^ 1), k)
    return tile.to(device), mate.to(device)


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
    t = levels(x0, t)
    B, C, H, W = x0.shape
    full = max_half_width if max_half_width > 0 else max(H, W) - 1
    half_widths = swap_half_width(t, n_steps, schedule, full).tolist()
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


BLUR_PADDINGS = ("circular", "reflect", "replicate", "zeros")


def blur_by_convolution(
    x0: Tensor,
    t: Tensor,
    *,
    n_steps: int,
    kernel_size: int = 11,
    sigma: float = 7.0,
    padding: str = "circular",
    masked: bool | None = None,
) -> Tensor:
    """``G^t x0`` by applying the depthwise (separable) blur ``t`` times; any padding.

    Per-sample ``t``. On the CPU, samples are sorted by ``t`` and step ``k`` blurs only those
    with ``t >= k`` (a prefix), so the cost is ``sum(t)`` image-convolutions, not
    ``B * n_steps``. On a GPU the prefix sizes would have to be read back to the host
    (a wait on every call) and the shapes would change from step to step (no CUDA graph),
    so there every step blurs the whole batch and keeps the result where ``t >= k``
    (:func:`_blur_masked`): twice the arithmetic on average, none of the waiting.
    ``masked`` chooses the method (None: by device); both give the same images.
    """
    if padding not in BLUR_PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(BLUR_PADDINGS)}, got {padding!r}")
    t = levels(x0, t)
    C = x0.shape[1]
    g = gaussian_kernel1d(kernel_size, sigma, x0.dtype, x0.device)
    w_rows, w_cols = g.view(1, 1, -1, 1).expand(C, 1, -1, 1), g.view(1, 1, 1, -1).expand(C, 1, 1, -1)
    p = kernel_size // 2

    def conv(x: Tensor) -> Tensor:
        x = F.pad(x, (p, p, p, p), mode="constant" if padding == "zeros" else padding)
        return F.conv2d(F.conv2d(x, w_rows, groups=C), w_cols, groups=C)

    if masked if masked is not None else x0.device.type != "cpu":
        return _blur_masked(x0, t, n_steps, conv)
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


def _blur_masked(x0: Tensor, t: Tensor, n_steps: int, conv) -> Tensor:
    """``conv`` applied ``t`` times per sample with fixed shapes and no host sync."""
    x = x0
    for k in range(1, n_steps + 1):
        x = torch.where(per_sample(t >= k), conv(x), x)
    return x


def blur_circular_fft(x0: Tensor, t: Tensor, kernel_size: int, sigma: float) -> Tensor:
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
    power = ghat ** per_sample(t.to(work))  # [B, 1, H, W//2 + 1]
    out = torch.fft.irfft2(torch.fft.rfft2(x0.to(work)) * power, s=(H, W))
    return torch.where(per_sample(t == 0), x0, out.to(x0.dtype))


def downsample_factor(t: Tensor, n_steps: int, schedule: str, max_factor: int) -> Tensor:
    """1 at t=0, 2 from t=1, ``max_factor`` at t=n_steps (non-decreasing)."""
    frac = schedule_fraction(schedule, t, n_steps)
    f = 1 + torch.ceil((max_factor - 1) * frac - 1e-4).clamp(min=0).long()
    f = torch.where(t >= 1, f.clamp(min=min(2, max_factor)), torch.ones_like(f))
    return f


def pixelate(x: Tensor, f: int) -> Tensor:
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
