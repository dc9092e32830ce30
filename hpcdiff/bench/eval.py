"""`hpcdiff bench eval`: what one evaluation costs against one epoch of training.

Both are measured in one process on one device, with the starter CNN:
  epoch      a training epoch at the default batch over a training set of ``train_images``
             (48,000 = full MNIST at the default 20% validation split) plus its validation
             pass, from the trainer's loop timed over an epoch of mnist-5k (the time of a
             step does not depend on the images);
  eval       one real Evaluator call at the [eval] defaults (samples, sampler, steps,
             metrics, reconstructions for cold diffusion) per degradation at its recipe n_T;
  full       the same samples drawn with the run's own sampler on all n_T steps (what
             evaluation cost before eval.steps), extrapolated from one timed chunk.
"""

from __future__ import annotations

import math
import time

import torch

from hpcdiff.bench.train import DEFAULT_HIDDEN, bench_loop, bench_spec, sync_device
from hpcdiff.config.spec import RunSpec
from hpcdiff.data import load_splits, to_model_range
from hpcdiff.evaluation.evaluate import EVAL_CHUNK, Evaluator
from hpcdiff.resolve import validate_spec
from hpcdiff.science.degradations import is_gaussian
from hpcdiff.science.diffusion import build_diffusion
from hpcdiff.science.models import build_model

DEGRADATIONS = ("gaussian", "impulse", "pixel_swap", "blur")


def _epoch_seconds(images, device, *, batch: int, train_images: int, val_images: int) -> dict:
    # A step of the trainer's own loop (an epoch of mnist-5k after an untimed one).
    step = bench_loop(
        bench_spec(device=device.type, hidden=DEFAULT_HIDDEN, batch=batch, data_name="mnist-5k", compile_mode="auto"),
        epochs=1,
        name="step",
    )
    step_s = step.seconds / step.steps
    spec = validate_spec(RunSpec())
    core = build_diffusion(spec, build_model(spec.model)).to(device)
    x = to_model_range(images[:1000], device)
    with torch.no_grad():
        core(x)
        sync_device(device)
        tic = time.perf_counter()
        core(x)
        sync_device(device)
    val_s_per_image = (time.perf_counter() - tic) / len(x)
    train_s = math.ceil(train_images / batch) * step_s
    return {
        "step_seconds": step_s,
        "train_seconds": train_s,
        "val_seconds": val_images * val_s_per_image,
        "seconds": train_s + val_images * val_s_per_image,
    }


def benchmark_eval(
    *,
    degradations=DEGRADATIONS,
    device="cpu",
    data_name="mnist-5k",
    eval_overrides=None,
    train_images: int = 48_000,
    val_images: int = 12_000,
    batch_size: int = 128,
    log=None,
) -> dict:
    say = log or (lambda msg: None)
    device = torch.device(device)
    splits = load_splits(RunSpec.from_dict({"data": {"name": data_name}}).data)
    epoch = _epoch_seconds(
        splits.train.images, device, batch=batch_size, train_images=train_images, val_images=val_images
    )
    say(f"epoch of {train_images:,} + {val_images:,} images: {epoch['seconds']:.1f} s")
    rows = []
    for name in degradations:
        spec = validate_spec(
            RunSpec.from_dict(
                {"data": {"name": data_name}, "degradation": {"name": name}, "eval": dict(eval_overrides or {})}
            )
        )
        torch.manual_seed(0)
        core = build_diffusion(spec, build_model(spec.model)).to(device)
        if spec.diffusion.sample_start == "prior":  # fitted as a run fits it before its first step
            core.prior = core.fit_prior(to_model_range(splits.train.images), seed=0)
        evaluator = Evaluator(spec, splits.test, device)  # trains the classifier on first need
        times = []
        for _ in range(2):  # the first call also extracts the real images' features, once per run
            sync_device(device)
            tic = time.perf_counter()
            metrics = evaluator(core, seed=0)
            sync_device(device)
            times.append(time.perf_counter() - tic)
        first_s, eval_s = times
        # The run's own sampler on all n_T steps, one chunk, scaled to the sample count.
        k = min(EVAL_CHUNK, spec.eval.samples)
        g = torch.Generator().manual_seed(0)  # one generator: the start's level-T draw is the sampler's
        x_T, _ = core.start(k, tuple(splits.test.image_shape), generator=g, device=device, test_images=evaluator.starts)
        core.eval()
        sync_device(device)
        tic = time.perf_counter()
        core.sample(x_T, generator=g, steps=0)
        sync_device(device)
        full_sampling_s = (time.perf_counter() - tic) * spec.eval.samples / k
        passes = (
            2
            if (
                not is_gaussian(spec.degradation.name)
                and spec.eval.reconstruction
                and spec.diffusion.sample_start != "degraded_test"
            )
            else 1
        )
        rows.append(
            {
                "degradation": name,
                "n_T": spec.diffusion.n_T,
                "sampler": spec.eval.sampler,
                "steps": min(spec.eval.steps or spec.diffusion.n_T, spec.diffusion.n_T),
                "samples": spec.eval.samples,
                "eval_seconds": eval_s,
                "fraction_of_epoch": eval_s / epoch["seconds"],
                "first_eval_seconds": first_s,
                "full_sampler": spec.diffusion.sampler,
                "full_seconds": full_sampling_s * passes,
                "full_fraction_of_epoch": full_sampling_s * passes / epoch["seconds"],
                "metrics": sorted(k for k in metrics if not k.startswith(("class_", "recon_"))),
            }
        )
        say(f"{name}: evaluation {eval_s:.1f} s = {100 * eval_s / epoch['seconds']:.1f}% of an epoch")
    return {
        "device": str(device),
        "data": data_name,
        "batch_size": batch_size,
        "train_images": train_images,
        "val_images": val_images,
        "epoch": epoch,
        "rows": rows,
    }


def format_eval_report(r: dict):
    from rich.table import Table

    e = r["epoch"]
    table = Table(
        title=f"evaluation vs one training epoch on {r['device']} (epoch = {r['train_images']:,} "
        f"training + {r['val_images']:,} validation images at batch {r['batch_size']}: "
        f"{e['seconds']:.1f} s)"
    )
    for col in (
        "degradation",
        "n_T",
        "eval sampler",
        "steps",
        "samples",
        "first eval s",
        "eval s",
        "% of epoch",
        "all-steps sampling s",
        "% of epoch ",
    ):
        table.add_column(col, justify="left" if col in ("degradation", "eval sampler") else "right")
    for row in r["rows"]:
        table.add_row(
            row["degradation"],
            str(row["n_T"]),
            row["sampler"],
            str(row["steps"]),
            str(row["samples"]),
            f"{row['first_eval_seconds']:.1f}",
            f"{row['eval_seconds']:.1f}",
            f"{100 * row['fraction_of_epoch']:.1f}%",
            f"{row['full_seconds']:.1f}",
            f"{100 * row['full_fraction_of_epoch']:.0f}%",
        )
    table.caption = (
        "target: an evaluation <= 20% of an epoch at the \\[eval] defaults. 'first' includes the "
        "real images' features (once per run). 'all-steps sampling' = drawing the same samples "
        "with the run's own sampler on all n_T steps (extrapolated from one chunk): what "
        "evaluation cost before eval.steps"
    )
    return table
