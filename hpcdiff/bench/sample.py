"""`hpcdiff bench sample`: images/s of the samplers against the denoiser calls they make.

In one process, for the seeds' DDPM (n_T = 1000) on the device given:
  ancestral      the starter's sampler over all n_T steps (noise drawn every step);
  ddim           50 evenly spaced deterministic steps (what evaluation uses);
  denoiser only  the same number of model calls on a fixed input, nothing else: the
                 ceiling a sampler could reach on this device.
A sampler's ratio to its "denoiser only" row is the time it loses to everything that is not
the network (schedule arithmetic, noise, host round trips).
"""

from __future__ import annotations

import time

import torch

from hpcdiff.bench.train import DEFAULT_HIDDEN, seeds_ddpm, sync_device
from hpcdiff.science.diffusion import sampling_device, sampling_times
from hpcdiff.science.streams import generator


def _timed(fn, device) -> float:
    sync_device(device)
    tic = time.perf_counter()
    fn()
    sync_device(device)
    return time.perf_counter() - tic


def benchmark_sample(
    *,
    device: str = "cpu",
    samples: int = 1000,
    ancestral_steps: int = 1000,
    ddim_steps: int = 50,
    hidden=DEFAULT_HIDDEN,
) -> dict:
    dev = torch.device(device)
    ddpm, _ = seeds_ddpm(dev, hidden)
    ddpm.eval()
    shape = (samples, 1, 28, 28)
    rows = []
    with torch.no_grad():
        g = generator(0, "sample_grid", device=sampling_device(dev))
        x_T = torch.randn(shape, generator=g, device=g.device).to(dev)
        ddpm.sample(x_T[:2], generator=g, sampler="ddim", steps=2)  # warm-up: kernels, allocator
        t = torch.full((samples,), 0.5, device=dev)
        for sampler, steps in (("ancestral", ancestral_steps), ("ddim", ddim_steps)):
            n_calls = len(sampling_times(ddpm.n_T, steps))
            seconds = _timed(
                lambda sampler=sampler, steps=steps: ddpm.sample(x_T, generator=g, sampler=sampler, steps=steps), dev
            )
            alone = _timed(lambda n_calls=n_calls: [ddpm.denoise(x_T, t) for _ in range(n_calls)], dev)
            rows.append(
                {
                    "sampler": f"{sampler}, {n_calls} steps",
                    "images_per_second": samples / seconds,
                    "seconds": seconds,
                    "denoiser_seconds": alone,
                    "overhead": seconds / alone,
                }
            )
    return {"device": str(dev), "samples": samples, "hidden": tuple(hidden), "rows": rows}


def format_sample_report(r: dict):
    from rich.table import Table

    hidden = ",".join(map(str, r["hidden"]))
    table = Table(title=f"sampling {r['samples']} images, model ({hidden}), n_T 1000 on {r['device']}")
    for col in ("sampler", "images/s", "seconds", "denoiser calls alone (s)", "sampler / calls alone"):
        table.add_column(col, justify="left" if col == "sampler" else "right")
    for row in r["rows"]:
        table.add_row(
            row["sampler"],
            f"{row['images_per_second']:,.1f}",
            f"{row['seconds']:.2f}",
            f"{row['denoiser_seconds']:.2f}",
            f"{row['overhead']:.2f}x",
        )
    table.caption = "target on a GPU: 1000 samples with 50-step DDIM in under 2 s"
    return table
