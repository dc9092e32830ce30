"""The names a sweep file or a command line may use for things whose code lives above
config/, with the facts about them that config/ and analysis/ need without importing torch.

Each registry of those layers is declared against a list here (``Registry(kind,
declared=...)``): registering a name that is not declared raises at import, and so does a
declared name that no code registers (``Registry.seal``). Validation, ``--help`` and the
analysis read the facts here; the code that builds or computes the thing reads them too, so
each fact is written once. Stdlib only.

Degradations, schedules and samplers are open registries (a new one is one function and one
test); their names are checked against the registry itself when a sweep is resolved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Denoisers (hpcdiff.science.models.MODELS) and the ``[model]`` keys each one owns
#: (``name`` and ``dropout`` are shared; a key of another model is an error).
MODEL_KEYS: dict[str, frozenset[str]] = {
    "cnn": frozenset({"hidden", "activation", "kernel_size", "last_kernel_size"}),
    "unet": frozenset({"base_channels", "channel_mults", "res_blocks", "attention", "groups"}),
}
MODELS = tuple(MODEL_KEYS)

#: Executors that launch runs (hpcdiff.launch.BACKENDS), and the choices of ``--executor``:
#: "auto" picks slurm where a cluster answers, local otherwise.
BACKENDS = ("local", "debug", "slurm")
EXECUTORS = ("auto",) + BACKENDS

#: The plain sbatch templates (hpcdiff.launch.sbatch, `hpcdiff sbatch --template`).
SBATCH_TEMPLATES = ("csd3-ampere", "gpu", "cpu")


@dataclass(frozen=True)
class DatasetFacts:
    name: str
    # (C, H, W) when known before the files are read ("idx" files can hold any size).
    image_shape: tuple[int, int, int] | None
    # Training images before the validation split, when fixed.
    train_images: int | None
    # The torchvision dataset class that downloads it (data.download, `hpcdiff prepare`);
    # None: read from files the user has or that ship inside the package.
    torchvision: str | None
    # The reference classifier family that scores it by default (None: none fits every file).
    family: str | None
    # Ships inside the package: no root, nothing to download.
    shipped: bool = False


#: Datasets (hpcdiff.data.LOADERS), in the order the docs list them.
DATASETS: dict[str, DatasetFacts] = {
    f.name: f
    for f in (
        DatasetFacts("mnist", (1, 28, 28), 60_000, torchvision="MNIST", family="mnist"),
        DatasetFacts("fashion-mnist", (1, 28, 28), 60_000, torchvision="FashionMNIST", family="fashion-mnist"),
        DatasetFacts("mnist-5k", (1, 28, 28), 4_500, torchvision=None, family="mnist", shipped=True),
        DatasetFacts("idx", None, None, torchvision=None, family=None),
    )
}


def family_datasets(family: str) -> list[str]:
    """The datasets a reference classifier of ``family`` scores."""
    return [name for name, f in DATASETS.items() if f.family == family]


#: Which value of a series is its best: "min", "max", or "final" (no best: a spread, a
#: per-class share, a diagnostic whose ideal is a target value; only its last value counts).
DIRECTIONS = ("min", "max", "final")


@dataclass(frozen=True)
class MetricFacts:
    """A quality metric of hpcdiff.evaluation.metrics.METRICS."""

    name: str
    # The series it writes and the better direction of each. "{k}" stands for a class index.
    outputs: dict[str, str]
    # Computed on the dataset classifier's outputs: the evaluator loads (or trains) it, and
    # its values change when the classifier does.
    needs_classifier: bool = False
    # In EvalSpec.metrics' default: cheap (one classifier pass over the samples; the real
    # statistics are cached) and needing nothing downloaded.
    default: bool = False
    # Needs files fetched on a login node (`hpcdiff prepare --inception`).
    needs_inception: bool = False


#: Quality metrics, in the order tables list their series (and a default run computes them).
METRICS: dict[str, MetricFacts] = {
    m.name: m
    for m in (
        MetricFacts("fid_classifier", {"fid_classifier": "min"}, needs_classifier=True, default=True),
        MetricFacts("fid_inception", {"fid_inception": "min"}, needs_inception=True),
        MetricFacts("kid_classifier", {"kid_classifier": "min", "kid_classifier_std": "final"}, needs_classifier=True),
        MetricFacts(
            "inception_score",
            {"inception_score": "max", "inception_score_std": "final"},
            needs_classifier=True,
            default=True,
        ),
        MetricFacts(
            "class_histogram", {"class_{k}": "final", "class_entropy": "max"}, needs_classifier=True, default=True
        ),
        # The ideal is the real data's value, not the largest one.
        MetricFacts("diversity", {"diversity_trace": "final"}, default=True),
        MetricFacts("ssim", {"ssim": "max"}),
        MetricFacts("tsne_kl", {"tsne_kl": "min"}, needs_classifier=True),
    )
}

DEFAULT_METRICS = tuple(name for name, m in METRICS.items() if m.default)

#: Series a cold-diffusion evaluation writes besides its metrics: held-out images degraded
#: to level T, restored in one step and by the full sampler, against the truth.
RECONSTRUCTION_OUTPUTS = {
    f"recon_{stage}_{measure}": better
    for stage in ("degraded", "direct", "full")
    for measure, better in (("mse", "min"), ("ssim", "max"), ("mse_class_{k}", "final"), ("ssim_class_{k}", "final"))
}


@dataclass(frozen=True)
class SeriesFacts:
    better: str
    # The metric that writes it (None: the trainer's own series).
    metric: str | None = None


#: The trainer's own per-epoch series (the archive's other series are metrics' outputs).
TRAINING_SERIES: dict[str, str] = {
    "epoch": "final",
    "train_loss": "min",
    "val_loss": "min",
    "lr": "final",
    "images_per_second": "final",
    "optimizer_steps": "final",
}


def default_series(n_classes: int = 10) -> list[str]:
    """The series a run with the default metrics writes per epoch (besides ``*_seconds``)."""
    out = list(TRAINING_SERIES)
    for m in METRICS.values():
        if m.default:
            out += [s.replace("{k}", str(k)) for s in m.outputs for k in (range(n_classes) if "{k}" in s else [0])]
    return out


def _templates() -> list[tuple[re.Pattern, SeriesFacts]]:
    out = []
    outputs = [(s, SeriesFacts(b)) for s, b in TRAINING_SERIES.items()]
    outputs += [(s, SeriesFacts(b, m.name)) for m in METRICS.values() for s, b in m.outputs.items()]
    outputs += [(s, SeriesFacts(b)) for s, b in RECONSTRUCTION_OUTPUTS.items()]
    for series, facts in outputs:
        out.append((re.compile("^" + re.escape(series).replace(r"\{k\}", r"\d+") + "$"), facts))
    return out


_SERIES = _templates()


def series_facts(name: str) -> SeriesFacts | None:
    """What the catalog knows of an archive series (``fid_classifier``, ``class_3``,
    ``recon_full_ssim``), or None for a series it does not declare (``*_seconds`` timings,
    a metric of a newer or older hpcdiff)."""
    return next((facts for pattern, facts in _SERIES if pattern.match(name)), None)


def better_direction(name: str) -> str:
    """'min', 'max' or 'final' for an archive series (undeclared ones: 'final')."""
    facts = series_facts(name)
    return facts.better if facts else "final"


def depends_on_classifier(name: str) -> bool:
    """Whether a series' values change with the classifier that scored the samples."""
    facts = series_facts(name)
    return bool(facts and facts.metric and METRICS[facts.metric].needs_classifier)


# A typo in a direction would make every table sort that series the wrong way round.
_bad = [(s, f.better) for s, f in ((p.pattern, f) for p, f in _SERIES) if f.better not in DIRECTIONS]
if _bad:
    raise ValueError(f"directions must be one of {DIRECTIONS}: {_bad}")
