"""Diffusion processes: training loss and samplers. No I/O, no Accelerate.

``build_diffusion(spec, model)`` returns an ``nn.Module`` whose ``forward(x0)`` is the
training loss (so Accelerate/DDP can wrap the whole thing) and whose ``sample(...)`` draws
images with the sampler named in ``spec.diffusion.sampler``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .registry import Registry
from .spec import RunSpec, SpecError

SAMPLERS: Registry = Registry("sampler")
LOSSES = {"mse": F.mse_loss, "l2": F.mse_loss, "l1": F.l1_loss}


def ddpm_schedules(beta1: float, beta2: float, n_T: int) -> dict[str, torch.Tensor]:
    """The coursework starter's schedule: beta_t linear over t = 0..n_T (n_T + 1 entries),
    alpha_bar_t = prod_{s<=t} (1 - beta_s), computed in log space."""
    if not 0.0 < beta1 < beta2 < 1.0:
        raise ValueError(f"need 0 < beta1 < beta2 < 1, got {beta1}, {beta2}")
    beta_t = (beta2 - beta1) * torch.arange(0, n_T + 1, dtype=torch.float32) / n_T + beta1
    alpha_t = torch.exp(torch.cumsum(torch.log(1 - beta_t), dim=0))
    return {"beta_t": beta_t, "alpha_t": alpha_t}


class GaussianDDPM(nn.Module):
    """DDPM exactly as the coursework starter: the network predicts the noise eps."""

    def __init__(self, model: nn.Module, *, beta1: float, beta2: float, n_T: int,
                 loss: str = "mse", sampler: str = "ancestral", sample_steps: int = 0):
        super().__init__()
        self.gt = model
        schedule = ddpm_schedules(beta1, beta2, n_T)
        self.register_buffer("beta_t", schedule["beta_t"])
        self.register_buffer("alpha_t", schedule["alpha_t"])
        self.n_T = n_T
        self.criterion = LOSSES[loss]
        self.sampler = sampler
        self.sample_steps = sample_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # t ~ U{1, ..., n_T - 1}: torch.randint's upper bound is exclusive, as in the starter.
        t = torch.randint(1, self.n_T, (x.shape[0],), device=x.device)
        eps = torch.randn_like(x)
        alpha_t = self.alpha_t[t, None, None, None]
        z_t = torch.sqrt(alpha_t) * x + torch.sqrt(1 - alpha_t) * eps
        return self.criterion(self.gt(z_t, t / self.n_T), eps)

    @torch.no_grad()
    def sample(self, n: int, size, *, generator: torch.Generator | None = None, device=None):
        device = device or self.beta_t.device
        return SAMPLERS.get(self.sampler)(self, n, tuple(size), generator=generator, device=device)


def _randn(shape, generator, device):
    # Draw on the generator's device (a CPU generator gives the same images on any device).
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


@SAMPLERS.register("ancestral")
def ancestral(ddpm: GaussianDDPM, n: int, size, *, generator, device):
    """The starter's ancestral sampler, from t = n_T down to 1."""
    one = torch.ones(n, device=device)
    z_t = _randn((n, *size), generator, device)
    for i in range(ddpm.n_T, 0, -1):
        alpha_t = ddpm.alpha_t[i]
        beta_t = ddpm.beta_t[i]
        z_t = z_t - (beta_t / torch.sqrt(1 - alpha_t)) * ddpm.gt(z_t, (i / ddpm.n_T) * one)
        z_t = z_t / torch.sqrt(1 - beta_t)
        if i > 1:
            z_t = z_t + torch.sqrt(beta_t) * _randn(z_t.shape, generator, device)
    return z_t


def build_diffusion(spec: RunSpec, model: nn.Module) -> nn.Module:
    d = spec.diffusion
    if spec.degradation.name == "gaussian":
        return GaussianDDPM(model, beta1=d.beta1, beta2=d.beta2, n_T=d.n_T, loss=d.loss,
                            sampler=d.sampler, sample_steps=d.sample_steps)
    raise SpecError(f"degradation {spec.degradation.name!r} is not available",
                    path="degradation.name")


def validate_spec(spec: RunSpec) -> None:
    """Checks that need the registries (and so torch)."""
    if spec.diffusion.sampler not in SAMPLERS:
        from .registry import unknown_name_message

        raise SpecError(unknown_name_message("sampler", spec.diffusion.sampler, SAMPLERS.names()),
                        path="diffusion.sampler")
    if spec.degradation.name != "gaussian":
        from .registry import unknown_name_message

        raise SpecError(unknown_name_message("degradation", spec.degradation.name, ["gaussian"]),
                        path="degradation.name")
