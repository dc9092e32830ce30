"""K runs of one sweep trained as one batched model: a fused group.

Each member keeps everything a run alone has: its own process (n_T, schedule, degradation
draws from its own generator), its own batches, its own loss and gradient, gradient-norm
clipping by its own norm, its own Adam(W) state and hyperparameters (per-member tensors:
learning rate, betas, eps, weight decay), its own EMA. Only the network calls are shared:
one vmapped forward and backward for all members (science/stacked.py).

A member that has ended (done, early-stopped, diverged) is masked out: its loss leaves the
sum, and its weights, moments and EMA are never written again, whatever its (possibly
non-finite) gradient holds. ``member_checkpoint(k)`` writes a member's weights, optimiser and
EMA in the formats of a run alone, and ``load_member(k, ...)`` reads them back, so a member
resumes fused or alone, in any group and slot.

The Adam(W) update is torch.optim's single-tensor algorithm (torch's default on the CPU)
applied to the stacked tensors with per-member scalars; tests/test_fused.py checks it
against torch.optim member by member.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from hpcdiff.science.stacked import StackedNetworks

# torch.nn.utils.clip_grad_norm_'s guard against a zero norm.
CLIP_EPS = 1e-6


@dataclass(frozen=True)
class MemberSettings:
    """One member's optimiser hyperparameters (a run's [train] section)."""

    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False  # AdamW
    grad_clip: float = 0.0  # max gradient norm; 0 = none
    ema_decay: float = 0.0  # 0 = no EMA

    @classmethod
    def of(cls, train) -> MemberSettings:
        """From a run's TrainSpec (Adam's betas and eps are torch's defaults, as alone)."""
        return cls(
            lr=train.lr,
            weight_decay=train.weight_decay,
            decoupled=train.optimizer == "adamw",
            grad_clip=train.grad_clip,
            ema_decay=train.ema_decay,
        )


