"""train(run_dir): the training loop of one run, resumable from its latest checkpoint.

Read it top to bottom: load the resolved config, build data/model/diffusion/optimiser,
resume if a checkpoint exists, then epochs of (shuffle, steps, validation, samples,
archive row, checkpoint). Everything a restarted process needs to continue exactly where
the last checkpoint left off is in the checkpoint: weights, optimiser, scheduler, early
stopping counters and every RNG state.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import random
import signal
import socket
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from hpcdiff import __version__
from hpcdiff.storage import archive, checkpoint
from hpcdiff.config import tomlio
from hpcdiff.storage.atomic import StorageError
from hpcdiff.data import load_splits, to_model_range, to_uint8
from hpcdiff.resolve import validate_spec
from hpcdiff.science.diffusion import build_diffusion
from hpcdiff.training.distributed import env_from_slurm, process_rank
from hpcdiff.evaluation.evaluate import Evaluator, eval_mode
from hpcdiff.science.models import build_model
from hpcdiff.training.monitor import Diverged, TrainingMonitor, divergence_hints
from hpcdiff.storage.rundir import RunDir
from hpcdiff.config.spec import RunSpec

log = logging.getLogger(__name__)

# Signals that mean "the job is about to be stopped": SLURM sends SIGTERM before killing a
# job at its time limit or on preemption (and USR1/USR2 when asked to warn early).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
PROCESS_GROUP_TIMEOUT_S = 1800


class StopRequested(Exception):
    """Raised at a batch boundary after a stop signal, once the checkpoint is written."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum


def train(run_dir: str | Path, *, show_progress: bool = False) -> str:
    """Train or resume the run in ``run_dir``. Returns the final state ("done" or "timeout").

    Raises ``Diverged`` (state "diverged") when the loss or the weights stop being finite, and
    ``StorageError`` (state "failed") when a run file cannot be written, e.g. on a full disk;
    both leave the last complete checkpoint and archive as they were."""
    rd = RunDir(Path(run_dir))
    # Resolved again: a config written by an older hpcdiff (or edited by hand) may still say
    # "auto" for a setting that later versions resolve when the sweep is expanded.
    spec = validate_spec(rd.load_spec())
    env_from_slurm()
    # Only the main process owns the run directory: lock, log, status, archive, checkpoints.
    main = process_rank() == 0
    lock = rd.lock() if main else None
    handler = _attach_log(rd) if main else None
    try:
        if rd.read_status().get("state") == "done":
            log.info("run %s is already done; nothing to do", rd.run_id)
            return "done"
        return _train_locked(rd, spec, show_progress)
    except StopRequested as stop:
        if main:
            rd.write_status(state="timeout")
            log.warning("%s: checkpoint written, stopping", stop)
        _hand_on_to_submitit(stop.signum)
        return "timeout"
    except SystemExit:
        # e.g. submitit's requeue handler exiting before training installed its own
        if main:
            _record_state(rd, state="timeout")
        raise
    except Diverged as err:
        if main:
            _record_state(rd, state="diverged", error=str(err), traceback=None)
            log.error("%s", err)
        raise
    except StorageError as err:
        # Not a bug: no traceback, the message names the file and the cause.
        if main:
            _record_state(rd, state="failed", error=str(err), traceback=None)
            log.error("run failed: %s", err)
        raise
    except BaseException as err:
        if main:
            _record_state(rd, state="failed", error=f"{type(err).__name__}: {err}",
                          traceback=traceback.format_exc()[-4000:])
            log.error("run failed: %s", traceback.format_exc())
        raise
    finally:
        if handler is not None:
            logging.getLogger("hpcdiff").removeHandler(handler)
            handler.close()
        if lock is not None:
            lock.close()


