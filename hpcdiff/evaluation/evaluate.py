"""Evaluation of a model during training: draw samples, compute the configured metrics
(hpcdiff.evaluation.metrics) and, for cold diffusion, reconstruction quality on held-out images.

Built once per run before the first epoch, so a missing asset (a classifier that must come
from `hpcdiff prepare`) fails the run at once instead of after hours of training.

Cost. Drawing the samples is nearly all of an evaluation (the metrics take a fraction of a
second), so evaluation samples use ``eval.sampler`` on ``eval.steps`` steps (DDIM on 50
steps for a Gaussian DDPM by default) instead of the run's own sampler on all n_T steps, and
every process of a multi-process run draws its share of them. The draws are split into
fixed chunks, each with its own generator, so the sample set is the same whatever the
number of processes. For cold diffusion started from degraded held-out images, the samples
are also the full-sampler reconstructions of those images: one sampling pass serves both.
"""

from __future__ import annotations

import contextlib
import logging
import time
from contextlib import contextmanager

import torch

from hpcdiff.config.spec import RunSpec
from hpcdiff.data import Dataset, clamp_to_model_range, to_model_range
from hpcdiff.evaluation.metrics import MetricContext, NonFiniteSamples, StatsCache, compute_metrics, needs_classifier
from hpcdiff.evaluation.stats import reconstruction_metrics
from hpcdiff.science.degradations import is_gaussian
from hpcdiff.science.diffusion import sampling_device
from hpcdiff.science.streams import generator as stream_generator

log = logging.getLogger(__name__)

REAL_IMAGES = 2000
HELD_OUT_SEED = 20_221_219
# Draws per chunk: each chunk has its own generator, so this fixes the sample set (the same
# on every device and number of processes). 128 is where the starter CNN runs fastest per
# image on a CPU, and the default 500 samples spread over the 4 GPUs of a node.
EVAL_CHUNK = 128
RECONSTRUCTION_KEYS = ("samples", "degraded", "direct")


def eval_chunks(n: int) -> list[tuple[int, int, int]]:
    """(chunk, first draw, draws) of ``n`` evaluation draws."""
    return [(c, start, min(EVAL_CHUNK, n - start)) for c, start in enumerate(range(0, n, EVAL_CHUNK))]


