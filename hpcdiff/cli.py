"""The `hpcdiff` command. Each command parses, calls one library function, prints.

Heavy imports (torch, accelerate, matplotlib) happen inside the commands so that `--help`
and input validation answer at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hpcdiff.config.catalog import EXECUTORS, SBATCH_TEMPLATES
from hpcdiff.config.spec import SpecError

EXIT_INVALID = 2


# Width of piped output when COLUMNS is not set: a log or a file is read later in an editor
# or a CI log viewer, not in the terminal that started the command. 100 keeps such a line
# readable without scrolling sideways; tables wider than that switch to a layout that fits
# (the run table: one block per run) rather than being cut.
PIPED_WIDTH = 100


def _console():
    import os
    import shutil

    from rich.console import Console

    # COLUMNS when set (a user's or a test's choice wins, piped or not), else the terminal's
    # width, else PIPED_WIDTH.
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        width = int(columns)
    elif sys.stdout.isatty():
        width = shutil.get_terminal_size().columns
    else:
        width = PIPED_WIDTH
    return Console(width=width)


def _fail_invalid(err: Exception) -> None:
    click.echo(f"error: {err}", err=True)
    sys.exit(EXIT_INVALID)


@click.group()
@click.version_option(package_name="hpcdiff")
def main():
    """Sweeps of diffusion models, locally or on SLURM."""


@main.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default="auto",
    show_default=True,
    help="auto: slurm where sbatch exists, else local processes.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Runs land in OUTPUT/<sweep name>/<run id>/.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a config value for every run (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Validate and list the runs; write and run nothing.")
@click.option(
    "--concurrency",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runs trained at once by the local executor.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Local executor: processes (DDP ranks) per run, the counterpart of GPUs per node.",
)
@click.option("--force", is_flag=True, help="Rerun finished runs too (their results are moved aside).")
@click.option(
    "--fuse",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="Train up to K compatible runs as one fused group, one process (overrides [sweep] fuse; 1 = off).",
)
@click.option("--long", is_flag=True, help="List every varying key of every run (one block per run if needed).")
@click.option(
    "--then-analyze", is_flag=True, help="SLURM: also submit a CPU job that runs `hpcdiff analyze` when the arrays end."
)
def sweep(sweep_file, executor, output, overrides, dry_run, concurrency, processes, force, fuse, then_analyze, long):
    """Expand SWEEP_FILE into runs and train them (skipping finished ones)."""
    from hpcdiff.launch.plan import execute_plan, outcome_lines, plan_sweep, preamble_lines

    try:
        plan = plan_sweep(
            sweep_file,
            output=output,
            overrides=overrides,
            force=force,
            fuse=fuse,
            executor=executor,
            processes=processes,
        )
    except SpecError as err:
        _fail_invalid(err)
    console = _console()
    _print_plan(console, plan, long)
    failed: list[str] = []
    if dry_run:
        _print_dry_run(console, plan, executor)
        return
    for line in preamble_lines(plan):
        console.print(line)
    if plan.to_launch:
        from hpcdiff.launch.slurm import SlurmError

        try:
            report = execute_plan(
                plan, executor=executor, concurrency=concurrency, then_analyze=then_analyze, processes=processes
            )
        except (SpecError, ValueError) as err:
            _fail_invalid(err)
        except SlurmError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        failed = report.failed
        if not report.job_ids:  # local: the runs have ended; their table is the sweep's summary
            from hpcdiff.launch.status import collect_status, status_table

            console.print(
                status_table(plan.sweep_dir, *collect_status(plan.sweep_dir), width=console.width), soft_wrap=True
            )
        for line in outcome_lines(plan, report):
            console.print(line)
    console.print(f"Results: [bold]{plan.sweep_dir}[/]")
    console.print(f"  hpcdiff status {plan.sweep_dir}")
    console.print(f"  hpcdiff analyze {plan.sweep_dir}")
    if failed:
        sys.exit(1)


def _print_dry_run(console, plan, executor: str) -> None:
    from hpcdiff.launch.plan import dry_run_report, resolve_executor_name

    backend = resolve_executor_name(executor)
    if backend == "slurm" and plan.to_launch:
        report = dry_run_report(plan)
        for script in report.scripts:
            console.print("[bold]submission script[/]:", markup=True)
            console.print(script, markup=False, highlight=False, soft_wrap=True)
        for answer in report.test_only:
            # sbatch's answer whole on one line (piped output is PIPED_WIDTH wide).
            console.print(f"[bold]sbatch --test-only[/]: {answer}", highlight=False, soft_wrap=True)
        console.print(
            "\n".join(
                [
                    f"GPU-hours requested: {report.gpu_hours:.1f} ({report.tasks} array tasks x "
                    f"nodes x GPUs x time limit)",
                    *report.packing,
                ]
            ),
            highlight=False,
        )
    console.print(
        f"[bold]dry run[/]: {len(plan.runs)} runs, {len(plan.to_launch)} to launch ({backend}); "
        f"nothing written or submitted."
    )


def _print_plan(console, plan, long: bool = False) -> None:
    from hpcdiff.launch.run_table import plan_text

    console.print(plan_text(plan, console.width, long=long), markup=False, highlight=False, soft_wrap=True)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when on a terminal).")
def train(run_dirs, progress):
    """Train (or resume) the run in RUN_DIR. This is what every job executes. Several RUN_DIRs
    of one sweep train as one fused group in this process (each keeps its own run directory,
    checkpoints and archive, and resumes alone or in any group)."""
    from hpcdiff.storage.atomic import StorageError
    from hpcdiff.storage.rundir import RunBusyError
    from hpcdiff.storage.runstate import RunState
    from hpcdiff.training.environment import NoGpuError
    from hpcdiff.training.loop import train_group
    from hpcdiff.training.members import FusionError
    from hpcdiff.training.monitor import Diverged

    if progress is None:
        progress = sys.stdout.isatty()
    try:
        states = train_group(list(run_dirs), show_progress=progress)
    except SpecError as err:
        _fail_invalid(err)
    except FusionError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except (Diverged, StorageError, NoGpuError) as err:
        # Expected failures with a full explanation: no traceback (log.txt has the details).
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except RunBusyError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(RunBusyError.exit_code)
    for run_dir, state in zip(run_dirs, states):
        click.echo(f"{run_dir}: {state}")
    if any(state in (RunState.DIVERGED, RunState.FAILED) for state in states):
        sys.exit(1)  # a fused member diverged: the others' states above are what they are


@main.command()
@click.argument("sweep_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--watch", is_flag=True, help="Refresh until every run has ended (Ctrl-C to stop).")
@click.option("--interval", type=click.FloatRange(min=0.5), default=10.0, show_default=True)
@click.option("--long", is_flag=True, help="Every varying key and status field (one block per run if needed).")
def status(sweep_dir, watch, interval, long):
    """Table of the runs of SWEEP_DIR: state, progress, validation loss, wall time (--long:
    every varying key, losses, SLURM job, requeues and errors)."""
    from hpcdiff.launch.status import collect_status, is_finished, status_table

    console = _console()
    if not watch:
        console.print(
            status_table(sweep_dir, *collect_status(sweep_dir), width=console.width, long=long), soft_wrap=True
        )
        return
    import time as _time

    from rich.live import Live

    with Live(console=console, auto_refresh=False) as live:
        while True:
            varying, rows = collect_status(sweep_dir)
            live.update(status_table(sweep_dir, varying, rows, width=console.width, long=long), refresh=True)
            if is_finished(rows):
                break
            _time.sleep(interval)  # display refresh period, not synchronisation


@main.command()
@click.argument("sweep_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
def cancel(sweep_dir):
    """Cancel the SLURM jobs of SWEEP_DIR's unfinished runs (they keep their checkpoints)."""
    from hpcdiff.launch.status import cancel_sweep

    cancelled = cancel_sweep(sweep_dir)
    click.echo(f"cancelled {len(cancelled)} jobs" + (f": {' '.join(cancelled)}" if cancelled else ""))


