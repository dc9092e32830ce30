"""train(run_dir): the training loop of one run, resumable from its latest checkpoint.

Read it top to bottom: load the resolved config, build data, evaluator and TrainState,
resume from the latest checkpoint if there is one, then epochs of
``run_epoch`` (shuffle, steps, interval checks) and ``end_epoch`` (validation, schedulers,
metrics, samples, archive row, checkpoint, status). Everything a restarted process needs to
continue exactly where the last checkpoint left off is in TrainState (training/state.py).
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from pathlib import Path

import torch

from hpcdiff.config.spec import RunSpec
from hpcdiff.data import to_model_range, to_uint8
from hpcdiff.evaluation.evaluate import eval_mode
from hpcdiff.resolve import validate_spec
from hpcdiff.science.diffusion import sampling_device
from hpcdiff.science.streams import generator, stream_seed
from hpcdiff.storage import archive, checkpoint
from hpcdiff.storage.atomic import StorageError
from hpcdiff.storage.rundir import RunDir
from hpcdiff.storage.runstate import RunState
from hpcdiff.training.budget import Budget
from hpcdiff.training.distributed import env_from_slurm, process_rank
from hpcdiff.training.environment import NoGpuError, attach_log, detach_log, fold_archive, record_state
from hpcdiff.training.monitor import Diverged, divergence_hints
from hpcdiff.training.session import Session, start_session
from hpcdiff.training.signals import StopRequested, hand_on_to_submitit, stop_on_signals
from hpcdiff.training.state import ema_weights
from hpcdiff.training.step import current_lr

log = logging.getLogger(__name__)


def due(epoch: int, every: int, last: bool) -> bool:
    """The one "every N epochs" rule: every N-th epoch and always the last (N = 0: the last
    only)."""
    return last or bool(every and epoch % every == 0)


def train(run_dir: str | Path, *, show_progress: bool = False) -> RunState:
    """Train or resume the run in ``run_dir``. Returns the final state (done or timeout).

    Raises ``Diverged`` (state diverged) when the loss or the weights stop being finite, and
    ``StorageError`` (state failed) when a run file cannot be written, e.g. on a full disk;
    both leave the last complete checkpoint and archive as they were."""
    rd = RunDir(Path(run_dir))
    # Resolved again: a config written by an older hpcdiff (or edited by hand) may still say
    # "auto" for a setting that later versions resolve when the sweep is expanded.
    spec = validate_spec(rd.load_spec())
    env_from_slurm()
    # Only the main process owns the run directory: lock, log, status, archive, checkpoints.
    main = process_rank() == 0
    lock = rd.lock() if main else None
    handler = attach_log(rd) if main else None
    try:
        if rd.state == RunState.DONE:
            log.info("run %s is already done; nothing to do", rd.run_id)
            return RunState.DONE
        return _train_locked(rd, spec, show_progress)
    except StopRequested as stop:
        if main:
            record_state(rd, state=RunState.TIMEOUT)
            log.warning("%s: checkpoint written, stopping", stop)
        hand_on_to_submitit(stop.signum)
        return RunState.TIMEOUT
    except SystemExit:
        # e.g. submitit's requeue handler exiting before training installed its own
        if main:
            record_state(rd, state=RunState.TIMEOUT)
        raise
    except (Diverged, StorageError, NoGpuError) as err:
        # Not bugs: no traceback, the message names what happened and where.
        if main:
            record_state(
                rd,
                state=RunState.DIVERGED if isinstance(err, Diverged) else RunState.FAILED,
                error=str(err),
                traceback=None,
            )
            log.error("%s", err)
        raise
    except BaseException as err:
        if main:
            record_state(
                rd,
                state=RunState.FAILED,
                error=f"{type(err).__name__}: {err}",
                traceback=traceback.format_exc()[-4000:],
            )
            log.error("run failed: %s", traceback.format_exc())
        raise
    finally:
        if main:
            fold_archive(rd)
        if handler is not None:
            detach_log(handler)
        if lock is not None:
            lock.close()


def _train_locked(rd: RunDir, spec: RunSpec, show_progress: bool) -> str:
    session = start_session(rd, spec, show_progress)
    t, state = spec.train, session.state
    # A run resumed after its budget was spent trains no more: spent at an epoch's end (killed
    # before it could say it was done), there is nothing left to do; spent mid-epoch (a stop
    # signal's checkpoint at that very step), the epoch is closed without another batch.
    session.stopped_by = session.budget.spent(
        session.budget.optimizer_steps(state.epoch_done + 1, state.start_batch), state.elapsed
    )
    nothing_left = session.stopped_by is not None and not state.start_batch
    try:
        with stop_on_signals(session.monitor), session.progress:
            for epoch in range(state.epoch_done + 1, t.epochs + 1) if not nothing_left else ():
                first = state.start_batch if epoch == state.epoch_done + 1 else 0
                train_loss, seconds = run_epoch(session, epoch, first)
                if end_epoch(session, epoch, train_loss, seconds, first):
                    break
    finally:
        session.trackers.finish()
    session.accelerator.wait_for_everyone()
    if session.main:
        budget = {"stopped_by": session.stopped_by} if session.stopped_by else {}
        rd.write_status(state=RunState.DONE, **budget)
        archive.set_attrs(rd.archive, {"finished": True, "training_seconds": state.elapsed, **budget})
    return RunState.DONE


def run_epoch(session: Session, epoch: int, first: int) -> tuple[float, float]:
    """The steps of one epoch from batch ``first``: (mean training loss, seconds). A spent
    budget ends the epoch early (``session.stopped_by`` says which)."""
    s, t, acc = session.state, session.spec.train, session.accelerator
    rank, world, device = acc.process_index, acc.num_processes, acc.device
    steps, local_batch = session.steps_per_epoch, max(1, t.batch_size // world)
    s.diffusion.train()
    tic = time.perf_counter()
    perm = torch.randperm(len(session.train_images), generator=generator(t.seed, "epoch_order", epoch)).to(device)
    loss_sum = torch.full((), s.partial_loss if first else 0.0, device=device)
    session.progress.start_epoch(epoch, first)
    budget = session.budget
    session.batches_done = last = first if session.stopped_by else steps
    for i in range(first, last):
        idx = perm[i * t.batch_size : (i + 1) * t.batch_size][rank * local_batch : (rank + 1) * local_batch]
        # Windows of grad_accumulation batches that start at every epoch's first batch (the
        # last one may be shorter): an epoch end is always an optimiser step.
        window_start = i - i % t.grad_accumulation
        window = min(t.grad_accumulation, steps - window_start)
        sync = i + 1 == window_start + window
        loss_sum += session.step(idx, window, sync)
        s.step += 1
        session.progress.advance()
        # Checks only after an optimiser step (gradients accumulated in between are not
        # checkpointed), every few steps and at the epoch's end: each waits for the device.
        if sync and session.monitor.optimizer_step_taken(
            epoch_end=i + 1 == steps, budget_step=budget.is_last_step(budget.optimizer_steps(epoch, i + 1))
        ):
            if _check(session, epoch, i + 1, loss_sum, tic, budget):
                session.batches_done = i + 1
                break
    train_loss = acc.reduce(loss_sum, reduction="mean").item() / session.batches_done
    seconds = time.perf_counter() - tic
    s.elapsed += seconds
    return train_loss, seconds


def _check(session: Session, epoch: int, batches: int, loss_sum: torch.Tensor, tic: float, budget: Budget) -> bool:
    """The interval check: divergence ends the run, a stop signal checkpoints and stops it.
    True when the compute budget is spent: this epoch is then the run's last."""
    s = session.state
    spent = budget.spent(budget.optimizer_steps(epoch, batches), s.elapsed + time.perf_counter() - tic)
    verdict = session.monitor.check(loss_sum, s.weights(), over_budget=spent is not None)
    session.progress.show_loss(verdict.loss_sum / batches)  # the epoch's mean so far
    if not verdict.finite:
        epochs = checkpoint.list_epochs(session.rd.checkpoints)
        raise Diverged(
            epoch=epoch,
            step=s.step,
            what="the training loss is not finite" if not verdict.loss_finite else "the weights are not finite",
            hints=divergence_hints(session.spec.train, str(session.accelerator.mixed_precision)),
            last_good=epochs[-1] if epochs else 0,
        )
    if verdict.stop_signal:
        s.elapsed += time.perf_counter() - tic
        if session.main:
            session.save(epoch - 1, partial={"epoch": epoch, "batch": batches, "loss_sum": float(loss_sum)})
        session.accelerator.wait_for_everyone()
        raise StopRequested(verdict.stop_signal)
    if verdict.over_budget:
        # Another rank's clock may be the one past max_minutes: all stop at this step.
        session.stopped_by = spent or "max_minutes"
    return verdict.over_budget


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
