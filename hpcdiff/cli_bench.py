"""`hpcdiff bench ...`: the benchmarks' commands (registered on the main group by cli.py).
Each parses its options, calls one function of hpcdiff.bench and prints its table."""

from __future__ import annotations

from pathlib import Path

import click

from hpcdiff.config.spec import SpecError


def console():
    from hpcdiff.cli import _console

    return _console()


def fail_invalid(err: Exception) -> None:
    from hpcdiff.cli import _fail_invalid

    _fail_invalid(err)


@click.group()
def bench():
    """Benchmarks."""


def _hidden_option(text: str) -> tuple[int, ...]:
    try:
        hidden = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of channel counts") from None
    if not hidden or min(hidden) < 1:
        raise click.BadParameter(f"{text!r}: every channel count must be >= 1")
    return hidden


@bench.command("train")
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Timed epochs of the trainer's loop, after one untimed [default: 20 on CUDA, 2 on the CPU].",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Timed steps of the notebook loop and the conv ceiling.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--data", "data_name", default="mnist-5k", show_default=True)
@click.option(
    "--hidden",
    "hidden_list",
    multiple=True,
    metavar="C1,C2,...",
    help="Model channels (repeatable); default: the starter's 16,32,32,16, and on CUDA also 32,64,128,64,32.",
)
def bench_train(epochs, steps, batch_size, device, data_name, hidden_list):
    """Images/s of the trainer's loop (eager, and CUDA graphs on CUDA) vs the notebook's
    DataLoader loop and the model's convolutions alone."""
    from hpcdiff.bench.train import DEFAULT_HIDDEN, WIDE_HIDDEN, benchmark_train, format_report

    cuda = device.startswith("cuda")
    models = [_hidden_option(h) for h in hidden_list] or ([DEFAULT_HIDDEN, WIDE_HIDDEN] if cuda else [DEFAULT_HIDDEN])
    epochs = epochs or (20 if cuda else 2)
    for hidden in models:
        results = benchmark_train(
            epochs=epochs, steps=steps, batch_size=batch_size, device=device, data_name=data_name, hidden=hidden
        )
        console().print(format_report(results))


@bench.command("sample")
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=None,
    help="Images drawn at once [default: 1000 on CUDA, 16 on the CPU].",
)
@click.option("--ancestral-steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--ddim-steps", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--hidden", default="16,32,32,16", show_default=True, metavar="C1,C2,...")
def bench_sample(device, samples, ancestral_steps, ddim_steps, hidden):
    """Images/s of 1000-step ancestral and 50-step DDIM sampling vs the denoiser calls alone."""
    from hpcdiff.bench.sample import benchmark_sample, format_sample_report

    samples = samples or (1000 if device.startswith("cuda") else 16)
    console().print(
        format_sample_report(
            benchmark_sample(
                device=device,
                samples=samples,
                ancestral_steps=ancestral_steps,
                ddim_steps=ddim_steps,
                hidden=_hidden_option(hidden),
            )
        )
    )


@bench.command("degradations")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def bench_degradations(batch_size, device):
    """Time of each degradation vs one training step, and pixel_swap vs a per-pixel loop."""
    from hpcdiff.bench.train import benchmark_degradations_vs_step, format_degradation_report

    console().print(format_degradation_report(benchmark_degradations_vs_step(batch_size=batch_size, device=device)))


@bench.command("eval")
@click.option(
    "--degradations",
    default="gaussian,impulse,pixel_swap,blur",
    show_default=True,
    help="Comma-separated degradations, each at its recipe n_T.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="eval.KEY=VALUE",
    help="Override an [eval] setting, e.g. --set eval.samples=1000.",
)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--data",
    "data_name",
    default="mnist-5k",
    show_default=True,
    help="Dataset of the held-out images and the classifier.",
)
def bench_eval(degradations, overrides, device, data_name):
    """Time of one evaluation at the [eval] defaults vs one training epoch of full MNIST size."""
    from hpcdiff.bench.eval import benchmark_eval, format_eval_report
    from hpcdiff.config.sweep import parse_overrides

    try:
        eval_overrides = {}
        for parts, value in parse_overrides(list(overrides)):
            if parts[0] != "eval" or len(parts) != 2:
                raise SpecError(f"bench eval takes eval.KEY overrides only, got {'.'.join(parts)!r}")
            eval_overrides[parts[1]] = value
        names = [n.strip() for n in degradations.split(",") if n.strip()]
        results = benchmark_eval(
            degradations=names, device=device, data_name=data_name, eval_overrides=eval_overrides, log=click.echo
        )
    except SpecError as err:
        fail_invalid(err)
    console().print(format_eval_report(results))


