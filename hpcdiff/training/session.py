"""A run's training session: everything one process sets up before its first step (data on
the device, the evaluator, the TrainState resumed from the latest checkpoint, the archive and
status.json), held in one :class:`Session` that the loop (training/loop.py) steps through.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

import torch

from hpcdiff import __version__
from hpcdiff.config import tomlio
from hpcdiff.config.spec import RunSpec, start_measures
from hpcdiff.data import Splits, load_splits, to_model_range
from hpcdiff.evaluation.evaluate import Evaluator
from hpcdiff.science.diffusion import build_diffusion
from hpcdiff.science.models import build_model, check_image_shape
from hpcdiff.science.streams import stream_seed
from hpcdiff.storage import archive, checkpoint
from hpcdiff.storage.rundir import RunDir
from hpcdiff.storage.runstate import RunState
from hpcdiff.training.budget import Budget
from hpcdiff.training.environment import make_accelerator, slurm_job_id
from hpcdiff.training.level_prior import load_or_fit_prior
from hpcdiff.training.monitor import TrainingMonitor
from hpcdiff.training.progress import Progress
from hpcdiff.training.state import TrainState
from hpcdiff.training.step import TrainStep, resolve_mode
from hpcdiff.training.trackers import RunTrackers, build_trackers

log = logging.getLogger(__name__)


@dataclass
class Session:
    """One process's view of a run while it trains."""

    rd: RunDir
    spec: RunSpec
    accelerator: object
    state: TrainState
    train_images: torch.Tensor
    val_images: torch.Tensor
    start_images: torch.Tensor  # held-out images cold-diffusion sampling starts from
    splits: Splits  # the data as read (on the host)
    image_shape: tuple
    evaluator: Evaluator
    monitor: TrainingMonitor
    progress: Progress
    steps_per_epoch: int
    step: TrainStep  # forward, backward and optimiser step (eager or CUDA graph)
    budget: Budget  # train.max_steps / max_minutes
    trackers: RunTrackers | None = None  # [log] trackers: TensorBoard / W&B (rank 0)
    stopped_by: str | None = None  # the budget that ended the run ("max_steps" | "max_minutes")
    batches_done: int = 0  # batches of the running epoch when it closed
    # The generator the training draws come from (t, noise, degradations): None = the
    # default one of the device (a run alone); a fused member's own stream otherwise.
    noise: torch.Generator | None = None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def save(self, epoch_done: int, partial: dict | None = None) -> None:
        state = self.state.state_dict(
            epoch_done=epoch_done,
            partial=partial,
            config=self.spec.to_dict(),
            world=self.accelerator.num_processes,
            noise=self.noise,
        )
        checkpoint.save(state, self.rd.checkpoints, epoch_done, keep=self.spec.train.keep_checkpoints)


