"""Run directories and their archives -> one :class:`Run` per run, in memory.

A run's row holds its sweep axes, state, epochs and the summary columns of its series:
training series (``train_loss``, ``val_loss``, ``lr``, ``images_per_second``,
``*_seconds``) give ``final_/best_train_loss``, ``final_/best_val_loss``,
``best_val_loss_epoch`` and ``wall_seconds``; every other metric is a quality metric with
``best_<m>``/``best_<m>_epoch`` and ``final_<m>`` (the last finite value: metrics
evaluated every k epochs are NaN in between), or ``final_<m>`` only when "best" has no
meaning (the better direction of each series is a fact in hpcdiff.config.catalog).
Per-class metrics stay out of the row (they
have their own table and figure).

A run that cannot be read (a half-written config, a damaged archive) still gets its row,
with a warning; nothing here raises for one bad run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcdiff.config import catalog, tomlio
from hpcdiff.config.spec import START_MEASURES, start_measures
from hpcdiff.storage import archive
from hpcdiff.storage.rundir import RunDir, read_run_meta, sweep_run_dirs
from hpcdiff.storage.runstate import RunState

#: Per-epoch series that describe training rather than sample quality (plus ``*_seconds``).
TRAINING_SERIES = frozenset(catalog.TRAINING_SERIES)

#: The loss and wall-time columns of a run's row (before its quality metrics' columns).
TRAINING_COLUMNS = (
    "final_train_loss",
    "best_train_loss",
    "final_val_loss",
    "best_val_loss",
    "best_val_loss_epoch",
    "wall_seconds",
)

#: Quality metrics listed first, in this order; the rest follow alphabetically.
METRIC_ORDER = tuple(
    s for m in catalog.METRICS.values() for s in m.outputs if "{k}" not in s and not s.endswith("_std")
)

#: A per-class metric: ``class_<k>`` (the class histogram) or ``<family>_class_<k>``.
PER_CLASS = re.compile(r"^(?:(?P<family>.+)_)?class_(?P<k>\d+)$")


#: The kinds of result, in the order analyze ranks them (each among its own kind only).
MEASURES = tuple(dict.fromkeys(START_MEASURES.values()))


def metric_direction(name: str) -> str:
    """'min', 'max' or 'final' (no best: only the final value is reported) for a series, as
    hpcdiff.config.catalog declares it; 'final' for a series it does not know."""
    return catalog.better_direction(name)


def is_quality_metric(name: str) -> bool:
    return name not in TRAINING_SERIES and not name.endswith("_seconds")


def is_run_column_metric(name: str) -> bool:
    """A quality metric that gets columns in the runs table (per-class ones do not)."""
    return is_quality_metric(name) and not PER_CLASS.match(name)


@dataclass
class Run:
    run_id: str
    row: dict
    config: dict
    metrics: dict
    samples: dict
    axes: dict = field(default_factory=dict)  # the sweep axes the run was expanded with
    # The classifier that scored its IS/FID/KID/histograms (archive attribute; "" before
    # hpcdiff recorded it: a classifier trained on the machine that ran it).
    scored_by: str = ""
    stopped_by: str | None = None  # the budget that ended it (status.json), if one did
    # The `hpcdiff evaluate` record its quality metrics come from ("" = training-time values).
    evaluation: str = ""
    # The [eval] settings its quality metrics were computed with.
    eval_settings: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.row["state"] == RunState.DONE

    @property
    def restores(self) -> bool:
        """Its samples restore held-out test images (they are not generations)."""
        return self.row.get("measures") == "restoration"


def series(metrics: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of a metric, finite values only."""
    values = np.asarray(metrics.get(name, []), dtype=np.float64)
    epochs = np.asarray(metrics.get("epoch", []))
    if len(epochs) != len(values):
        epochs = np.arange(1, len(values) + 1)
    ok = np.isfinite(values)
    return epochs[ok].astype(np.int64), values[ok]


def summary(metrics: dict, name: str, direction: str) -> tuple[float | None, int | None, float | None]:
    """(best, epoch of best, final) of a metric; None where it has no finite value."""
    epochs, values = series(metrics, name)
    if not len(values):
        return None, None, None
    final = float(values[-1])
    if direction == "final":
        return None, None, final
    i = int(np.argmin(values) if direction == "min" else np.argmax(values))
    return float(values[i]), int(epochs[i]), final


def load_runs(sweep_dir: Path, varying: list[str], warnings: list[str], *, evaluations: bool = True) -> list[Run]:
    """Every run of a sweep directory, in its directory order; problems go to ``warnings``.
    ``evaluations``: a run's latest `hpcdiff evaluate` of its last epoch replaces its
    training-time quality metrics (False: the training-time values)."""
    runs = [read_run(rd, varying, warnings, evaluations=evaluations) for rd in sweep_run_dirs(sweep_dir)]
    check_classifiers(runs, warnings)
    evaluated = [r.run_id for r in runs if r.evaluation]
    if evaluated:
        which = (
            "the run"
            if len(runs) == 1
            else f"all {len(runs)} runs"
            if len(evaluated) == len(runs)
            else f"{len(evaluated)} of {len(runs)} runs ({', '.join(evaluated)})"
        )
        warnings.append(
            f"{which} report a later `hpcdiff evaluate` of their last checkpoint instead of their "
            f"training-time metrics; `analyze --training-scores` shows those"
        )
    return runs


