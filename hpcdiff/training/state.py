"""Everything a checkpoint holds, in one object: ``TrainState``.

Weights, optimiser, plateau scheduler, EMA, early-stopping counters, the step and training
time so far, where a mid-epoch stop left off, and every RNG state. ``state_dict`` writes the
checkpoint format (format 1, unchanged since the first release) and ``load_state_dict``
restores all of it, so a restarted process continues exactly where the checkpoint was taken.
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from hpcdiff import __version__
from hpcdiff.science.streams import stream_seed
from hpcdiff.training.step import EAGER, StepMode, load_optimizer_state, make_optimizer, portable_optimizer_state

CHECKPOINT_FORMAT = 1


class EMA:
    """Exponential moving average of a model's weights, kept in fp32 on its device."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        floats, targets = [], []
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                floats.append(self.shadow[k])
                targets.append(v.float())
            else:
                self.shadow[k].copy_(v)
        # One multi-tensor kernel on a GPU (the per-tensor lerp on the CPU, as before).
        if floats:
            torch._foreach_lerp_(floats, targets, 1 - self.decay)

    def state_dict(self) -> dict:
        return {k: v.cpu() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)


@contextmanager
def ema_weights(core, ema: EMA | None):
    """Samples and metrics come from the EMA weights when EMA is on."""
    if ema is None:
        yield
        return
    saved = {k: v.detach().clone() for k, v in core.denoiser.state_dict().items()}
    core.denoiser.load_state_dict({k: v.to(saved[k].dtype) for k, v in ema.shadow.items()})
    try:
        yield
    finally:
        core.denoiser.load_state_dict(saved)


def rng_state(noise: torch.Generator | None = None) -> dict:
    """Every RNG state of this process; ``noise`` (a fused member's own training stream) in
    the place of the default generator of its device, the stream a run alone draws from."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        # This process's device only: a resume may see a different number of GPUs.
        state["cuda"] = torch.cuda.get_rng_state()
    if noise is not None:
        state["cuda" if noise.device.type == "cuda" else "torch"] = noise.get_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class EarlyStopping:
    """Counters of early stopping on the watched loss (validation, else training)."""

    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, watched: float, epoch: int, *, min_delta: float, patience: int) -> bool:
        """Record an epoch's loss; True when training should stop."""
        if watched < self.best - min_delta:
            self.best, self.best_epoch, self.bad_epochs = watched, epoch, 0
        else:
            self.bad_epochs += 1
        return bool(patience) and self.bad_epochs >= patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}


def _portable(state: dict) -> dict:
    """A scheduler's state with float learning rates (tensors when the optimiser's lr is one)."""
    return {k: [float(x) for x in v] if k == "_last_lr" else v for k, v in state.items()}


def checkpoint_dict(
    *, epoch_done, step, elapsed, partial, model, optimizer, plateau, stopper, rng, config, ema, world, mode, scaler
) -> dict:
    """The checkpoint format (CHECKPOINT_FORMAT): what a run alone and a fused group's member
    (training/fused.py) both write, so either resumes the other's."""
    return {
        "format": CHECKPOINT_FORMAT,
        "hpcdiff_version": __version__,
        "epoch": epoch_done,
        "step": step,
        "elapsed": elapsed,
        "partial": partial,
        "model": model,
        "optimizer": optimizer,
        "plateau": plateau,
        "stopper": stopper,
        "rng": rng,
        "config": config,
        "ema": ema,
        "world_size": world,
        "compile": mode.mode.value,
        "scaler": scaler,
    }


@dataclass
class TrainState:
    diffusion: torch.nn.Module  # the diffusion process (wrapped by Accelerate once prepared)
    optimizer: torch.optim.Optimizer
    plateau: object | None  # ReduceLROnPlateau
    ema: EMA | None
    stopper: EarlyStopping = field(default_factory=EarlyStopping)
    step: int = 0  # training batches so far
    elapsed: float = 0.0  # training seconds so far, across restarts
    epoch_done: int = 0  # last epoch completed (the resume point)
    start_batch: int = 0  # a mid-epoch stop: the next batch of epoch epoch_done + 1
    partial_loss: float = 0.0  # ... and the loss summed over that epoch's batches before it
    core: torch.nn.Module | None = None  # the unwrapped process (set once prepared)
    mode: StepMode = StepMode(EAGER, "")  # how the step runs (training/step.py), recorded in checkpoints
    scaler: object | None = None  # Accelerate's GradScaler under fp16 (set once prepared)

    @classmethod
    def build(
        cls,
        spec,
        diffusion: torch.nn.Module,
        *,
        device: torch.device | None = None,
        mode: StepMode = StepMode(EAGER, ""),
    ) -> TrainState:
        t = spec.train
        ema = EMA(diffusion.denoiser, t.ema_decay) if t.ema_decay else None
        optimizer = make_optimizer(t, diffusion.parameters(), device=device or torch.device("cpu"), mode=mode)
        plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=t.lr_plateau_factor, patience=t.lr_plateau_patience
            )
            if t.lr_plateau_patience
            else None
        )
        return cls(diffusion=diffusion, optimizer=optimizer, plateau=plateau, ema=ema, mode=mode)

    def weights(self) -> list[torch.Tensor]:
        """What must be finite before a checkpoint: the weights and their average."""
        return [*self.core.denoiser.parameters(), *(self.ema.shadow.values() if self.ema is not None else ())]

    def state_dict(
        self, *, epoch_done: int, partial: dict | None, config: dict, world: int, noise: torch.Generator | None = None
    ) -> dict:
        """``noise``: the generator the run's training draws come from when it is not the
        default one (a fused group's member): saved where a run alone keeps its stream."""
        return checkpoint_dict(
            epoch_done=epoch_done,
            step=self.step,
            elapsed=self.elapsed,
            partial=partial,
            model=self.core.denoiser.state_dict(),
            optimizer=portable_optimizer_state(self.optimizer),
            plateau=_portable(self.plateau.state_dict()) if self.plateau is not None else None,
            stopper=self.stopper.state_dict(),
            rng=rng_state(noise),
            config=config,
            ema=self.ema.state_dict() if self.ema is not None else None,
            world=world,
            mode=self.mode,
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
        )

    def load_state_dict(self, epoch_done: int, state: dict, *, seed: int, rank: int) -> None:
        """Restore a checkpoint (before Accelerate wraps the model)."""
        self.diffusion.denoiser.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
        self.stopper = EarlyStopping(**state["stopper"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.step, self.elapsed = state["step"], float(state.get("elapsed", 0.0))
        self.epoch_done = epoch_done
        if state.get("partial"):
            # Stopped mid-epoch by a signal: continue that epoch at the next batch.
            self.start_batch = int(state["partial"]["batch"])
            self.partial_loss = float(state["partial"]["loss_sum"])
        set_rng_state(state["rng"])
        if "cuda" not in state["rng"] and torch.cuda.is_available():
            # Written on a machine without a GPU: give this GPU's stream a place of its own
            # instead of the one set_seed left (which would replay epoch 1's draws).
            torch.cuda.manual_seed(stream_seed(seed, "rank_noise", rank, self.step))
        if rank:  # the checkpoint holds the main process's streams
            from accelerate.utils import set_seed

            set_seed(stream_seed(seed, "rank_noise", rank, self.step))