def _record_state(rd: RunDir, **fields) -> None:
    """status.json, or, when it cannot be written (the disk that failed the run is full), a
    line on stderr: the job's .err file under SLURM, the terminal or stdout.txt locally."""
    try:
        rd.write_status(**fields)
    except OSError as err:
        print(f"hpcdiff: run {rd.run_id} ended {fields.get('state')!r} but status.json could not record it "
              f"({err}); reason: {fields.get('error') or '-'}", file=sys.stderr, flush=True)


def _hand_on_to_submitit(signum: int) -> None:
    """Under submitit, USR2 means "time limit or preemption": its own handler (restored by
    now) calls TrainJob.checkpoint and requeues the job, then exits the process."""
    handler = signal.getsignal(signum)
    if signum == signal.SIGUSR2 and callable(handler) and "submitit" in getattr(handler, "__module__", ""):
        handler(signum, None)


def slurm_job_id() -> str | None:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


class _RunLogHandler(logging.FileHandler):
    """log.txt; a write that fails (a full disk) is reported once on stderr, not as a
    logging traceback per line."""

    _warned = False

    def handleError(self, record):
        if not self._warned:
            self._warned = True
            err = sys.exc_info()[1]
            print(f"hpcdiff: cannot write {self.baseFilename}: {err}; log lines go to stderr only",
                  file=sys.stderr, flush=True)
        print(self.format(record), file=sys.stderr, flush=True)


