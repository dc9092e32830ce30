"""Evaluation of a model during training: draw samples, compute the configured metrics
(hpcdiff.metrics) and, for cold diffusion, reconstruction quality on held-out images.

Built once per run before the first epoch, so a missing asset (a classifier that must come
from `hpcdiff prepare`) fails the run at once instead of after hours of training.
"""

from __future__ import annotations

import time

import torch

from .data import Dataset, to_model_range
from .metrics import MetricContext, StatsCache, compute_metrics, reconstruction_metrics
from .spec import RunSpec

CLASSIFIER_METRICS = {"fid_classifier", "kid_classifier", "inception_score", "class_histogram"}
SAMPLE_BATCH = 250
REAL_IMAGES = 2000


class Evaluator:
    def __init__(self, spec: RunSpec, test: Dataset, device):
        self.spec = spec
        self.device = device
        self.metrics = tuple(spec.eval.metrics)
        self.classifier = None
        if CLASSIFIER_METRICS & set(self.metrics):
            from .classifier import get_classifier

            self.classifier = get_classifier(spec.data, device=device, train_if_missing=spec.eval.train_classifier,
                                             epochs=spec.eval.classifier_epochs or None)
        # Two disjoint halves of the held-out set: the reference statistics, and the images
        # cold-diffusion sampling and reconstructions start from (otherwise samples would be
        # restorations of the very images they are compared with).
        half = len(test) // 2
        n_real = min(half, REAL_IMAGES)
        self.real = to_model_range(test.images[:n_real], device)
        self.real_labels = test.labels[:n_real].to(device)
        self.starts = to_model_range(test.images[half:], device)
        self.start_labels = test.labels[half:].to(device)
        self.stats_cache = StatsCache()
        key = getattr(self.classifier, "cache_key", "none")
        self.real_id = f"{key}/test/{n_real}"

    @property
    def enabled(self) -> bool:
        return bool(self.metrics) or self._reconstructs

    @property
    def _reconstructs(self) -> bool:
        return self.spec.eval.reconstruction and self.spec.degradation.name != "gaussian"

    @torch.no_grad()
    def __call__(self, core, seed: int) -> dict[str, float]:
        tic = time.perf_counter()
        was_training = core.training
        core.eval()
        out: dict[str, float] = {}
        if self.metrics:
            samples = self._samples(core, seed)
            ctx = MetricContext(samples=samples, real=self.real, real_labels=self.real_labels,
                                classifier=self.classifier, device=self.device,
                                stats_cache=self.stats_cache, real_id=self.real_id, seed=seed)
            out.update(compute_metrics(self.metrics, ctx))
        if self._reconstructs:
            out.update(self._reconstructions(core, seed))
        core.train(was_training)
        out["eval_seconds"] = time.perf_counter() - tic
        return out

    def _samples(self, core, seed: int) -> torch.Tensor:
        # Fixed starts: epochs are compared on the same draws.
        g = torch.Generator().manual_seed(seed + 3_000_017)
        n, parts = self.spec.eval.samples, []
        shape = tuple(self.real.shape[1:])
        for start in range(0, n, SAMPLE_BATCH):
            k = min(SAMPLE_BATCH, n - start)
            x_T, _ = core.start(k, shape, generator=g, device=self.device, test_images=self.starts)
            parts.append(core.sample(x_T, generator=g))
        return torch.cat(parts)

    def _reconstructions(self, core, seed: int) -> dict[str, float]:
        """Held-out images degraded to level T, restored in one step (direct) and by the
        sampler (full), against the ground truth: the reports' per-digit table."""
        n = min(self.spec.eval.samples, len(self.starts))
        x0, labels = self.starts[:n], self.start_labels[:n]
        T = core.n_T
        out: dict[str, float] = {}
        direct, full, degraded = [], [], []
        for start in range(0, n, SAMPLE_BATCH):
            x = x0[start:start + SAMPLE_BATCH]
            x_T = core.degrade(x, torch.full((len(x),), T, dtype=torch.long, device=x.device),
                               core.level_generator(T))
            degraded.append(x_T)
            direct.append(core.reconstruct_direct(x_T, T))
            full.append(core.sample(x_T))
        for name, recon in (("degraded", degraded), ("direct", direct), ("full", full)):
            for key, value in reconstruction_metrics(torch.cat(recon), x0, labels).items():
                out[f"recon_{name}_{key}"] = value
        return out
