"""Time every registered degradation on a 28x28 batch with per-sample random ``t``.

Library function only (no CLI): ``benchmark_degradations(...) -> list[dict]``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from hpcdiff.science.degradations import DEGRADATION_INFO, DEGRADATIONS, degrade, pixel_swap_loop_reference


def _images(batch: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """Real MNIST digits (the 5,000 shipped with the package), drawn with replacement."""
    from hpcdiff.data import mnist_5k_arrays

    X, _ = mnist_5k_arrays()
    idx = torch.randint(0, X.shape[0], (batch,), generator=generator).numpy()
    x = torch.from_numpy(X[idx]).to(torch.float32).view(batch, 1, 28, 28) / 255.0 - 0.5
    return x.to(device)


def _time_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> list[float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def benchmark_degradations(
    batch: int = 128,
    n_steps: int | None = None,
    device: str | torch.device = "cpu",
    repeats: int = 20,
    warmup: int = 3,
    loop_batch: int = 4,
    loop_repeats: int = 2,
    seed: int = 0,
) -> list[dict]:
    """Median milliseconds per batch for each degradation, plus the pixel-swap loop reference.

    ``n_steps=None`` uses each degradation's recipe (``DEGRADATION_INFO[name].n_steps``).
    ``t`` is drawn uniformly in ``0..n_steps`` per sample (fixed across repeats); the
    generator lives on the CPU as in training. The loop reference runs on ``loop_batch``
    images and is scaled linearly to ``batch`` (its cost is per sample); the ``pixel_swap``
    row then carries ``speedup_vs_loop``. Each row: name, device, batch, n_steps,
    ms_per_batch (median), ms_min, repeats, and for the loop row measured_batch.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    x0 = _images(batch, device, gen)
    rows: list[dict] = []
    for name in DEGRADATIONS.names():
        n = n_steps if n_steps is not None else DEGRADATION_INFO[name].n_steps
        t = torch.randint(0, n + 1, (batch,), generator=gen).to(device)
        g = torch.Generator().manual_seed(seed)
        times = _time_ms(
            lambda name=name, t=t, n=n, g=g: degrade(name, x0, t, n_steps=n, generator=g), device, repeats, warmup
        )
        rows.append(_row(name, device, batch, n, times, repeats))
    loop_row = _loop_reference(x0, gen, n_steps, device, batch, loop_batch, loop_repeats, seed)
    for row in rows:
        if row["name"] == "pixel_swap":
            row["speedup_vs_loop"] = loop_row["ms_per_batch"] / row["ms_per_batch"]
    rows.append(loop_row)
    return rows


def _row(name, device, batch, n, times, repeats, scale: float = 1.0) -> dict:
    return dict(
        name=name,
        device=str(device),
        batch=batch,
        n_steps=n,
        ms_per_batch=statistics.median(times) * scale,
        ms_min=min(times) * scale,
        repeats=repeats,
    )


def _loop_reference(x0, gen, n_steps, device, batch, loop_batch, loop_repeats, seed) -> dict:
    """The per-pixel loop on ``loop_batch`` images, scaled to ``batch`` (its cost is per sample)."""
    n = n_steps if n_steps is not None else DEGRADATION_INFO["pixel_swap"].n_steps
    t = torch.randint(1, n + 1, (loop_batch,), generator=gen).to(device)  # t = 0 would skip a sample
    g = torch.Generator().manual_seed(seed)
    small = x0[:loop_batch]
    times = _time_ms(
        lambda: pixel_swap_loop_reference(small, t, n_steps=n, generator=g), device, loop_repeats, warmup=0
    )
    row = _row("pixel_swap_loop_reference", device, batch, n, times, loop_repeats, scale=batch / loop_batch)
    row["measured_batch"] = loop_batch
    return row
