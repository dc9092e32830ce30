"""Small helpers shared by test modules (tests/ is on sys.path)."""

import os
import subprocess
import sys
import tempfile
import time

import torch
from click.testing import CliRunner

from hpcdiff.cli import main
from hpcdiff.launch.plan import plan_sweep
from hpcdiff.storage.rundir import RunDir, update_manifest, write_run_config


def cli(*args, **env):
    """`hpcdiff ARGS...` in this process (click's runner); exceptions propagate."""
    return CliRunner(env=env or None).invoke(main, [str(a) for a in args], catch_exceptions=False)


# The smallest real run (Fashion-MNIST IDX files, a 2-layer CNN, 20 steps): every test that
# trains starts from it. Fields: root, subset, epochs. TINY_DEFAULT_EVAL keeps the [eval]
# section a user gets (metrics on, the classifier of conftest's fashion_classifier);
# TINY_BASE switches metrics off for tests about something else.
TINY_DEFAULT_EVAL = """
[data]
name = "idx"
root = "{root}"
subset = {subset}

[model]
hidden = [8, 8]

[diffusion]
n_T = 20

[train]
epochs = {epochs}
batch_size = 64
n_samples = 4
sample_every = 1
seed = 0
"""
TINY_BASE = (
    TINY_DEFAULT_EVAL
    + """
[eval]
metrics = []
reconstruction = false
"""
)


def make_run_dir(sweep_file, out) -> RunDir:
    """Write the first run of a sweep to disk, as `hpcdiff sweep` would, without training it
    (so a test can start `hpcdiff train` itself and signal or kill it)."""
    plan = plan_sweep(sweep_file, output=out)
    run = plan.sweep.runs[0]
    rd = RunDir(plan.sweep_dir / run.run_id)
    write_run_config(rd, run.spec, run_id=run.run_id, sweep=plan.sweep.name, axes=run.axes, label=run.label)
    update_manifest(plan.sweep_dir, plan.sweep, sweep_file.read_text())
    return rd


# Tests marked `gpu` run on "cuda"; with HPCDIFF_TEST_GPU_AS_CPU=1 the same tests run on "cpu"
# (to check the test code on a machine without a GPU); otherwise, without CUDA, they skip.
GPU_AS_CPU = os.environ.get("HPCDIFF_TEST_GPU_AS_CPU") == "1"
GPU_SKIP_REASON = (
    "needs CUDA (torch.cuda.is_available() is False); HPCDIFF_TEST_GPU_AS_CPU=1 runs the gpu tests on the CPU instead"
)


def gpu_test_device() -> str | None:
    """The device the `gpu` tests run on: "cuda", "cpu" under HPCDIFF_TEST_GPU_AS_CPU=1, or
    None (they skip)."""
    if GPU_AS_CPU:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


# ------------------------------------------------------------------ the gpu tests' helpers

# Epochs of the classifier behind the classifier metrics of the gpu tests' runs (the
# session's, tests/test_gpu.py's device_classifier; one epoch: the metrics only have to be
# computed on the device, not to be good).
GPU_CLASSIFIER_EPOCHS = 1
TRAIN_TIMEOUT_S = 600


def gpu_sweep_text(
    name: str,
    root,
    device: str,
    *,
    epochs: int = 2,
    subset: int = 320,
    metrics: bool = False,
    compile_mode: str = "default",
    train: str = "",
) -> str:
    """A tiny real sweep (TINY_BASE / TINY_DEFAULT_EVAL) on ``device`` with EMA and gradient
    clipping; ``compile_mode`` "default" leaves train.compile out; ``train``: more [train] lines."""
    base = TINY_DEFAULT_EVAL if metrics else TINY_BASE
    text = base.format(root=root, epochs=epochs, subset=subset)
    extra = f'device = "{device}"\nema_decay = 0.9\ngrad_clip = 1.0\n' + train
    if compile_mode != "default":
        extra += f'compile = "{compile_mode}"\n'
    text = text.replace("[train]\n", "[train]\n" + extra, 1)
    if metrics:  # few, quick evaluation samples, every epoch
        text += f"\n[eval]\nevery = 1\nsamples = 64\nsteps = 10\nclassifier_epochs = {GPU_CLASSIFIER_EPOCHS}\n"
    return f'[sweep]\nname = "{name}"\n' + text


def expected_precision(device: str) -> str:
    """What train.mixed_precision = "auto" resolves to on ``device`` (this machine's GPU)."""
    from hpcdiff.training.environment import gpu_has_bf16

    return "bf16" if device == "cuda" and gpu_has_bf16(torch.cuda.current_device()) else "no"


def device_line(device: str, rank: int = 0, world: int = 1) -> str:
    """What make_accelerator logs for process ``rank`` of ``world`` on ``device``."""
    name = f"cuda:{torch.cuda.current_device()}" if device == "cuda" else device
    return f"device {name} (process {rank} of {world}), mixed precision {expected_precision(device.split(':')[0])}"


def train_process(rd: RunDir, env: dict | None = None) -> subprocess.Popen:
    """`python -m hpcdiff train RUN_DIR` started, in ``env`` or this one. Its output goes to a
    file (a pipe nobody reads while the test waits could fill up and stop it): output_of."""
    out = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcdiff", "train", str(rd.path)],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.output_file = out
    return proc


def output_of(proc: subprocess.Popen, tail: int = 4000) -> str:
    proc.output_file.seek(0)
    return proc.output_file.read()[-tail:]


def train_to_end(rd: RunDir, env: dict | None = None) -> str:
    """`hpcdiff train RUN_DIR` in a subprocess; its output, after checking it succeeded."""
    proc = train_process(rd, env)
    proc.wait(timeout=TRAIN_TIMEOUT_S)
    out = output_of(proc)
    assert proc.returncode == 0, out
    return out


def fabricate_status(rd: RunDir, **fields) -> None:
    """status.json changed by hand, bypassing the state machine's checks: a test making up a
    run's history (a finished run "stopped" at its last checkpoint so that it trains on, a
    run recorded as failed after one epoch, a fixture's runs in every state)."""
    import json

    status = rd.read_status()
    status.update({k: str(v) if k == "state" else v for k, v in fields.items()})
    rd.path.mkdir(parents=True, exist_ok=True)
    rd.status_path.write_text(json.dumps(status))


def resume_with(rd: RunDir, **train_settings) -> str:
    """Resume a finished run as if it had been stopped at its last checkpoint (state
    "timeout"), with ``train_settings`` changed in its config.toml (e.g. more epochs)."""
    from hpcdiff.config import tomlio
    from hpcdiff.training.loop import train

    config = tomlio.load(rd.config_path)
    config["train"].update(train_settings)
    rd.config_path.write_text(tomlio.dumps(config))
    fabricate_status(rd, state="timeout")
    return train(rd.path)


def wait_for(predicate, timeout, what):
    """Poll ``predicate`` (a file a process writes, a process's exit) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
