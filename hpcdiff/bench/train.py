"""`hpcdiff bench train`: hpcdiff's real training loop against the coursework notebook's loop.

All in one process, same model, batch size and device:
  notebook        the starter notebook's loop: PIL images through ToTensor + Normalize, a
                  DataLoader with 4 worker processes, forward, backward, Adam (fp32, eager).
  hpcdiff eager   the trainer itself (training.loop.run_epoch over a real run directory:
                  data on the device, interval checks, the run's mixed precision) with
                  train.compile = "none".
  hpcdiff graph   the same loop with train.compile = "graph" (CUDA only): each step one
                  CUDA-graph replay.
  conv ceiling    forward + backward of the model's convolutions alone, nothing else (no
                  norm, activation, optimiser or data); bf16 on CUDA (replayed from a CUDA
                  graph, the best this device does on these convolutions), fp32 on the CPU.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from hpcdiff.config.spec import DataSpec, ModelSpec, RunSpec
from hpcdiff.data import load_splits
from hpcdiff.science.diffusion import GaussianDDPM
from hpcdiff.science.graphs import capture
from hpcdiff.science.models import build_model, conv_flops_per_image

DEFAULT_HIDDEN = (16, 32, 32, 16)
WIDE_HIDDEN = (32, 64, 128, 64, 32)


@dataclass
class BenchResult:
    name: str
    images_per_second: float
    seconds: float
    steps: int
    note: str = ""


def sync_device(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(once, steps: int, warmup: int, device) -> float:
    """Seconds of ``steps`` calls of ``once()`` after ``warmup`` untimed ones, the device's
    queued work included."""
    for _ in range(warmup):
        once()
    sync_device(device)
    tic = time.perf_counter()
    for _ in range(steps):
        once()
    sync_device(device)
    return time.perf_counter() - tic


def _time_steps(step, steps: int, warmup: int, batch: int, device) -> BenchResult:
    seconds = timed(step, steps, warmup, device)
    return BenchResult("", steps * batch / seconds, seconds, steps)


def bench_spec(*, device: str, hidden, batch: int, data_name: str, compile_mode: str, subset: int = 0) -> RunSpec:
    """The run the loop measurements train: the seeds' DDPM at the default recipe, no metrics."""
    spec = RunSpec.from_dict(
        {
            "data": {"name": data_name, "val_fraction": 0.0, "subset": subset},
            "model": {"hidden": list(hidden)},
            "train": {
                "epochs": 1000,
                "batch_size": batch,
                "device": device,
                "compile": compile_mode,
                "checkpoint_every": 1000,
                "sample_every": 1000,
            },
            "eval": {"metrics": []},
        }
    )
    from hpcdiff.resolve import validate_spec

    return validate_spec(spec)


def bench_loop(spec: RunSpec, *, epochs: int, name: str) -> BenchResult:
    """images/s of ``training.loop.run_epoch`` (the trainer's own code) over ``epochs`` epochs
    after one untimed epoch (start-up, graph capture)."""
    from hpcdiff.storage.rundir import RunDir, write_run_config
    from hpcdiff.training.loop import run_epoch, start_session

    with tempfile.TemporaryDirectory(prefix="hpcdiff-bench-") as tmp:
        rd = RunDir(Path(tmp) / "bench")
        rd.path.mkdir()
        write_run_config(rd, spec, run_id="bench", sweep="bench", axes={}, label="bench")
        session = start_session(rd, spec)
        run_epoch(session, 1, 0)
        tic = time.perf_counter()
        for epoch in range(2, 2 + epochs):
            run_epoch(session, epoch, 0)  # ends by reading the loss back: the device is done
        seconds = time.perf_counter() - tic
        steps = session.steps_per_epoch * epochs
        mode = session.state.mode
        result = BenchResult(
            name,
            steps * spec.train.batch_size / seconds,
            seconds,
            steps,
            note=f"{mode.mode}, {session.accelerator.mixed_precision}",
        )
        del session
    return result


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


def seeds_ddpm(device, hidden=DEFAULT_HIDDEN):
    torch.manual_seed(0)
    model = build_model(ModelSpec(hidden=tuple(hidden)))
    ddpm = GaussianDDPM(model, beta1=1e-4, beta2=0.02, n_T=1000).to(device)
    return ddpm, torch.optim.Adam(ddpm.parameters(), lr=2e-4)


def bench_notebook(images_uint8, steps, warmup, batch, device, hidden=DEFAULT_HIDDEN, num_workers=4) -> BenchResult:
    from torchvision import transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (1.0,))])
    loader = torch.utils.data.DataLoader(
        _PILDataset(images_uint8, tf),
        batch_size=batch,
        shuffle=True,
        num_workers=num_workers,
        drop_last=True,
        persistent_workers=True,
    )
    ddpm, opt = seeds_ddpm(device, hidden)
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
    r.note = "fp32, eager"
    del state["it"]  # stops the persistent workers now, not when the closure is collected
    return r


