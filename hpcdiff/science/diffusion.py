"""Diffusion processes: training loss and samplers. No I/O, no Accelerate.

``build_diffusion(spec, model)`` returns an ``nn.Module`` whose ``forward(x0)`` is the
training loss (so Accelerate/DDP can wrap the whole thing) and whose ``sample(...)`` draws
images with the sampler named in ``spec.diffusion.sampler``.

Two processes:
  GaussianDDPM   the coursework starter's DDPM: the network predicts the noise.
  ColdDiffusion  Bansal et al. 2022: any registered degradation D(x0, t); the network
                 restores x0 from x_t and the samplers alternate restoring and degrading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from hpcdiff.config.registry import Registry
from hpcdiff.config.spec import RunSpec
from hpcdiff.science.degradations import degrade, info_of, is_gaussian
from hpcdiff.science.graphs import GraphedDenoisers
from hpcdiff.science.schedules import ddpm_schedule
from hpcdiff.science.streams import generator as stream_generator
from hpcdiff.science.streams import stream_seed

if TYPE_CHECKING:
    from hpcdiff.science.priors import LevelPrior

SAMPLERS: Registry = Registry("sampler")
LOSSES = {"mse": F.mse_loss, "l2": F.mse_loss, "l1": F.l1_loss}
# Which process (degradations.PROCESSES) each sampler belongs to.
SAMPLER_KIND: dict[str, str] = {}


def _sampler(name: str, kind: str):
    def decorator(fn):
        SAMPLERS.register(name)(fn)
        SAMPLER_KIND[name] = kind
        return fn

    return decorator


def sampling_times(n_T: int, steps: int) -> list[int]:
    """The timesteps (levels) a sampler visits, from n_T down to 1: all of them when
    ``steps`` is 0 or >= n_T, otherwise ``steps`` evenly spaced ones (n_T and 1 included)."""
    if not steps or steps >= n_T:
        return list(range(n_T, 0, -1))
    return torch.linspace(n_T, 1, steps).round().long().unique_consecutive().tolist()


def sampling_device(device) -> torch.device:
    """Where a sampler's generators live: the GPU for a GPU run (no host round trip per step),
    the CPU otherwise (the draws every CPU run has made so far)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    return device if device.type == "cuda" else torch.device("cpu")


class MemberGenerators(list):
    """One generator per member of a fused group whose samples are stacked along the batch
    (member k owns rows k*B .. (k+1)*B - 1): each member's rows are drawn from its own
    generator, exactly as its sampler alone would draw them."""


def _randn(shape, generator, device):
    if isinstance(generator, MemberGenerators):
        rows = shape[0] // len(generator)
        return torch.cat([_randn((rows, *shape[1:]), g, device) for g in generator])
    # Draw on the generator's device (a CPU generator gives the same images on any device).
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


# --------------------------------------------------------------------------- Gaussian DDPM


def ddpm_schedules(beta1: float, beta2: float, n_T: int) -> dict[str, torch.Tensor]:
    """The coursework starter's schedule (:func:`hpcdiff.science.schedules.ddpm_schedule`):
    beta_t linear over t = 0..n_T (n_T + 1 entries) and alpha_bar_t (the product of 1 - beta_s for s <= t)."""
    beta_t, alpha_bar = ddpm_schedule(n_T, beta1, beta2)
    return {"beta_t": beta_t, "alpha_bar": alpha_bar}


