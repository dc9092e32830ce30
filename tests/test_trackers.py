"""Live tracking through Accelerate's trackers ([log] trackers), on real tiny runs.

TensorBoard: a run killed (SIGKILL) after an epoch that has no checkpoint, then resumed,
leaves event files whose RAW events (TensorBoard's own event-file reader, no accumulator that
would hide duplicates) hold every archive series and the sample grid, exactly one value per
epoch, in order, equal to the archive's. The same real sweep, read with hpcdiff.load_results
/ load_run while partly finished (after the kill) and finished.

W&B: inside a SLURM job (SLURM_JOB_ID set, no WANDB_MODE) a run logs offline into its run
directory, with no network; its history is read back from the offline run's .wandb file.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import hpcdiff
from hpcdiff.storage import archive, checkpoint
from hpcdiff.training.trackers import wandb_mode, wandb_run_id

from helpers import TINY_DEFAULT_EVAL, cli, make_run_dir, output_of, train_process, train_to_end

pytest.importorskip("tensorboard", reason="missing tensorboard: bash tests/run.sh installs it")

ROOT = Path(__file__).resolve().parent.parent
QUICK_EVAL = '\n[eval]\nmetrics = ["diversity"]\nevery = 1\nsamples = 8\nreconstruction = false\n'


def sweep_text(root, name: str, trackers: str, *, epochs: int, subset: int, train: str = "") -> str:
    """A tiny real sweep (tests/helpers.py) with a real quality metric every epoch and [log]."""
    text = TINY_DEFAULT_EVAL.format(root=root, epochs=epochs, subset=subset).replace("[train]\n", "[train]\n" + train)
    return f'[sweep]\nname = "{name}"\n' + text + QUICK_EVAL + f"\n[log]\ntrackers = {trackers}\n"


def tensorboard_events(log_dir: Path) -> dict[str, list[tuple[int, object]]]:
    """tag -> [(step, value)] of the event files directly in ``log_dir``, in file (= start
    time) order then record order: every event as written, nothing merged or purged."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util.tensor_util import make_ndarray

    out: dict[str, list[tuple[int, object]]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            if event.WhichOneof("what") != "summary":
                continue
            for value in event.summary.value:
                array = make_ndarray(value.tensor)
                out.setdefault(value.tag, []).append((event.step, array.item() if array.size == 1 else array))
    return out


def _wait_for(condition, proc, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert proc.poll() is None, f"training ended before {what}:\n{output_of(proc)}"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_tensorboard_curves_after_a_kill_and_resume(fashion_dir, tmp_path):
    epochs = 6
    sweep_file = tmp_path / "tb.toml"
    # Checkpoints every 2 epochs: an odd epoch is logged but not checkpointed, so a kill
    # there makes the resumed run train (and log) that epoch again.
    sweep_file.write_text(
        sweep_text(fashion_dir, "tb", '["tensorboard"]', epochs=epochs, subset=1280, train="checkpoint_every = 2\n")
    )
    out = tmp_path / "runs"
    rd = make_run_dir(sweep_file, out)
    log_dir = rd.path / "tensorboard"
    proc = train_process(rd)
    try:
        _wait_for(lambda: rd.read_status().get("epoch", 0) % 2 == 1, proc, "an odd epoch")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed = tensorboard_events(log_dir)
    logged = max(step for step, _ in killed["train_loss"])
    last_checkpoint = max(checkpoint.list_epochs(rd.checkpoints), default=0)
    assert last_checkpoint < logged < epochs  # the resumed run logs epoch `logged` again

    # A partly finished real sweep, as a notebook sees it.
    partial = hpcdiff.load_results(out / "tb")
    row = partial.loc[rd.run_id]
    assert row["state"] == "interrupted" and row["epoch"] == logged and row["epochs"] == epochs
    assert list(hpcdiff.load_run(rd.path).metrics.index) == list(range(1, logged + 1))

    train_to_end(rd)
    events = tensorboard_events(log_dir)
    run = hpcdiff.load_run(rd.path)
    assert run.state == "done" and list(run.metrics.index) == list(range(1, epochs + 1))
    assert {"train_loss", "val_loss", "lr", "images_per_second", "optimizer_steps", "diversity_trace"} <= set(
        run.metrics.columns
    )
    for name in run.metrics.columns:  # every archive series, quality metrics included
        values = run.metrics[name]
        expected_steps = [int(e) for e in values.index if np.isfinite(values[e])]
        assert [step for step, _ in events[name]] == expected_steps, name  # once per step, in order
        # The values of the run's final archive: the re-trained epoch's, not the killed run's.
        np.testing.assert_allclose([v for _, v in events[name]], values[expected_steps], rtol=1e-6, err_msg=name)
    grids = events["samples"]
    assert [step for step, _ in grids] == list(range(1, epochs + 1))
    # Hyperparameters: TensorBoard's hparams plugin, in their own subdirectory.
    hparams = [
        p
        for p in log_dir.glob("*/events.out.tfevents.*")
        if b"_hparams_/session_start_info" in p.read_bytes() and b"train.lr" in p.read_bytes()
    ]
    assert hparams

    done = hpcdiff.load_results(out / "tb").loc[rd.run_id]
    assert done["state"] == "done" and done["epoch"] == epochs
    assert done["final_train_loss"] == pytest.approx(run.metrics["train_loss"].iloc[-1])
    assert done["best_val_loss"] == pytest.approx(run.metrics["val_loss"].min())


def test_only_the_main_process_logs(fashion_dir, tmp_path):
    """Two DDP processes (the local executor's --processes, gloo on the CPU): one event file,
    each epoch once."""
    sweep_file = tmp_path / "ddp.toml"
    sweep_file.write_text(sweep_text(fashion_dir, "ddp", '["tensorboard"]', epochs=2, subset=320))
    result = cli("sweep", sweep_file, "--output", tmp_path / "runs", "--executor", "local", "--processes", "2")
    assert result.exit_code == 0, result.output
    (rd,) = [p for p in (tmp_path / "runs" / "ddp").iterdir() if (p / "config.toml").exists()]
    assert archive.read(rd / "archive.h5")["attrs"]["world_size"] == 2
    assert len(list((rd / "tensorboard").glob("events.out.tfevents.*"))) == 1
    events = tensorboard_events(rd / "tensorboard")
    assert [step for step, _ in events["train_loss"]] == [1, 2] and [s for s, _ in events["samples"]] == [1, 2]


# ------------------------------------------------------------------------------ W&B


def wandb_records(path: Path):
    """The protobuf Records of a W&B transaction log (``run-<id>.wandb``): a 7-byte header
    (":W&B", magic, version), then LevelDB-log blocks of 32 KiB whose records (7-byte header:
    CRC, length, type FULL/FIRST/MIDDLE/LAST) each hold one ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_logs_offline_inside_a_slurm_job(fashion_dir, tmp_path):
    pytest.importorskip("wandb", reason="missing wandb: bash tests/run.sh installs it")
    sweep_file = tmp_path / "wb.toml"
    sweep_file.write_text(sweep_text(fashion_dir, "wb", '["wandb"]', epochs=2, subset=320))
    rd = make_run_dir(sweep_file, tmp_path / "runs")
    # A compute node: SLURM_JOB_ID set, nobody chose a W&B mode, no credentials. Online mode
    # would fail here (no API key, no network): offline is hpcdiff's choice, not luck.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(SLURM_JOB_ID="4242", WANDB_SILENT="true")
    train_to_end(rd, env)
    (offline,) = (rd.path / "wandb").glob("offline-run-*")
    (log_file,) = offline.glob("run-*.wandb")
    records = list(wandb_records(log_file))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_id == wandb_run_id("wb", rd.run_id) and run.run_group == "wb" and run.project == "hpcdiff"
    assert run.display_name == rd.run_id and run.job_type == "train"  # no label: named by its id
    config = {
        item.key: item.value_json
        for r in records
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
    }
    assert config["train.n_samples"] == "4" and config["run_id"] == f'"{rd.run_id}"'
    history: dict[int, dict[str, str]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            history.setdefault(r.history.step.num, {}).update(
                {item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
            )
    assert sorted(history) == [1, 2]
    metrics = archive.read(rd.archive)["metrics"]
    for step, row in history.items():
        for name in ("train_loss", "val_loss", "lr", "images_per_second", "diversity_trace"):
            assert float(row[name]) == pytest.approx(float(metrics[name][step - 1]), rel=1e-6), (step, name)
        # The epoch's sample grid (4 samples in a row), as an image file of the offline run.
        assert row["samples/_type"] == '"images/separated"' and row["samples/width"] == "112"
        (image,) = json.loads(row["samples/filenames"])
        assert (offline / "files" / image).read_bytes()[:4] == b"\x89PNG"
    assert not (rd.path / "tensorboard").exists()

    # `hpcdiff sync` finds it and hands it to `wandb sync` (a dry run: no network in tests).
    proc = subprocess.run(
        [sys.executable, "-m", "hpcdiff", "sync", str(tmp_path / "runs" / "wb"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 offline W&B runs" in proc.stdout and log_file.name in proc.stdout + proc.stderr


def test_adding_trackers_to_a_sweep_keeps_its_runs(fashion_dir, tmp_path):
    """[log] is observation: the same run ids, and the run's config.toml now asks for the
    trackers (a resumed run starts logging)."""
    plain, tracked = tmp_path / "a.toml", tmp_path / "b.toml"
    plain.write_text(sweep_text(fashion_dir, "same", "[]", epochs=1, subset=64))
    tracked.write_text(sweep_text(fashion_dir, "same", '["tensorboard"]', epochs=1, subset=64))
    before = make_run_dir(plain, tmp_path / "runs")
    assert before.load_spec().log.trackers == ()
    after = make_run_dir(tracked, tmp_path / "runs")
    assert after.path == before.path and after.load_spec().log.trackers == ("tensorboard",)


def test_wandb_mode_rule():
    assert wandb_mode("auto", {"SLURM_JOB_ID": "1"}) == "offline"  # a compute node
    assert wandb_mode("auto", {"SLURM_JOB_ID": "1", "WANDB_MODE": "online"}) is None  # the user's choice
    assert wandb_mode("auto", {}) is None  # a laptop: wandb's own default
    assert wandb_mode("online", {"SLURM_JOB_ID": "1"}) == "online"


def test_a_missing_tracker_package_is_named_with_its_extra(tmp_path):
    """`hpcdiff sweep` refuses a tracker whose package is missing, naming the extra. The
    package is made unimportable in that process (sys.modules[name] = None: what Python
    does for an absent module), since uninstalling it here would break the other tests."""
    sweep_file = tmp_path / "x.toml"
    sweep_file.write_text(sweep_text(tmp_path, "x", '["tensorboard", "wandb"]', epochs=1, subset=64))
    code = (
        "import sys\nsys.modules['wandb'] = None\nfrom hpcdiff.cli import main\n"
        f"main(['sweep', {str(sweep_file)!r}, '--dry-run', '--output', {str(tmp_path / 'runs')!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "log.trackers[1]" in proc.stderr and "pip install 'hpcdiff[wandb]'" in proc.stderr
    assert not (tmp_path / "runs").exists()
