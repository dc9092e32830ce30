"""The CUDA path, through the real commands on real data (marked ``gpu``).

A tiny run end to end on the GPU (bf16 autocast, EMA, gradient clipping, the classifier
metrics, sample grids, checkpoints), a SIGKILL then resume there, and resumes that change
device (a GPU checkpoint continued on the CPU and the reverse). tests/test_gpu_env.py has
the rest: cold diffusion with every degradation, a 1-process `accelerate launch`, a SLURM
task's environment.

Running them:
- On a machine with CUDA: ``pytest -m gpu`` (the GPU machine's check runs
  ``pytest -m "gpu and not slurm"``). They train on "cuda".
- Without CUDA they skip, saying why (tests/conftest.py's collection hook).
- ``HPCDIFF_TEST_GPU_AS_CPU=1 pytest -m gpu`` runs the very same tests with "cpu" in place of
  "cuda" (the ``test_device`` fixture), so that the test code is checked before it first
  meets a GPU; the cross-device resumes become cpu -> cpu. The whole gpu set (this file,
  test_gpu_env.py and test_degradations.py's) took 4.5 minutes that way on 2 shared cores.

Every training runs in a subprocess (`hpcdiff sweep --executor local`, `python -m hpcdiff
train`): Accelerate's process-wide state cannot switch between CPU and GPU inside one
pytest process. Data: Debian's Fashion-MNIST, or on the GPU machine the full MNIST of
HPCDIFF_TEST_MNIST_ROOT (conftest's ``gpu_data_dir``).
"""

import dataclasses
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from hpcdiff.config import tomlio
from hpcdiff.config.spec import DataSpec, TrainSpec
from hpcdiff.storage import archive, checkpoint
from hpcdiff.storage.rundir import sweep_run_dirs

from helpers import (
    GPU_CLASSIFIER_EPOCHS,
    TRAIN_TIMEOUT_S,
    cli,
    device_line,
    fabricate_status,
    make_run_dir,
    output_of,
    train_process,
    train_to_end,
)

pytestmark = pytest.mark.gpu

# Per-epoch losses of a resumed run against the uninterrupted one. On the CPU a resume is
# exact to rounding. cuDNN may pick kernels whose float sums run in another order from one
# process to the next, and bf16 autocast rounds those differences up; a resume that lost
# an RNG stream or the optimiser state is off by percents, far outside either bound.
RESUME_RTOL = {"cpu": 1e-5, "cuda": 5e-3}
# The classifier of the classifier metrics, trained once per session on the test device into
# the session's cache: one epoch over the first CLASSIFIER_IMAGES training images (the
# metrics only have to be computed on the device, not be good; the whole 60,000 would take
# minutes on a CPU).
CLASSIFIER_IMAGES = 6000
# train.compile: "default" leaves the key out of the config ("auto": CUDA graphs on one
# GPU, eager on the CPU); "none" is the eager step on the GPU.
COMPILE_MODES = ["default", "none"]


@pytest.fixture(params=COMPILE_MODES)
def compile_mode(request, test_device):
    mode = request.param
    if mode == "none" and test_device != "cuda":
        pytest.skip("on the CPU the default is the eager step already")
    assert "compile" in {f.name for f in dataclasses.fields(TrainSpec)}
    return mode


@pytest.fixture(scope="session")
def device_classifier(test_device, gpu_data_dir, hpcdiff_cache):
    from hpcdiff.data import Dataset
    from hpcdiff.evaluation import classifier as clf

    def fewer_images(spec, *, data, **kw):
        train, test = data
        few = Dataset(train.images[:CLASSIFIER_IMAGES], train.labels[:CLASSIFIER_IMAGES])
        return train_classifier(spec, data=(few, test), **kw)

    train_classifier = clf.train_classifier
    # Cached under the key of the whole dataset: the key a run looks it up by.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clf, "train_classifier", fewer_images)
        model = clf.get_classifier(
            DataSpec(name="idx", root=str(gpu_data_dir)), hpcdiff_cache, test_device, epochs=GPU_CLASSIFIER_EPOCHS
        )
    assert next(model.parameters()).device.type == test_device
    return model


def _wait_for(predicate, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while not predicate():
        assert proc.poll() is None, f"training ended before {what}: {output_of(proc)}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # polling interval of the wait on a file, not a stand-in for it


def test_tiny_run_end_to_end(test_device, gpu_sweep, device_classifier, hpcdiff_cache, compile_mode, tmp_path):
    """`hpcdiff sweep` on the device: bf16 autocast (on a GPU that has it), EMA, clipping,
    the default classifier metrics every epoch, sample grids, checkpoints that load on a
    CPU-only machine, with the session's classifier found in the cache, not retrained."""
    sweep_file = gpu_sweep("e2e", test_device, metrics=True, compile_mode=compile_mode)
    cached = {p: p.stat().st_mtime_ns for p in hpcdiff_cache.glob("classifier-*.pt")}
    assert hpcdiff_cache / f"classifier-{device_classifier.cache_key}.pt" in cached
    result = cli("sweep", sweep_file, "--output", tmp_path / "runs", "--executor", "local")
    assert result.exit_code == 0, result.output
    (rd,) = sweep_run_dirs(tmp_path / "runs" / "e2e")
    status = rd.read_status()
    assert status["state"] == "done" and status["epoch"] == 2, (status, rd.log.read_text()[-3000:])
    log = rd.log.read_text()
    assert device_line(test_device) in log, log[-2000:]

    data = archive.read(rd.archive)
    m = data["metrics"]
    assert m["epoch"].tolist() == [1, 2]
    for key in ("train_loss", "val_loss", "fid_classifier", "diversity_trace", "class_entropy"):
        assert np.isfinite(m[key]).all(), (key, m[key])
    assert ((1.0 <= m["inception_score"]) & (m["inception_score"] <= 10.0)).all(), m["inception_score"]
    assert "nonfinite_samples" not in m
    for epoch in (1, 2):
        grid = data["samples"][epoch]["images"]
        assert grid.shape == (4, 28, 28) and grid.dtype == np.uint8 and grid.std() > 0
    assert {p: p.stat().st_mtime_ns for p in hpcdiff_cache.glob("classifier-*.pt")} == cached  # none trained

    assert checkpoint.list_epochs(rd.checkpoints) == [1, 2]
    epoch, state = checkpoint.load_latest(rd.checkpoints)  # to the CPU, whatever wrote it
    assert epoch == 2 and state["config"]["train"]["device"] == test_device
    for name, table in (("model", state["model"]), ("ema", state["ema"])):
        assert all(v.device.type == "cpu" and torch.isfinite(v).all() for v in table.values()), name
    assert state["ema"].keys() == state["model"].keys()
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])


