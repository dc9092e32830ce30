"""Typed, frozen run specifications and their strict validation.

A ``RunSpec`` is everything that defines one training run. It is built only through
``RunSpec.from_dict``, which rejects unknown keys (naming the nearest valid one), wrong
types and out-of-range values, so that a typo in a sweep file never silently falls back to
a default. Stdlib only: the CLI validates a sweep before importing torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from hpcdiff.config.registry import unknown_message


class SpecError(ValueError):
    """Invalid configuration. ``str(err)`` names the source file and the key path."""

    def __init__(self, message: str, *, path: str = "", source: str | None = None):
        self.message = message
        self.path = path
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.source:
            where.append(str(self.source))
        if self.path:
            where.append(f"key '{self.path}'")
        return (": ".join([", ".join(where), self.message]) if where else self.message)

    def with_source(self, source: str) -> "SpecError":
        return SpecError(self.message, path=self.path, source=source)


DATASETS = ("mnist", "fashion-mnist", "mnist-5k", "idx")
ACTIVATIONS = ("gelu", "relu", "silu", "leaky_relu", "tanh")
OPTIMIZERS = ("adam", "adamw")
LOSSES = ("mse", "l1", "l2")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "no", "bf16", "fp16")


# Upper bounds on sizes: a value past these would exhaust memory or never finish, and is
# always a typo (an extra zero, a seconds/minutes mix-up) rather than an experiment.
MAX_N_T = 100_000  # diffusion levels; the recipes use 20..2000
MAX_IMAGES = 100_000  # images generated at once (n_samples, eval.samples); FID uses 10k-50k
MAX_CHANNELS = 4096  # per model.hidden layer
MAX_LAYERS = 64
MAX_BATCH = 65_536
MAX_EPOCHS = 1_000_000
# Every dataset hpcdiff reads holds 28x28 images: a kernel wider than the image sees mostly
# padding and costs (k/28)^2 times a useful one.
MAX_KERNEL_SIZE = 27
# Seeds are handed to numpy / accelerate's set_seed, which reject anything outside uint32.
SEED_LIMIT = 2**32
# Integers pass through torch, numpy and JSON as int64.
INT64_MAX = 2**63 - 1
# Any string setting (a path, a name): longer than PATH_MAX is never a real value.
MAX_STRING = 4096


def _check(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise SpecError(message, path=path)


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
        _check(self.name in DATASETS, f"{p}.name", _choice_msg(self.name, DATASETS))
        _check(self.subset >= 0, f"{p}.subset", f"must be >= 0, got {self.subset}")
        _check(self.root != "", f"{p}.root", "must not be empty")
        _check(0.0 <= self.val_fraction < 1.0, f"{p}.val_fraction",
               f"must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class ModelSpec:
    hidden: tuple[int, ...] = (16, 32, 32, 16)
    activation: str = "gelu"
    kernel_size: int = 7
    last_kernel_size: int = 3
    # Spatial dropout (Dropout2d) after each block; 0 disables it.
    dropout: float = 0.0

    def validate(self, p: str) -> None:
        _check(len(self.hidden) >= 1 and all(h > 0 for h in self.hidden), f"{p}.hidden",
               f"must be a non-empty list of positive channel counts, got {list(self.hidden)}")
        _check(len(self.hidden) <= MAX_LAYERS, f"{p}.hidden",
               f"must have at most {MAX_LAYERS} layers, got {len(self.hidden)}")
        for i, h in enumerate(self.hidden):
            _check(h <= MAX_CHANNELS, f"{p}.hidden[{i}]", f"must be <= {MAX_CHANNELS} channels, got {h}")
        _check(self.activation in ACTIVATIONS, f"{p}.activation",
               _choice_msg(self.activation, ACTIVATIONS))
        for name in ("kernel_size", "last_kernel_size"):
            k = getattr(self, name)
            _check(k > 0 and k % 2 == 1, f"{p}.{name}", f"must be a positive odd integer, got {k}")
            _check(k <= MAX_KERNEL_SIZE, f"{p}.{name}",
                   f"must be <= {MAX_KERNEL_SIZE} (the images are 28x28), got {k}")
        _check(0.0 <= self.dropout < 1.0, f"{p}.dropout", f"must be in [0, 1), got {self.dropout}")


SAMPLE_STARTS = ("auto", "noise", "degraded_test", "channel_mean")


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
    # Where sampling starts: "auto" is noise for gaussian and maximally degraded held-out
    # test images for degradations without a known prior; "channel_mean" is Bansal's
    # blur start (each channel's mean of a test image plus start_noise).
    sample_start: str = "auto"
    start_noise: float = 0.002

    def validate(self, p: str) -> None:
        _check(self.n_T == 0 or self.n_T >= 2, f"{p}.n_T", f"must be >= 2 (or 0 for the recipe), got {self.n_T}")
        _check(self.n_T <= MAX_N_T, f"{p}.n_T", f"must be <= {MAX_N_T}, got {self.n_T}")
        _check(0.0 < self.beta1 < self.beta2 < 1.0, f"{p}.beta1",
               f"need 0 < beta1 < beta2 < 1, got beta1={self.beta1}, beta2={self.beta2}")
        _check(self.loss in LOSSES, f"{p}.loss", _choice_msg(self.loss, LOSSES))
        _check(0 <= self.sample_steps <= MAX_N_T, f"{p}.sample_steps",
               f"must be in [0, {MAX_N_T}], got {self.sample_steps}")
        _check(self.sample_start in SAMPLE_STARTS, f"{p}.sample_start",
               _choice_msg(self.sample_start, SAMPLE_STARTS))
        _check(self.start_noise >= 0, f"{p}.start_noise", f"must be >= 0, got {self.start_noise}")


@dataclass(frozen=True)
class DegradationSpec:
    name: str = "gaussian"
    # "" = the degradation's own default schedule.
    schedule: str = ""
    # Degradation-specific keyword arguments, checked against the registered function.
    params: dict = field(default_factory=dict)

    def validate(self, p: str) -> None:
        _check(isinstance(self.params, dict), f"{p}.params", "must be a table")


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
    # "auto" = bf16 on GPU, fp32 ("no") on CPU, where bf16 convolutions are very slow.
    mixed_precision: str = "auto"
    # Clip the global gradient norm; 0 disables it.
    grad_clip: float = 0.0
    # Exponential moving average of the weights (used for samples and metrics); 0 disables it.
    ema_decay: float = 0.0
    # Optimiser step every N batches (the effective batch is batch_size x N).
    grad_accumulation: int = 1

    def validate(self, p: str) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every", "keep_checkpoints", "sample_every"):
            v = getattr(self, name)
            _check(v >= 1, f"{p}.{name}", f"must be >= 1, got {v}")
        _check(self.epochs <= MAX_EPOCHS, f"{p}.epochs", f"must be <= {MAX_EPOCHS}, got {self.epochs}")
        _check(self.batch_size <= MAX_BATCH, f"{p}.batch_size", f"must be <= {MAX_BATCH}, got {self.batch_size}")
        _check(0 <= self.seed < SEED_LIMIT, f"{p}.seed", f"must be in [0, 2**32), got {self.seed}")
        _check(self.lr > 0, f"{p}.lr", f"must be > 0, got {self.lr}")
        _check(self.optimizer in OPTIMIZERS, f"{p}.optimizer", _choice_msg(self.optimizer, OPTIMIZERS))
        _check(self.weight_decay >= 0, f"{p}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.early_stopping_patience >= 0, f"{p}.early_stopping_patience",
               f"must be >= 0, got {self.early_stopping_patience}")
        _check(self.early_stopping_min_delta >= 0, f"{p}.early_stopping_min_delta",
               f"must be >= 0 (an improvement smaller than it does not count), "
               f"got {self.early_stopping_min_delta}")
        _check(self.lr_plateau_patience >= 0, f"{p}.lr_plateau_patience",
               f"must be >= 0, got {self.lr_plateau_patience}")
        _check(0 < self.lr_plateau_factor < 1, f"{p}.lr_plateau_factor",
               f"must be in (0, 1), got {self.lr_plateau_factor}")
        _check(1 <= self.n_samples <= MAX_IMAGES, f"{p}.n_samples",
               f"must be in [1, {MAX_IMAGES}], got {self.n_samples}")
        _check(self.device in DEVICES, f"{p}.device", _choice_msg(self.device, DEVICES))
        _check(self.mixed_precision in PRECISIONS, f"{p}.mixed_precision",
               _choice_msg(self.mixed_precision, PRECISIONS))
        _check(self.grad_clip >= 0, f"{p}.grad_clip", f"must be >= 0, got {self.grad_clip}")
        _check(0 <= self.ema_decay < 1, f"{p}.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        _check(1 <= self.grad_accumulation <= MAX_BATCH, f"{p}.grad_accumulation",
               f"must be in [1, {MAX_BATCH}], got {self.grad_accumulation}")


@dataclass(frozen=True)
class EvalSpec:
    """Quality metrics computed during training (not part of a run's identity: changing
    them never retrains a finished run)."""

    # Names in hpcdiff.evaluation.metrics.METRICS.
    metrics: tuple[str, ...] = ("fid_classifier", "inception_score", "class_histogram", "diversity")
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
    # Epochs of the feature classifier when it has to be trained; 0 = hpcdiff's default.
    classifier_epochs: int = 0
    # Train the classifier on first need (data are local); false = require `hpcdiff prepare`.
    train_classifier: bool = True
    # Cold diffusion: MSE/SSIM of direct (one step) and full-sampler reconstructions.
    reconstruction: bool = True

    def validate(self, p: str) -> None:
        _check(self.every >= 0, f"{p}.every", f"must be >= 0, got {self.every}")
        _check(2 <= self.samples <= MAX_IMAGES, f"{p}.samples",
               f"must be in [2, {MAX_IMAGES}], got {self.samples}")
        _check(0 <= self.steps <= MAX_N_T, f"{p}.steps",
               f"must be in [0, {MAX_N_T}] (0 = all n_T steps), got {self.steps}")
        seen = set()
        for i, name in enumerate(self.metrics):
            # A repeated name would be computed twice and write the same archive series twice.
            _check(name not in seen, f"{p}.metrics[{i}]", f"{name!r} is listed twice")
            seen.add(name)
        _check(self.classifier_epochs >= 0, f"{p}.classifier_epochs",
               f"must be >= 0, got {self.classifier_epochs}")


# Values that end up in a submission script. #SBATCH values are quoted by submitit, but a
# newline would still start a shell line, and setup lines are run by bash: both are held to
# character sets in which nothing can execute (no ; & | $ ` < > ( ) quotes or newlines).
_SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_.,:+@%/=\[\]-]*$")
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.,:&|!\[\]*+-]*$")  # sbatch's constraint syntax, quoted
_EXTRA_SBATCH = re.compile(r"^--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:+@%/=\[\]-]+)?$")
_SETUP_LINE = re.compile(r"^[A-Za-z0-9_./:=+@%,~-]+( +[A-Za-z0-9_./:=+@%,~-]+)*$")


@dataclass(frozen=True)
class SlurmSpec:
    """Resources for the SLURM backend. Not part of a run's identity (see ``run_identity``)."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    time_min: int = 60
    nodes: int = 1
    gpus_per_node: int = 0
    # Processes per node; 0 = one per GPU (1 without GPUs): each rank drives one GPU.
    tasks_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 0
    constraint: str = ""
    mail_user: str = ""
    mail_type: str = ""
    array_parallelism: int = 16
    # Requeues allowed after hitting the time limit (preemptions do not count).
    max_requeues: int = 3
    # SLURM sends USR2 this long before the time limit: time to finish a batch and checkpoint.
    signal_delay_s: int = 120
    # Partition for the CPU-only --then-analyze job ("" = partition).
    cpu_partition: str = ""
    # Extra sbatch options, each "--option" or "--option=value".
    extra_sbatch: tuple[str, ...] = ()
    # Shell lines run before the job (e.g. "module load rhel8/default-amp"); plain words only.
    setup: tuple[str, ...] = ()

    @property
    def tasks(self) -> int:
        """Processes per node: tasks_per_node, or one per GPU when it is 0."""
        return self.tasks_per_node or max(1, self.gpus_per_node)

    def validate(self, p: str) -> None:
        for name in ("time_min", "nodes", "cpus_per_task", "array_parallelism"):
            v = getattr(self, name)
            _check(v >= 1, f"{p}.{name}", f"must be >= 1, got {v}")
        for name in ("gpus_per_node", "tasks_per_node", "mem_gb", "max_requeues", "signal_delay_s"):
            v = getattr(self, name)
            _check(v >= 0, f"{p}.{name}", f"must be >= 0, got {v}")
        for name in ("partition", "account", "qos", "mail_user", "mail_type", "cpu_partition"):
            v = getattr(self, name)
            _check(bool(_SBATCH_VALUE.fullmatch(v)), f"{p}.{name}",
                   f"{v!r} contains characters not allowed in an sbatch value")
        _check(bool(_CONSTRAINT.fullmatch(self.constraint)), f"{p}.constraint",
               f"{self.constraint!r} contains characters not allowed in a constraint")
        for i, line in enumerate(self.extra_sbatch):
            _check(bool(_EXTRA_SBATCH.fullmatch(line)), f"{p}.extra_sbatch[{i}]",
                   f"{line!r} is not a plain sbatch option like '--exclusive' or '--gpu-bind=closest'")
        for i, line in enumerate(self.setup):
            _check(bool(_SETUP_LINE.fullmatch(line)), f"{p}.setup[{i}]",
                   f"{line!r} may only hold words of letters, digits and ._/:=+@%,~- "
                   f"(no ; & | $ ` < > ( ) quotes or newlines)")


