"""Sample-quality metrics, registered by name: ``compute_metrics(names, ctx)``.

Every metric is a function ``fn(ctx: MetricContext) -> dict[str, float]``, registered under a
name that ``hpcdiff.config.catalog.METRICS`` declares with its facts (its series and their
better direction, whether it needs the classifier, whether it is a default). Images
are float tensors N x 1 x 28 x 28 in the model range [-0.5, 0.5]. The maths (Fréchet
distance, KID, IS, reconstruction errors) is in ``hpcdiff.evaluation.stats``.

- ``fid_classifier`` / ``kid_classifier`` / ``inception_score`` / ``class_histogram`` use
  the per-dataset CNN of ``hpcdiff.evaluation.classifier`` (always available offline).
- ``fid_inception`` uses torchmetrics' FrechetInceptionDistance (torch-fidelity's
  Inception-v3) only when its weights file is already on disk (``hpcdiff prepare``
  fetches it); it never downloads.
- Statistics of the real images (features, mean, covariance) are cached in a
  ``StatsCache`` keyed by what produced them: the classifier's key, the identity of the
  real set and its size (never by a file name).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hpcdiff.config import catalog
from hpcdiff.config.registry import Registry
from hpcdiff.evaluation.classifier import Classifier, MissingAssetError, default_cache_dir
from hpcdiff.evaluation.stats import (
    frechet_distance,
    gaussian_fit,
    inception_score_from_logits,
    kernel_inception_distance,
    reconstruction_metrics,
    ssim_per_image,
    to_inception_input,
    to_unit_range,
)
from hpcdiff.evaluation.stats_cache import StatsCache

__all__ = [
    "METRICS",
    "METRIC_INFO",
    "DEFAULT_METRICS",
    "needs_classifier",
    "MetricContext",
    "NonFiniteSamples",
    "StatsCache",
    "MissingAssetError",
    "compute_metrics",
    "reconstruction_metrics",
    "frechet_distance",
    "gaussian_fit",
    "kernel_inception_distance",
    "inception_score_from_logits",
    "to_inception_input",
    "to_unit_range",
    "find_inception_weights",
    "inception_weights_candidates",
    "INCEPTION_WEIGHTS_FILE",
]

METRICS: Registry[Callable[[MetricContext], dict[str, float]]] = Registry("metric", declared=catalog.METRICS)
METRIC_INFO = catalog.METRICS
DEFAULT_METRICS = catalog.DEFAULT_METRICS


def _metric(name: str):
    return METRICS.register(name)


def needs_classifier(names) -> bool:
    """Whether any of the named metrics is computed on the dataset classifier."""
    return any(METRIC_INFO[n].needs_classifier for n in names if n in METRIC_INFO)


# torch-fidelity's Inception-v3 (the weights torchmetrics' FID uses). torch-fidelity fetches it
# with torch.hub.load_state_dict_from_url, which stores it as
# ``<torch.hub.get_dir()>/checkpoints/<basename of the URL>`` (torch.hub.get_dir() is
# ``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``). ``hpcdiff prepare`` copies it into
# ``<hpcdiff cache>/inception/`` as well, so a cache directory on shared storage is enough.
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_WEIGHTS_FILE = INCEPTION_WEIGHTS_URL.rsplit("/", 1)[-1]


# ------------------------------------------------------------------------- context and cache


@dataclass
class MetricContext:
    samples: torch.Tensor  # N x 1 x 28 x 28 in [-0.5, 0.5]
    real: torch.Tensor | None = None  # held-out real images, same format
    real_labels: torch.Tensor | None = None
    classifier: Classifier | None = None  # get_classifier(...) or None
    device: str | torch.device = "cpu"  # for fid_inception; classifier metrics run where the classifier is
    stats_cache: StatsCache = field(default_factory=StatsCache)
    # Identity of the real set (e.g. "<classifier key>/test"); None = a hash of its content.
    real_id: str | None = None
    # Where fid_inception looks for weights; None = $HPCDIFF_CACHE or ~/.cache/hpcdiff.
    cache_dir: str | Path | None = None
    seed: int = 0  # for IS splits and KID subsets
    _memo: dict = field(default_factory=dict, repr=False)

    def need_classifier(self, metric: str) -> Classifier:
        if self.classifier is None:
            raise ValueError(
                f"metric {metric!r} needs the dataset's classifier "
                f"(hpcdiff.evaluation.classifier.get_classifier); MetricContext.classifier is None"
            )
        return self.classifier

    def need_real(self, metric: str) -> torch.Tensor:
        if self.real is None:
            raise ValueError(f"metric {metric!r} needs real images; MetricContext.real is None")
        return self.real

    def sample_outputs(self, metric: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) of the samples; computed once per context."""
        if "samples" not in self._memo:
            clf = self.need_classifier(metric)
            self._memo["samples"] = clf.outputs(self.samples)
        return self._memo["samples"]

    def real_identity(self) -> str:
        if self.real_id is not None:
            return self.real_id
        if "real_id" not in self._memo:
            real = self.need_real("real identity").detach().float().cpu().contiguous()
            h = hashlib.sha256(str(tuple(real.shape)).encode())
            h.update(real.numpy().tobytes())
            self._memo["real_id"] = "sha256:" + h.hexdigest()[:16]
        return self._memo["real_id"]

    def classifier_identity(self) -> str:
        clf = self.need_classifier("classifier identity")
        if clf.cache_key:
            return clf.cache_key
        if "clf_id" not in self._memo:  # an uncached classifier: identified by its weights
            h = hashlib.sha256()
            for k, v in sorted(clf.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
            self._memo["clf_id"] = "weights:" + h.hexdigest()[:16]
        return self._memo["clf_id"]

    def real_feature_stats(self, metric: str = "") -> dict[str, torch.Tensor]:
        """Classifier features of the real set with their Gaussian fit, via the stats cache."""
        real = self.need_real(metric)
        clf = self.need_classifier(metric)
        info = {
            "kind": "classifier_features",
            "classifier": self.classifier_identity(),
            "real": self.real_identity(),
            "n": int(real.shape[0]),
        }

        def compute():
            feats, _ = clf.outputs(real)
            mu, sigma = gaussian_fit(feats)
            return {"features": feats.float(), "mu": mu, "sigma": sigma}

        return self.stats_cache.get(info, compute)


class NonFiniteSamples(ValueError):
    """Samples holding NaN or infinity: no metric of them means anything."""

    def __init__(self, n_bad: int, n: int, names):
        self.n_bad, self.n = n_bad, n
        super().__init__(
            f"{n_bad} of {n} samples are not finite (NaN or infinity), so "
            f"{', '.join(names)} cannot be computed: the model or its sampler diverged"
        )


def compute_metrics(names, ctx: MetricContext) -> dict[str, float]:
    """Run the named metrics (unknown names fail before anything is computed). Samples that
    are not all finite raise ``NonFiniteSamples`` instead of failing deep in linear algebra."""
    fns = [METRICS.get(n) for n in names]
    bad = int((~torch.isfinite(ctx.samples.flatten(1))).any(1).sum())
    if bad:
        raise NonFiniteSamples(bad, len(ctx.samples), names)
    out: dict[str, float] = {}
    for fn in fns:
        out.update({k: float(v) for k, v in fn(ctx).items()})
    return out


# ------------------------------------------------------------------------------- metrics


@_metric("fid_classifier")
def fid_classifier(ctx: MetricContext) -> dict[str, float]:
    """Frechet distance between Gaussian fits of the classifier's 128-d penultimate features
    of the samples and of the real set (real statistics cached)."""
    feats, _ = ctx.sample_outputs("fid_classifier")
    real = ctx.real_feature_stats("fid_classifier")
    mu, sigma = gaussian_fit(feats)
    return {"fid_classifier": frechet_distance(mu, sigma, real["mu"], real["sigma"])}


@_metric("kid_classifier")
def kid_classifier(ctx: MetricContext) -> dict[str, float]:
    feats, _ = ctx.sample_outputs("kid_classifier")
    real = ctx.real_feature_stats("kid_classifier")
    mean, std = kernel_inception_distance(feats, real["features"], seed=ctx.seed)
    return {"kid_classifier": mean, "kid_classifier_std": std}


@_metric("inception_score")
def inception_score(ctx: MetricContext) -> dict[str, float]:
    """Inception Score with the dataset classifier's logits, 10 splits."""
    _, logits = ctx.sample_outputs("inception_score")
    mean, std = inception_score_from_logits(logits, splits=10, seed=ctx.seed)
    return {"inception_score": mean, "inception_score_std": std}


@_metric("class_histogram")
def class_histogram(ctx: MetricContext) -> dict[str, float]:
    """Fraction of samples per predicted class, and the histogram's entropy / log(n_classes)
    (1 = uniform over classes, 0 = every sample the same class: mode collapse)."""
    _, logits = ctx.sample_outputs("class_histogram")
    n_classes = logits.shape[1]
    counts = torch.bincount(logits.argmax(1).cpu(), minlength=n_classes).double()
    p = counts / counts.sum().clamp(min=1)
    nz = p[p > 0]
    entropy = max(0.0, float(-(nz * nz.log()).sum() / math.log(n_classes)))
    out = {f"class_{c}": float(p[c]) for c in range(n_classes)}
    out["class_entropy"] = entropy
    return out


@_metric("diversity")
def diversity(ctx: MetricContext) -> dict[str, float]:
    """Trace of the sample covariance of the flattened images (report B's diversity): the sum
    over the 784 pixels of each pixel's variance across samples. Units: squared intensity
    with the full intensity range = 1 (the [-0.5, 0.5] model range and [0, 1] give the same
    value; uint8 pixels would give 255^2 times more). Copies of one image give 0; real
    MNIST digits give ~52."""
    x = ctx.samples.detach().double().flatten(1)
    if x.shape[0] < 2:
        raise ValueError("diversity needs at least 2 samples")
    return {"diversity_trace": float(((x - x.mean(0)) ** 2).sum() / (x.shape[0] - 1))}


@_metric("ssim")
def ssim(ctx: MetricContext) -> dict[str, float]:
    """Mean SSIM (the standard definition, :func:`ssim_per_image`) between each sample and
    the real image paired with it (same index), on [0, 1] images with data_range 1; for
    reconstructions against their ground truth."""
    real = ctx.need_real("ssim")
    if real.shape != ctx.samples.shape:
        raise ValueError(
            f"ssim pairs samples with real images: shapes {tuple(ctx.samples.shape)} and {tuple(real.shape)} differ"
        )
    return {"ssim": float(ssim_per_image(to_unit_range(ctx.samples), to_unit_range(real)).mean())}


# ---------------------------------------------------------------------------- Inception FID


@_metric("tsne_kl")
def tsne_kl(ctx: MetricContext) -> dict[str, float]:
    """Report B's analysis: a 2-D t-SNE of the classifier features of up to 200 samples and
    up to 2,000 real held-out images (embedded together), a 10-component Gaussian mixture
    fitted to each embedded set, and KL(P_real || Q_samples) by Monte Carlo (nats).
    An optional extra: needs scikit-learn (`pip install 'hpcdiff[tsne]'`); off by default."""
    try:
        from sklearn.manifold import TSNE
        from sklearn.mixture import GaussianMixture
    except ImportError:
        raise MissingAssetError("tsne_kl needs scikit-learn: pip install 'hpcdiff[tsne]'") from None
    import numpy as np

    clf = ctx.need_classifier("tsne_kl")
    sample_features, _ = ctx.sample_outputs("tsne_kl")
    real = ctx.need_real("tsne_kl")[:2000]
    real_features, _ = clf.outputs(real)
    fs = sample_features[:200].double().cpu().numpy()
    fr = real_features.double().cpu().numpy()
    both = np.concatenate([fs, fr])
    perplexity = float(min(30.0, (len(both) - 1) / 3))
    embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=ctx.seed).fit_transform(both)
    es, er = embedded[: len(fs)], embedded[len(fs) :]
    k = min(10, len(es), len(er))
    p = GaussianMixture(k, random_state=ctx.seed, reg_covar=1e-3).fit(er)
    q = GaussianMixture(k, random_state=ctx.seed, reg_covar=1e-3).fit(es)
    draws, _ = p.sample(20_000)
    return {"tsne_kl": float(np.mean(p.score_samples(draws) - q.score_samples(draws)))}


