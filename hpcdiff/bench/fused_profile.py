"""Where a fused group's training step spends its time: torch.profiler over a few steps of
one run alone and of K members fused, on the device given (`hpcdiff bench fused --profile
DIR`).

The question it answers is the one fusion rests on: a small network's step on a GPU is
launch-bound (the device idles between hundreds of small kernels), and K members fused
should launch about as many kernels per step as one run while doing K times the work. So
each profile reports, per step: the wall time, the device kernels launched and the share of
the wall time the device was busy (on a GPU), and the operators that took the most time,
with a Chrome trace (chrome://tracing, Perfetto) for a closer look.

Library function only: ``profile_step(...) -> StepProfile``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from hpcdiff.bench.fused import _images, fused_steps, steps_one_after_another
from hpcdiff.bench.train import sync_device

#: Operators listed in the table, by the time they took themselves.
TOP_OPERATORS = 15


@dataclass(frozen=True)
class StepProfile:
    model: str
    k: int  # members; 0 = one run alone (the trainer's eager step)
    mode: str  # "alone", or the stacking mode of the fused group
    device: str
    steps: int
    step_ms: float  # wall time per step
    kernels_per_step: float | None  # device kernels launched per step (None on the CPU)
    busy: float | None  # share of the wall time the device ran kernels (None on the CPU)
    table: str  # the top operators (torch.profiler's table)
    calls: dict[str, float]  # operator (or kernel) name -> calls per step
    trace: Path | None

    @property
    def label(self) -> str:
        return "one run alone" if self.k == 0 else f"K={self.k} fused ({self.mode})"

    def summary(self) -> str:
        line = f"profile {self.model} {self.label} on {self.device}: {self.step_ms:.1f} ms per step"
        if self.kernels_per_step is not None:
            line += f", {self.kernels_per_step:,.0f} kernels per step, device busy {100 * self.busy:.0f}% of it"
        return line


def _step_of(model: str, k: int, batch: int, n: int, device: torch.device, mode: str | None):
    """(a callable doing the next of n steps: run 0 alone (k = 0), or k members fused; the mode)."""
    images = _images(device)
    if k == 0:
        return steps_one_after_another(model, 1, batch, n, device, images), "alone"
    once, group = fused_steps(model, k, batch, n, device, images, mode)
    return once, group.net.mode


def profile_step(
    model: str,
    k: int,
    *,
    batch: int = 128,
    steps: int = 3,
    warmup: int = 2,
    device: str = "cpu",
    mode: str | None = None,
    trace_dir: Path | None = None,
) -> StepProfile:
    """Profile ``steps`` training steps (after ``warmup`` unprofiled ones) of run 0 alone
    (``k`` = 0) or of ``k`` members fused (``mode``: the stacking mode, default the
    device's)."""
    dev = torch.device(device)
    once, used = _step_of(model, k, batch, steps + warmup, dev, mode)
    for _ in range(warmup):
        once()
    sync_device(dev)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        tic = time.perf_counter()
        for _ in range(steps):
            once()
        sync_device(dev)
        wall = time.perf_counter() - tic
    averages = prof.key_averages()
    kernels = busy = None
    if dev.type == "cuda":
        on_device = [a for a in averages if a.device_type == torch.autograd.DeviceType.CUDA]
        kernels = sum(a.count for a in on_device) / steps
        busy = sum(a.self_device_time_total for a in on_device) / 1e6 / wall
    sort = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    trace = None
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        trace = trace_dir / f"fused-{model}-{'alone' if k == 0 else f'k{k}'}.trace.json"
        prof.export_chrome_trace(str(trace))
    return StepProfile(
        model=model,
        k=k,
        mode=used,
        device=dev.type,
        steps=steps,
        step_ms=1000 * wall / steps,
        kernels_per_step=kernels,
        busy=busy,
        table=averages.table(sort_by=sort, row_limit=TOP_OPERATORS, max_name_column_width=60),
        trace=trace,
        calls={a.key: a.count / steps for a in averages},
    )


__all__ = ["StepProfile", "profile_step"]
