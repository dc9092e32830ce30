"""The starter's exact formulas: network shapes, time encoding, schedule, loss, sampler."""

import math

import pytest
import torch

from hpcdiff.science.diffusion import GaussianDDPM, ddpm_schedules
from hpcdiff.science.models import CNN, build_model, conv_flops_per_image
from hpcdiff.config.spec import ModelSpec


def test_cnn_shapes_and_layers():
    model = build_model(ModelSpec(hidden=(16, 32, 32, 16)))
    x = torch.randn(5, 1, 28, 28)
    assert model(x, torch.rand(5)).shape == (5, 1, 28, 28)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(7, 7)] * 4 + [(3, 3)]
    assert [c.out_channels for c in convs] == [16, 32, 32, 16, 1]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert [tuple(n.normalized_shape) for n in norms] == [(16, 28, 28), (32, 28, 28), (32, 28, 28), (16, 28, 28)]
    linears = [m for m in model.time_embed if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(32, 128), (128, 128), (128, 128), (128, 16)]


def test_time_encoding_frequencies():
    model = CNN(ModelSpec())
    expected = [0.0] + [2 * math.pi * 1.5**i for i in range(15)]
    assert torch.allclose(model.frequencies, torch.tensor(expected))
    t = torch.tensor([0.3])
    phases = t[:, None] * torch.tensor(expected)[None]
    feats = torch.cat([torch.sin(phases), torch.cos(phases) - 1], dim=1)
    assert torch.allclose(model.time_encoding(t), model.time_embed(feats)[:, :, None, None])


def test_flops_of_default_model():
    flops = conv_flops_per_image(CNN(ModelSpec()))
    assert abs(flops / 1e6 - 159) < 1  # ~159 MFLOP per image forward


def test_schedule_is_the_starters():
    s = ddpm_schedules(1e-4, 0.02, 1000)
    assert s["beta_t"].shape == (1001,)
    assert s["beta_t"][0].item() == pytest.approx(1e-4)
    assert s["beta_t"][-1].item() == pytest.approx(0.02)
    alpha = torch.cumprod(1 - s["beta_t"].double(), 0)
    assert torch.allclose(s["alpha_t"].double(), alpha, rtol=1e-4)
    with pytest.raises(ValueError):
        ddpm_schedules(0.02, 1e-4, 10)


def test_one_ddpm_schedule_for_the_degradation_and_the_model():
    """schedules.ddpm_schedule owns the linear betas: the Gaussian degradation and the DDPM
    read the same numbers, with the same checks."""
    from hpcdiff.science.degradations import ddpm_alpha_bar
    from hpcdiff.science.schedules import ddpm_schedule

    beta, alpha_bar = ddpm_schedule(50, 1e-4, 0.02)
    s = ddpm_schedules(1e-4, 0.02, 50)
    assert torch.equal(s["beta_t"], beta) and torch.equal(s["alpha_t"], alpha_bar)
    assert torch.equal(ddpm_alpha_bar(50, 1e-4, 0.02), alpha_bar)
    for bad in ((0.02, 1e-4), (0.0, 0.02), (1e-4, 1.0)):
        for build in (lambda: ddpm_schedules(*bad, 10), lambda: ddpm_alpha_bar(10, *bad)):
            with pytest.raises(ValueError, match="beta1"):
                build()


def test_loss_draws_t_in_1_to_nT_minus_1():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, z, t):
            seen.append(t.clone())
            return torch.zeros_like(z)

    ddpm = GaussianDDPM(Spy(), beta1=1e-4, beta2=0.02, n_T=5)
    torch.manual_seed(0)
    x = torch.zeros(4000, 1, 2, 2)
    loss = ddpm(x)
    t = torch.cat(seen) * 5
    assert set(t.round().long().tolist()) == {1, 2, 3, 4}
    # With a zero prediction, MSE(eps, 0) = E[eps^2] = 1.
    assert loss.item() == pytest.approx(1.0, abs=0.05)


def test_ancestral_sampler_follows_the_starter():
    """A model that always predicts 0 makes the sampler a known recursion."""

    class Zero(torch.nn.Module):
        def forward(self, z, t):
            return torch.zeros_like(z)

    ddpm = GaussianDDPM(Zero(), beta1=1e-4, beta2=0.02, n_T=10)
    g = torch.Generator().manual_seed(3)
    x_T, start = ddpm.start(2, (1, 2, 2), generator=g, device=torch.device("cpu"))
    assert start == "noise"
    out = ddpm.sample(x_T, generator=g)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 1, 2, 2, generator=g)
    for i in range(10, 0, -1):
        z = z / torch.sqrt(1 - ddpm.beta_t[i])
        if i > 1:
            z = z + torch.sqrt(ddpm.beta_t[i]) * torch.randn(z.shape, generator=g)
    assert torch.allclose(out, z)


class _PointMassEps(torch.nn.Module):
    """The exact noise prediction when the data distribution is one image c."""

    def __init__(self, c, alpha_bar, n_T):
        super().__init__()
        self.c, self.alpha_bar, self.n_T = c, alpha_bar, n_T

    def forward(self, z, t):
        a = self.alpha_bar[(t * self.n_T).round().long()].view(-1, 1, 1, 1)
        return (z - torch.sqrt(a) * self.c) / torch.sqrt(1 - a)


@pytest.mark.parametrize("sampler,steps,tolerance", [
    ("ancestral", 0, 0.02), ("ancestral", 50, 0.05), ("ddim", 50, 1e-4), ("ddim", 7, 1e-4)])
def test_samplers_on_skipped_steps_reach_a_point_mass(sampler, steps, tolerance):
    """With the exact noise prediction, DDIM lands on the image and the respaced ancestral
    sampler close to it; ancestral steps with the unrespaced betas would leave most of x_T."""
    c = torch.linspace(-0.5, 0.5, 16).reshape(1, 1, 4, 4)
    ddpm = GaussianDDPM(torch.nn.Identity(), beta1=1e-4, beta2=0.02, n_T=1000)
    ddpm.gt = _PointMassEps(c, ddpm.alpha_t, 1000)
    calls = []
    ddpm.gt.register_forward_hook(lambda *_: calls.append(1))
    x_T = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = ddpm.sample(x_T, generator=torch.Generator().manual_seed(1), sampler=sampler, steps=steps)
    assert (out - c).abs().mean().item() < tolerance
    assert len(calls) == (steps or 1000)
