"""What closes an epoch of a run, in two halves, for a run alone and for each member of a fused
group alike (training/loop.py calls them once the member's weights are in its own
TrainState): ``begin_epoch_end`` (validation, schedulers, early stopping: what is due) and
``finish_epoch_end`` (metrics, samples, archive row, checkpoint and status). In between,
``draw_together`` lets the members of a fused group whose epochs end in the same round draw
their evaluation samples and grids at once, one stacked network call per sampling step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass

import torch

from hpcdiff.data import to_model_range, to_uint8
from hpcdiff.evaluation.evaluate import eval_mode
from hpcdiff.science.diffusion import sampling_device
from hpcdiff.science.streams import generator, stream_seed
from hpcdiff.storage import archive
from hpcdiff.storage.runstate import RunState
from hpcdiff.training.environment import logging_for
from hpcdiff.training.session import Session
from hpcdiff.training.state import ema_weights
from hpcdiff.training.step import current_lr

log = logging.getLogger(__name__)


def due(epoch: int, every: int, last: bool) -> bool:
    """The one "every N epochs" rule: every N-th epoch and always the last (N = 0: the last
    only)."""
    return last or bool(every and epoch % every == 0)


@dataclass
class EpochEnd:
    """What ``begin_epoch_end`` decided about an epoch's end, and the samples drawn for it
    by a fused group (``draw_together``) before ``finish_epoch_end`` writes it."""

    epoch: int
    train_loss: float
    seconds: float
    first: int
    val_loss: float
    early_stop: bool
    last: bool
    evaluate: bool  # the metrics are due
    grid: bool  # the sample grid is due
    drawn: dict | None = None  # evaluation sample sets drawn with other members
    grid_samples: dict | None = None  # the grid drawn with other members
    draw_seconds: float = 0.0  # this member's share of the time those draws took


def begin_epoch_end(session: Session, epoch: int, train_loss: float, seconds: float, first: int) -> EpochEnd:
    """Validation, the plateau scheduler and early stopping: whether this epoch is the run's
    last, and what is due at its end."""
    s, spec, t = session.state, session.spec, session.spec.train
    val_loss = validation_loss(session)
    watched = val_loss if not math.isnan(val_loss) else train_loss
    if s.plateau is not None:
        s.plateau.step(watched)
    early_stop = s.stopper.update(
        watched, epoch, min_delta=t.early_stopping_min_delta, patience=t.early_stopping_patience
    )
    last = epoch == t.epochs or early_stop or session.stopped_by is not None
    return EpochEnd(
        epoch=epoch,
        train_loss=train_loss,
        seconds=seconds,
        first=first,
        val_loss=val_loss,
        early_stop=early_stop,
        last=last,
        evaluate=session.evaluator.enabled and due(epoch, spec.eval.every, last),
        grid=session.main and due(epoch, t.sample_every, last),
    )


def finish_epoch_end(session: Session, end: EpochEnd) -> bool:
    """Metrics, samples, archive row, checkpoint and status of the epoch ``end`` describes.
    Returns True when the run ends here (early stopping or a spent budget)."""
    s, t, rd = session.state, session.spec.train, session.rd
    epoch, train_loss, val_loss = end.epoch, end.train_loss, end.val_loss
    batches = session.batches_done or session.steps_per_epoch
    metrics = {
        "train_loss": train_loss,
        "val_loss": val_loss,
        "lr": current_lr(s.optimizer),
        "epoch_seconds": end.seconds,
        "elapsed_seconds": s.elapsed,
        # The common axis of runs compared at equal compute (analysis: vs steps, vs time).
        "optimizer_steps": session.budget.optimizer_steps(epoch, batches),
        "images_per_second": (batches - end.first) * t.batch_size / end.seconds,
    }
    if end.evaluate:
        with ema_weights(s.core, s.ema):
            metrics.update(session.evaluator(s.core, t.seed, drawn=end.drawn))
        if "eval_seconds" in metrics:
            metrics["eval_seconds"] += end.draw_seconds
        if session.main:
            log.info(
                "epoch %d metrics: %s",
                epoch,
                ", ".join(
                    f"{k} {v:.4g}"
                    for k, v in metrics.items()
                    if not k.startswith(("class_", "recon_")) and k not in ("lr", "epoch_seconds", "elapsed_seconds")
                ),
            )
    if session.main:
        samples = (end.grid_samples or draw_samples(session)) if end.grid else None
        archive.append_epoch(
            rd.archive,
            epoch,
            metrics,
            samples,
            attrs={
                "best_epoch": s.stopper.best_epoch,
                "best_loss": s.stopper.best,
                "step_mode": s.mode.mode.value,
                "step_mode_reason": s.mode.reason,
            },
        )
        session.trackers.log_epoch(epoch, metrics, samples)
        if due(epoch, t.checkpoint_every, end.last):
            session.save(epoch)
        rd.write_status(
            state=RunState.RUNNING,
            epoch=epoch,
            last_loss=train_loss,
            val_loss=val_loss,
            elapsed=s.elapsed,
            best_epoch=s.stopper.best_epoch,
            steps=int(metrics["optimizer_steps"]),
        )
    log.info(
        "epoch %d/%d train_loss %.5f val_loss %.5f %.0f img/s",
        epoch,
        t.epochs,
        train_loss,
        val_loss,
        metrics["images_per_second"],
    )
    session.progress.end_epoch(epoch, train_loss, val_loss)
    if end.early_stop:
        log.info("early stopping at epoch %d (best epoch %d)", epoch, s.stopper.best_epoch)
        if session.main:
            rd.write_status(early_stopped=True)
    if session.stopped_by:
        log.info("compute budget spent (train.%s) at epoch %d, batch %d", session.stopped_by, epoch, batches)
    return end.early_stop or session.stopped_by is not None


@torch.no_grad()
def validation_loss(session: Session) -> float:
    """Mean loss over the validation images, each rank taking its share."""
    images, acc, core = session.val_images, session.accelerator, session.state.core
    if len(images) == 0:
        return float("nan")
    rank, world, device, batch = acc.process_index, acc.num_processes, acc.device, session.spec.train.batch_size
    core.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    # Same noise every epoch (so the curve measures the model, not the draw) without
    # disturbing the training RNG stream.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(stream_seed(session.spec.train.seed, "validation", rank))
        for i in range(rank * batch, len(images), batch * world):
            x = to_model_range(images[i : i + batch])
            totals[0] += core(x).double() * len(x)
            totals[1] += len(x)
    if world > 1:
        totals = acc.reduce(totals, reduction="sum")
    core.train()
    return float(totals[0] / totals[1])


def _grid_generator(session: Session) -> torch.Generator:
    # The same starts every epoch, so grids show the model changing, not the draw.
    return generator(session.spec.train.seed, "sample_grid", device=sampling_device(session.accelerator.device))


def _grid_start(session: Session, g: torch.Generator) -> tuple[torch.Tensor, str]:
    return session.state.core.start(
        session.spec.train.n_samples,
        session.image_shape,
        generator=g,
        device=session.accelerator.device,
        test_images=session.start_images,
    )


def _grid(x_T: torch.Tensor, x: torch.Tensor, start: str) -> dict:
    return {
        "images": to_uint8(x).cpu().numpy()[:, 0],
        "attrs": {"start": start},
        "starts": to_uint8(x_T).cpu().numpy()[:, 0],
    }


@torch.no_grad()
def draw_samples(session: Session) -> dict:
    """The epoch's sample grid (from the EMA weights when EMA is on)."""
    s = session.state
    g = _grid_generator(session)
    with ema_weights(s.core, s.ema), eval_mode(s.core):
        x_T, start = _grid_start(session, g)
        return _grid(x_T, s.core.sample(x_T, generator=g), start)


