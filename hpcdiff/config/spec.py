"""Typed, frozen run specifications and their strict validation.

A ``RunSpec`` is everything that defines one training run. It is built only through
``RunSpec.from_dict``, which rejects unknown keys (naming the nearest valid one), wrong
types and out-of-range values, so that a typo in a sweep file never silently falls back to
a default. Stdlib only: the CLI validates a sweep before importing torch.

The value checks and ``SpecError`` are in ``config.checks``, the ``[model]`` section in
``config.model_spec``, the ``[slurm]`` section in ``config.slurm_spec``, the ``[log]`` section
in ``config.log_spec``; all are re-exported here.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields

from hpcdiff.config import catalog
from hpcdiff.config.checks import (
    INT64_MAX,
    MAX_STRING,
    SpecError,
    check,
    check_text,
    choice_msg,
    coerce,
    unknown_key_msg,
)
from hpcdiff.config.log_spec import LogSpec
from hpcdiff.config.model_spec import ModelSpec
from hpcdiff.config.registry import unknown_name_message
from hpcdiff.config.slurm_spec import SlurmSpec

__all__ = [  # SpecError, check_text and SlurmSpec live beside their kin; import them from here or there
    "SpecError",
    "check_text",
    "SlurmSpec",
    "RunSpec",
    "SECTIONS",
    "DataSpec",
    "ModelSpec",
    "DiffusionSpec",
    "DegradationSpec",
    "TrainSpec",
    "EvalSpec",
    "LogSpec",
    "INT64_MAX",
    "MAX_STRING",
    "SEED_LIMIT",
]


DATASETS = tuple(catalog.DATASETS)
OPTIMIZERS = ("adam", "adamw")
LOSSES = ("mse", "l1", "l2")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "no", "bf16", "fp16")
# How the training step runs: "auto" = CUDA graphs on one CUDA process, eager elsewhere.
COMPILE_MODES = ("auto", "none", "graph")


# Upper bounds on sizes: a value past these would exhaust memory or never finish, and is
# always a typo (an extra zero, a seconds/minutes mix-up) rather than an experiment.
MAX_N_T = 100_000  # diffusion levels; the recipes use 20..2000
MAX_IMAGES = 100_000  # images generated at once (n_samples, eval.samples); FID uses 10k-50k
MAX_BATCH = 65_536
MAX_EPOCHS = 1_000_000
# Seeds are handed to numpy / accelerate's set_seed, which reject anything outside uint32.
SEED_LIMIT = 2**32
# A training-time budget past a year is a typo (minutes for seconds, an extra zero).
MAX_BUDGET_MINUTES = 525_600.0


@dataclass(frozen=True)
class DataSpec:
    name: str = "mnist-5k"
    # Where torchvision datasets live / are downloaded to, or the IDX directory for name="idx".
    root: str = "~/.cache/hpcdiff/data"
    # Downloading is for login nodes; compute nodes have no internet, so it is opt-in.
    download: bool = False
    # Use only the first N training images (after a seeded shuffle) for quick runs; 0 = all.
    subset: int = 0
    val_fraction: float = 0.2

    def validate(self, p: str) -> None:
        check(self.name in DATASETS, f"{p}.name", choice_msg(self.name, DATASETS))
        check(self.subset >= 0, f"{p}.subset", f"must be >= 0, got {self.subset}")
        check(self.root != "", f"{p}.root", "must not be empty")
        check(0.0 <= self.val_fraction < 1.0, f"{p}.val_fraction", f"must be in [0, 1), got {self.val_fraction}")


SAMPLE_STARTS = ("auto", "noise", "degraded_test", "channel_mean", "prior")

#: What the samples of each start measure. A generation starts from nothing a test image
#: gave it (noise, a prior fitted on training images at level T; Bansal's channel-mean start
#: keeps one number per channel of a test image, not its digit); a restoration starts from
#: maximally degraded held-out test images, so its IS/FID measure how well test digits are
#: recovered and are never ranked beside generations.
START_MEASURES = {
    "noise": "generation",
    "prior": "generation",
    "channel_mean": "generation",
    "degraded_test": "restoration",
}


def start_measures(sample_start: str) -> str:
    """ "generation" or "restoration" for a resolved sample_start (old configs: "" -> generation
    from noise, the only start a run without one could have had)."""
    return START_MEASURES.get(sample_start or "noise", "generation")


@dataclass(frozen=True)
class DiffusionSpec:
    # Number of steps T; 0 = the degradation's recipe (1000 for gaussian, Bansal's for blur...).
    # Resolved to a number when the sweep is expanded, so config.toml always holds it.
    n_T: int = 0
    # The Gaussian DDPM's linear beta schedule (ignored by cold diffusion).
    beta1: float = 1e-4
    beta2: float = 0.02
    # "mse"/"l2" or "l1". Gaussian: on the predicted noise; cold: on the restored x0.
    loss: str = "mse"
    # "auto": ancestral for gaussian, cold_alg2 (Bansal's Algorithm 2) otherwise.
    sampler: str = "auto"
    # Steps (levels) the sampler visits, evenly spaced; 0 = all n_T. Skipping steps is exact
    # for ddim and cold_alg2, and respaces the betas for ancestral.
    sample_steps: int = 0
    # Where sampling starts (START_MEASURES says which starts generate and which restore):
    # "noise" (gaussian); "prior", a Gaussian mixture fitted on the training images at level
    # T, for degradations whose level T forgets the image; "degraded_test", maximally
    # degraded held-out test images (a restoration); "channel_mean", Bansal's blur start (each
    # channel's mean of a test image plus start_noise). "auto": noise for gaussian,
    # "degraded_test" otherwise (resolve.py says why).
    sample_start: str = "auto"
    start_noise: float = 0.002

    def validate(self, p: str) -> None:
        check(self.n_T == 0 or self.n_T >= 2, f"{p}.n_T", f"must be >= 2 (or 0 for the recipe), got {self.n_T}")
        check(self.n_T <= MAX_N_T, f"{p}.n_T", f"must be <= {MAX_N_T}, got {self.n_T}")
        check(
            0.0 < self.beta1 < self.beta2 < 1.0,
            f"{p}.beta1",
            f"need 0 < beta1 < beta2 < 1, got beta1={self.beta1}, beta2={self.beta2}",
        )
        check(self.loss in LOSSES, f"{p}.loss", choice_msg(self.loss, LOSSES))
        check(
            0 <= self.sample_steps <= MAX_N_T,
            f"{p}.sample_steps",
            f"must be in [0, {MAX_N_T}], got {self.sample_steps}",
        )
        check(self.sample_start in SAMPLE_STARTS, f"{p}.sample_start", choice_msg(self.sample_start, SAMPLE_STARTS))
        check(self.start_noise >= 0, f"{p}.start_noise", f"must be >= 0, got {self.start_noise}")


@dataclass(frozen=True)
class DegradationSpec:
    name: str = "gaussian"
    # "" = the degradation's own default schedule.
    schedule: str = ""
    # Degradation-specific keyword arguments, checked against the registered function.
    params: dict = field(default_factory=dict)

    def validate(self, p: str) -> None:
        check(isinstance(self.params, dict), f"{p}.params", "must be a table")


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    # Early stopping on validation loss; patience 0 disables it.
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    # ReduceLROnPlateau on validation loss; patience 0 disables it.
    lr_plateau_patience: int = 0
    lr_plateau_factor: float = 0.5
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    sample_every: int = 1
    n_samples: int = 16
    device: str = "auto"
    # "auto" = bf16 on a GPU that computes it natively, fp32 ("no") on the CPU (where bf16
    # convolutions are very slow) and on older GPUs.
    mixed_precision: str = "auto"
    # Clip the global gradient norm; 0 disables it.
    grad_clip: float = 0.0
    # Exponential moving average of the weights (used for samples and metrics); 0 disables it.
    ema_decay: float = 0.0
    # Optimiser step every N batches (the effective batch is batch_size x N).
    grad_accumulation: int = 1
    # How the step executes, not what it computes (kept out of the run's identity):
    # "auto" = CUDA graphs where they apply (one CUDA process, bf16 or fp32), eager elsewhere.
    compile: str = "auto"
    # Equal-compute budgets: the run ends at the first optimiser step past either (0 = none),
    # counted across resumes. max_steps stops exactly at that step; max_minutes (training
    # time, validation and metrics excluded) at the first interval check past it.
    max_steps: int = 0
    max_minutes: float = 0.0

    def validate(self, p: str) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every", "keep_checkpoints", "sample_every"):
            v = getattr(self, name)
            check(v >= 1, f"{p}.{name}", f"must be >= 1, got {v}")
        check(self.epochs <= MAX_EPOCHS, f"{p}.epochs", f"must be <= {MAX_EPOCHS}, got {self.epochs}")
        check(self.batch_size <= MAX_BATCH, f"{p}.batch_size", f"must be <= {MAX_BATCH}, got {self.batch_size}")
        check(0 <= self.seed < SEED_LIMIT, f"{p}.seed", f"must be in [0, 2**32), got {self.seed}")
        check(self.lr > 0, f"{p}.lr", f"must be > 0, got {self.lr}")
        check(self.optimizer in OPTIMIZERS, f"{p}.optimizer", choice_msg(self.optimizer, OPTIMIZERS))
        check(self.weight_decay >= 0, f"{p}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(
            self.early_stopping_patience >= 0,
            f"{p}.early_stopping_patience",
            f"must be >= 0, got {self.early_stopping_patience}",
        )
        check(
            self.early_stopping_min_delta >= 0,
            f"{p}.early_stopping_min_delta",
            f"must be >= 0 (an improvement smaller than it does not count), got {self.early_stopping_min_delta}",
        )
        check(
            self.lr_plateau_patience >= 0, f"{p}.lr_plateau_patience", f"must be >= 0, got {self.lr_plateau_patience}"
        )
        check(
            0 < self.lr_plateau_factor < 1, f"{p}.lr_plateau_factor", f"must be in (0, 1), got {self.lr_plateau_factor}"
        )
        check(
            1 <= self.n_samples <= MAX_IMAGES, f"{p}.n_samples", f"must be in [1, {MAX_IMAGES}], got {self.n_samples}"
        )
        check(self.device in DEVICES, f"{p}.device", choice_msg(self.device, DEVICES))
        check(self.mixed_precision in PRECISIONS, f"{p}.mixed_precision", choice_msg(self.mixed_precision, PRECISIONS))
        check(self.grad_clip >= 0, f"{p}.grad_clip", f"must be >= 0, got {self.grad_clip}")
        check(0 <= self.ema_decay < 1, f"{p}.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        check(
            1 <= self.grad_accumulation <= MAX_BATCH,
            f"{p}.grad_accumulation",
            f"must be in [1, {MAX_BATCH}], got {self.grad_accumulation}",
        )
        check(self.compile in COMPILE_MODES, f"{p}.compile", choice_msg(self.compile, COMPILE_MODES))
        check(self.max_steps >= 0, f"{p}.max_steps", f"must be >= 0 (0 = no budget), got {self.max_steps}")
        check(
            0 <= self.max_minutes <= MAX_BUDGET_MINUTES,
            f"{p}.max_minutes",
            f"must be in [0, {MAX_BUDGET_MINUTES:g}] (0 = no budget), got {self.max_minutes}",
        )


CLASSIFIER_CHOICES = ("auto", "reference", "trained")


@dataclass(frozen=True)
class EvalSpec:
    """Quality metrics computed during training (not part of a run's identity: changing
    them never retrains a finished run)."""

    # Names in hpcdiff.config.catalog.METRICS.
    metrics: tuple[str, ...] = catalog.DEFAULT_METRICS
    # Evaluate every N epochs; 0 = only at the last epoch.
    every: int = 0
    # Generated samples per evaluation (and held-out images for reconstructions).
    samples: int = 500
    # Sampler of the evaluation samples: "auto" = ddim for the Gaussian DDPM (it can skip
    # steps without losing quality), the run's own sampler for cold diffusion; or a name.
    sampler: str = "auto"
    # Denoising steps (levels) the evaluation samples take; 0 = all n_T. Sampling is nearly
    # all of an evaluation's cost: this keeps it a fraction of an epoch.
    steps: int = 50
    # The feature classifier of IS, classifier-FID, KID and class histograms: "auto" = the
    # reference shipped with hpcdiff for the dataset's family (mnist, mnist-5k), else one
    # trained on the dataset and cached; "reference" = the shipped one (an error where there
    # is none); "trained" = one trained on the dataset, as before the references.
    classifier: str = "auto"
    # Epochs of the feature classifier when it has to be trained; 0 = hpcdiff's default.
    classifier_epochs: int = 0
    # Train the classifier on first need (data are local); false = require `hpcdiff prepare`.
    train_classifier: bool = True
    # Cold diffusion: MSE/SSIM of direct (one step) and full-sampler reconstructions.
    reconstruction: bool = True

    def validate(self, p: str) -> None:
        check(self.every >= 0, f"{p}.every", f"must be >= 0, got {self.every}")
        check(2 <= self.samples <= MAX_IMAGES, f"{p}.samples", f"must be in [2, {MAX_IMAGES}], got {self.samples}")
        check(
            0 <= self.steps <= MAX_N_T, f"{p}.steps", f"must be in [0, {MAX_N_T}] (0 = all n_T steps), got {self.steps}"
        )
        seen = set()
        for i, name in enumerate(self.metrics):
            # A repeated name would be computed twice and write the same archive series twice.
            check(name not in seen, f"{p}.metrics[{i}]", f"{name!r} is listed twice")
            check(name in catalog.METRICS, f"{p}.metrics[{i}]", unknown_name_message("metric", name, catalog.METRICS))
            seen.add(name)
        check(
            self.classifier in CLASSIFIER_CHOICES,
            f"{p}.classifier",
            f"must be one of {', '.join(map(repr, CLASSIFIER_CHOICES))}, got {self.classifier!r}",
        )
        check(self.classifier_epochs >= 0, f"{p}.classifier_epochs", f"must be >= 0, got {self.classifier_epochs}")


SECTIONS: dict[str, type] = {
    "data": DataSpec,
    "model": ModelSpec,
    "diffusion": DiffusionSpec,
    "degradation": DegradationSpec,
    "train": TrainSpec,
    "eval": EvalSpec,
    "slurm": SlurmSpec,
    "log": LogSpec,
}


@dataclass(frozen=True)
class RunSpec:
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    diffusion: DiffusionSpec = DiffusionSpec()
    degradation: DegradationSpec = DegradationSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    slurm: SlurmSpec = SlurmSpec()
    log: LogSpec = LogSpec()

    @classmethod
    def from_dict(cls, raw: dict, *, source: str | None = None) -> RunSpec:
        try:
            return _build_run_spec(raw)
        except SpecError as err:
            raise (err.with_source(source) if source else err) from None

    def to_dict(self) -> dict:
        return {name: _section_to_dict(getattr(self, name)) for name in SECTIONS}

    def run_identity(self) -> dict:
        """The part of the config that defines what is trained: the rule of
        hpcdiff.config.identity (SLURM, evaluation and other execution settings left out; keys
        added after the rule was set only when they differ from their defaults)."""
        from hpcdiff.config.identity import run_identity

        return run_identity(self, self.to_dict())

    def replace(self, **sections) -> RunSpec:
        return dataclasses.replace(self, **sections)


def _section_to_dict(section) -> dict:
    if hasattr(section, "to_dict"):  # a section that writes only some of its keys ([model])
        return section.to_dict()
    out = {}
    for f in fields(section):
        v = getattr(section, f.name)
        if isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, dict):
            v = {k: (list(x) if isinstance(x, tuple) else x) for k, x in sorted(v.items())}
        out[f.name] = v
    return out


def _build_run_spec(raw: dict) -> RunSpec:
    if not isinstance(raw, dict):
        raise SpecError("the run config must be a table")
    for key in raw:
        if key not in SECTIONS:
            raise SpecError(unknown_key_msg(key, SECTIONS), path=key)
    sections = {}
    for name, cls in SECTIONS.items():
        value = raw.get(name, {})
        if not isinstance(value, dict):
            raise SpecError(f"must be a table, got {type(value).__name__}", path=name)
        section = _build_section(cls, value, name)
        section.validate(name)
        sections[name] = section
    return RunSpec(**sections)


def _build_section(cls, raw: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}"
        if key not in valid:
            raise SpecError(unknown_key_msg(key, valid), path=path)
        kwargs[key] = coerce(value, hints[key], path)
    if hasattr(cls, "check_keys"):
        cls.check_keys(raw, prefix)
    return cls(**kwargs)
