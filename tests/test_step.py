"""The training step (training/step.py): the fixed rule that picks eager or CUDA graphs, the
function a graph captures computing what the eager step computes, learning rates that stay
live in a captured optimiser, and checkpoints that load on either device and mode.

CUDA-graph capture and replay themselves need a GPU: tests/test_gpu.py runs them there.
"""

import logging

import numpy as np
import pytest
import torch

from hpcdiff.config.spec import ModelSpec, RunSpec
from hpcdiff.science.diffusion import GaussianDDPM
from hpcdiff.science.models import build_model
from hpcdiff.storage import archive, checkpoint
from hpcdiff.training.loop import train
from hpcdiff.training.state import EMA
from hpcdiff.training.step import (
    EAGER,
    GRAPH,
    StepMode,
    TrainStep,
    _GraphedStep,
    load_optimizer_state,
    make_optimizer,
    portable_optimizer_state,
    resolve_mode,
)

from helpers import make_run_dir

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_the_rule_picks_graphs_only_for_one_cuda_process_without_fp16(caplog):
    assert resolve_mode("auto", device=CPU, world=1, precision="no").mode == EAGER
    assert resolve_mode("auto", device=CUDA, world=1, precision="bf16").mode == GRAPH
    assert resolve_mode("auto", device=CUDA, world=1, precision="no").mode == GRAPH
    assert resolve_mode("auto", device=CUDA, world=2, precision="bf16").mode == EAGER
    assert "2 processes" in resolve_mode("auto", device=CUDA, world=2, precision="bf16").reason
    assert resolve_mode("auto", device=CUDA, world=1, precision="fp16").mode == EAGER
    assert resolve_mode("none", device=CUDA, world=1, precision="bf16").mode == EAGER
    # A resumed run keeps the mode its checkpoint records while the config says "auto"...
    assert resolve_mode("auto", device=CUDA, world=1, precision="bf16", recorded=EAGER).mode == EAGER
    # ...unless it no longer applies (a GPU checkpoint resumed on the CPU).
    assert resolve_mode("auto", device=CPU, world=1, precision="no", recorded=GRAPH).mode == EAGER
    with caplog.at_level(logging.WARNING, logger="hpcdiff.training.step"):
        mode = resolve_mode("graph", device=CPU, world=1, precision="no")
    assert mode.mode == EAGER and "CUDA device" in caplog.text


def _ddpm(seed=0):
    torch.manual_seed(seed)
    return GaussianDDPM(build_model(ModelSpec(hidden=(8, 8))), beta1=1e-4, beta2=0.02, n_T=20)


def test_the_captured_function_computes_the_eager_step():
    """``_GraphedStep.body`` (what a CUDA graph records) against the eager step: windows of 3
    and a last window of 1, gradient clipping and EMA. Same weights, optimiser state and EMA
    afterwards, to float rounding."""
    from types import SimpleNamespace

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    runs = []
    for graphed in (False, True):
        ddpm = _ddpm()
        opt = torch.optim.Adam(ddpm.parameters(), lr=1e-3)
        ema = EMA(ddpm.denoiser, 0.9)
        state = SimpleNamespace(diffusion=ddpm, core=ddpm, optimizer=opt, ema=ema)
        if graphed:
            step = _GraphedStep(ddpm, opt, ema, images, grad_clip=0.5, precision="no")
        else:
            step = TrainStep(state, accelerator, images, grad_clip=0.5, mode=StepMode(EAGER, "test"))
        torch.manual_seed(123)
        losses = []
        for i, (window, sync) in enumerate([(3, False), (3, False), (3, True), (1, True)]):
            idx = torch.arange(8 * i, 8 * i + 8)
            if graphed:
                step.idx[8] = idx
                step.window.fill_(float(window))
                losses.append(step.body(sync, 8))
            else:
                losses.append(step(idx, window, sync))
        runs.append((ddpm, opt, ema, torch.stack(losses)))
    (a, opt_a, ema_a, loss_a), (b, opt_b, ema_b, loss_b) = runs
    torch.testing.assert_close(loss_b, loss_a)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-6, atol=1e-7)
        assert pb.grad is not None and not pb.grad.any()  # zeroed in place, never freed
        assert pa.grad is None
    for k in ema_a.shadow:
        torch.testing.assert_close(ema_b.shadow[k], ema_a.shadow[k], rtol=1e-6, atol=1e-7)


def test_a_tensor_learning_rate_stays_live_and_checkpoints_as_a_float():
    """Graph mode's optimiser reads lr from a tensor: ReduceLROnPlateau must change that
    tensor in place (a float would be baked into the graph), and the checkpoint must hold a
    float so that it loads on a machine without the tensor's device."""
    ddpm = _ddpm()
    params = list(ddpm.parameters())
    # foreach=False: on the CPU, torch allows a tensor lr only off the foreach path.
    opt = torch.optim.Adam(params, lr=torch.tensor(1e-3), foreach=False)
    lr_tensor = opt.param_groups[0]["lr"]
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    plateau.step(1.0)
    plateau.step(2.0)  # no improvement: lr halves
    assert opt.param_groups[0]["lr"] is lr_tensor and float(lr_tensor) == pytest.approx(5e-4)

    saved = portable_optimizer_state(opt)
    assert isinstance(saved["param_groups"][0]["lr"], float)
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)  # the live optimiser is untouched

    eager = make_optimizer(RunSpec().train, _ddpm().parameters(), device=CPU, mode=StepMode(EAGER, ""))
    load_optimizer_state(eager, saved)
    assert isinstance(eager.param_groups[0]["lr"], float) and eager.param_groups[0]["lr"] == pytest.approx(5e-4)

    again = torch.optim.Adam(_ddpm().parameters(), lr=torch.tensor(2e-4), foreach=False)
    target = again.param_groups[0]["lr"]
    load_optimizer_state(again, saved)
    assert again.param_groups[0]["lr"] is target and float(target) == pytest.approx(5e-4)


def test_cpu_runs_train_eagerly_and_record_it(tiny_sweep, tmp_path):
    """The default (train.compile = "auto") on the CPU: eager, recorded in the archive and in
    every checkpoint, and a resume finds it there."""
    rd = make_run_dir(tiny_sweep(epochs=1), tmp_path / "runs")
    assert train(rd.path) == "done"
    attrs = archive.read(rd.archive)["attrs"]
    assert attrs["step_mode"] == EAGER and "CUDA device" in attrs["step_mode_reason"]
    epoch, state = checkpoint.load_latest(rd.checkpoints)
    assert epoch == 1 and state["compile"] == EAGER
    assert isinstance(state["optimizer"]["param_groups"][0]["lr"], float)
    assert np.isfinite(archive.read(rd.archive)["metrics"]["train_loss"]).all()