@contextmanager
def eval_mode(model):
    """The model in eval mode (dropout off) for the block, then back to the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class Evaluator:
    """Every process of a run builds one and calls it at the same epochs (they share the
    sampling); only the main process (``main=True``) loads the classifier and returns
    metrics."""

    def __init__(self, spec: RunSpec, test: Dataset, device, *, main: bool = True, rank: int = 0, world: int = 1):
        self.spec = spec
        self.device = device
        self.main, self.rank, self.world = main, rank, world
        self.metrics = tuple(spec.eval.metrics)
        self.classifier = None
        if main and needs_classifier(self.metrics):
            from hpcdiff.evaluation.reference import scoring_classifier

            self.classifier = scoring_classifier(
                spec.data,
                spec.eval.classifier,
                device=device,
                train_if_missing=spec.eval.train_classifier,
                epochs=spec.eval.classifier_epochs or None,
            )
        # Two disjoint halves of the held-out set: the reference statistics, and the images
        # cold-diffusion sampling and reconstructions start from (otherwise samples would be
        # restorations of the very images they are compared with).
        # A fixed shuffle first: a held-out set may be sorted by label (mnist-5k's is), and
        # each half must hold every class.
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(HELD_OUT_SEED))
        images, labels = test.images[order], test.labels[order]
        half = len(test) // 2
        n_real = min(half, REAL_IMAGES)
        self.real = to_model_range(images[:n_real], device)
        self.real_labels = labels[:n_real].to(device)
        self.starts = to_model_range(images[half:], device)
        self.start_labels = labels[half:].to(device)
        self.stats_cache = StatsCache()
        key = getattr(self.classifier, "cache_key", "none")
        self.real_id = f"{key}/test-shuffled-{HELD_OUT_SEED}/{n_real}"

    @property
    def enabled(self) -> bool:
        return bool(self.metrics) or self._reconstructs

    @property
    def _reconstructs(self) -> bool:
        return self.spec.eval.reconstruction and not is_gaussian(self.spec.degradation.name)

    def _sampling_reconstructs(self, core) -> bool:
        """Samples start from maximally degraded held-out images: they are reconstructions."""
        return self._reconstructs and getattr(core, "sample_start", "") == "degraded_test"

    def passes(self, core) -> list[tuple[str, int, bool]]:
        """The sample sets ``__call__`` draws: (name, how many, whether they are
        reconstructions of held-out images)."""
        shared = self._sampling_reconstructs(core)
        out = []
        if self.metrics or shared:
            out.append(("samples", self.spec.eval.samples, shared))
        if self._reconstructs and not shared:
            out.append(("reconstructions", min(self.spec.eval.samples, len(self.starts)), True))
        return out

    @torch.no_grad()
    def __call__(self, core, seed: int, drawn: dict | None = None) -> dict[str, float]:
        """Metrics of the current weights (main process; the others return {}). ``drawn``:
        the sample sets of ``passes`` drawn already (a fused group draws its members' at
        once: ``draw_together``), else they are drawn here."""
        tic = time.perf_counter()
        out: dict[str, float] = {}
        with eval_mode(core):
            if drawn is None:
                drawn = {name: self._draw(core, seed, n, reconstruct) for name, n, reconstruct in self.passes(core)}
        for name, _n, reconstruct in self.passes(core):
            if name == "samples" and self.main and self.metrics:
                ctx = MetricContext(
                    samples=drawn[name]["samples"],
                    real=self.real,
                    real_labels=self.real_labels,
                    classifier=self.classifier,
                    device=self.device,
                    stats_cache=self.stats_cache,
                    real_id=self.real_id,
                    seed=seed,
                )
                try:
                    out.update(compute_metrics(self.metrics, ctx))
                except NonFiniteSamples as err:
                    # The weights were finite (training checks them), so this is the
                    # sampler: recorded and said, and the metrics of this epoch read NaN.
                    log.warning("evaluation: %s; this epoch's metrics are recorded as NaN", err)
                    out["nonfinite_samples"] = float(err.n_bad)
            if reconstruct and self.main:
                out.update(self._reconstruction_table(drawn[name]))
        if self.main:
            out["eval_seconds"] = time.perf_counter() - tic
        return out

    # ------------------------------------------------------------------ drawing

    @torch.no_grad()
    def samples(self, core, seed: int) -> torch.Tensor:
        """The evaluation samples of the current weights, on every process (each draws its
        share): the images the metrics are computed on."""
        with eval_mode(core):
            return self._draw(core, seed, self.spec.eval.samples, self._sampling_reconstructs(core))["samples"]

    def _sample(self, core, x_T, generator):
        return core.sample(x_T, generator=generator, sampler=self.spec.eval.sampler, steps=self.spec.eval.steps)

    def chunk_generator(self, seed: int, c: int) -> torch.Generator:
        # One generator per chunk: the same draws whoever computes them, at every epoch.
        return stream_generator(seed, "eval_chunk", c, device=sampling_device(self.device))

    def _draw(self, core, seed: int, n: int, reconstruct: bool) -> dict[str, torch.Tensor]:
        """Fixed chunks of ``n`` draws, this process taking every world-th chunk, assembled
        in chunk order on every process."""
        chunks = eval_chunks(n)
        mine = {}
        for c, start, k in chunks[self.rank :: self.world]:
            g = self.chunk_generator(seed, c)
            begun = self.chunk_start(core, start, k, g, reconstruct)
            mine[c] = self.chunk_end(begun, self._sample(core, begun["x_T"], g))
        keys = RECONSTRUCTION_KEYS if reconstruct else ("samples",)
        if self.world == 1:
            return {key: torch.cat([mine[c][key] for c, _, _ in chunks]) for key in keys}
        return self._gather(chunks, mine, keys)

    def _gather(self, chunks, mine, keys) -> dict[str, torch.Tensor]:
        import torch.distributed as dist

        # One padded buffer per process (all_gather needs equal shapes); unpacked by chunk.
        per_rank = -(-len(chunks) // self.world)
        shape = tuple(self.real.shape[1:])
        width = len(keys) * shape[0]
        buf = torch.zeros(per_rank * EVAL_CHUNK, width, *shape[1:], device=self.device)
        for j, (c, _start, k) in enumerate(chunks[self.rank :: self.world]):
            buf[j * EVAL_CHUNK : j * EVAL_CHUNK + k] = torch.cat([mine[c][key] for key in keys], dim=1)
        bufs = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(bufs, buf)
        parts = []
        for c, _start, k in chunks:
            j = c // self.world
            parts.append(bufs[c % self.world][j * EVAL_CHUNK : j * EVAL_CHUNK + k])
        packed = torch.cat(parts)
        return dict(zip(keys, packed.split(shape[0], dim=1)))

    def chunk_start(self, core, start: int, k: int, g: torch.Generator, reconstruct: bool) -> dict:
        """Chunk ``start .. start + k``'s starts x_T, drawn from ``g`` (and for reconstructions
        the degraded held-out images and their one-step restorations)."""
        if not reconstruct:
            x_T, _ = core.start(k, tuple(self.real.shape[1:]), generator=g, device=self.device, test_images=self.starts)
            return {"x_T": x_T}
        # Held-out images in a fixed order (cycled when there are more samples than images).
        idx = torch.arange(start, start + k, device=self.starts.device) % len(self.starts)
        x_T = core.degrade_to_start(self.starts[idx], g)
        return {"x_T": x_T, "degraded": x_T, "direct": clamp_to_model_range(core.reconstruct_direct(x_T, core.n_T))}

    @staticmethod
    def chunk_end(begun: dict, samples: torch.Tensor) -> dict[str, torch.Tensor]:
        # Metrics score the images a user would see, not the sampler's overshoot.
        return {"samples": clamp_to_model_range(samples), **{k: v for k, v in begun.items() if k != "x_T"}}

    def _reconstruction_table(self, drawn: dict[str, torch.Tensor]) -> dict[str, float]:
        """Held-out images degraded to level T, restored in one step (direct) and by the
        sampler (full), against the ground truth: the reports' per-digit table. Each
        held-out image counts once."""
        n = min(len(drawn["samples"]), len(self.starts))
        x0, labels = self.starts[:n], self.start_labels[:n]
        out: dict[str, float] = {}
        for name, key in (("degraded", "degraded"), ("direct", "direct"), ("full", "samples")):
            for metric, value in reconstruction_metrics(drawn[key][:n], x0, labels).items():
                out[f"recon_{name}_{metric}"] = value
        return out


@torch.no_grad()
def draw_together(members: list[tuple[Evaluator, object, int]], fused) -> list[dict]:
    """The sample sets of K members' evaluations drawn at once, for ``Evaluator.__call__(...,
    drawn=)``: ``members`` are (evaluator, process with the weights to evaluate, seed), one
    process in one piece (no data parallelism), sharing the evaluation settings; ``fused`` is
    their science.fused_sampling.FusedProcess. Each chunk's starts come from each member's own
    chunk generator, then one fused sampler runs all members' chunks: every member gets the
    draws its evaluation alone makes."""
    first, core0, _ = members[0]
    plan = first.passes(core0)
    if any(ev.world > 1 or ev.passes(core) != plan or ev.spec.eval != first.spec.eval for ev, core, _ in members):
        raise ValueError("members whose evaluations differ are evaluated apart")
    out: list[dict] = [{} for _ in members]
    sampler, steps = first.spec.eval.sampler, first.spec.eval.steps
    with contextlib.ExitStack() as stack:
        for _, core, _ in members:
            stack.enter_context(eval_mode(core))
        for name, n, reconstruct in plan:
            parts: list[list[dict]] = [[] for _ in members]
            for c, start, k in eval_chunks(n):
                gens = [ev.chunk_generator(seed, c) for ev, _, seed in members]
                begun = [ev.chunk_start(core, start, k, g, reconstruct) for (ev, core, _), g in zip(members, gens)]
                x = fused.sample(torch.stack([b["x_T"] for b in begun]), gens, sampler=sampler, steps=steps)
                for i, b in enumerate(begun):
                    parts[i].append(Evaluator.chunk_end(b, x[i]))
            for i, chunks in enumerate(parts):
                out[i][name] = {key: torch.cat([p[key] for p in chunks]) for key in chunks[0]}
    return out