def quality_metrics(runs: list[Run]) -> list[str]:
    """The quality metrics with runs-table columns, :data:`METRIC_ORDER` first."""
    names = {n for r in runs for n in r.metrics if is_run_column_metric(n)}
    first = [n for n in METRIC_ORDER if n in names]
    return first + sorted(names - set(first))


def read_run(rd: RunDir, varying: list[str], warnings: list[str], *, evaluations: bool = True) -> Run:
    """One run directory (``varying``: the sweep axes its row shows; ``evaluations``: see
    :func:`load_runs`)."""
    meta, config = _read_config(rd, warnings)
    data, damaged = _read_archive(rd, warnings)
    evaluation = latest_evaluation(data, rd.run_id, warnings) if evaluations else None
    eval_settings = dict(config.get("eval", {})) if config else {}
    if evaluation is not None:
        apply_evaluation(data, evaluation[1])
        eval_settings = tomlio.loads(evaluation[1]["attrs"].get("settings", "")).get("eval", eval_settings)
    metrics = data["metrics"] if data else {}
    samples = data["samples"] if data else {}
    row = {"run_id": rd.run_id, "label": meta.get("label", "")}
    for key in varying:
        row[key] = _axis_value(meta.get("axes", {}), config, key)
    # Generation or restoration of test images: what the samples' IS/FID measure.
    row["measures"] = start_measures(config.get("diffusion", {}).get("sample_start", "")) if config else None
    epochs = np.asarray(metrics.get("epoch", []))
    total = rd.read_status().get("epochs") or config.get("train", {}).get("epochs") or 0
    # A damaged archive makes even a finished run incomplete: its numbers are missing.
    row["state"] = rd.effective_state() + (" (archive unreadable)" if damaged else "")
    row["epochs"] = f"{int(epochs[-1]) if len(epochs) else 0}/{int(total)}"
    row.update(_summary_columns(metrics))
    _check_ssim_definition(rd.run_id, data, warnings)
    scored_by = _check_classifier(rd.run_id, data, warnings)
    return Run(
        rd.run_id,
        row,
        config,
        metrics,
        samples,
        dict(meta.get("axes", {})),
        scored_by,
        rd.read_status().get("stopped_by"),
        evaluation[0] if evaluation else "",
        eval_settings,
    )


def latest_evaluation(data: dict | None, run_id: str, warnings: list[str]) -> tuple[str, dict] | None:
    """(key, record) of the newest `hpcdiff evaluate` of the run's last archived epoch, or
    None. One of an earlier epoch (the run trained on after it) is said and not used."""
    if not data or not data.get("evaluations"):
        return None
    epochs = np.asarray(data["metrics"].get("epoch", []))
    last = int(epochs[-1]) if len(epochs) else None
    current = {k: e for k, e in data["evaluations"].items() if e["attrs"].get("epoch") == last}
    if not current:
        warnings.append(
            f"{run_id}: its `hpcdiff evaluate` results are of an earlier epoch than its last ({last}); "
            f"training-time metrics shown (evaluate it again)"
        )
        return None
    return max(current.items(), key=lambda item: float(item[1]["attrs"].get("created", 0)))


depends_on_classifier = catalog.depends_on_classifier


def apply_evaluation(data: dict, record: dict) -> None:
    """The archive's contents as if its last epoch had been evaluated as ``record`` says:
    every metric the record holds has that one value at that epoch (earlier epochs' values
    came from other weights, possibly another classifier or SSIM: they are left out, so a
    best-of never mixes the two); a classifier metric it lacks is dropped when the
    classifier changed; the classifier and SSIM attributes become the record's."""
    metrics, attrs = data["metrics"], record["attrs"]
    epochs = np.asarray(metrics.get("epoch", []))
    at = epochs == attrs["epoch"]
    changed = str(attrs.get("classifier", "")) != str(data["attrs"].get("classifier", ""))
    for name in [n for n in metrics if is_quality_metric(n)]:
        if name not in record["metrics"] and changed and depends_on_classifier(name):
            del metrics[name]
    for name, value in record["metrics"].items():
        if name.endswith("_seconds"):
            continue
        series = np.full(len(epochs), np.nan)
        series[at] = value
        metrics[name] = series
    if attrs.get("classifier"):
        data["attrs"].update(classifier=attrs["classifier"], classifier_from_epoch=int(attrs["epoch"]))
    if attrs.get("standard_ssim"):
        data["attrs"]["ssim_standard_from_epoch"] = int(attrs["epoch"])