# --------------------------------------------------------------------------- fused groups


def draw_together(closing: list[tuple[Session, EpochEnd]], mode: str | None = None) -> None:
    """The evaluation samples and sample grids of fused members whose epochs end in the same
    round, drawn at once by the members that share a sampler (science/fused_sampling.py): one
    stacked network call per sampling step for all of them, each member's draws its own (the
    ones it draws alone). Fills each EpochEnd's ``drawn`` / ``grid_samples``; a member that
    shares with no other is left to draw alone. ``mode``: the stacking mode (default: by
    device)."""
    from hpcdiff.evaluation.evaluate import draw_together as draw_evaluations
    from hpcdiff.science.fused_sampling import FusedProcess

    def evaluation_key(session: Session):
        return repr(session.spec.eval), session.evaluator.passes(session.state.core)

    def grid_key(session: Session):
        core = session.state.core
        return core.sampler, core.sample_steps, session.spec.train.n_samples

    for sharing in _sharing([(s, e) for s, e in closing if e.evaluate and s.main], evaluation_key):
        with _ema_of(sharing), torch.no_grad():
            tic = time.perf_counter()
            fused = FusedProcess.of([s.state.core for s, _ in sharing], mode)
            drawn = draw_evaluations([(s.evaluator, s.state.core, s.spec.train.seed) for s, _ in sharing], fused)
            share = (time.perf_counter() - tic) / len(sharing)
        for (s, e), d in zip(sharing, drawn):
            e.drawn, e.draw_seconds = d, share
            with logging_for(s.rd.run_id):
                log.info(
                    "evaluation samples drawn with %d other member(s) of the group, one stacked network call per step",
                    len(sharing) - 1,
                )
    for sharing in _sharing([(s, e) for s, e in closing if e.grid], grid_key):
        with _ema_of(sharing), torch.no_grad():
            cores = [s.state.core for s, _ in sharing]
            gens = [_grid_generator(s) for s, _ in sharing]
            starts = [_grid_start(s, g) for (s, _), g in zip(sharing, gens)]
            x_T = torch.stack([x for x, _ in starts])
            x = FusedProcess.of(cores, mode).sample(x_T, gens, sampler=cores[0].sampler, steps=cores[0].sample_steps)
        for i, (_, e) in enumerate(sharing):
            e.grid_samples = _grid(x_T[i], x[i], starts[i][1])


def _sharing(members: list[tuple[Session, EpochEnd]], key) -> list[list[tuple[Session, EpochEnd]]]:
    """The groups of two or more members that draw together: same ``key`` and one sampler."""
    from hpcdiff.science.fused_sampling import sampling_blocker

    groups: list[list[tuple[Session, EpochEnd]]] = []
    for member in members:
        session = member[0]
        for g in groups:
            first = g[0][0]
            if key(first) == key(session) and sampling_blocker([first.state.core, session.state.core]) is None:
                g.append(member)
                break
        else:
            groups.append([member])
    return [g for g in groups if len(g) > 1]


@contextlib.contextmanager
def _ema_of(sharing: list[tuple[Session, EpochEnd]]):
    """Every member's EMA weights in its network, in eval mode, for the block."""
    with contextlib.ExitStack() as stack:
        for s, _ in sharing:
            stack.enter_context(ema_weights(s.state.core, s.state.ema))
            stack.enter_context(eval_mode(s.state.core))
        yield