class _Sampling(nn.Module):
    """What both processes share: ``n_T``, ``sampler`` and ``sample_steps`` pick the sampler."""

    n_T: int
    sampler: str
    sample_steps: int

    @torch.no_grad()
    def sample(
        self,
        x_T: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """Images from x_T with the run's sampler and step count, or with the ones given
        (evaluation samples with fewer steps than the run's own sampler)."""
        name = sampler or self.sampler
        times = sampling_times(self.n_T, self.sample_steps if steps is None else steps)
        return SAMPLERS.get(name)(self, x_T, generator=generator, times=times)

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network at (x, t / n_T) for the samplers: replayed from a CUDA graph on a GPU
        (science/graphs.py), a plain call otherwise."""
        replays = self.__dict__.get("_denoisers")
        if replays is None:
            replays = self.__dict__["_denoisers"] = GraphedDenoisers()
        return replays(self.denoiser, x, t)


class GaussianDDPM(_Sampling):
    """DDPM exactly as the coursework starter: the network predicts the noise eps."""

    kind = "gaussian"

    def __init__(
        self,
        model: nn.Module,
        *,
        beta1: float,
        beta2: float,
        n_T: int,
        loss: str = "mse",
        sampler: str = "ancestral",
        sample_steps: int = 0,
    ):
        super().__init__()
        self.denoiser = model
        schedule = ddpm_schedules(beta1, beta2, n_T)
        self.register_buffer("beta_t", schedule["beta_t"])
        self.register_buffer("alpha_bar", schedule["alpha_bar"])
        self.n_T = n_T
        self.criterion = LOSSES[loss]
        self.sampler = sampler
        self.sample_steps = sample_steps

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z_t, level, eps = self.training_pair(x, generator)
        return self.criterion(self.denoiser(z_t, level), eps)

    def training_pair(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """(network input, its level t/n_T, target) of one training batch: the draws of a
        step, apart from the network (a fused group calls its members' networks at once)."""
        # t ~ U{1, ..., n_T - 1}: torch.randint's upper bound is exclusive, as in the starter.
        t = torch.randint(1, self.n_T, (x.shape[0],), device=x.device, generator=generator)
        eps = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        alpha_bar = self.alpha_bar[t, None, None, None]
        z_t = torch.sqrt(alpha_bar) * x + torch.sqrt(1 - alpha_bar) * eps
        return z_t, t / self.n_T, eps

    def start(self, n: int, size, *, generator=None, device=None, **_):
        """x_T: standard normal noise (the known prior)."""
        return _randn((n, *size), generator, device), "noise"


@_sampler("ancestral", "gaussian")
def ancestral(ddpm: GaussianDDPM, x_T, *, generator, times=None):
    """The starter's ancestral sampler, from t = n_T down to 1. On a subsequence of the
    timesteps it uses the respaced betas 1 - alpha_bar_t / alpha_bar_prev (Nichol & Dhariwal
    2021), which are the starter's betas when no step is skipped."""
    times = times or list(range(ddpm.n_T, 0, -1))
    one = torch.ones(x_T.shape[0], device=x_T.device)
    full = len(times) == ddpm.n_T
    z_t = x_T
    for k, i in enumerate(times):
        alpha_bar = ddpm.alpha_bar[i]
        if full:
            beta_t = ddpm.beta_t[i]
        else:
            prev = times[k + 1] if k + 1 < len(times) else 0
            beta_t = 1 - alpha_bar / ddpm.alpha_bar[prev]
        z_t = z_t - (beta_t / torch.sqrt(1 - alpha_bar)) * ddpm.denoise(z_t, (i / ddpm.n_T) * one)
        z_t = z_t / torch.sqrt(1 - beta_t)
        if k + 1 < len(times):
            z_t = z_t + torch.sqrt(beta_t) * _randn(z_t.shape, generator, z_t.device)
    return z_t


@_sampler("ddim", "gaussian")
def ddim(ddpm: GaussianDDPM, x_T, *, generator, times=None):
    """Deterministic DDIM (eta = 0) on evenly spaced steps of the same schedule
    (``sample_steps``); the last step returns the predicted x0."""
    times = times or list(range(ddpm.n_T, 0, -1))
    one = torch.ones(x_T.shape[0], device=x_T.device)
    z = x_T
    for k, t in enumerate(times):
        a_t = ddpm.alpha_bar[t]
        eps = ddpm.denoise(z, (t / ddpm.n_T) * one)
        x0_hat = (z - torch.sqrt(1 - a_t) * eps) / torch.sqrt(a_t)
        if k + 1 == len(times):
            return x0_hat
        a_prev = ddpm.alpha_bar[times[k + 1]]
        z = torch.sqrt(a_prev) * x0_hat + torch.sqrt(1 - a_prev) * eps
    return z


# --------------------------------------------------------------------------- cold diffusion


class ColdDiffusion(_Sampling):
    """Cold diffusion: x_t = D(x0, t) for a registered degradation; R(x_t, t/T) ~ x0."""

    kind = "cold"

    def __init__(
        self,
        model: nn.Module,
        *,
        degradation: str,
        schedule: str,
        params: dict,
        n_T: int,
        loss: str = "l1",
        sampler: str = "cold_alg2",
        sample_start: str = "degraded_test",
        start_noise: float = 0.002,
        noise_seed: int = 0,
        sample_steps: int = 0,
    ):
        super().__init__()
        self.sample_steps = sample_steps
        self.denoiser = model
        self.degradation, self.schedule, self.params = degradation, schedule, dict(params)
        self.n_T = n_T
        self.criterion = LOSSES[loss]
        self.sampler = sampler
        self.sample_start = sample_start
        self.start_noise = start_noise
        self.noise_seed = noise_seed
        # The fitted level-T prior of sample_start "prior" (science/priors.py); the trainer
        # sets it from the run directory, so a resume and a later evaluation draw from it.
        self.prior = None

    def degrade(self, x0: torch.Tensor, t, generator: torch.Generator | None = None) -> torch.Tensor:
        return degrade(
            self.degradation, x0, t, n_steps=self.n_T, schedule=self.schedule, generator=generator, **self.params
        )

    def restore(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        return self.denoise(x_t, torch.full((x_t.shape[0],), t / self.n_T, device=x_t.device))

    def forward(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x_t, level, target = self.training_pair(x0, generator)
        return self.criterion(self.denoiser(x_t, level), target)

    def training_pair(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        """(network input, its level t/n_T, target): see GaussianDDPM.training_pair."""
        # t ~ U{1, ..., T}: every level the sampler visits is trained.
        t = torch.randint(1, self.n_T + 1, (x0.shape[0],), device=x0.device, generator=generator)
        return self.degrade(x0, t, generator), t / self.n_T, x0

    def level_generator(
        self, s: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> torch.Generator | None:
        """The draw that degrades level s of the trajectories sampled with ``generator``:
        the same every time it is asked for, so that Algorithm 2's D(x0_hat, s) terms
        telescope. A degradation whose levels share one draw (``draws = "shared"``: impulse
        noise, masks, permutations) gets the same draw at every level, so the sampler uncovers
        what level s-1 no longer corrupts; independent draws would re-corrupt about half of
        the pixels at every step and the restorer's error would grow like a random walk over
        the levels. The draw is keyed by the sampling generator's seed (read, not consumed):
        ``start`` and ``sample`` given the same generator use the same draw, evaluation chunks
        with their own generators different ones. On a GPU the generator lives there: a CPU
        draw copied over would make the host wait for the device at every sampling step."""
        draws = info_of(self.degradation).draws
        if draws == "none":
            return None
        key = generator.initial_seed() if generator is not None else 0
        trajectory = stream_seed(self.noise_seed, "degradation_trajectory", key)
        if draws == "independent":
            trajectory = stream_seed(trajectory, "degradation_level", s)
        # A generator's own seed may be any 64-bit number; manual_seed takes < 2**64.
        return torch.Generator(device=sampling_device(device)).manual_seed(trajectory % 2**63)

    def start(self, n: int, size, *, generator=None, device=None, test_images=None):
        """x_T and a word saying where it came from (recorded in the archive)."""
        start = self.sample_start
        if start == "noise":
            return _randn((n, *size), generator, device), "noise"
        if start == "prior":
            if self.prior is None:
                raise ValueError("sample_start 'prior' needs the run's fitted prior (science.priors.fit_prior)")
            x_T = self.prior.sample(n, generator=generator, device=device)
            if not info_of(self.degradation).deterministic:
                # The draw is the prior's level-T look (a summary cannot hold which pixels are
                # salt): degraded again with the sampler's own draw at level T, so the first
                # step subtracts the corruption that is there. A deterministic level T is
                # what the prior was fitted on already (blurring it again would not be).
                x_T = self.degrade_to_start(x_T, generator)
            return x_T + self.start_noise * _randn(
                x_T.shape, generator, device
            ), "prior fitted on training images at level T"
        if test_images is None or len(test_images) == 0:
            raise ValueError("sampling cold diffusion needs held-out test images to start from")
        idx = torch.randint(
            0, len(test_images), (n,), generator=generator, device=generator.device if generator is not None else "cpu"
        ).to(test_images.device)
        x0 = test_images[idx].to(device)
        if start == "channel_mean":
            mean = x0.mean(dim=(2, 3), keepdim=True).expand_as(x0)
            return mean + self.start_noise * _randn(x0.shape, generator, device), "channel-mean test images + noise"
        return self.degrade_to_start(x0, generator), "maximally degraded test images"

    def fit_prior(self, train_images: torch.Tensor, *, seed: int) -> LevelPrior:
        """The level-T prior of sample_start "prior", fitted on training images (model
        range): each degraded to level T with its own draw, then summarised and fitted
        (science/priors.py). A random subset of at most MAX_FIT_IMAGES images."""
        from hpcdiff.science.priors import MAX_FIT_IMAGES, fit_prior

        order = torch.randperm(len(train_images), generator=stream_generator(seed, "prior_fit", 0))
        x0 = train_images[order[:MAX_FIT_IMAGES].to(train_images.device)]
        t = torch.full((len(x0),), self.n_T, dtype=torch.long, device=x0.device)
        return fit_prior(self.degrade(x0, t, stream_generator(seed, "prior_fit", 1)), seed=seed)

    def degrade_to_start(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x0 degraded to level T with the draw the sampler given ``generator`` uses at level
        T: its first step subtracts D(x0_hat, T) with that same draw, so Algorithm 2 still
        telescopes for stochastic degradations."""
        t = torch.full((x0.shape[0],), self.n_T, dtype=torch.long, device=x0.device)
        return self.degrade(x0, t, self.level_generator(self.n_T, generator, x0.device))

    def reconstruct_direct(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """One restoration step (the reports' 'direct reconstruction')."""
        return self.restore(x_t, t)


@_sampler("cold_alg1", "cold")
def cold_alg1(cd: ColdDiffusion, x_T, *, generator, restorer=None, times=None):
    """Bansal et al. Algorithm 1: x_{s'} = D(R(x_s, s), s') for the next level s' < s
    (s' = s - 1 unless levels are skipped)."""
    restore = restorer or cd.restore
    times = times or list(range(cd.n_T, 0, -1))
    x = x_T
    for k, s in enumerate(times):
        nxt = times[k + 1] if k + 1 < len(times) else 0
        x0_hat = restore(x, s)
        x = cd.degrade(x0_hat, nxt, cd.level_generator(nxt, generator, x.device))
    return x


@_sampler("cold_alg2", "cold")
def cold_alg2(cd: ColdDiffusion, x_T, *, generator, restorer=None, times=None):
    """Bansal et al. Algorithm 2: x_{s'} = x_s - D(x0_hat, s) + D(x0_hat, s') for the next
    level s' < s. With a perfect restorer it returns x0 exactly (the D terms telescope), for
    any subsequence of levels."""
    restore = restorer or cd.restore
    times = times or list(range(cd.n_T, 0, -1))
    x = x_T
    for k, s in enumerate(times):
        nxt = times[k + 1] if k + 1 < len(times) else 0
        x0_hat = restore(x, s)
        x = (
            x
            - cd.degrade(x0_hat, s, cd.level_generator(s, generator, x.device))
            + cd.degrade(x0_hat, nxt, cd.level_generator(nxt, generator, x.device))
        )
    return x


# --------------------------------------------------------------------------- building


def build_diffusion(spec: RunSpec, model: nn.Module) -> nn.Module:
    """The diffusion process of a resolved spec (``hpcdiff.resolve.validate_spec``: no "auto"
    or recipe values left)."""
    d, deg = spec.diffusion, spec.degradation
    if not d.n_T or d.sampler == "auto" or d.sample_start == "auto" or not deg.schedule:
        raise ValueError("build_diffusion needs a resolved spec: pass it through hpcdiff.resolve.validate_spec")
    if is_gaussian(deg.name):
        return GaussianDDPM(
            model, beta1=d.beta1, beta2=d.beta2, n_T=d.n_T, loss=d.loss, sampler=d.sampler, sample_steps=d.sample_steps
        )
    return ColdDiffusion(
        model,
        degradation=deg.name,
        schedule=deg.schedule,
        params=deg.params,
        n_T=d.n_T,
        loss=d.loss,
        sampler=d.sampler,
        sample_start=d.sample_start,
        start_noise=d.start_noise,
        noise_seed=spec.train.seed,
        sample_steps=d.sample_steps,
    )
