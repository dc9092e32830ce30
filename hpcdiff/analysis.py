"""Archives of a sweep -> tables and figures. Never imports train or launch.

Works on partly finished sweeps: a run with no archive yet (or one killed mid-epoch) still
gets a row, marked incomplete.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import archive
from .rundir import read_manifest, read_run_meta, sweep_run_dirs


@dataclass
class AnalysisResult:
    out_dir: Path
    columns: list[str]
    rows: list[dict]
    files: list[Path] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.5g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _axis_value(meta_axes: dict, config: dict, key: str):
    if key in meta_axes:
        return meta_axes[key]
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def analyze(sweep_dir: str | Path, out: str | Path | None = None, *, figures: bool = True) -> AnalysisResult:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a sweep directory")
    manifest = read_manifest(sweep_dir)
    name = manifest.get("name", sweep_dir.name)
    out_dir = Path(out) if out else Path("analysis") / name
    out_dir.mkdir(parents=True, exist_ok=True)
    varying = list(manifest.get("varying", []))

    columns = ["run_id", "label", *varying, "state", "epochs", "final_train_loss", "final_val_loss",
               "best_val_loss", "best_epoch", "wall_seconds"]
    rows, runs = [], []
    for rd in sweep_run_dirs(sweep_dir):
        from . import tomlio

        meta = read_run_meta(rd)
        config = tomlio.load(rd.config_path)
        status = rd.read_status()
        data = None
        if rd.archive.exists():
            try:
                data = archive.read(rd.archive)
            except OSError:
                data = None
        metrics = data["metrics"] if data else {}
        train_loss = metrics.get("train_loss", np.array([]))
        val_loss = metrics.get("val_loss", np.array([]))
        epochs = metrics.get("epoch", np.array([], dtype=np.int64))
        row = {"run_id": rd.run_id, "label": meta.get("label", "")}
        for key in varying:
            row[key] = _axis_value(meta.get("axes", {}), config, key)
        best_idx = int(np.nanargmin(val_loss)) if len(val_loss) and not np.all(np.isnan(val_loss)) else None
        total = int(status.get("epochs", config.get("train", {}).get("epochs", 0)))
        row.update({
            "state": rd.effective_state(),
            "epochs": f"{int(epochs[-1]) if len(epochs) else 0}/{total}",
            "final_train_loss": float(train_loss[-1]) if len(train_loss) else None,
            "final_val_loss": float(val_loss[-1]) if len(val_loss) else None,
            "best_val_loss": float(val_loss[best_idx]) if best_idx is not None else None,
            "best_epoch": int(epochs[best_idx]) if best_idx is not None else None,
            "wall_seconds": float(metrics["elapsed_seconds"][-1]) if len(metrics.get("elapsed_seconds", [])) else None,
        })
        rows.append(row)
        runs.append((rd.run_id, row, data))
    incomplete = [r["run_id"] for r in rows if r["state"] != "done"]

    result = AnalysisResult(out_dir=out_dir, columns=columns, rows=rows, incomplete=incomplete)
    result.files += _write_tables(out_dir, columns, rows)
    if figures:
        result.files += _write_figures(out_dir, runs, varying)
    result.files.append(_write_index(out_dir, name, result))
    return result


def _write_tables(out_dir: Path, columns: list[str], rows: list[dict]) -> list[Path]:
    csv_path = out_dir / "runs.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_fmt(row.get(c)) for c in columns])
    md_path = out_dir / "runs.md"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def _run_title(row: dict, varying: list[str]) -> str:
    parts = [f"{k.split('.')[-1]}={_fmt(row.get(k))}" for k in varying if k != "train.seed"]
    if "train.seed" in varying:
        parts.append(f"seed={row.get('train.seed')}")
    title = row["run_id"] + (f" {row['label']}" if row.get("label") else "")
    return title + ("\n" + ", ".join(parts) if parts else "")


def _write_figures(out_dir: Path, runs, varying) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    with_data = [(rid, row, d) for rid, row, d in runs if d and len(d["metrics"].get("epoch", []))]
    if with_data:
        n = len(with_data)
        cols = min(n, 4)
        nrows = math.ceil(n / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
        for ax, (rid, row, d) in zip(axes.flat, with_data):
            m = d["metrics"]
            ax.plot(m["epoch"], m["train_loss"], label="train", marker=".")
            if "val_loss" in m and not np.all(np.isnan(m["val_loss"])):
                ax.plot(m["epoch"], m["val_loss"], label="val", marker=".")
            ax.set_title(_run_title(row, varying) + ("" if row["state"] == "done" else f" [{row['state']}]"),
                         fontsize=8)
            ax.set_xlabel("epoch")
            ax.set_ylabel("loss")
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.tight_layout()
        path = out_dir / "loss_curves.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)

    with_samples = [(rid, row, d) for rid, row, d in runs if d and d["samples"]]
    for rid, row, d in with_samples:
        epoch, grid = list(d["samples"].items())[-1]
        images = grid["images"]
        fig = _image_grid(plt, images, f"{_run_title(row, varying)}\nepoch {epoch}")
        path = out_dir / f"samples_{rid}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
    return files


def _image_grid(plt, images: np.ndarray, title: str):
    n = len(images)
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9 + 0.4, rows * 0.9 + 0.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, images):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
    fig.suptitle(title, fontsize=7)
    return fig


def _write_index(out_dir: Path, name: str, result: AnalysisResult) -> Path:
    lines = [f"# Sweep `{name}`", ""]
    done = sum(1 for r in result.rows if r["state"] == "done")
    lines.append(f"{len(result.rows)} runs, {done} done.")
    if result.incomplete:
        lines.append(f"Incomplete: {', '.join(result.incomplete)}.")
    lines += ["", (out_dir / "runs.md").read_text(), ""]
    for f in result.files:
        if f.suffix == ".png":
            lines += [f"## {f.stem}", "", f"![{f.stem}]({f.name})", ""]
    path = out_dir / "index.md"
    path.write_text("\n".join(lines))
    return path
