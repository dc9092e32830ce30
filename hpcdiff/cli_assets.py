"""`hpcdiff evaluate`, `hpcdiff degrade`, `hpcdiff prepare`: the commands about data, assets
and scoring (registered on the main group by cli.py). Each parses, calls one library
function, prints."""

from __future__ import annotations

import sys
from pathlib import Path

import click

# The main group's console and exit rule (cli_bench reaches them without a circular import).
from hpcdiff.cli_bench import console as make_console
from hpcdiff.cli_bench import fail_invalid
from hpcdiff.config.spec import SpecError


@click.command()
@click.argument("target", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="eval.KEY=VALUE",
    help="Change an evaluation setting, e.g. eval.classifier=reference or eval.samples=2000 (repeatable).",
)
@click.option("--device", default=None, help="torch device (default: cuda when there is one, else cpu).")
def evaluate(target, overrides, device):
    """Evaluate again the latest checkpoint of TARGET (a run or a sweep directory) with
    today's code and [eval] settings, e.g. to score old runs with the shipped reference
    classifier. Recorded in each archive beside the training-time values; `analyze` then
    reports it."""
    from rich.progress import Progress

    from hpcdiff.training.rescore import evaluate_runs, evaluation_table

    console = make_console()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("evaluating", total=None)
        try:
            result = evaluate_runs(
                target,
                overrides,
                device=device,
                on_run=lambda run_id: bar.update(task, description=f"evaluating {run_id}"),
            )
        except SpecError as err:
            fail_invalid(err)
    click.echo(evaluation_table(result, console.width))
    for run_id, why in result.skipped.items():
        click.echo(f"skipped {run_id}: {why}")
    click.echo(
        f"{len(result.done)} evaluated, recorded in each archive's evaluations/; "
        f"`hpcdiff analyze` reports them in place of the training-time values"
    )


@click.command()
@click.option("--list", "list_names", is_flag=True, help="Print the registered degradation names.")
@click.option("--names", default="", help="Comma-separated degradations to draw (default: all).")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("analysis/degradations"), show_default=True
)
@click.option(
    "--data",
    "data_name",
    default="mnist-5k",
    show_default=True,
    help="Dataset whose held-out test images are degraded.",
)
@click.option("--root", default=None, help="data.root (for mnist, fashion-mnist, idx).")
def degrade(list_names, names, out, data_name, root):
    """Strips of each degradation at several t on real test images (PNG)."""
    from hpcdiff.science.degradations import DEGRADATION_INFO, DEGRADATIONS, default_schedule

    if list_names:
        for name in DEGRADATIONS.names():
            info = DEGRADATION_INFO[name]
            keeps = info.level_T_keeps_image({}, info.n_steps, (1, 28, 28))
            generates = "noise" if info.process == "gaussian" else ("prior" if keeps is None else "no")
            click.echo(
                f"{name:16s} recipe T={info.n_steps:<5d} schedule={default_schedule(name):7s} "
                f"draws={info.draws:11s} generates at the recipe from: {generates}"
            )
        return
    from hpcdiff.analysis.strips import degradation_strips, strips_request

    try:
        chosen, data = strips_request(names, data_name, root)
    except SpecError as err:
        fail_invalid(err)
    for f in degradation_strips(chosen, out, data_spec=data):
        click.echo(str(f))


@click.command()
@click.argument("sweep_files", nargs=-1, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--dataset", "datasets", multiple=True, help="Also prepare this dataset (mnist, fashion-mnist, ...).")
@click.option("--root", default=None, help="data.root for --dataset.")
@click.option(
    "--inception/--no-inception",
    default=None,
    help="Fetch the Inception weights for fid_inception (default: when a sweep asks for it).",
)
@click.option(
    "--inception-url",
    default=None,
    help="Where to fetch the Inception weights (a mirror URL, file:// URL or path); "
    "default $HPCDIFF_INCEPTION_URL or torch-fidelity's release.",
)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--train-reference",
    "train_reference",
    default=None,
    metavar="FAMILY",
    help="Retrain the shipped reference classifier of FAMILY (mnist) from the IDX files under "
    "--root, into --reference-out (default: the package's assets).",
)
@click.option("--reference-out", type=click.Path(file_okay=False, path_type=Path), default=None)
def prepare(sweep_files, datasets, root, inception, inception_url, device, train_reference, reference_out):
    """On a login node (with internet): download the datasets and Inception weights the
    sweeps need and train the feature classifiers, so jobs run offline. MNIST and mnist-5k
    are scored by the reference classifier shipped with hpcdiff (nothing to train)."""
    if train_reference is not None:
        _retrain_reference(train_reference, root, reference_out, device)
        return
    from hpcdiff.evaluation.assets import needs_of
    from hpcdiff.evaluation.assets import prepare as run_prepare
    from hpcdiff.resolve import load_sweep

    try:
        needs = needs_of([run.spec for path in sweep_files for run in load_sweep(path).runs], datasets, root)
    except SpecError as err:
        fail_invalid(err)
    if not needs.datasets:
        fail_invalid(SpecError("name a sweep file or --dataset"))
    from hpcdiff.data import DataError
    from hpcdiff.evaluation.classifier import MissingAssetError

    try:
        report = run_prepare(
            list(needs.datasets.values()),
            inception=needs.inception if inception is None else inception,
            device=device,
            classifier_epochs=needs.classifier_epochs,
            inception_url=inception_url,
            log=click.echo,
            trained=frozenset(needs.trained),
        )
    except (MissingAssetError, DataError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    for d in report["datasets"]:
        click.echo(f"{d['name']}: classifier {d['classifier_path']} (test accuracy {d['test_accuracy']:.4f})")
    if report["inception"]:
        click.echo(f"inception weights: {report['inception']}")
    click.echo(f"cache: {report['cache_dir']}; jobs can now run offline")


def _retrain_reference(family: str, root, out, device) -> None:
    from hpcdiff.evaluation.classifier import MissingAssetError
    from hpcdiff.evaluation.reference import ASSETS, train_reference

    if root is None:
        fail_invalid(SpecError("--train-reference needs --root DIR (the dataset's IDX files)"))
    try:
        facts = train_reference(family, Path(root), out_dir=out or ASSETS, device=device, log=click.echo)
    except (ValueError, MissingAssetError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2 if isinstance(err, ValueError) else 1)
    click.echo(
        f"{facts['name']}: test accuracy {facts['test_accuracy']:.4f} ({facts['tested_on']}), "
        f"sha256 {facts['sha256'][:16]}..., {out or ASSETS}/{facts['file']}"
    )
