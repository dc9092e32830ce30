"""The runs one training process trains: a run alone, or the K members of a fused group, each
with its cursor (which epoch and batch it is at) and the step that moves them all one batch.

``Member`` is one run's Session plus its cursor. The loop (training/loop.py) is the same for
both; what differs is the step:

- ``SoloStep``: one run (possibly data-parallel over several processes, possibly replayed
  from a CUDA graph): training/step.py's TrainStep.
- ``GroupStep``: K runs in one process, one batch each, as one FusedGroup (training/fused.py).
  The group's stacked tensors are the truth while it trains; ``sync_out(m)`` copies member
  m's weights, optimiser state and EMA into its own TrainState before anything reads them
  there (validation, metrics, samples, checkpoints), and ``sync_in(m)`` takes back what the
  epoch's end changed (the plateau scheduler's learning rate).
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from hpcdiff.data import to_model_range
from hpcdiff.science.streams import generator
from hpcdiff.training.session import Session
from hpcdiff.training.step import EAGER, StepMode, current_lr, load_optimizer_state, raw_optimizer

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One run of the process, and where it is: the running epoch, the batch it started
    from (a resumed mid-epoch stop), the next batch, and the batch it ends at (the epoch's
    last, or earlier when a budget is spent)."""

    session: Session
    slot: int  # its place in the group (0 for a run alone)
    epoch: int = 0  # the running epoch; 0 while none is open
    first: int = 0
    batch: int = 0
    last: int = 0
    perm: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    tic: float = 0.0
    ended: bool = False
    status_written: float = float("-inf")  # when the live progress last went to status.json

    @property
    def open(self) -> bool:
        return self.perm is not None

    def open_epoch(self, epoch: int, first: int) -> None:
        session = self.session
        s, t, device = session.state, session.spec.train, session.accelerator.device
        s.diffusion.train()
        self.epoch, self.first, self.batch = epoch, first, first
        self.last = first if session.stopped_by else session.steps_per_epoch
        order = generator(t.seed, "epoch_order", epoch)
        self.perm = torch.randperm(len(session.train_images), generator=order).to(device)
        self.loss_sum = torch.full((), s.partial_loss if first else 0.0, device=device)
        self.tic = time.perf_counter()
        session.progress.start_epoch(epoch, first)

    def indices(self) -> torch.Tensor:
        """This process's share of the next batch."""
        session = self.session
        acc, t = session.accelerator, session.spec.train
        rank, world = acc.process_index, acc.num_processes
        local = max(1, t.batch_size // world)
        i = self.batch
        return self.perm[i * t.batch_size : (i + 1) * t.batch_size][rank * local : (rank + 1) * local]

    def window(self) -> tuple[int, bool]:
        """(length of the accumulation window the next batch is in, whether it ends it).
        Windows of grad_accumulation batches start at every epoch's first batch (the last
        may be shorter), so an epoch end is always an optimiser step."""
        g, steps, i = self.session.spec.train.grad_accumulation, self.session.steps_per_epoch, self.batch
        start = i - i % g
        length = min(g, steps - start)
        return length, i + 1 == start + length

    def optimizer_steps(self) -> int:
        return self.session.budget.optimizer_steps(self.epoch, self.batch)

    def seconds(self) -> float:
        """Training seconds so far, the open epoch's included."""
        return self.session.state.elapsed + (time.perf_counter() - self.tic if self.open else 0.0)


class SoloStep:
    """A run alone: its TrainStep, with the interface of GroupStep."""

    mode = None  # no stacked networks

    def __init__(self, member: Member):
        self.member = member

    def __call__(self, members: list[Member]) -> list[torch.Tensor]:
        (m,) = members
        window, sync = m.window()
        return [m.session.step(m.indices(), window, sync)]

    def synced(self, members: list[Member]) -> bool:
        return members[0].window()[1]

    def weights(self, m: Member) -> list[torch.Tensor]:
        return m.session.state.weights()

    def sync_out(self, m: Member) -> None:
        pass

    def sync_in(self, m: Member) -> None:
        pass

    def end(self, m: Member) -> None:
        pass


class FusionError(ValueError):
    """These runs cannot train as one group (the reason names the setting)."""


def spec_blocker(specs: list, run_ids: list[str]) -> str | None:
    """Why these runs cannot train as one group in one process, from their configs and the
    process's environment (before anything is started), or None."""
    import os

    from hpcdiff.config.fusion import differing_keys, shared_settings

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        return (
            f"a fused group trains in one process ({world} were started): start "
            "`hpcdiff train RUN_DIR...` without torchrun, or train the runs apart"
        )
    first = specs[0]
    if first.train.mixed_precision == "fp16":
        return 'fp16 needs a loss scaler per member, which a fused group does not keep (use "bf16" or "no")'
    if first.train.grad_accumulation > 1:
        return "a fused group takes an optimiser step every batch (train.grad_accumulation must be 1)"
    mine = shared_settings(first.to_dict())
    for rid, other in zip(run_ids[1:], specs[1:]):
        keys = differing_keys(mine, shared_settings(other.to_dict()))
        if keys:
            return f"{rid} differs from {run_ids[0]} in what members share ({', '.join(keys[:4])})"
    return None


def session_blocker(sessions: list[Session]) -> str | None:
    """What only the started sessions tell: the processes and the precision in use."""
    acc = sessions[0].accelerator
    if acc.num_processes > 1:
        return f"a fused group trains in one process ({acc.num_processes} were started)"
    if str(acc.mixed_precision) == "fp16":
        return 'fp16 needs a loss scaler per member, which a fused group does not keep (use "bf16" or "no")'
    return spec_blocker([s.spec for s in sessions], [s.rd.run_id for s in sessions])


def member_noise(device: torch.device) -> torch.Generator:
    """The stream a run alone would draw its training t and noise from, taken now (right
    after its session started: initial weights drawn, checkpoint's RNG restored) into a
    generator of its own."""
    noise = torch.Generator(device=device)
    noise.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
    return noise


class GroupStep:
    """K members in one process: one FusedGroup step per round, every member one batch."""

    def __init__(self, members: list[Member], mode: str | None = None):
        sessions = [m.session for m in members]
        problem = session_blocker(sessions)
        if problem:
            raise FusionError(f"these runs cannot train as one fused group: {problem}")
        self.mode = mode
        self._build(members)
        reason = f"a member of a fused group of {len(members)} ({self.group.net.mode} mode)"
        for session in sessions:
            session.state.mode = StepMode(EAGER, reason)
        if any(s.spec.train.compile == "graph" for s in sessions):
            # The rule of train.compile: a step that cannot be graphed says why and runs eagerly.
            log.warning(
                'train.compile = "graph" does not apply here: a fused group\'s step is not captured in a CUDA graph; '
                "training eagerly"
            )
        precision = str(sessions[0].accelerator.mixed_precision)
        device = sessions[0].accelerator.device
        self._autocast = (
            (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
        )

    def _build(self, members: list[Member]) -> None:
        """The FusedGroup of ``members`` (slots in this order), each loaded from its TrainState."""
        from hpcdiff.training.fused import FusedGroup, MemberSettings

        self.members = list(members)
        settings = []
        for slot, m in enumerate(members):
            m.slot = slot
            # A resumed member's plateau scheduler may have lowered its learning rate.
            base = MemberSettings.of(m.session.spec.train)
            settings.append(MemberSettings(**{**base.__dict__, "lr": current_lr(m.session.state.optimizer)}))
        self.group = FusedGroup([m.session.state.core for m in members], settings, mode=self.mode)
        for m in members:
            s = m.session.state
            ema = s.ema.state_dict() if s.ema is not None else None
            self.group.load_member(m.slot, s.core.denoiser.state_dict(), raw_optimizer(s.optimizer).state_dict(), ema)

    def __call__(self, members: list[Member]) -> list[torch.Tensor]:
        """One batch of each of ``members`` (the group's live members): their losses."""
        stepping = {m.slot for m in members}
        fill = to_model_range(members[0].session.train_images[members[0].indices()])
        batches, noise = [], []
        for m in self.members:
            batches.append(to_model_range(m.session.train_images[m.indices()]) if m.slot in stepping else fill)
            noise.append(m.session.noise)
        with self._autocast():
            losses = self.group.step(batches, noise)
        return [losses[m.slot] for m in members]

    def synced(self, members: list[Member]) -> bool:
        return True  # grad_accumulation is 1 (spec_blocker)

    def weights(self, m: Member) -> list[torch.Tensor]:
        k, group = m.slot, self.group
        ema = [e[k] for e in group.ema.values()] if group.ema is not None and group.settings[k].ema_decay else []
        return [p[k] for p in group.net.parameters()] + ema

    def sync_out(self, m: Member) -> None:
        s = m.session.state
        saved = self.group.member_checkpoint(m.slot)
        s.core.denoiser.load_state_dict(saved["model"])
        load_optimizer_state(raw_optimizer(s.optimizer), saved["optimizer"])
        if s.ema is not None:
            s.ema.load_state_dict(saved["ema"])

    def sync_in(self, m: Member) -> None:
        lr = current_lr(m.session.state.optimizer)
        if lr != self.group.settings[m.slot].lr:
            self.group.set_lr(m.slot, lr)

    def end(self, m: Member) -> None:
        """Member m has ended (done, early-stopped, out of budget, diverged): the group is
        rebuilt from the members left, in new slots, so that it costs nothing any more (vmap
        computes every slot). Their state passes through their own TrainStates, a round trip
        that changes no number (tests/test_fused.py)."""
        self.group.deactivate(m.slot)
        left = [x for x in self.members if x is not m]
        if not left:
            return
        for x in left:
            self.sync_out(x)
        self._build(left)