def test_sigkill_then_resume_matches_the_uninterrupted_run(test_device, gpu_sweep, compile_mode, tmp_path):
    """A training process killed (SIGKILL) once its first checkpoint exists, resumed by
    rerunning the sweep: the same per-epoch losses as a run never interrupted."""
    # A GPU trains an epoch of these in a fraction of a second: enough of them that the kill
    # lands before the end; on the CPU a few do.
    epochs = 10 if test_device == "cuda" else 4
    sweep_file = gpu_sweep("kill", test_device, epochs=epochs, subset=640, compile_mode=compile_mode)
    out = tmp_path / "runs"
    ref_rd, rd = make_run_dir(sweep_file, tmp_path / "ref"), make_run_dir(sweep_file, out)
    # The uninterrupted reference trains meanwhile, in its own process.
    ref, proc = train_process(ref_rd), train_process(rd)
    try:
        _wait_for(lambda: checkpoint.list_epochs(rd.checkpoints), "its first checkpoint", proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        ref.wait(timeout=TRAIN_TIMEOUT_S)
    finally:
        for p in (proc, ref):
            if p.poll() is None:
                p.kill()
    assert ref.returncode == 0, output_of(ref)
    reference = archive.read(ref_rd.archive)["metrics"]
    assert proc.returncode == -signal.SIGKILL
    assert rd.effective_state() == "interrupted"
    killed_at = checkpoint.list_epochs(rd.checkpoints)[-1]
    assert 1 <= killed_at < epochs

    result = cli("sweep", sweep_file, "--output", out, "--executor", "local")
    assert result.exit_code == 0, result.output
    status = rd.read_status()
    assert status["state"] == "done" and status["epoch"] == epochs and status["restarts"] == 1
    log = rd.log.read_text()
    assert "resuming run" in log and log.count(device_line(test_device)) == 2
    metrics = archive.read(rd.archive)["metrics"]
    assert metrics["epoch"].tolist() == list(range(1, epochs + 1))  # no row twice, none missing
    rtol = RESUME_RTOL[test_device]
    np.testing.assert_allclose(metrics["train_loss"], reference["train_loss"], rtol=rtol)
    np.testing.assert_allclose(metrics["val_loss"], reference["val_loss"], rtol=rtol)


def test_resume_on_another_device_and_back(test_device, gpu_sweep, tmp_path):
    """Epoch 1 on the GPU; the user edits config.toml (train.device = "cpu", one epoch more)
    and reruns `hpcdiff train`: epoch 2 on the CPU from the GPU's checkpoint (weights, Adam
    moments, EMA, plateau scheduler, RNG); then epoch 3 back on the GPU from the CPU's. One
    archive row per epoch. Under HPCDIFF_TEST_GPU_AS_CPU=1 every leg is on the CPU."""
    devices = [test_device, "cpu", test_device]
    sweep_file = gpu_sweep("xdev", devices[0], epochs=1, train="lr_plateau_patience = 1\n")
    rd = make_run_dir(sweep_file, tmp_path / "runs")
    for epoch, device in enumerate(devices, start=1):
        if epoch > 1:
            config = tomlio.load(rd.config_path)
            config["train"].update(device=device, epochs=epoch)
            rd.config_path.write_text(tomlio.dumps(config))
            fabricate_status(rd, state="timeout")  # as if its job had reached its time limit
        train_to_end(rd)
        status = rd.read_status()
        assert status["state"] == "done" and status["epoch"] == epoch
        epoch_done, state = checkpoint.load_latest(rd.checkpoints)
        assert epoch_done == epoch and state["config"]["train"]["device"] == device
        assert state["step"] == epoch * (320 - 64) // 64  # 256 training images after validation: 4 steps an epoch
        assert all(torch.isfinite(v).all() for v in state["ema"].values())

    log = rd.log.read_text()
    for epoch in (1, 2):
        assert f"from the checkpoint of epoch {epoch}" in log
    trained_on = [line.split(" INFO ", 1)[-1] for line in log.splitlines() if "mixed precision" in line]
    assert trained_on == [device_line(d) for d in devices]
    metrics = archive.read(rd.archive)["metrics"]
    assert metrics["epoch"].tolist() == [1, 2, 3]
    assert np.isfinite(metrics["train_loss"]).all() and np.isfinite(metrics["val_loss"]).all()