SECTIONS: dict[str, type] = {
    "data": DataSpec,
    "model": ModelSpec,
    "diffusion": DiffusionSpec,
    "degradation": DegradationSpec,
    "train": TrainSpec,
    "eval": EvalSpec,
    "slurm": SlurmSpec,
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

    @classmethod
    def from_dict(cls, raw: dict, *, source: str | None = None) -> "RunSpec":
        try:
            return _build_run_spec(raw)
        except SpecError as err:
            raise err.with_source(source) if source else err

    def to_dict(self) -> dict:
        return {name: _section_to_dict(getattr(self, name)) for name in SECTIONS}

    def run_identity(self) -> dict:
        """The part of the config that defines what is trained (SLURM resources and
        evaluation settings excluded, so that asking for more time or another metric and
        re-running a sweep finds the same runs)."""
        d = self.to_dict()
        d.pop("slurm")
        d.pop("eval")
        return d

    def replace(self, **sections) -> "RunSpec":
        return dataclasses.replace(self, **sections)


def check_text(value: str, path: str, *, max_len: int = MAX_STRING) -> None:
    """Strings end up in paths, file names, TOML and log lines: no control characters (a NUL
    ends a C path, a newline splits a log or config line) and no runaway length."""
    if len(value) > max_len:
        raise SpecError(f"must be at most {max_len} characters, got {len(value)}", path=path)
    bad = next((c for c in value if not c.isprintable()), None)
    if bad is not None:
        raise SpecError(f"must hold printable characters only, got {bad!r} in {value[:60]!r}", path=path)


def _choice_msg(value: str, choices) -> str:
    return unknown_message("value", value, choices)


def _unknown_key_msg(key: str, valid) -> str:
    return unknown_message("key", key, sorted(valid), listing="valid keys")


def _section_to_dict(section) -> dict:
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
            raise SpecError(_unknown_key_msg(key, SECTIONS), path=key)
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
            raise SpecError(_unknown_key_msg(key, valid), path=path)
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, path: str):
    """Check ``value`` against the annotation ``tp``; the only conversions are lossless ones
    (int -> float, list -> tuple). Anything else is an error naming the value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, path)
            except SpecError as e:
                errors.append(e.message)
        raise SpecError(f"invalid value {value!r}: {'; '.join(errors)}", path=path)
    if tp is type(None):
        if value is None:
            return None
        raise SpecError(f"expected nothing, got {value!r}", path=path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"expected a list, got {value!r}", path=path)
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SpecError(f"expected a table, got {value!r}", path=path)
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SpecError(f"expected true or false, got {value!r}", path=path)
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > INT64_MAX:
                digits = str(value)
                shown = digits if len(digits) <= 24 else f"{digits[:12]}... ({len(digits)} digits)"
                raise SpecError(f"must fit in a 64-bit integer, got {shown}", path=path)
            return value
        raise SpecError(f"expected an integer, got {value!r}", path=path)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # inf and nan pass every range check written as a comparison (nan fails them all,
            # inf passes the open-ended ones): they are turned away here, for every setting.
            if not math.isfinite(value):
                raise SpecError(f"must be a finite number, got {value}", path=path)
            return float(value)
        raise SpecError(f"expected a number, got {value!r}", path=path)
    if tp is str:
        if isinstance(value, str):
            check_text(value, path)
            return value
        raise SpecError(f"expected a string, got {value!r}", path=path)
    raise SpecError(f"unsupported type {_type_name(tp)}", path=path)
