"""Live curves of a run in TensorBoard and/or Weights & Biases, through Accelerate's trackers.

What is logged (rank 0 only; the step is the epoch): every series of the archive row
(train_loss, val_loss, lr, images_per_second, elapsed_seconds, optimizer_steps and every
quality metric) as scalars under the archive's names, the epoch's sample grid as an image
("samples"), and the resolved config as hyperparameters.

Where: TensorBoard's event files in ``<run_dir>/tensorboard/`` (so ``tensorboard --logdir
runs/<sweep>`` shows the sweep, one run per run id); W&B's files in ``<run_dir>/wandb/``, one
W&B run per hpcdiff run (id ``<sweep>-<run_id>``, named by its label, grouped by sweep).

Resumes. A resumed run repeats the epochs after its last checkpoint. Before TensorBoard's
writer opens, the events of those epochs are removed from the run's earlier event files
(what TensorBoard's ``purge_step`` asks readers to ignore, done in the files themselves), so
every tag holds one value per step, in order, for any reader. W&B keeps one run across
resumes (``resume="allow"``).

Compute nodes have no internet: inside a SLURM job, unless WANDB_MODE or ``log.wandb_mode``
says otherwise, W&B runs offline and ``hpcdiff sync SWEEP_DIR`` uploads from a login node.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np

from hpcdiff.storage.atomic import atomic_path
from hpcdiff.storage.rundir import RunDir

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"  # under the run directory; W&B makes its own "wandb" there


def wandb_mode(setting: str, environ=None) -> str | None:
    """The mode to hand wandb.init, or None to leave it to wandb (which reads WANDB_MODE)."""
    env = os.environ if environ is None else environ
    if setting != "auto":
        return setting
    if env.get("WANDB_MODE"):
        return None
    return "offline" if env.get("SLURM_JOB_ID") else None


def wandb_run_id(sweep: str, run_id: str) -> str:
    """One W&B run per hpcdiff run: run ids are hashes of the config, so two sweeps can hold
    the same one; W&B ids may not hold / \\ # ? % or ':'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{sweep}-{run_id}")[:128]


def build_trackers(rd: RunDir, spec) -> list:
    """Accelerate's tracker objects for ``Accelerator(log_with=...)``: built here, rather than
    named, so that TensorBoard's directory and W&B's project, name, group and id are ours
    (``init_trackers``' one project name would otherwise be both W&B's project and
    TensorBoard's subdirectory)."""
    if not spec.log.trackers:
        return []
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    meta = _run_meta(rd)
    trackers = []
    for name in spec.log.trackers:
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(TENSORBOARD_DIR, str(rd.path)))
        elif name == "wandb":
            kwargs = dict(
                name=meta.get("label") or rd.run_id,
                group=meta.get("sweep") or None,
                id=wandb_run_id(meta.get("sweep", ""), rd.run_id),
                resume="allow",
                dir=str(rd.path),
                job_type="train",
                entity=spec.log.wandb_entity or None,
            )
            mode = wandb_mode(spec.log.wandb_mode)
            if mode:
                kwargs["mode"] = mode
            trackers.append(WandBTracker(spec.log.wandb_project, **kwargs))
    return trackers


def _run_meta(rd: RunDir) -> dict:
    from hpcdiff.storage.rundir import read_run_meta

    try:
        return read_run_meta(rd)
    except Exception:  # a config.toml without a [run] table (written by hand): ids from the path
        return {}


class RunTrackers:
    """The started trackers of one run (none on other ranks or without ``[log] trackers``)."""

    def __init__(self, accelerator, active: bool):
        self.accelerator, self.active = accelerator, active

    @classmethod
    def start(cls, accelerator, rd: RunDir, spec, first_epoch: int) -> RunTrackers:
        """Open the trackers for a run whose next epoch is ``first_epoch``."""
        if not spec.log.trackers or not accelerator.is_main_process:
            return cls(accelerator, False)
        if "tensorboard" in spec.log.trackers:
            prune_events(rd.path / TENSORBOARD_DIR, first_epoch)
        accelerator.init_trackers(rd.run_id)
        config = hyperparameters(spec.to_dict(), _run_meta(rd), rd.run_id)
        for tracker in accelerator.trackers:
            # TensorBoard's hparams go into a new subdirectory at every call: once per run.
            if tracker.name != "tensorboard" or first_epoch == 1:
                tracker.store_init_configuration(config)
        log.info("tracking with %s", ", ".join(t.name for t in accelerator.trackers))
        return cls(accelerator, True)

    def log_epoch(self, epoch: int, metrics: dict, samples: dict | None) -> None:
        if not self.active:
            return
        if samples is not None:
            grid = sample_grid(samples["images"])
            for tracker in self.accelerator.trackers:
                # TensorBoard takes a batch of NCHW images, W&B a list of images.
                tracker.log_images(
                    {"samples": grid[None, None] if tracker.name == "tensorboard" else [grid]}, step=epoch
                )
        scalars = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        self.accelerator.log(scalars, step=epoch)

    def finish(self) -> None:
        """Close the writers (W&B's offline run is complete only then)."""
        if self.active:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.active = False


def hyperparameters(config: dict, meta: dict, run_id: str) -> dict:
    """The resolved config as flat ``section.key`` hyperparameters of plain types (what
    TensorBoard's hparams accept), with the run's id, label and sweep."""
    out = {"run_id": run_id, "label": meta.get("label", ""), "sweep": meta.get("sweep", "")}
    for section, values in config.items():
        for key, value in values.items():
            plain = isinstance(value, (bool, int, float, str))
            out[f"{section}.{key}"] = value if plain else json.dumps(value, sort_keys=True)
    return out


def sample_grid(images: np.ndarray, max_cols: int = 8) -> np.ndarray:
    """uint8 [n, H, W] -> one uint8 [rows*H, cols*W] image (empty cells black)."""
    n, h, w = images.shape
    cols = min(n, max_cols)
    rows = -(-n // cols)
    grid = np.zeros((rows * h, cols * w), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    return grid


def prune_events(log_dir: Path, first_step: int) -> None:
    """Remove, from the event files directly in ``log_dir``, every event at a step >=
    ``first_step`` (epochs a resumed run trains again). Each file is rewritten atomically;
    one with nothing to remove is left alone."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        return
    for stale in log_dir.glob("events.out.tfevents.*.tmp*"):  # a prune killed half-way
        stale.unlink()
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    if not files:
        return
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.summary.writer.record_writer import RecordWriter

    for path in files:
        events = list(EventFileLoader(str(path)).Load())
        keep = [e for e in events if not (e.step >= first_step and e.WhichOneof("what") != "file_version")]
        if len(keep) == len(events):
            continue
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            writer = RecordWriter(f)
            for event in keep:
                writer.write(event.SerializeToString())
            f.flush()
        log.info(
            "tensorboard: removed %d events at steps >= %d from %s (epochs trained again)",
            len(events) - len(keep),
            first_step,
            path.name,
        )