def inception_weights_candidates(cache_dir=None) -> list[Path]:
    """Where fid_inception looks, in order: the hpcdiff cache, then torch hub's checkpoint
    directory (where torch-fidelity's own download puts it)."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return [
        cache / "inception" / INCEPTION_WEIGHTS_FILE,
        Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE,
    ]


def find_inception_weights(cache_dir=None) -> Path:
    """The Inception weights file on disk, or MissingAssetError; never downloads."""
    candidates = inception_weights_candidates(cache_dir)
    for path in candidates:
        if path.is_file():
            return path
    raise MissingAssetError(
        "fid_inception needs torch-fidelity's Inception-v3 weights, which are not cached (looked for "
        + " and ".join(str(p) for p in candidates)
        + "). Compute nodes have no internet: run `hpcdiff prepare` with Inception enabled on a login node, "
        "or drop fid_inception (fid_classifier needs no download)."
    )


def _require_torch_fidelity() -> None:
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise MissingAssetError(
            "fid_inception needs the package torch-fidelity (pip install torch-fidelity, "
            "or torchmetrics[image]), then `hpcdiff prepare` for its weights"
        ) from None


@_metric("fid_inception")
def fid_inception(ctx: MetricContext) -> dict[str, float]:
    """torchmetrics' FrechetInceptionDistance (2048-d pool features) on uint8 3-channel
    copies of the images. The weights path is passed explicitly, so nothing is downloaded;
    the metric object with the real features is kept in the stats cache."""
    path = find_inception_weights(ctx.cache_dir)  # before anything could trigger a download
    _require_torch_fidelity()
    from torchmetrics.image.fid import FrechetInceptionDistance

    real = ctx.need_real("fid_inception")
    batch = 100
    info = {
        "kind": "inception_fid",
        "weights": path.name,
        "real": ctx.real_identity(),
        "n": int(real.shape[0]),
        "device": str(ctx.device),
    }

    def build():
        metric = FrechetInceptionDistance(
            feature=2048, reset_real_features=False, normalize=False, feature_extractor_weights_path=str(path)
        ).to(ctx.device)
        for i in range(0, real.shape[0], batch):
            metric.update(to_inception_input(real[i : i + batch]).to(ctx.device), real=True)
        return metric

    metric = ctx.stats_cache.memo(info, build)
    metric.reset()  # clears the fake features only (reset_real_features=False)
    for i in range(0, ctx.samples.shape[0], batch):
        metric.update(to_inception_input(ctx.samples[i : i + batch]).to(ctx.device), real=False)
    return {"fid_inception": float(metric.compute())}


METRICS.seal()