@bench.command("archive")
@click.option("--at", default="1,100,500", show_default=True, help="Epochs to report (the run goes to the last).")
@click.option("--dir", "directory", default=None, help="Where to write (default: the temporary directory).")
def bench_archive(at, directory):
    """Time and bytes written to record one epoch (25-image grid) at epochs 1, 100 and 500:
    the epoch files against the whole-archive copy of before."""
    from hpcdiff.bench.archive import benchmark_archive

    epochs = tuple(int(x) for x in at.split(",") if x.strip())
    rows = benchmark_archive(epochs, directory=directory)
    base = {r["epoch"]: r for r in rows if r["method"].startswith("copy")}
    for r in rows:
        extra = f"  archive {r['archive kB']:.0f} kB" if "archive kB" in r else ""
        ratio = ""
        if not r["method"].startswith("copy") and r["epoch"] in base and isinstance(r["epoch"], int):
            b = base[r["epoch"]]
            fewer = b["kB written"] / max(r["kB written"], 1e-9)
            ratio = f"  ({b['ms'] / r['ms']:.1f}x less time, {fewer:.1f}x fewer bytes)"
        kb = "" if r["kB written"] != r["kB written"] else f"{r['kB written']:9.0f} kB written"
        click.echo(f"{r['method']:24s} epoch {str(r['epoch']):>15s}: {r['ms']:8.1f} ms {kb}{extra}{ratio}")


@bench.command("fused")
@click.option("--models", default="quick-unet,starter-cnn", show_default=True, help="Recipes: bench/fused.py RECIPES.")
@click.option("--k", "ks", default="1,2,4,8,16", show_default=True, help="Group sizes (runs) to measure.")
@click.option("--batch", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--steps", default=3, show_default=True, type=click.IntRange(min=1), help="Timed steps per run.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-processes", is_flag=True, help="Skip the K-processes measurement.")
@click.option(
    "--part",
    type=click.Choice(["train", "sample"]),
    default="train",
    show_default=True,
    help="Training steps, or DDIM sampling (50 steps) as evaluations and grids draw it.",
)
@click.option(
    "--profile",
    "profile_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Instead of the throughput: profile the training step of one run alone and of the largest K fused "
    "(time per step, kernels per step and device busy share on a GPU, top operators); Chrome traces go to DIR.",
)
def bench_fused(models, ks, batch, steps, device, no_processes, part, profile_dir):
    """Aggregate images/s of K runs trained (or sampling, --part sample) as one fused group,
    against the same K runs one after another and as K processes sharing the device, in one
    process run."""
    from hpcdiff.bench.fused import benchmark_fused

    sizes = tuple(int(k) for k in ks.split(","))
    if profile_dir is not None:
        from hpcdiff.bench.fused_profile import profile_step

        for model in models.split(","):
            for k in (0, max(sizes)):
                report = profile_step(model, k, batch=batch, steps=steps, device=device, trace_dir=profile_dir)
                click.echo(report.summary())
                click.echo(report.table)
                click.echo(f"trace: {report.trace}")
        return

    def show(r):
        click.echo(
            f"{r['part']:6s} {r['model']:11s} K={r['k']:<3d} {r['method']:18s} {r['images/s']:9.0f} images/s  "
            f"({r['ratio']:.2f}x one after another)"
        )

    benchmark_fused(
        tuple(models.split(",")),
        sizes,
        batch=batch,
        steps=steps,
        device=device,
        processes=not no_processes,
        part=part,
        on_row=show,
    )
