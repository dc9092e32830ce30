"""A Gaussian mixture fitted by expectation-maximisation, in torch (float64).

The level-T prior (:mod:`hpcdiff.science.priors`) fits one small mixture (10 components, at
most 16 dimensions, a few thousand points) per run. scikit-learn's ``GaussianMixture`` did
that, but it brought scikit-learn and scipy (~170 MB) into every install for one fit; this is
the same model and the same procedure: full covariances with ``reg_covar`` added to their
diagonals, initial responsibilities from k-means (k-means++ seeding, Lloyd iterations), EM
until the mean log-likelihood gains less than ``tol``. tests/test_priors.py checks the
density against scikit-learn's ``score_samples`` for the same parameters and the fitted
likelihood against scikit-learn's fit of the same data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GaussianMixtureFit:
    weights: Tensor  # [m]
    means: Tensor  # [m, d]
    covariances: Tensor  # [m, d, d]
    mean_log_likelihood: float  # per point, nats, on the data it was fitted to
    iterations: int
    converged: bool


def log_density(z: Tensor, weights: Tensor, means: Tensor, covariances: Tensor) -> Tensor:
    """``log p(z)`` per row of ``z`` ``[n, d]`` under the mixture (nats)."""
    return torch.logsumexp(_weighted_log_probs(z, weights, means, covariances), dim=1)


def _weighted_log_probs(z: Tensor, weights: Tensor, means: Tensor, covariances: Tensor) -> Tensor:
    """``log w_j + log N(z_i; mu_j, Sigma_j)`` as ``[n, m]``."""
    d = z.shape[1]
    chol = torch.linalg.cholesky(covariances)  # [m, d, d]
    diff = (z[None, :, :] - means[:, None, :]).transpose(1, 2)  # [m, d, n]
    solved = torch.linalg.solve_triangular(chol, diff, upper=False)  # L^-1 (z - mu)
    mahalanobis = solved.square().sum(1)  # [m, n]
    log_det = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)  # [m]
    log_normal = -0.5 * (d * math.log(2 * math.pi) + log_det[:, None] + mahalanobis)
    return (torch.log(weights)[:, None] + log_normal).T


def _kmeans_labels(z: Tensor, m: int, generator: torch.Generator, iterations: int = 100) -> Tensor:
    """Cluster labels by k-means: k-means++ seeding, then Lloyd iterations until stable."""
    n = z.shape[0]
    centres = z[torch.randint(n, (1,), generator=generator)]
    for _ in range(1, m):
        nearest = torch.cdist(z, centres).min(1).values.square()
        if float(nearest.sum()) <= 0:  # fewer distinct points than components
            pick = torch.randint(n, (1,), generator=generator)
        else:
            pick = torch.multinomial(nearest / nearest.sum(), 1, generator=generator)
        centres = torch.cat([centres, z[pick]])
    labels = torch.cdist(z, centres).argmin(1)
    for _ in range(iterations):
        counts = torch.bincount(labels, minlength=m).to(z.dtype)
        sums = torch.zeros_like(centres).index_add_(0, labels, z)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        new = torch.cdist(z, centres).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def _maximisation(z: Tensor, resp: Tensor, reg_covar: float) -> tuple[Tensor, Tensor, Tensor]:
    n, d = z.shape
    counts = resp.sum(0) + 10 * torch.finfo(z.dtype).eps  # [m]; an empty component stays finite
    means = resp.T @ z / counts[:, None]
    diff = z[None, :, :] - means[:, None, :]  # [m, n, d]
    covariances = torch.einsum("mn,mnd,mne->mde", resp.T, diff, diff) / counts[:, None, None]
    covariances = covariances + reg_covar * torch.eye(d, dtype=z.dtype)
    return counts / n, means, covariances


def fit_gaussian_mixture(
    z: Tensor, components: int, *, seed: int = 0, reg_covar: float = 1e-6, max_iter: int = 200, tol: float = 1e-3
) -> GaussianMixtureFit:
    """Fit a ``components``-component full-covariance mixture to the rows of ``z`` ``[n, d]``."""
    z = z.detach().to("cpu", torch.float64)
    n = z.shape[0]
    if n < components:
        raise ValueError(f"{components} mixture components need at least as many points, got {n}")
    generator = torch.Generator().manual_seed(seed % 2**63)
    labels = _kmeans_labels(z, components, generator)
    resp = torch.nn.functional.one_hot(labels, components).to(z.dtype)
    weights, means, covariances = _maximisation(z, resp, reg_covar)
    previous = -math.inf
    converged = False
    iteration = 0
    for iteration in range(1, max_iter + 1):  # noqa: B007 - reported after the loop
        log_probs = _weighted_log_probs(z, weights, means, covariances)
        norm = torch.logsumexp(log_probs, dim=1)
        resp = torch.exp(log_probs - norm[:, None])
        weights, means, covariances = _maximisation(z, resp, reg_covar)
        current = float(norm.mean())
        if abs(current - previous) < tol:
            converged = True
            break
        previous = current
    final = float(log_density(z, weights, means, covariances).mean())
    return GaussianMixtureFit(
        weights=weights,
        means=means,
        covariances=covariances,
        mean_log_likelihood=final,
        iterations=iteration,
        converged=converged,
    )
