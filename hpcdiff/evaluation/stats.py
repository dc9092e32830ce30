"""The pure maths of the sample-quality metrics: Gaussian fits and the Fréchet distance,
kernel (KID) and Inception-score estimates, reconstruction errors (MSE, SSIM), and the
image conversions they take. Tensors in,
numbers out: no classifier, no cache, no files.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hpcdiff.data import to_uint8

__all__ = [
    "gaussian_fit",
    "frechet_distance",
    "kernel_inception_distance",
    "inception_score_from_logits",
    "to_unit_range",
    "to_inception_input",
    "reconstruction_metrics",
]


def gaussian_fit(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance, float64."""
    f = features.detach().double()
    if f.shape[0] < 2:
        raise ValueError(f"a Gaussian fit needs at least 2 feature vectors, got {f.shape[0]}")
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def _sym(a: torch.Tensor) -> torch.Tensor:
    return (a + a.T) / 2


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2).

    Both covariances are symmetric PSD, so the matrix square roots come from eigh (no scipy,
    no complex parts): tr((S1 S2)^1/2) = sum of sqrt(eigenvalues of S1^1/2 S2 S1^1/2)."""
    mu1, mu2, s1, s2 = (t.detach().double().cpu() for t in (mu1, mu2, sigma1, sigma2))
    if not all(bool(torch.isfinite(t).all()) for t in (mu1, mu2, s1, s2)):
        raise ValueError(
            "the Fréchet distance needs finite means and covariances; got NaN or infinity "
            "(features of non-finite images?)"
        )
    w, v = torch.linalg.eigh(_sym(s1))
    s1_half = (v * w.clamp(min=0).sqrt()) @ v.T
    m = _sym(s1_half @ s2 @ s1_half)
    tr_covmean = torch.linalg.eigvalsh(m).clamp(min=0).sqrt().sum()
    d = (mu1 - mu2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean
    return float(d)


def kernel_inception_distance(
    f1: torch.Tensor, f2: torch.Tensor, *, n_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Unbiased MMD^2 with the polynomial kernel (x.y/d + 1)^3 (Binkowski et al. 2018),
    mean and std over random subsets, as torchmetrics' KID."""
    f1, f2 = f1.detach().double().cpu(), f2.detach().double().cpu()
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    d = f1.shape[1]
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(n_subsets):
        x = f1[torch.randperm(f1.shape[0], generator=g)[:m]]
        y = f2[torch.randperm(f2.shape[0], generator=g)[:m]]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (
            (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
            + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
            - 2 * kxy.mean()
        )
        vals.append(mmd)
    t = torch.stack(vals)
    # torchmetrics' KID reports the population std over subsets (unbiased=False).
    return float(t.mean()), float(t.std(unbiased=False))


def inception_score_from_logits(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split of a seeded shuffle (so that class-sorted inputs
    do not give one class per split); mean and std over splits. In [1, n_classes]."""
    logits = logits.detach().double().cpu()
    perm = torch.randperm(logits.shape[0], generator=torch.Generator().manual_seed(seed))
    logp = F.log_softmax(logits[perm], dim=1)
    scores = []
    for chunk in logp.chunk(splits):
        p = chunk.exp()
        log_py = torch.logsumexp(chunk, 0) - math.log(chunk.shape[0])
        scores.append((p * (chunk - log_py)).sum(1).mean().exp())
    t = torch.stack(scores)
    return float(t.mean()), float(t.std()) if len(scores) > 1 else 0.0


SSIM_WINDOW = 11


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-0.5, 0.5] model range -> [0, 1], clamped (samples overshoot)."""
    return (x.detach().float() + 0.5).clamp(0.0, 1.0)


def to_inception_input(x: torch.Tensor) -> torch.Tensor:
    """[-0.5, 0.5] N x 1 x H x W -> uint8 N x 3 x H x W, what torch-fidelity's Inception takes
    (torchmetrics FID with normalize=False; it resizes to 299 itself). Shift, clamp, then
    round: casting the model range straight to uint8 wraps negatives (the public-code bug)."""
    u8 = to_uint8(x)
    if u8.shape[1] == 1:
        u8 = u8.repeat(1, 3, 1, 1)
    return u8


def ssim_per_image(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each image pair as Wang et al. (2004) define it: an 11x11 Gaussian window of
    sigma 1.5, K1 = 0.01, K2 = 0.03, averaged over the windows that lie inside the image
    (as scikit-image, pytorch-msssim, piq and torchmetrics <= 1.4.1 do; torchmetrics >= 1.4.2
    pads and averages over the border too, which on 28x28 digits is most of the map).
    Computed by pytorch-msssim in float64; channels averaged. ``[N]`` float64."""
    from pytorch_msssim import ssim

    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two [N, C, H, W] batches of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {tuple(x.shape[-2:])}")
    return ssim(
        x.detach().double(),
        y.detach().double(),
        data_range=data_range,
        size_average=False,
        win_size=SSIM_WINDOW,
        win_sigma=1.5,
        K=(0.01, 0.03),
    )


def reconstruction_metrics(
    recon: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor | None = None, *, n_classes: int = 10
) -> dict[str, float]:
    """MSE and SSIM of reconstructions against their ground truth, overall and per class
    (``mse_class_3``, ``ssim_class_3``, ... for the classes present), e.g. for cold
    diffusion's direct (one-step) vs full-sampler table. MSE is the mean per-pixel squared
    error with the intensity range = 1 (model range or [0, 1]; after clamping to it); SSIM is
    :func:`ssim_per_image`."""
    if recon.shape != truth.shape:
        raise ValueError(f"recon {tuple(recon.shape)} and truth {tuple(truth.shape)} differ in shape")
    r, t = to_unit_range(recon), to_unit_range(truth)
    mse = (r - t).double().square().flatten(1).mean(1)
    ssim_each = ssim_per_image(r, t)
    out = {"mse": float(mse.mean()), "ssim": float(ssim_each.mean())}
    if labels is not None:
        labels = labels.detach().cpu()
        for c in range(n_classes):
            sel = labels == c
            if sel.any():
                out[f"mse_class_{c}"] = float(mse.cpu()[sel].mean())
                out[f"ssim_class_{c}"] = float(ssim_each.cpu()[sel].mean())
    return out
