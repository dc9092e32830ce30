"""`hpcdiff evaluate`: the metrics of a run's latest checkpoint, computed again now.

Why: a run's IS / FID / KID / histograms were computed while it trained, by whatever
classifier and evaluation settings it had then (a classifier trained on that machine before
hpcdiff shipped reference classifiers, 300 samples, the old padded SSIM). Re-evaluating the
checkpoint's weights with today's code and settings makes finished runs comparable without
training them again.

What: the checkpoint's EMA weights (the weights training evaluated) and, for a run that
starts sampling from a level-T prior, the run's own ``prior.pt``; the samples drawn with the
run's seed from the same named streams as the training-time evaluation, so the same
settings give the same numbers. Only ``[eval]`` keys can be changed (``--set
eval.samples=2000``): the rest is what was trained. The result is added to the archive under
``evaluations/`` (the training-time rows stay as they were); ``analyze`` reports the latest
evaluation of a run's last epoch in place of the training-time values.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hpcdiff import __version__
from hpcdiff.config import tomlio
from hpcdiff.config.spec import RunSpec, SpecError, start_measures
from hpcdiff.config.sweep import parse_overrides
from hpcdiff.config.text_table import Column, fit
from hpcdiff.data import load_splits
from hpcdiff.evaluation.evaluate import Evaluator
from hpcdiff.resolve import validate_spec
from hpcdiff.science.diffusion import build_diffusion
from hpcdiff.science.models import build_model
from hpcdiff.storage import archive, checkpoint
from hpcdiff.storage.rundir import RunBusyError, RunDir, sweep_run_dirs
from hpcdiff.training.level_prior import load_or_fit_prior

log = logging.getLogger(__name__)


class NothingToEvaluate(RuntimeError):
    """The run has no checkpoint (or no archive) yet."""


@dataclass
class RunEvaluation:
    run_id: str
    epoch: int  # the checkpoint's epoch
    key: str  # its name under the archive's evaluations/
    classifier: str  # what scored IS / FID / KID / histograms ("" when none did)
    metrics: dict[str, float]
    before: dict[str, float] = field(default_factory=dict)  # the archive's values at that epoch


def eval_overrides(spec: RunSpec, overrides, source: str) -> RunSpec:
    """``spec`` with ``--set eval.KEY=VALUE`` applied; any other section is an error (it
    would describe another model than the one the checkpoint holds)."""
    parsed = parse_overrides(overrides)
    if not parsed:
        return spec
    raw = spec.to_dict()
    for parts, value in parsed:
        if parts[0] != "eval" or len(parts) != 2:
            raise SpecError(
                f"only [eval] keys can be changed when evaluating a trained run, got "
                f"{'.'.join(parts)!r} (to change what is trained, train another run)",
                path=f"--set {'.'.join(parts)}",
            )
        raw["eval"][parts[1]] = value
    return validate_spec(RunSpec.from_dict(raw, source=source))


def evaluation_key(epoch: int, classifier: str, spec: RunSpec) -> str:
    """One name per (checkpoint, classifier, evaluation settings): the same again replaces it."""
    settings = tomlio.dumps({"eval": spec.to_dict()["eval"]})
    digest = hashlib.sha256(settings.encode()).hexdigest()[:8]
    return f"epoch_{epoch:05d}-{classifier or 'none'}-{digest}"


def evaluate_run(run_dir: str | Path, overrides=(), *, device: str | torch.device | None = None) -> RunEvaluation:
    """Evaluate the latest checkpoint of ``run_dir`` and record it in its archive.

    Raises ``RunBusyError`` while a process trains the run (the archive has one writer),
    ``NothingToEvaluate`` before its first checkpoint, ``SpecError`` for a bad ``--set``."""
    rd = RunDir(Path(run_dir))
    spec = eval_overrides(validate_spec(rd.load_spec()), overrides, source=f"--set (evaluating {rd.path})")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lock = rd.lock()
    try:
        resumed = checkpoint.load_latest(rd.checkpoints)
        if resumed is None or not rd.archive.exists():
            raise NothingToEvaluate(f"run {rd.path} has no checkpoint yet: nothing to evaluate")
        epoch, state = resumed
        tic = time.perf_counter()
        splits = load_splits(spec.data)
        core = build_diffusion(spec, build_model(spec.model, splits.train.image_shape)).to(device)
        # The EMA weights when the run kept an average: what its training-time metrics scored.
        core.denoiser.load_state_dict(state["ema"] if state.get("ema") else state["model"])
        if spec.diffusion.sample_start == "prior":
            core.prior = load_or_fit_prior(rd, core, splits.train.images, spec.train.seed)
        evaluator = Evaluator(spec, splits.test, device)
        if not evaluator.enabled:
            raise SpecError(
                "eval.metrics is empty and there is nothing to reconstruct: nothing to compute", path="eval.metrics"
            )
        metrics = evaluator(core, spec.train.seed)
        classifier = getattr(evaluator.classifier, "cache_key", "") or ""
        key = evaluation_key(epoch, classifier, spec)
        archive.add_evaluation(
            rd.archive,
            key,
            {
                "epoch": epoch,
                "classifier": classifier,
                "created": time.time(),
                "hpcdiff_version": __version__,
                "torch_version": str(torch.__version__),
                "device": str(device),
                "checkpoint": checkpoint.path_for(rd.checkpoints, epoch).name,
                "settings": tomlio.dumps({"eval": spec.to_dict()["eval"]}),
                "sample_start": spec.diffusion.sample_start,
                "samples_measure": start_measures(spec.diffusion.sample_start),
                "ema": bool(state.get("ema")),
                "standard_ssim": True,
            },
            metrics,
        )
        log.info("run %s: epoch %d evaluated in %.1f s (%s)", rd.run_id, epoch, time.perf_counter() - tic, key)
        return RunEvaluation(rd.run_id, epoch, key, classifier, metrics, _archived_row(rd, epoch, metrics))
    finally:
        lock.close()


def _archived_row(rd: RunDir, epoch: int, names) -> dict[str, float]:
    """The training-time values of ``names`` at ``epoch`` (for a before/after table)."""
    data = archive.read(rd.archive)["metrics"]
    epochs = list(data.get("epoch", []))
    if epoch not in epochs:
        return {}
    i = epochs.index(epoch)
    return {n: float(data[n][i]) for n in names if n in data and i < len(data[n])}


@dataclass
class SweepEvaluation:
    done: list[RunEvaluation] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # run id -> why


def evaluate_runs(target: str | Path, overrides=(), *, device=None, on_run=None) -> SweepEvaluation:
    """``target`` is a run directory or a sweep directory (every run with a checkpoint).
    A busy or untrained run is skipped with the reason; a bad ``--set`` fails before any."""
    target = Path(target)
    dirs = [RunDir(target)] if (target / "config.toml").is_file() else sweep_run_dirs(target)
    if not dirs:
        raise SpecError(f"{target} is neither a run directory (config.toml) nor a sweep directory of runs")
    for rd in dirs:  # every run's overrides checked before the first (minutes-long) evaluation
        eval_overrides(validate_spec(rd.load_spec()), overrides, source=f"--set (evaluating {rd.path})")
    result = SweepEvaluation()
    for rd in dirs:
        if on_run is not None:
            on_run(rd.run_id)
        try:
            result.done.append(evaluate_run(rd.path, overrides, device=device))
        except (RunBusyError, NothingToEvaluate) as err:
            result.skipped[rd.run_id] = str(err)
    return result


def evaluation_table(result: SweepEvaluation, width: int) -> str:
    """One line per evaluated run: the headline metrics at training time and now."""

    def then_now(e: RunEvaluation, name: str, digits: int) -> str:
        if name not in e.metrics:
            return ""
        before = e.before.get(name)
        was = f"{before:.{digits}f}" if before is not None and before == before else "-"
        return f"{was} -> {e.metrics[name]:.{digits}f}"

    rows = [
        {
            "run": e.run_id,
            "epoch": e.epoch,
            "classifier": e.classifier,
            "fid": then_now(e, "fid_classifier", 1),
            "is": then_now(e, "inception_score", 2),
            "ssim": then_now(e, "recon_full_ssim", 3),
        }
        for e in result.done
    ]
    columns = [
        Column("run", "run"),
        Column("epoch", "epoch", right=True),
        Column("classifier", "classifier", drop_order=3),
        Column("fid", "FID then -> now", right=True),
        Column("is", "IS then -> now", right=True),
        Column("ssim", "SSIM full then -> now", right=True, drop_order=2),
    ]
    lines, _ = fit(columns, rows, width)
    return "\n".join(lines)
