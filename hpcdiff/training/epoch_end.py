"""What closes an epoch of a run: validation, schedulers, early stopping, metrics, samples,
archive row, checkpoint and status (``end_epoch``), for a run alone and for each member of a
fused group alike (training/loop.py calls it once the member's weights are in its own
TrainState).
"""

from __future__ import annotations

import logging
import math

import torch

from hpcdiff.data import to_model_range, to_uint8
from hpcdiff.evaluation.evaluate import eval_mode
from hpcdiff.science.diffusion import sampling_device
from hpcdiff.science.streams import generator, stream_seed
from hpcdiff.storage import archive
from hpcdiff.storage.runstate import RunState
from hpcdiff.training.session import Session
from hpcdiff.training.state import ema_weights
from hpcdiff.training.step import current_lr

log = logging.getLogger(__name__)


def due(epoch: int, every: int, last: bool) -> bool:
    """The one "every N epochs" rule: every N-th epoch and always the last (N = 0: the last
    only)."""
    return last or bool(every and epoch % every == 0)


def end_epoch(session: Session, epoch: int, train_loss: float, seconds: float, first: int) -> bool:
    """Validation, schedulers, metrics, samples, archive row, checkpoint and status of an
    epoch. Returns True when early stopping ends the run here."""
    s, spec, t, rd = session.state, session.spec, session.spec.train, session.rd
    val_loss = validation_loss(session)
    watched = val_loss if not math.isnan(val_loss) else train_loss
    if s.plateau is not None:
        s.plateau.step(watched)
    early_stop = s.stopper.update(
        watched, epoch, min_delta=t.early_stopping_min_delta, patience=t.early_stopping_patience
    )
    last = epoch == t.epochs or early_stop or session.stopped_by is not None
    batches = session.batches_done or session.steps_per_epoch
    metrics = {
        "train_loss": train_loss,
        "val_loss": val_loss,
        "lr": current_lr(s.optimizer),
        "epoch_seconds": seconds,
        "elapsed_seconds": s.elapsed,
        # The common axis of runs compared at equal compute (analysis: vs steps, vs time).
        "optimizer_steps": session.budget.optimizer_steps(epoch, batches),
        "images_per_second": (batches - first) * t.batch_size / seconds,
    }
    if session.evaluator.enabled and due(epoch, spec.eval.every, last):
        with ema_weights(s.core, s.ema):
            metrics.update(session.evaluator(s.core, t.seed))
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
        samples = draw_samples(session) if due(epoch, t.sample_every, last) else None
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
        if due(epoch, t.checkpoint_every, last):
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
    if early_stop:
        log.info("early stopping at epoch %d (best epoch %d)", epoch, s.stopper.best_epoch)
        if session.main:
            rd.write_status(early_stopped=True)
    if session.stopped_by:
        log.info("compute budget spent (train.%s) at epoch %d, batch %d", session.stopped_by, epoch, batches)
    return early_stop or session.stopped_by is not None


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


@torch.no_grad()
def draw_samples(session: Session) -> dict:
    """The epoch's sample grid (from the EMA weights when EMA is on)."""
    s, t = session.state, session.spec.train
    # The same starts every epoch, so grids show the model changing, not the draw.
    g = generator(t.seed, "sample_grid", device=sampling_device(session.accelerator.device))
    with ema_weights(s.core, s.ema), eval_mode(s.core):
        x_T, start = s.core.start(
            t.n_samples,
            session.image_shape,
            generator=g,
            device=session.accelerator.device,
            test_images=session.start_images,
        )
        x = s.core.sample(x_T, generator=g)
    return {
        "images": to_uint8(x).cpu().numpy()[:, 0],
        "attrs": {"start": start},
        "starts": to_uint8(x_T).cpu().numpy()[:, 0],
    }