def start_session(rd: RunDir, spec: RunSpec, show_progress: bool = False, splits: Splits | None = None) -> Session:
    """Data on the device, the evaluator, the TrainState (resumed when a checkpoint exists),
    the archive and status.json: everything before the first step. ``splits``: the data,
    when another run of the process has read it already (a fused group's members)."""
    from accelerate.utils import set_seed

    t = spec.train
    accelerator = make_accelerator(spec, build_trackers(rd, spec))
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    # Same initial weights on every rank (DDP also broadcasts rank 0's), then a different
    # noise stream per rank: otherwise every rank draws the same t and eps for its images.
    set_seed(t.seed)
    splits = splits if splits is not None else load_splits(spec.data)
    # idx files can hold any image size: the model's fit is known only now (before the
    # evaluator, which may train a classifier first).
    check_image_shape(spec.model, splits.train.image_shape)
    # Built before training so that a missing classifier fails now, not after the last epoch.
    evaluator = Evaluator(spec, splits.test, device, main=accelerator.is_main_process, rank=rank, world=world)
    diffusion = build_diffusion(spec, build_model(spec.model, splits.train.image_shape)).to(device)
    if spec.diffusion.sample_start == "prior":
        diffusion.prior = load_or_fit_prior(rd, diffusion, splits.train.images, t.seed, accelerator)
    if rank:
        set_seed(stream_seed(t.seed, "rank_noise", rank))
    resumed = checkpoint.load_latest(rd.checkpoints)
    mode = resolve_mode(
        t.compile,
        device=device,
        world=world,
        precision=str(accelerator.mixed_precision),
        recorded=resumed[1].get("compile") if resumed is not None else None,
    )
    state = TrainState.build(spec, diffusion, device=device, mode=mode)
    if resumed is not None:
        state.load_state_dict(*resumed, seed=t.seed, rank=rank)
        log.info(
            "resuming run %s from the checkpoint of epoch %d%s",
            rd.run_id,
            state.epoch_done,
            f" (+{state.start_batch} batches of epoch {state.epoch_done + 1})" if state.start_batch else "",
        )
    else:
        log.info("starting run %s (%d epochs, %d training images)", rd.run_id, t.epochs, len(splits.train))
    log.info("training step: %s (%s)", "CUDA graph" if mode.graph else "eager", mode.reason)
    state.diffusion, state.optimizer = accelerator.prepare(state.diffusion, state.optimizer)
    state.core = accelerator.unwrap_model(state.diffusion)
    # fp16's loss scale is state too: without it a resume starts again from 2**16 and skips steps.
    state.scaler = accelerator.scaler
    if resumed is not None and state.scaler is not None and resumed[1].get("scaler"):
        state.scaler.load_state_dict(resumed[1]["scaler"])
    n_train = len(splits.train)
    steps = max(1, n_train // t.batch_size) if n_train >= t.batch_size else 1
    train_images = splits.train.images.to(device)
    session = Session(
        rd=rd,
        spec=spec,
        accelerator=accelerator,
        state=state,
        train_images=train_images,
        val_images=splits.val.images.to(device),
        start_images=to_model_range(splits.test.images[:2048], device),
        splits=splits,
        image_shape=splits.train.image_shape,
        evaluator=evaluator,
        monitor=TrainingMonitor(accelerator),
        progress=Progress(
            show_progress and accelerator.is_main_process, total_epochs=t.epochs, steps=steps, run_id=rd.run_id
        ),
        steps_per_epoch=steps,
        step=TrainStep(state, accelerator, train_images, grad_clip=t.grad_clip, mode=mode),
        budget=Budget.of(t, steps),
    )
    if session.main:
        _open_run_files(session)
    session.trackers = RunTrackers.start(accelerator, rd, spec, first_epoch=state.epoch_done + 1)
    return session


def _open_run_files(session: Session) -> None:
    rd, spec, world = session.rd, session.spec, session.accelerator.num_processes
    archive.create(
        rd.archive,
        {
            "config": tomlio.dumps(spec.to_dict()),
            "run_id": rd.run_id,
            "hpcdiff_version": __version__,
            "torch_version": str(torch.__version__),
            "created": time.time(),
            "image_shape": list(session.image_shape),
        },
    )
    # Rows after the checkpoint came from epochs whose checkpoint was never written.
    archive.truncate_after(rd.archive, session.state.epoch_done)
    mode = session.state.mode
    prior = getattr(session.state.core, "prior", None)
    # SSIM became Wang et al.'s (valid windows) at some hpcdiff version: a run resumed across
    # that change says from which epoch its SSIM values are the standard ones.
    recorded = archive.read_attrs(rd.archive)
    if "ssim_standard_from_epoch" not in recorded:
        archive.set_attrs(rd.archive, {"ssim_standard_from_epoch": session.state.epoch_done + 1})
    # Which classifier scores IS/FID/KID/histograms from which epoch (a run resumed across
    # the shipped references changes classifier there).
    scorer = getattr(session.evaluator.classifier, "cache_key", None)
    if scorer and recorded.get("classifier") != scorer:
        archive.set_attrs(rd.archive, {"classifier": scorer, "classifier_from_epoch": session.state.epoch_done + 1})
    archive.set_attrs(
        rd.archive,
        {
            "world_size": world,
            "step_mode": mode.mode.value,
            "step_mode_reason": mode.reason,
            "sample_start": spec.diffusion.sample_start,
            "samples_measure": start_measures(spec.diffusion.sample_start),
            "prior": prior.describe() if prior is not None else "",
        },
    )
    rd.write_status(
        state=RunState.RUNNING,
        epoch=session.state.epoch_done,
        epochs=spec.train.epochs,
        host=socket.gethostname(),
        error=None,
        traceback=None,
        restarts=rd.read_status().get("restarts", -1) + 1,
        job_id=slurm_job_id(),
        requeues=int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0),
        world_size=world,
    )
