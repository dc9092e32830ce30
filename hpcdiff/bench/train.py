"""`hpcdiff bench train`: hpcdiff's training step against the coursework notebook's loop.

Three measurements in one process, same model, same batch size, same device:
  hpcdiff   the step train.py runs: dataset held as one tensor on the device, batches by
            random permutation, DDPM loss, backward, Adam step.
  notebook  the starter notebook's loop: torchvision-style dataset of PIL images with
            ToTensor + Normalize, a DataLoader with 4 worker processes, the same step.
  floor     forward + backward of the model's convolutions alone (no norm, activation,
            optimiser or data): the conv-FLOP floor of a training step on this machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from hpcdiff.data import load_splits, to_model_range
from hpcdiff.science.diffusion import GaussianDDPM
from hpcdiff.science.models import build_model, conv_flops_per_image
from hpcdiff.config.spec import DataSpec, ModelSpec


@dataclass
class BenchResult:
    name: str
    images_per_second: float
    seconds: float
    steps: int


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step, steps: int, warmup: int, batch: int, device) -> BenchResult:
    for _ in range(warmup):
        step()
    _sync(device)
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - tic
    return BenchResult("", steps * batch / seconds, seconds, steps)


def _ddpm(device):
    torch.manual_seed(0)
    model = build_model(ModelSpec())
    ddpm = GaussianDDPM(model, beta1=1e-4, beta2=0.02, n_T=1000).to(device)
    return ddpm, torch.optim.Adam(ddpm.parameters(), lr=2e-4)


def bench_hpcdiff(images_uint8, steps, warmup, batch, device) -> BenchResult:
    ddpm, opt = _ddpm(device)
    data = images_uint8.to(device)
    state = {"perm": torch.randperm(len(data), device=device), "i": 0}

    def step():
        if (state["i"] + 1) * batch > len(data):
            state["perm"], state["i"] = torch.randperm(len(data), device=device), 0
        idx = state["perm"][state["i"] * batch: (state["i"] + 1) * batch]
        state["i"] += 1
        loss = ddpm(to_model_range(data[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    r = _time_steps(step, steps, warmup, batch, device)
    r.name = "hpcdiff"
    return r


class _PILDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.MNIST does per item: a PIL image through the transforms."""

    def __init__(self, images_uint8, transform):
        self.images = images_uint8[:, 0].numpy()
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i], mode="L")), 0


def bench_notebook(images_uint8, steps, warmup, batch, device, num_workers=4) -> BenchResult:
    from torchvision import transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (1.0,))])
    loader = torch.utils.data.DataLoader(_PILDataset(images_uint8, tf), batch_size=batch, shuffle=True,
                                         num_workers=num_workers, drop_last=True, persistent_workers=True)
    ddpm, opt = _ddpm(device)
    state = {"it": iter(loader)}

    def step():
        try:
            x, _ = next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            x, _ = next(state["it"])
        loss = ddpm(x.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    r = _time_steps(step, steps, warmup, batch, device)
    r.name = f"notebook (DataLoader, {num_workers} workers)"
    del state["it"], loader
    return r


def bench_floor(steps, warmup, batch, device) -> BenchResult:
    model = build_model(ModelSpec())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    net = nn.Sequential(*[nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, padding=c.padding)
                          for c in convs]).to(device)
    x = torch.randn(batch, 1, 28, 28, device=device)

    def step():
        net.zero_grad(set_to_none=True)
        net(x).sum().backward()

    r = _time_steps(step, steps, warmup, batch, device)
    r.name = "conv-FLOP floor"
    return r


def benchmark_train(*, steps=30, warmup=5, batch_size=128, device="cpu", data_name="mnist-5k") -> dict:
    device = torch.device(device)
    images = load_splits(DataSpec(name=data_name, val_fraction=0.0)).train.images
    floor = bench_floor(steps, warmup, batch_size, device)
    ours = bench_hpcdiff(images, steps, warmup, batch_size, device)
    notebook = bench_notebook(images, steps, warmup, batch_size, device)
    flops = 3 * conv_flops_per_image(build_model(ModelSpec()))
    return {
        "device": str(device), "batch_size": batch_size, "steps": steps,
        "train_mflop_per_image": flops / 1e6,
        "results": [ours, notebook, floor],
        "speedup_vs_notebook": ours.images_per_second / notebook.images_per_second,
        "floor_ratio": floor.images_per_second / ours.images_per_second,
        "floor_gflops": floor.images_per_second * flops / 1e9,
    }


def format_report(r: dict):
    from rich.table import Table

    table = Table(title=f"training step, batch {r['batch_size']}, {r['steps']} steps on {r['device']}")
    table.add_column("loop")
    table.add_column("images/s", justify="right")
    table.add_column("ms/step", justify="right")
    for res in r["results"]:
        table.add_row(res.name, f"{res.images_per_second:,.0f}", f"{1000 * res.seconds / res.steps:.1f}")
    table.caption = (f"hpcdiff / notebook = {r['speedup_vs_notebook']:.2f}x (target >= 1.15x); "
                     f"floor / hpcdiff = {r['floor_ratio']:.2f}x (target <= 1.3x); "
                     f"floor runs the convs at {r['floor_gflops']:.0f} GFLOP/s "
                     f"({r['train_mflop_per_image']:.0f} MFLOP per training image)")
    return table


def benchmark_degradations_vs_step(*, batch_size=128, device="cpu", steps=10) -> dict:
    """Each degradation at batch 128 (per-sample t) against one training step of the
    default CNN, measured in the same process; target: every degradation <= 5% of a step."""
    from hpcdiff.bench.degradations import benchmark_degradations

    device = torch.device(device)
    images = load_splits(DataSpec(name="mnist-5k", val_fraction=0.0)).train.images
    step = bench_hpcdiff(images, steps, 3, batch_size, device)
    step_ms = 1000 * step.seconds / step.steps
    rows = benchmark_degradations(batch=batch_size, device=device)
    for row in rows:
        row["fraction_of_step"] = row["ms_per_batch"] / step_ms
    return {"device": str(device), "batch_size": batch_size, "step_ms": step_ms, "rows": rows}


def format_degradation_report(r: dict):
    from rich.table import Table

    table = Table(title=f"degradations, batch {r['batch_size']} on {r['device']}; "
                        f"one training step of the default CNN = {r['step_ms']:.1f} ms")
    for col in ("degradation", "n_steps", "ms/batch", "% of a step", "speed-up vs loop"):
        table.add_column(col, justify="left" if col == "degradation" else "right")
    for row in r["rows"]:
        speedup = row.get("speedup_vs_loop")
        table.add_row(row["name"], str(row["n_steps"]), f"{row['ms_per_batch']:.2f}",
                      f"{100 * row['fraction_of_step']:.2f}%", f"{speedup:,.0f}x" if speedup else "")
    table.caption = "target: every degradation <= 5% of a step (the loop reference is for comparison only)"
    return table
