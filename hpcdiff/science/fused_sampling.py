"""The samplers of K diffusion processes run as one: every sampling step is one call of the
members' stacked networks (science/stacked.py) for all members' samples, instead of K calls.

``FusedProcess`` shows the registered samplers (science/diffusion.py) what a single process
shows them: ``n_T`` and the schedule, ``denoise`` / ``restore``, and for cold diffusion
``degrade`` and ``level_generator``. The samples are stacked along the batch (member k owns
rows k*B .. (k+1)*B - 1) and every draw a sampler makes goes through
``diffusion.MemberGenerators``, one generator per member: the noise, the degradation draw of
each level (each member's own ``level_generator``, keyed by its own noise seed) and the
degradation itself (each member's process on its rows). So member k's samples are the ones
its sampler alone draws from its x_T and generator.

Members share a sampler when they are one kind of process with the same levels: n_T and,
for the Gaussian process, the beta schedule; for cold diffusion, the degradation, its
parameters and schedule. Others sample apart (``sampling_blocker`` says why).

On a GPU the stacked call is replayed from a CUDA graph (science/graphs.py), as a run
alone's denoiser is.
"""

from __future__ import annotations

import torch

from hpcdiff.science.diffusion import SAMPLER_KIND, SAMPLERS, MemberGenerators, sampling_times
from hpcdiff.science.graphs import GraphedDenoisers
from hpcdiff.science.stacked import StackedNetworks


def sampling_blocker(processes: list) -> str | None:
    """Why these processes cannot share one sampler, or None."""
    first = processes[0]
    if any(type(p) is not type(first) for p in processes):
        return "members are different kinds of process"
    if any(p.n_T != first.n_T for p in processes):
        return f"members differ in n_T ({sorted({p.n_T for p in processes})})"
    if first.kind == "gaussian":
        if any(not torch.equal(p.beta_t, first.beta_t) for p in processes):
            return "members differ in their beta schedule (diffusion.beta1/beta2)"
        return None
    for what in ("degradation", "schedule", "params"):
        if any(getattr(p, what) != getattr(first, what) for p in processes):
            return f"members differ in their degradation's {what}"
    return None


class FusedProcess:
    """K processes and their stacked networks as one process for the samplers (see the
    module docstring). ``net``: the members' networks stacked in the processes' order."""

    def __init__(self, processes: list, net: StackedNetworks):
        problem = sampling_blocker(processes)
        if problem:
            raise ValueError(f"these members sample apart: {problem}")
        if net.k != len(processes):
            raise ValueError(f"{len(processes)} processes but {net.k} stacked networks")
        first = processes[0]
        self.processes, self.net, self.k = list(processes), net, net.k
        self.kind, self.n_T = first.kind, first.n_T
        if self.kind == "gaussian":
            self.beta_t, self.alpha_bar = first.beta_t, first.alpha_bar
        self._graphs = GraphedDenoisers()

    @classmethod
    def of(cls, processes: list, mode: str | None = None) -> FusedProcess:
        """The processes' networks as they are now (e.g. with EMA weights swapped in), stacked."""
        return cls(processes, StackedNetworks([p.denoiser for p in processes], mode))

    # ------------------------------------------------------------------ what samplers call

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0] // self.k
        return self._graphs(self.net, x.view(self.k, b, *x.shape[1:]), t.view(self.k, b)).reshape(x.shape)

    def restore(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        return self.denoise(x_t, torch.full((x_t.shape[0],), t / self.n_T, device=x_t.device))

    def degrade(self, x: torch.Tensor, t, generator=None) -> torch.Tensor:
        """Each member's rows degraded by its own process with its own generator."""
        b = x.shape[0] // self.k
        generators = generator if isinstance(generator, MemberGenerators) else [generator] * self.k
        rows = [slice(k * b, (k + 1) * b) for k in range(self.k)]
        per_row = torch.is_tensor(t) and t.dim() > 0
        return torch.cat(
            [p.degrade(x[r], t[r] if per_row else t, g) for p, r, g in zip(self.processes, rows, generators)]
        )

    def level_generator(self, s: int, generator=None, device=None) -> MemberGenerators:
        """Each member's draw for level s (its own, keyed by its own generator and noise seed)."""
        generators = generator if isinstance(generator, MemberGenerators) else [generator] * self.k
        return MemberGenerators([p.level_generator(s, g, device) for p, g in zip(self.processes, generators)])

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, x_T: torch.Tensor, generators: list, *, sampler: str, steps: int = 0) -> torch.Tensor:
        """[K, B, ...] starts and one generator per member -> [K, B, ...] samples."""
        if SAMPLER_KIND.get(sampler) != self.kind:
            raise ValueError(f"sampler {sampler!r} is not one of the {self.kind} process's")
        was, self.net.training = self.net.training, False
        try:
            z = SAMPLERS.get(sampler)(
                self,
                x_T.reshape(-1, *x_T.shape[2:]),
                generator=MemberGenerators(generators),
                times=sampling_times(self.n_T, steps),
            )
        finally:
            self.net.training = was
        return z.view(x_T.shape)