def _per_member(values, like: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(list(values), dtype=dtype, device=like.device)


def _view(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A per-member vector [K] shaped to broadcast over a stacked tensor [K, ...]."""
    return v.view(-1, *([1] * (p.dim() - 1)))


class FusedGroup:
    """``step(batches, generators, window, sync)`` for K members; see the module docstring.

    ``processes``: each member's diffusion process (GaussianDDPM or ColdDiffusion) with its
    own network; the networks are stacked here and the processes keep them only as the
    architecture (their own weights are not updated: read a member back with
    ``member_checkpoint``)."""

    def __init__(self, processes: list, settings: list[MemberSettings], *, mode: str | None = None):
        if len(processes) != len(settings):
            raise ValueError("one MemberSettings per member")
        kinds = {type(p) for p in processes}
        if len(kinds) != 1:
            raise ValueError(f"a fused group trains one kind of process, got {sorted(k.__name__ for k in kinds)}")
        self.processes, self.settings = list(processes), list(settings)
        self.k = len(processes)
        self.net = StackedNetworks([p.denoiser for p in processes], mode)
        first = self.net.parameters()[0]
        self.active = torch.ones(self.k, dtype=torch.bool, device=first.device)
        # Host-side facts of the group, so a step neither reads the device back nor computes
        # what no member uses (a weight decay or a clip of 0, a mask with every member on).
        self.live = [True] * self.k
        self._decays = any(m.weight_decay for m in settings)
        self._clips = any(m.grad_clip for m in settings)
        self._ema_everyone = all(m.ema_decay for m in settings)
        s = settings
        self.lr = _per_member((m.lr for m in s), first)
        self.beta1 = _per_member((m.beta1 for m in s), first, torch.float64)
        self.beta2 = _per_member((m.beta2 for m in s), first, torch.float64)
        self.eps = _per_member((m.eps for m in s), first)
        self.weight_decay = _per_member((m.weight_decay for m in s), first)
        self.decoupled = _per_member((m.decoupled for m in s), first, torch.bool)
        self.grad_clip = _per_member((m.grad_clip for m in s), first)
        self.ema_decay = _per_member((m.ema_decay for m in s), first)
        self.steps = torch.zeros(self.k, dtype=torch.float64, device=first.device)
        params = self.net.parameters()
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.ema = (
            {name: t.detach().clone().float() for name, t in self.net.state_tensors().items()}
            if any(m.ema_decay for m in s)
            else None
        )

    # ------------------------------------------------------------------ forward, backward

    def _pairs(self, batches, generators):
        pairs = [p.training_pair(x, g) for p, x, g in zip(self.processes, batches, generators)]
        inputs = torch.stack([z for z, _, _ in pairs])
        levels = torch.stack([lv for _, lv, _ in pairs])
        return inputs, levels, [t for _, _, t in pairs]

    def losses(self, batches: list[torch.Tensor], generators: list[torch.Generator | None]) -> torch.Tensor:
        """[K] losses without gradients (validation): each member's draws from its own
        process and generator, the members' networks, each member's own criterion."""
        with torch.no_grad():
            inputs, levels, targets = self._pairs(batches, generators)
            out = self.net(inputs, levels)
            return torch.stack([p.criterion(out[k], targets[k]) for k, p in enumerate(self.processes)])

    def step(
        self, batches: list[torch.Tensor], generators: list[torch.Generator | None], window: int = 1, sync: bool = True
    ) -> torch.Tensor:
        """Forward + backward of one batch per member (the loss divided by ``window``), then,
        when ``sync``, the optimiser step of every active member. Returns the [K] losses
        (detached; NaN for an inactive member: in "loop" mode it is not computed). Every
        member draws from its generator, active or not, so a member's draws never depend
        on whether another one is still training."""
        inputs, levels, targets = self._pairs(batches, generators)
        members = [k for k in range(self.k) if self.live[k]]
        losses = self.net.backward(
            inputs,
            levels,
            lambda k, out: self.processes[k].criterion(out, targets[k]),
            members,
            scale=1.0 / window if window > 1 else 1.0,
        )
        if sync:
            self.optimizer_step()
        return losses

    # ------------------------------------------------------------------ optimiser

    @torch.no_grad()
    def clip_gradients(self) -> torch.Tensor:
        """Each member's gradient norm ([K], before clipping), clipped as
        clip_grad_norm_ would clip that member's gradients alone."""
        grads = [p.grad for p in self.net.parameters()]
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)
        coef = (self.grad_clip / (norms + CLIP_EPS)).clamp(max=1.0)
        coef = torch.where(self.grad_clip > 0, coef, torch.ones_like(coef))
        for g in grads:
            g.mul_(_view(coef, g))
        return norms

    @torch.no_grad()
    def optimizer_step(self) -> None:
        if self._clips:
            self.clip_gradients()
        active, everyone = self.active, all(self.live)
        self.steps += active.to(self.steps.dtype)
        step = self.steps.clamp(min=1)
        bias1 = 1 - self.beta1**step
        bias2_sqrt = (1 - self.beta2**step).sqrt()
        step_size = (self.lr.double() / bias1).float()
        b1, b2, one_minus_b2 = (1 - self.beta1).float(), self.beta2.float(), (1 - self.beta2).float()
        decay = (1 - self.lr.double() * self.weight_decay.double()).float()  # AdamW's, as torch rounds it
        for p, m, v in zip(self.net.parameters(), self.exp_avg, self.exp_avg_sq):
            g, decayed = p.grad, p
            if self._decays:
                wd = _view(self.weight_decay, p)
                coupled = _view(~self.decoupled, p)
                g = torch.where(coupled & (wd != 0), g + wd * p, g)
                decayed = torch.where(~coupled & (wd != 0), p * _view(decay, p), p)
            m_new = torch.lerp(m, g, _view(b1, p))
            v_new = v * _view(b2, p) + _view(one_minus_b2, p) * g * g
            denom = v_new.sqrt() / _view(bias2_sqrt.float(), p) + _view(self.eps, p)
            p_new = decayed - _view(step_size, p) * (m_new / denom)
            if everyone:
                p.copy_(p_new)
                m.copy_(m_new)
                v.copy_(v_new)
            else:
                on = _view(active, p)
                p.copy_(torch.where(on, p_new, p))
                m.copy_(torch.where(on, m_new, m))
                v.copy_(torch.where(on, v_new, v))
            p.grad = None
        self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        current = self.net.state_tensors()
        everyone = self._ema_everyone and all(self.live)
        for name, shadow in self.ema.items():
            value = current[name].detach()
            if value.dtype.is_floating_point:
                new = torch.lerp(shadow, value.float(), _view(1 - self.ema_decay, shadow))
            else:
                new = value.to(shadow.dtype)
            shadow.copy_(
                new if everyone else torch.where(_view(self.active & (self.ema_decay > 0), shadow), new, shadow)
            )

    # ------------------------------------------------------------------ members

    def member_checkpoint(self, k: int) -> dict:
        """Member k as a run alone would save it: ``{"model", "optimizer", "ema"}`` with the
        network's state_dict, torch.optim.Adam(W)'s state_dict and the EMA's shadow."""
        model = self.net.member_state_dict(k)
        n = len(self.net.params)
        s = self.settings[k]
        state = {
            i: {
                "step": torch.tensor(float(self.steps[k])),
                "exp_avg": self.exp_avg[i][k].detach().clone(),
                "exp_avg_sq": self.exp_avg_sq[i][k].detach().clone(),
            }
            for i in range(n)
            if self.steps[k] > 0
        }
        optimizer = {"state": state, "param_groups": [self._param_group(s, n)]}
        ema = {name: shadow[k].clone() for name, shadow in self.ema.items()} if s.ema_decay and self.ema else None
        return {"model": model, "optimizer": optimizer, "ema": ema}

    @staticmethod
    def _param_group(s: MemberSettings, n: int) -> dict:
        # Built by torch itself, so that the group holds every key this torch version expects.
        cls = torch.optim.AdamW if s.decoupled else torch.optim.Adam
        dummy = [torch.zeros(1, requires_grad=True) for _ in range(n)]
        group = cls(dummy, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps, weight_decay=s.weight_decay)
        return group.state_dict()["param_groups"][0]

    @torch.no_grad()
    def load_member(self, k: int, model: dict, optimizer: dict | None = None, ema: dict | None = None) -> None:
        """Member k's slot from a run's saved weights, optimiser state and EMA."""
        self.net.load_member(k, model)
        saved = (optimizer or {}).get("state", {})
        steps = {float(st["step"]) for st in saved.values()}
        if len(steps) > 1:
            raise ValueError(f"member {k}: the saved optimiser's parameters are at different steps {sorted(steps)}")
        self.steps[k] = steps.pop() if steps else 0.0
        for i in range(len(self.net.params)):
            st = saved.get(i)
            self.exp_avg[i][k].copy_(st["exp_avg"] if st else 0)
            self.exp_avg_sq[i][k].copy_(st["exp_avg_sq"] if st else 0)
        if self.ema is not None:
            source = ema if ema is not None else model
            for name, shadow in self.ema.items():
                shadow[k].copy_(source[name])

    def member_train_state(
        self, k: int, *, noise: torch.Generator, epoch_done: int, step: int, elapsed: float, config: dict
    ) -> dict:
        """Member k as a whole checkpoint of a run alone (training/state.py's format): the
        trainer resumes it with ``hpcdiff train``, from the member's noise stream on. Only
        at an epoch's end, with no plateau scheduler and early stopping's counters fresh:
        the group does not hold those yet."""
        from hpcdiff.training.state import EarlyStopping, checkpoint_dict, rng_state
        from hpcdiff.training.step import EAGER, StepMode

        saved = self.member_checkpoint(k)
        # The trainer's noise comes from the default generator of the run's device.
        rng = rng_state(noise)
        return checkpoint_dict(
            epoch_done=epoch_done,
            step=step,
            elapsed=elapsed,
            partial=None,
            model=saved["model"],
            optimizer=saved["optimizer"],
            plateau=None,
            stopper=EarlyStopping().state_dict(),
            rng=rng,
            config=config,
            ema=saved["ema"],
            world=1,
            mode=StepMode(EAGER, ""),
            scaler=None,
        )

    def set_lr(self, k: int, lr: float) -> None:
        """Member k's learning rate from here on (its plateau scheduler lowered it)."""
        self.lr[k] = lr
        self.settings[k] = replace(self.settings[k], lr=lr)

    def deactivate(self, k: int) -> None:
        """Member k has ended: nothing of it changes from here on."""
        self.active[k] = False
        self.live[k] = False
