"""CUDA graphs on a real GPU: the training step and the samplers' denoiser (marked gpu: skipped without CUDA; the GPU
check, ../shared/gpu/check.sh, runs them): capture and replay, a learning rate that stays
live inside the graph, gradient accumulation, graphs against eager, an exact resume, and
the fall-back when a step cannot be captured; sampling from graphs gives what plain calls give.
"""

import numpy as np
import pytest
import torch

from helpers import make_run_dir, resume_with

from hpcdiff.config.spec import ModelSpec
from hpcdiff.science.diffusion import GaussianDDPM
from hpcdiff.science.models import build_model
from hpcdiff.storage import archive, checkpoint
from hpcdiff.training.loop import train
from hpcdiff.training.state import EMA
from hpcdiff.training.step import GRAPH, _GraphedStep

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")]


def _graphed(lr=1e-3, ema=True, clip=1.0):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    ddpm = GaussianDDPM(build_model(ModelSpec(hidden=(8, 8))), beta1=1e-4, beta2=0.02, n_T=20).to(dev)
    opt = torch.optim.Adam(ddpm.parameters(), lr=torch.tensor(lr, device=dev), fused=True, capturable=True)
    avg = EMA(ddpm.gt, 0.9) if ema else None
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, device=dev)
    return ddpm, opt, avg, _GraphedStep(ddpm, opt, avg, images, grad_clip=clip, precision="bf16")


def test_replays_train_and_read_the_live_learning_rate():
    ddpm, opt, _, step = _graphed()
    idx = torch.arange(16, device="cuda")
    before = [p.detach().clone() for p in ddpm.parameters()]
    losses = torch.stack([step(idx, 1, True) for _ in range(5)])
    assert set(step.graphs) == {(True, 16)}  # captured once, replayed after
    assert torch.isfinite(losses).all()
    moved = [p.detach().clone() for p in ddpm.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, moved))
    opt.param_groups[0]["lr"].fill_(0.0)  # what ReduceLROnPlateau does to a tensor lr
    for _ in range(3):
        step(idx, 1, True)
    for a, b in zip(moved, ddpm.parameters()):
        torch.testing.assert_close(b.detach(), a)  # lr 0: the captured optimiser moves nothing


def test_accumulation_windows_use_two_graphs_and_keep_gradients_between_them():
    ddpm, _, _, step = _graphed(ema=False, clip=0.0)
    idx = torch.arange(16, device="cuda")
    step(idx, 3, False)
    step(idx, 3, False)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ddpm.parameters() if p.requires_grad)
    step(idx, 3, True)
    assert all(not p.grad.any() for p in ddpm.parameters() if p.requires_grad)  # zeroed in place
    step(idx, 1, True)  # the last, shorter window of an epoch: the same graph, another divisor
    assert set(step.graphs) == {(False, 16), (True, 16)}


def _losses(rd):
    return np.asarray(archive.read(rd.archive)["metrics"]["train_loss"])


def test_a_graph_run_matches_an_eager_run_and_resumes_exactly(tiny_sweep, tmp_path):
    def run(name, epochs, compile_mode):
        text = tiny_sweep(epochs=epochs).read_text().replace('name = "tiny"', f'name = "{name}"')
        text = text.replace("[train]\n", f'[train]\ndevice = "cuda"\nmixed_precision = "no"\n'
                                         f'compile = "{compile_mode}"\n', 1)
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return make_run_dir(path, tmp_path / "runs")

    whole = run("whole", 3, "graph")
    assert train(whole.path) == "done"
    assert archive.read(whole.archive)["attrs"]["step_mode"] == GRAPH
    assert checkpoint.load_latest(whole.checkpoints)[1]["compile"] == GRAPH

    eager = run("eager", 3, "none")
    assert train(eager.path) == "done"
    # Fused capturable Adam with a tensor lr vs fused Adam with a float: the same maths.
    np.testing.assert_allclose(_losses(whole), _losses(eager), rtol=2e-3)

    split = run("split", 1, "graph")
    assert train(split.path) == "done"
    assert resume_with(split, epochs=3) == "done"
    np.testing.assert_allclose(_losses(split), _losses(whole), rtol=1e-4)


def test_a_step_that_cannot_be_captured_trains_eagerly_and_says_so(tiny_sweep, tmp_path):
    """downsample groups images by factor on the host (torch.unique(...).tolist()): no graph
    can hold that, so the run falls back to eager, finishes, and records why."""
    text = tiny_sweep(epochs=1).read_text().replace("[train]\n", '[train]\ndevice = "cuda"\ncompile = "graph"\n', 1)
    path = tmp_path / "downsample.toml"
    path.write_text(text + '\n[degradation]\nname = "downsample"\n')
    rd = make_run_dir(path, tmp_path / "runs")
    assert train(rd.path) == "done"
    attrs = archive.read(rd.archive)["attrs"]
    assert attrs["step_mode"] == "none" and "could not be captured" in attrs["step_mode_reason"]
    assert checkpoint.load_latest(rd.checkpoints)[1]["compile"] == "none"


@pytest.mark.parametrize("sampler, steps", [("ddim", 10), ("ancestral", 0)])
def test_sampling_from_graphs_matches_plain_calls(sampler, steps):
    from hpcdiff.science.streams import generator

    torch.manual_seed(0)
    ddpm = GaussianDDPM(build_model(ModelSpec(hidden=(8, 8))), beta1=1e-4, beta2=0.02, n_T=20).to("cuda").eval()
    x_T = torch.randn(32, 1, 28, 28, device="cuda")
    graphed = ddpm.sample(x_T, generator=generator(0, "sample_grid", device="cuda"), sampler=sampler, steps=steps)
    assert len(ddpm._denoisers._replays) == 1 and not ddpm._denoisers._failed
    ddpm._denoisers._failed = True  # plain calls from here on
    plain = ddpm.sample(x_T, generator=generator(0, "sample_grid", device="cuda"), sampler=sampler, steps=steps)
    torch.testing.assert_close(graphed, plain, rtol=1e-4, atol=1e-4)
