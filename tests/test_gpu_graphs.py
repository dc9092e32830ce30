"""CUDA graphs on a real GPU: the training step and the samplers' denoiser (marked gpu: skipped without CUDA; the GPU
check, ../shared/gpu/check.sh, runs them): capture and replay, a learning rate that stays
live inside the graph, gradient accumulation, graphs against eager, an exact resume, and
a step that cannot be captured; sampling from graphs gives what plain calls give.
"""

import numpy as np
import pytest
import torch

from hpcdiff.config import tomlio
from hpcdiff.config.spec import ModelSpec
from hpcdiff.science.diffusion import GaussianDDPM
from hpcdiff.science.models import build_model
from hpcdiff.storage import archive, checkpoint
from hpcdiff.training.state import EMA
from hpcdiff.training.step import GRAPH, CaptureFailed, _GraphedStep

from helpers import fabricate_status, make_run_dir, train_to_end

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())"),
]


def _graphed(lr=1e-3, ema=True, clip=1.0):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    ddpm = GaussianDDPM(build_model(ModelSpec(hidden=(8, 8))), beta1=1e-4, beta2=0.02, n_T=20).to(dev)
    opt = torch.optim.Adam(ddpm.parameters(), lr=torch.tensor(lr, device=dev), fused=True, capturable=True)
    avg = EMA(ddpm.denoiser, 0.9) if ema else None
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
    """Real `hpcdiff train` processes (Accelerate's device and precision are set once per
    process): graphs vs eager on the same GPU, and a graph run stopped after epoch 1 and
    resumed against the uninterrupted one."""

    def run(name, epochs, compile_mode):
        text = tiny_sweep(epochs=epochs).read_text().replace('name = "tiny"', f'name = "{name}"')
        text = text.replace(
            "[train]\n", f'[train]\ndevice = "cuda"\nmixed_precision = "no"\ncompile = "{compile_mode}"\n', 1
        )
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return make_run_dir(path, tmp_path / "runs")

    whole = run("whole", 3, "graph")
    train_to_end(whole)
    assert archive.read(whole.archive)["attrs"]["step_mode"] == GRAPH
    assert checkpoint.load_latest(whole.checkpoints)[1]["compile"] == GRAPH

    eager = run("eager", 3, "none")
    train_to_end(eager)
    assert archive.read(eager.archive)["attrs"]["step_mode"] == "none"
    # Fused capturable Adam with a tensor lr vs fused Adam with a float: the same maths.
    np.testing.assert_allclose(_losses(whole), _losses(eager), rtol=2e-3)

    split = run("split", 1, "graph")
    train_to_end(split)
    config = tomlio.load(split.config_path)
    config["train"]["epochs"] = 3
    split.config_path.write_text(tomlio.dumps(config))
    fabricate_status(split, state="timeout")
    train_to_end(split)
    # cuDNN's backward kernels may sum in another order from run to run: not bit-exact on a GPU.
    np.testing.assert_allclose(_losses(split), _losses(whole), rtol=2e-3)


class _SyncingProcess(torch.nn.Module):
    """A diffusion process whose loss reads a value back to the host mid-step (``.item()``):
    a real host sync, which no CUDA graph can hold. None of the registered degradations does
    this any more (downsample and non-circular blur were rewritten without host reads), so the
    fall-back is tested on this one."""

    def __init__(self):
        super().__init__()
        self.denoiser = build_model(ModelSpec(hidden=(8, 8)))

    def forward(self, x):
        t = torch.rand(x.shape[0], device=x.device)
        scale = float(x.abs().mean().item()) + 1.0
        return ((self.denoiser(x, t) - x) ** 2).mean() * scale


def test_a_step_that_cannot_be_captured_changes_nothing_and_says_so():
    torch.manual_seed(0)
    process = _SyncingProcess().to("cuda")
    opt = torch.optim.Adam(process.parameters(), lr=torch.tensor(1e-3, device="cuda"), fused=True, capturable=True)
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8, device="cuda")
    step = _GraphedStep(process, opt, None, images, grad_clip=0.0, precision="no")
    before = [p.detach().clone() for p in process.parameters()]
    default_stream = torch.cuda.current_stream()
    with pytest.raises(CaptureFailed, match="could not be captured"):
        step(torch.arange(16, device="cuda"), 1, True)
    assert torch.cuda.current_stream() == default_stream  # the capture's stream is not left current
    for a, b in zip(before, process.parameters()):
        torch.testing.assert_close(b.detach(), a)  # the warm-up was put back, nothing recorded ran
    assert all(not st["step"].any() for st in opt.state.values())
    assert torch.ones(3, device="cuda").sum().item() == 3  # CUDA still works


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