def _attach_log(rd: RunDir) -> logging.Handler:
    handler = _RunLogHandler(rd.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("hpcdiff")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def make_accelerator(spec: RunSpec):
    from accelerate import Accelerator

    use_cpu = spec.train.device == "cpu" or not torch.cuda.is_available()
    precision = spec.train.mixed_precision
    if precision == "auto":
        precision = "no" if use_cpu else "bf16"
    from accelerate.utils import InitProcessGroupKwargs

    # The other processes wait in the next collective while the main one computes metrics,
    # writes the archive and checkpoints; t-SNE or Inception features on a big sample set can
    # outlast NCCL's default 10-minute watchdog.
    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=PROCESS_GROUP_TIMEOUT_S))
    # Gradient accumulation is done in the training loop, not by Accelerate: its windows
    # would run across epoch ends, and a checkpoint written there would lose the gradients.
    return Accelerator(cpu=use_cpu, mixed_precision=precision, kwargs_handlers=[timeout])


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        # This process's device only: a resume may see a different number of GPUs.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@contextmanager
def _stop_on_signals(monitor: TrainingMonitor):
    def handler(signum, frame):
        monitor.request_stop(signum)

    previous = {}
    for sig in STOP_SIGNALS:
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. the debug executor in a thread)
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _train_locked(rd: RunDir, spec: RunSpec, show_progress: bool) -> str:
    t = spec.train
    accelerator = make_accelerator(spec)
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process

    from accelerate.utils import set_seed

    # Same initial weights on every rank (DDP also broadcasts rank 0's), then a different
    # noise stream per rank: otherwise every rank draws the same t and eps for its images.
    set_seed(t.seed)
    splits = load_splits(spec.data)
    image_shape = splits.train.image_shape
    train_images = splits.train.images.to(device)
    val_images = splits.val.images.to(device)
    # Held-out images that cold-diffusion sampling starts from (degraded to level T).
    start_images = to_model_range(splits.test.images[:2048], device)

    # Built before training so that a missing classifier fails now, not after the last epoch.
    # Every process draws a share of the evaluation samples; the main one computes metrics.
    evaluator = Evaluator(spec, splits.test, device, main=main, rank=rank, world=world)

    model = build_model(spec.model, image_shape)
    diffusion = build_diffusion(spec, model).to(device)
    if rank:
        set_seed(t.seed + 7919 * rank)
    ema = EMA(diffusion.gt, t.ema_decay) if t.ema_decay else None
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[t.optimizer]
    optimizer = opt_cls(diffusion.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=t.lr_plateau_factor,
                                                          patience=t.lr_plateau_patience)
               if t.lr_plateau_patience else None)

    start_epoch, start_batch, step, elapsed = 1, 0, 0, 0.0
    partial_loss = 0.0
    stopper = {"best": math.inf, "best_epoch": 0, "bad_epochs": 0}
    resumed = checkpoint.load_latest(rd.checkpoints)
    if resumed is not None:
        epoch_done, state = resumed
        diffusion.gt.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if plateau is not None and state.get("plateau"):
            plateau.load_state_dict(state["plateau"])
        stopper = dict(state["stopper"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        step, elapsed = state["step"], float(state.get("elapsed", 0.0))
        start_epoch = epoch_done + 1
        if state.get("partial"):
            # Stopped mid-epoch by a signal: continue that epoch at the next batch.
            start_batch = int(state["partial"]["batch"])
            partial_loss = float(state["partial"]["loss_sum"])
        _set_rng_state(state["rng"])
        if rank:  # the checkpoint holds the main process's streams
            set_seed(t.seed + 7919 * rank + step)
        log.info("resuming run %s from the checkpoint of epoch %d%s", rd.run_id, epoch_done,
                 f" (+{start_batch} batches of epoch {start_epoch})" if start_batch else "")
    else:
        log.info("starting run %s (%d epochs, %d training images)", rd.run_id, t.epochs, len(splits.train))
    diffusion, optimizer = accelerator.prepare(diffusion, optimizer)
    core = accelerator.unwrap_model(diffusion)

    def save_checkpoint(epoch_done: int, partial: dict | None = None) -> None:
        checkpoint.save({
            "format": 1, "hpcdiff_version": __version__, "epoch": epoch_done, "step": step,
            "elapsed": elapsed, "partial": partial,
            "model": core.gt.state_dict(), "optimizer": optimizer.state_dict(),
            "plateau": plateau.state_dict() if plateau is not None else None,
            "stopper": stopper, "rng": _rng_state(), "config": spec.to_dict(),
            "ema": ema.state_dict() if ema is not None else None, "world_size": world,
        }, rd.checkpoints, epoch_done, keep=t.keep_checkpoints)

    if main:
        archive.create(rd.archive, {
            "config": tomlio.dumps(spec.to_dict()), "run_id": rd.run_id,
            "hpcdiff_version": __version__, "torch_version": str(torch.__version__),
            "created": time.time(), "image_shape": list(image_shape),
        })
        # Rows after the checkpoint came from epochs whose checkpoint was never written.
        archive.truncate_after(rd.archive, start_epoch - 1)
        archive.set_attrs(rd.archive, {"world_size": world})
        rd.write_status(state="running", epoch=start_epoch - 1, epochs=t.epochs, host=socket.gethostname(),
                        error=None, traceback=None, restarts=rd.read_status().get("restarts", -1) + 1,
                        job_id=slurm_job_id(),
                        requeues=int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0), world_size=world)

    n_train = len(train_images)
    global_batch = t.batch_size
    local_batch = max(1, global_batch // world)
    steps_per_epoch = max(1, n_train // global_batch) if n_train >= global_batch else 1

    progress = _Progress(show_progress and main, total_epochs=t.epochs, steps=steps_per_epoch, run_id=rd.run_id)
    monitor = TrainingMonitor(accelerator)

    def weights():
        return [*core.gt.parameters(), *(ema.shadow.values() if ema is not None else ())]

    def diverged(epoch: int, verdict) -> Diverged:
        what = ("the training loss is not finite" if not verdict.loss_finite
                else "the weights are not finite")
        epochs = checkpoint.list_epochs(rd.checkpoints)
        return Diverged(epoch=epoch, step=step, what=what, hints=divergence_hints(t, str(accelerator.mixed_precision)),
                        last_good=epochs[-1] if epochs else 0)

    final_state = "done"
    with _stop_on_signals(monitor), progress:
        for epoch in range(start_epoch, t.epochs + 1):
            diffusion.train()
            tic = time.perf_counter()
            # The permutation depends on (seed, epoch) only: a resumed run sees the same order.
            g = torch.Generator().manual_seed(t.seed * 100_003 + epoch)
            perm = torch.randperm(n_train, generator=g).to(device)
            first = start_batch if epoch == start_epoch else 0
            loss_sum = torch.full((), partial_loss if first else 0.0, device=device)
            progress.start_epoch(epoch, first)
            for i in range(first, steps_per_epoch):
                idx = perm[i * global_batch: (i + 1) * global_batch]
                idx = idx[rank * local_batch: (rank + 1) * local_batch]
                x = to_model_range(train_images[idx])
                # Windows of grad_accumulation batches that start at every epoch's first batch
                # (the last one may be shorter): an epoch end is always an optimiser step.
                window_start = i - i % t.grad_accumulation
                window = min(t.grad_accumulation, steps_per_epoch - window_start)
                sync = i + 1 == window_start + window
                with nullcontext() if sync else accelerator.no_sync(diffusion):
                    loss = diffusion(x)
                    accelerator.backward(loss / window if window > 1 else loss)
                if sync:
                    if t.grad_clip:
                        accelerator.clip_grad_norm_(diffusion.parameters(), t.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update(core.gt)
                loss_sum += loss.detach()
                step += 1
                progress.advance()
                # Checks only after an optimiser step (gradients accumulated in between are not
                # checkpointed), every few steps and at the epoch's end: each one waits for
                # the device, so never on every step.
                if sync and monitor.optimizer_step_taken(epoch_end=i + 1 == steps_per_epoch):
                    verdict = monitor.check(loss_sum, weights())
                    progress.show_loss(verdict.loss_sum / (i + 1))  # the epoch's mean so far
                    if not verdict.finite:
                        raise diverged(epoch, verdict)
                    if verdict.stop_signal:
                        elapsed += time.perf_counter() - tic
                        if main:
                            save_checkpoint(epoch - 1, partial={"epoch": epoch, "batch": i + 1,
                                                                "loss_sum": float(loss_sum)})
                        accelerator.wait_for_everyone()
                        raise StopRequested(verdict.stop_signal)
            train_loss = accelerator.reduce(loss_sum, reduction="mean").item() / steps_per_epoch
            seconds = time.perf_counter() - tic
            elapsed += seconds
            val_loss = _validation_loss(core, val_images, t.seed, global_batch, device, accelerator)
            if plateau is not None:
                plateau.step(val_loss if not math.isnan(val_loss) else train_loss)
            watched = val_loss if not math.isnan(val_loss) else train_loss
            if watched < stopper["best"] - t.early_stopping_min_delta:
                stopper.update(best=watched, best_epoch=epoch, bad_epochs=0)
            else:
                stopper["bad_epochs"] += 1
            early_stop = bool(t.early_stopping_patience) and stopper["bad_epochs"] >= t.early_stopping_patience
            last = epoch == t.epochs or early_stop

            metrics = {
                "train_loss": train_loss, "val_loss": val_loss,
                "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": seconds,
                "elapsed_seconds": elapsed,
                "images_per_second": (steps_per_epoch - first) * global_batch / seconds,
            }
            if evaluator.enabled and (last or (spec.eval.every and epoch % spec.eval.every == 0)):
                with _ema_weights(core, ema):
                    metrics.update(evaluator(core, t.seed))
            if main and "eval_seconds" in metrics:
                log.info("epoch %d metrics: %s", epoch, ", ".join(
                    f"{k} {v:.4g}" for k, v in metrics.items() if not k.startswith(("class_", "recon_"))
                    and k not in ("lr", "epoch_seconds", "elapsed_seconds")))
            samples = None
            if main and (epoch % t.sample_every == 0 or last):
                with _ema_weights(core, ema):
                    samples = _draw_samples(core, t, image_shape, device, start_images)
            if main:
                archive.append_epoch(rd.archive, epoch, metrics, samples,
                                     attrs={"best_epoch": stopper["best_epoch"], "best_loss": stopper["best"]})
            if main and (epoch % t.checkpoint_every == 0 or last):
                save_checkpoint(epoch)
            if main:
                rd.write_status(state="running", epoch=epoch, last_loss=train_loss, val_loss=val_loss,
                                elapsed=elapsed, best_epoch=stopper["best_epoch"])
            log.info("epoch %d/%d train_loss %.5f val_loss %.5f %.0f img/s", epoch, t.epochs,
                     train_loss, val_loss, metrics["images_per_second"])
            progress.end_epoch(epoch, train_loss, val_loss)
            if early_stop:
                log.info("early stopping at epoch %d (best epoch %d)", epoch, stopper["best_epoch"])
                if main:
                    rd.write_status(early_stopped=True)
                break
    accelerator.wait_for_everyone()
    if main:
        rd.write_status(state=final_state)
        archive.set_attrs(rd.archive, {"finished": True})
    return final_state


@torch.no_grad()
def _validation_loss(core, val_images, seed, batch, device, accelerator) -> float:
    """Mean loss over the validation images, each rank taking its share."""
    if len(val_images) == 0:
        return float("nan")
    core.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    # Same noise every epoch (so the curve measures the model, not the draw) without
    # disturbing the training RNG stream.
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + 1_000_003 + rank)
        for i in range(rank * batch, len(val_images), batch * world):
            x = to_model_range(val_images[i: i + batch])
            totals[0] += core(x).double() * len(x)
            totals[1] += len(x)
    if world > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    core.train()
    return float(totals[0] / totals[1])


class EMA:
    """Exponential moving average of a model's weights, kept in fp32 on its device."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.float(), 1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {k: v.cpu() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)


@contextmanager
def _ema_weights(core, ema: EMA | None):
    """Samples and metrics come from the EMA weights when EMA is on."""
    if ema is None:
        yield
        return
    saved = {k: v.detach().clone() for k, v in core.gt.state_dict().items()}
    core.gt.load_state_dict({k: v.to(saved[k].dtype) for k, v in ema.shadow.items()})
    try:
        yield
    finally:
        core.gt.load_state_dict(saved)


@torch.no_grad()
def _draw_samples(core, t, image_shape, device, start_images) -> dict:
    # The same starts every epoch, so grids show the model changing, not the draw.
    g = torch.Generator().manual_seed(t.seed + 2_000_003)
    with eval_mode(core):
        x_T, start = core.start(t.n_samples, image_shape, generator=g, device=device, test_images=start_images)
        x = core.sample(x_T, generator=g)
    images = to_uint8(x).cpu().numpy()[:, 0]
    return {"images": images, "attrs": {"start": start}, "starts": to_uint8(x_T).cpu().numpy()[:, 0]}


class _Progress:
    """A rich progress bar per epoch (loss, img/s, ETA) when asked for; silent otherwise."""

    def __init__(self, enabled: bool, *, total_epochs: int, steps: int, run_id: str):
        self.enabled = enabled
        self.total_epochs, self.steps, self.run_id = total_epochs, steps, run_id
        self._progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                TimeRemainingColumn(),
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_epoch(self, epoch, first_batch=0):
        if self._progress is not None:
            self._task = self._progress.add_task(f"{self.run_id} epoch {epoch}/{self.total_epochs}",
                                                 total=self.steps, loss="-", speed="", completed=first_batch)
            self._tic = time.perf_counter()
            self._n, self._done = first_batch, 0

    def advance(self):
        if self._progress is not None:
            self._n += 1
            self._done += 1

    def show_loss(self, loss: float):
        """At the training loop's checks, which have the loss on the host already."""
        if self._progress is not None:
            rate = self._done / max(time.perf_counter() - self._tic, 1e-9)
            self._progress.update(self._task, completed=self._n, loss=f"{loss:.4f}", speed=f"{rate:.1f} it/s")

    def end_epoch(self, epoch, train_loss, val_loss):
        if self._progress is not None:
            self._progress.update(self._task, completed=self.steps,
                                  loss=f"{train_loss:.4f} (val {val_loss:.4f})")