def _scored_epochs(data: dict) -> np.ndarray:
    epochs = np.asarray(data["metrics"].get("epoch", []))
    scored = np.zeros(len(epochs), dtype=bool)
    for name in filter(depends_on_classifier, data["metrics"]):
        values = np.asarray(data["metrics"].get(name, []), dtype=np.float64)
        if len(values) == len(epochs):
            scored |= np.isfinite(values)
    return epochs[scored]


def _check_classifier(run_id: str, data: dict | None, warnings: list[str]) -> str:
    """The classifier that scored the run's classifier metrics ("" when unrecorded); a run
    resumed across a change of classifier is said to be mixed."""
    if not data:
        return ""
    scored = _scored_epochs(data)
    if not len(scored):
        return ""
    name = str(data["attrs"].get("classifier", ""))
    since = data["attrs"].get("classifier_from_epoch")
    if name and since is not None and int(scored.min()) < int(since):
        warnings.append(
            f"{run_id}: IS/FID before epoch {since} were scored by another classifier than "
            f"{name} (the run was resumed across the change)"
        )
    return name


def check_classifiers(runs: list[Run], warnings: list[str]) -> None:
    """IS, classifier-FID, KID and histograms compare only within one classifier: a sweep
    scored by several says which runs each scored (they are still tabled and ranked)."""
    groups: dict[str, list[str]] = {}
    for run in runs:
        if any(map(depends_on_classifier, run.metrics)):
            groups.setdefault(run.scored_by or "unrecorded (trained where the run ran)", []).append(run.run_id)
    if len(groups) > 1:
        parts = "; ".join(f"{name}: {', '.join(ids)}" for name, ids in sorted(groups.items()))
        warnings.append(
            f"IS/FID/KID of this sweep come from {len(groups)} classifiers, comparable only within one ({parts})"
        )


def _check_ssim_definition(run_id: str, data: dict | None, warnings: list[str]) -> None:
    """Archives written before hpcdiff used the standard SSIM hold torchmetrics' padded SSIM
    (on 28x28 digits lower: 0.876 for a standard 0.890): said, not silently mixed."""
    if not data:
        return
    epochs = np.asarray(data["metrics"].get("epoch", []))
    first = None
    for name in (n for n in data["metrics"] if "ssim" in n):
        values = np.asarray(data["metrics"][name], dtype=np.float64)
        scored = epochs[np.isfinite(values)] if len(values) == len(epochs) else []
        if len(scored):
            first = int(scored.min()) if first is None else min(first, int(scored.min()))
    since = data["attrs"].get("ssim_standard_from_epoch")
    if first is not None and (since is None or first < since):
        until = f"before epoch {since}" if since is not None else "of every epoch"
        warnings.append(
            f"{run_id}: SSIM {until} is torchmetrics' padded SSIM (hpcdiff before the standard "
            f"definition), not comparable with Wang et al.'s"
        )


def _read_config(rd: RunDir, warnings: list[str]) -> tuple[dict, dict]:
    """(run meta, resolved config); both empty when config.toml cannot be read."""
    try:
        return read_run_meta(rd), tomlio.load(rd.config_path)
    except Exception as err:  # a hand-edited or half-written config: still list the run
        warnings.append(f"{rd.run_id}: unreadable config.toml ({err})")
        return {}, {}


def _read_archive(rd: RunDir, warnings: list[str]) -> tuple[dict | None, bool]:
    """(archive contents or None, whether the archive exists but is damaged)."""
    if not rd.archive.exists():
        return None, False
    try:
        return archive.read(rd.archive), False
    except Exception as err:  # noqa: BLE001 - h5py raises several types on damage
        warnings.append(f"{rd.run_id}: unreadable archive.h5 ({type(err).__name__}: {err})")
        return None, True


def _summary_columns(metrics: dict) -> dict:
    """The loss, wall-time and quality-metric columns of a run's row."""
    row = {}
    best, _, final = summary(metrics, "train_loss", "min")
    row["final_train_loss"], row["best_train_loss"] = final, best
    best, best_epoch, final = summary(metrics, "val_loss", "min")
    row["final_val_loss"], row["best_val_loss"], row["best_val_loss_epoch"] = final, best, best_epoch
    row["wall_seconds"] = summary(metrics, "elapsed_seconds", "final")[2]
    for name in metrics:
        if not is_run_column_metric(name):
            continue
        direction = metric_direction(name)
        best, best_epoch, final = summary(metrics, name, direction)
        if direction != "final":
            row[f"best_{name}"], row[f"best_{name}_epoch"] = best, best_epoch
        row[f"final_{name}"] = final
    return row


def _axis_value(meta_axes: dict, config: dict, key: str):
    """A sweep axis's value: from the run's recorded axes, else the resolved config."""
    if key in meta_axes:
        return meta_axes[key]
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