def bench_conv_ceiling(steps, warmup, batch, device, hidden=DEFAULT_HIDDEN) -> BenchResult:
    """The model's convolutions alone, forward + backward: bf16 from a CUDA graph on CUDA,
    fp32 eager on the CPU (where bf16 convolutions are slow)."""
    model = build_model(ModelSpec(hidden=tuple(hidden)))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    net = nn.Sequential(
        *[nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, padding=c.padding) for c in convs]
    ).to(device)
    x = torch.randn(batch, 1, 28, 28, device=device)
    cuda = device.type == "cuda"
    for p in net.parameters():
        p.grad = torch.zeros_like(p)

    def body():
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if cuda else nullcontext():
            out = net(x)
        out.float().sum().backward()

    if not cuda:
        r = _time_steps(body, steps, warmup, batch, device)
        r.name, r.note = "conv-FLOP floor", "fp32, convolutions only"
        return r
    graph, _ = capture(body, warmup=3)
    r = _time_steps(graph.replay, steps, warmup, batch, device)
    r.name, r.note = "bf16 conv ceiling", "bf16, convolutions only, CUDA graph"
    return r


def benchmark_train(
    *,
    epochs: int = 2,
    steps: int = 30,
    warmup: int = 5,
    batch_size: int = 128,
    device: str = "cpu",
    data_name: str = "mnist-5k",
    hidden=DEFAULT_HIDDEN,
    subset: int = 0,
) -> dict:
    """``subset``: train on the first N images only (0 = all), for a quick check."""
    dev = torch.device(device)
    images = load_splits(DataSpec(name=data_name, val_fraction=0.0, subset=subset)).train.images
    spec = bench_spec(
        device=dev.type, hidden=hidden, batch=batch_size, data_name=data_name, compile_mode="none", subset=subset
    )
    eager = bench_loop(spec, epochs=epochs, name="hpcdiff eager (the trainer's loop)")
    results = [bench_notebook(images, steps, warmup, batch_size, dev, hidden), eager]
    graph = None
    if dev.type == "cuda":
        graph = bench_loop(
            replace(spec, train=replace(spec.train, compile="graph")),
            epochs=epochs,
            name="hpcdiff graph (the trainer's loop)",
        )
        results.append(graph)
    ceiling = bench_conv_ceiling(max(steps, 50) if dev.type == "cuda" else steps, warmup, batch_size, dev, hidden)
    results.append(ceiling)
    best = max((r for r in (eager, graph) if r is not None), key=lambda r: r.images_per_second)
    flops = 3 * conv_flops_per_image(build_model(ModelSpec(hidden=tuple(hidden))))
    return {
        "device": str(dev),
        "batch_size": batch_size,
        "hidden": tuple(hidden),
        "epochs": epochs,
        "train_mflop_per_image": flops / 1e6,
        "results": results,
        "best": best.name,
        "speedup_vs_notebook": best.images_per_second / results[0].images_per_second,
        "graph_vs_eager": graph.images_per_second / eager.images_per_second if graph else None,
        "fraction_of_ceiling": best.images_per_second / ceiling.images_per_second,
        "ceiling_tflops": ceiling.images_per_second * flops / 1e12,
    }


def format_report(r: dict):
    from rich.table import Table

    hidden = ",".join(map(str, r["hidden"]))
    table = Table(title=f"training loop, model ({hidden}), batch {r['batch_size']} on {r['device']}")
    for col in ("loop", "images/s", "ms/step", "precision / mode"):
        table.add_column(col, justify="left" if col in ("loop", "precision / mode") else "right")
    for res in r["results"]:
        table.add_row(res.name, f"{res.images_per_second:,.0f}", f"{1000 * res.seconds / res.steps:.2f}", res.note)
    lines = [
        f"best hpcdiff / notebook = {r['speedup_vs_notebook']:.2f}x",
        f"best hpcdiff / conv ceiling = {100 * r['fraction_of_ceiling']:.0f}%",
    ]
    if r["graph_vs_eager"] is not None:
        lines.append(f"graph / eager = {r['graph_vs_eager']:.2f}x")
    lines.append(
        f"ceiling runs the convs at {r['ceiling_tflops']:.2f} TFLOP/s "
        f"({r['train_mflop_per_image']:.0f} MFLOP per training image)"
    )
    table.caption = "; ".join(lines)
    return table


def benchmark_degradations_vs_step(*, batch_size=128, device="cpu", epochs=1) -> dict:
    """Each degradation at batch 128 (per-sample t) against one step of the trainer's loop
    (the default CNN), measured in the same process; target: every degradation <= 5% of a step."""
    from hpcdiff.bench.degradations import benchmark_degradations

    dev = torch.device(device)
    spec = bench_spec(
        device=dev.type, hidden=DEFAULT_HIDDEN, batch=batch_size, data_name="mnist-5k", compile_mode="auto"
    )
    step = bench_loop(spec, epochs=epochs, name="step")
    step_ms = 1000 * step.seconds / step.steps
    rows = benchmark_degradations(batch=batch_size, device=dev)
    for row in rows:
        row["fraction_of_step"] = row["ms_per_batch"] / step_ms
    return {"device": str(dev), "batch_size": batch_size, "step_ms": step_ms, "rows": rows}


def format_degradation_report(r: dict):
    from rich.table import Table

    table = Table(
        title=f"degradations, batch {r['batch_size']} on {r['device']}; "
        f"one training step of the default CNN = {r['step_ms']:.1f} ms"
    )
    for col in ("degradation", "n_steps", "ms/batch", "% of a step", "speed-up vs loop"):
        table.add_column(col, justify="left" if col == "degradation" else "right")
    for row in r["rows"]:
        speedup = row.get("speedup_vs_loop")
        table.add_row(
            row["name"],
            str(row["n_steps"]),
            f"{row['ms_per_batch']:.2f}",
            f"{100 * row['fraction_of_step']:.2f}%",
            f"{speedup:,.0f}x" if speedup else "",
        )
    table.caption = "target: every degradation <= 5% of a step (the loop reference is for comparison only)"
    return table