@main.command()
@click.argument("sweep_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--dry-run", is_flag=True, help="List what `wandb sync` would upload; upload nothing.")
def sync(sweep_dir, dry_run):
    """Upload SWEEP_DIR's offline W&B runs (written inside SLURM jobs) with `wandb sync`."""
    from hpcdiff.launch.wandb_sync import sync_sweep

    try:
        runs, code = sync_sweep(sweep_dir, dry_run=dry_run)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{len(runs)} offline W&B runs under {sweep_dir}" + ("" if runs else ": nothing to sync"))
    sys.exit(code)


@main.command()
@click.argument("sweep_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: analysis/<sweep name>/).",
)
@click.option("--sort-by", default=None, help="Table column to sort by (default: best FID, else best val loss).")
@click.option(
    "--training-scores",
    is_flag=True,
    help="Report the metrics computed during training even where `hpcdiff evaluate` re-scored a run.",
)
def analyze(sweep_dir, out, sort_by, training_scores):
    """Tables (CSV, Markdown) and figures (PNG) of a finished or partly finished sweep."""
    from hpcdiff.analysis.compact import console_text
    from hpcdiff.analysis.report import analyze as run_analysis

    try:
        result = run_analysis(sweep_dir, out, sort_by=sort_by, training_scores=training_scores)
    except ValueError as err:
        _fail_invalid(err)
    console = _console()
    console.print(console_text(sweep_dir, result, console.width), markup=False, highlight=False, soft_wrap=True)


@main.command("sbatch")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option("--template", type=click.Choice(SBATCH_TEMPLATES), default="csd3-ampere", show_default=True)
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="For a sweep file: where its runs go.",
)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE")
def sbatch_cmd(target, template, output, overrides):
    """Write a plain sbatch script for a run directory or a sweep file (submit it yourself)."""
    from hpcdiff.launch.sbatch import render, write_for_sweep
    from hpcdiff.storage.rundir import RunDir

    try:
        if target.is_dir():
            rd = RunDir(target)
            spec = rd.load_spec()
            click.echo(
                render(
                    template,
                    spec.slurm,
                    job_name=f"hpcdiff-{rd.run_id}",
                    run_dirs=[str(target.absolute())],
                    log_dir=str(target.absolute()),
                )
            )
            return
        paths = write_for_sweep(target, template=template, output=output, overrides=overrides)
    except SpecError as err:
        _fail_invalid(err)
    for path in paths:
        click.echo(f"wrote {path}")
    click.echo("submit with: " + " && ".join(f"sbatch {path}" for path in paths))


# The benchmarks' commands and the data and scoring commands live beside this module
# (cli_bench.py, cli_assets.py), registered here.
from hpcdiff.cli_assets import degrade, evaluate, prepare  # noqa: E402
from hpcdiff.cli_bench import bench  # noqa: E402

for command in (evaluate, degrade, prepare, bench):
    main.add_command(command)

if __name__ == "__main__":
    main()
