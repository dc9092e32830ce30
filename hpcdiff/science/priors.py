"""Level-T priors: starts for cold-diffusion sampling that use no test image.

Bansal et al. generate with blur by fitting a Gaussian mixture to the training images'
channel means at level T and starting from a draw of it plus a little noise. This
generalises that to any degradation whose level T forgets the image
(``DegradationInfo.level_T_keeps_image``): the training images are degraded to level T,
summarised by their first principal components (for blur they are the channel mean, for
downsampling the block means, both exactly), and a small Gaussian mixture is fitted to the
summaries. A start is a mixture draw turned back into an image, degraded to level T with
the sampler's own draw (so it lies where the restorer was trained, e.g. salt-and-pepper for
impulse noise), plus ``start_noise`` (``ColdDiffusion.start``).

The fit happens once per run, on the training split, and is saved in the run directory
(``prior.pt``): a resume or a later evaluation draws from the same prior. Pure torch (the
mixture's EM fit is :mod:`hpcdiff.science.mixture`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hpcdiff.science.mixture import fit_gaussian_mixture

#: Principal components kept as the summary, and mixture components fitted to them.
SUMMARY_DIM = 16
MIXTURE_COMPONENTS = 10
#: Training images a prior is fitted on at most (a random subset of larger sets).
MAX_FIT_IMAGES = 10_000
MIN_FIT_IMAGES = 4
PRIOR_VERSION = 1


@dataclass
class LevelPrior:
    """A Gaussian mixture over the top principal components of level-T training images."""

    shape: tuple[int, ...]  # (C, H, W)
    mean: Tensor  # [D] mean level-T image, flattened
    components: Tensor  # [k, D] orthonormal principal directions
    weights: Tensor  # [m] mixture weights
    means: Tensor  # [m, k]
    scale_trils: Tensor  # [m, k, k] Cholesky factors of the component covariances
    explained: float  # fraction of the level-T images' variance the k components hold

    def sample(self, n: int, *, generator: torch.Generator | None = None, device=None) -> Tensor:
        """``n`` images ``[n, C, H, W]`` (float32, on ``device``) drawn on the generator's
        device: a CPU generator gives the same starts whatever the model's device."""
        where = generator.device if generator is not None else torch.device("cpu")
        w = self.weights.to(where, torch.float64)
        which = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], 1, generator=generator, device=where, dtype=torch.float64)
        coeffs = self.means.to(where)[which] + (self.scale_trils.to(where)[which] @ z).squeeze(-1)
        flat = self.mean.to(where) + coeffs @ self.components.to(where)
        return flat.view(n, *self.shape).to(device=device or where, dtype=torch.float32)

    def state_dict(self) -> dict:
        return {
            "version": PRIOR_VERSION,
            "shape": list(self.shape),
            "mean": self.mean,
            "components": self.components,
            "weights": self.weights,
            "means": self.means,
            "scale_trils": self.scale_trils,
            "explained": self.explained,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> LevelPrior:
        if state.get("version") != PRIOR_VERSION:
            raise ValueError(f"prior version {state.get('version')!r}; this hpcdiff reads version {PRIOR_VERSION}")
        return cls(
            shape=tuple(state["shape"]),
            mean=state["mean"],
            components=state["components"],
            weights=state["weights"],
            means=state["means"],
            scale_trils=state["scale_trils"],
            explained=float(state["explained"]),
        )

    def describe(self) -> str:
        return (
            f"{len(self.weights)}-component Gaussian mixture over {self.components.shape[0]} principal "
            f"components ({self.explained:.0%} of the level-T variance)"
        )


def fit_prior(
    level_T: Tensor, *, summary_dim: int = SUMMARY_DIM, mixture: int = MIXTURE_COMPONENTS, seed: int = 0
) -> LevelPrior:
    """Fit a :class:`LevelPrior` to training images already degraded to level T
    (``[N, C, H, W]``, model range)."""
    x = level_T.detach().to("cpu", torch.float64).flatten(1)
    n, d = x.shape
    if n < MIN_FIT_IMAGES:
        raise ValueError(f"a level-T prior needs at least {MIN_FIT_IMAGES} training images, got {n}")
    mixture = min(mixture, n // MIN_FIT_IMAGES * 2)  # a few images per component on tiny subsets
    mean = x.mean(0)
    centred = x - mean
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    variance = s.square()
    # Directions with no variance to speak of (blur's level T is nearly one number per
    # channel) add nothing but a slower, ill-conditioned fit.
    k = max(1, min(summary_dim, d, n - 1, int((variance > 1e-6 * variance.sum()).sum())))
    explained = float(variance[:k].sum() / variance.sum()) if variance.sum() > 0 else 1.0
    components = vh[:k]
    z = centred @ components.T
    # reg_covar keeps the nearly constant summaries (blur's level T) positive definite.
    fit = fit_gaussian_mixture(z, mixture, seed=seed, reg_covar=1e-6, max_iter=200)
    return LevelPrior(
        shape=tuple(level_T.shape[1:]),
        mean=mean,
        components=components,
        weights=fit.weights,
        means=fit.means,
        scale_trils=torch.linalg.cholesky(fit.covariances),
        explained=explained,
    )
