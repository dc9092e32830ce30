"""K networks of one architecture called as one: their weights stacked along a leading member
dimension (torch.func.stack_module_state) and the forward vmapped over it, so a convolution
of K members becomes one batched convolution instead of K small ones (what HFTA does by
rewriting the model; torch.func does it without touching the model's code).

Member k sees exactly the computation its own network would do alone: the same weights,
its own inputs, its own buffers. Dropout draws are per member (``randomness="different"``)
but not the ones the member would draw alone.

Two ways to call the members, one result: ``"vmap"`` (one batched kernel per layer for all
members: on a GPU, where a small network's step is launch-bound, K members cost about what
one does) and ``"loop"`` (each member's own kernels in turn, on slices of the stacked
weights: on a CPU, which is compute-bound, batching saves no arithmetic and PyTorch's
batched convolution and layer norm are slower there than K plain ones). ``MODES`` picks by
device, a fixed rule.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

#: The stacking mode by device type (see the module docstring); others: "loop".
MODES = {"cuda": "vmap", "cpu": "loop"}


class StackedNetworks:
    """``net(x, level)`` with ``x`` [K, B, ...] and ``level`` [K, B] -> [K, B, ...]."""

    def __init__(self, models: list[nn.Module], mode: str | None = None):
        if not models:
            raise ValueError("a stack needs at least one network")
        shapes = [[(n, tuple(p.shape)) for n, p in m.state_dict().items()] for m in models]
        if any(s != shapes[0] for s in shapes[1:]):
            raise ValueError("the stacked networks differ in architecture or sizes")
        self.k = len(models)
        self.params, self.buffers = stack_module_state(models)
        # The code of the forward, without storage of its own: every weight comes from the stack.
        self.base = copy.deepcopy(models[0]).to("meta")
        self.state_keys = list(models[0].state_dict())
        self.training = True
        dropout = any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in models[0].modules())
        self._vmapped = vmap(self._one, randomness="different" if dropout else "error")
        self.mode = mode or MODES.get(next(iter(self.params.values())).device.type, "loop")
        if self.mode not in ("vmap", "loop"):
            raise ValueError(f"unknown stacking mode {self.mode!r} (vmap, loop)")

    def _one(self, params, buffers, x, level):
        return functional_call(self.base, (params, buffers), (x, level))

    def __call__(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """All members' outputs (for evaluation: under no_grad in "loop" mode)."""
        self.base.train(self.training)
        if self.mode == "vmap":
            return self._vmapped(self.params, self.buffers, x, level)
        return torch.stack([self._one(*self._slices(k, self.params), x[k], level[k]) for k in range(self.k)])

    def _slices(self, k: int, params: dict) -> tuple[dict, dict]:
        """Member k's weights (taken from ``params``) and buffers, for ``_one``."""
        return {n: p[k] for n, p in params.items()}, {n: b[k] for n, b in self.buffers.items()}

    def backward(self, x, level, loss_of, members, scale: float = 1.0) -> torch.Tensor:
        """Each listed member's loss ``loss_of(k, output_k)`` and its gradient, added to the
        stacked parameters' ``.grad`` (times ``scale``). Returns the [K] losses, NaN for the
        members not listed (in "loop" mode they are not computed at all).

        "loop" runs each member's forward and backward before the next one's, as K runs
        one after another would, so only one member's activations are alive at a time; its
        gradient lands in a leaf of its own (a view of its slice of the stack) and is added
        to the stack's."""
        self.base.train(self.training)
        losses = torch.full((self.k,), float("nan"), device=x.device)
        params = self.parameters()
        if self.mode == "vmap":
            out = self._vmapped(self.params, self.buffers, x, level)
            if members:
                each = torch.stack([loss_of(k, out[k]) for k in members])
                (each.sum() * scale).backward()
                losses[list(members)] = each.detach().float()
            return losses
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for k in members:
            # Views of the detached stack, made leaves: member k's gradient alone, no K-sized copy.
            leaves, buffers = self._slices(k, {n: p.detach() for n, p in self.params.items()})
            for leaf in leaves.values():
                leaf.requires_grad_()
            loss = loss_of(k, self._one(leaves, buffers, x[k], level[k]))
            (loss * scale).backward()
            with torch.no_grad():
                for p, leaf in zip(params, leaves.values()):
                    if leaf.grad is not None:
                        p.grad[k].add_(leaf.grad)
            losses[k] = loss.detach().float()
        return losses

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The stacked tensors of the networks' state_dict, in its order (non-persistent
        buffers left out, as a network's own state_dict leaves them out)."""
        both = {**self.params, **self.buffers}
        return {name: both[name] for name in self.state_keys}

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights and buffers as its own network's state_dict (same keys, order)."""
        return {name: t[k].detach().clone() for name, t in self.state_tensors().items()}

    @torch.no_grad()
    def load_member(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Member k's slot from a single network's state_dict (a solo run's checkpoint)."""
        missing = set(self.state_keys) - set(state)
        if missing:
            raise KeyError(f"state_dict lacks {sorted(missing)[:3]}")
        for name, t in self.state_tensors().items():
            t[k].copy_(state[name])
