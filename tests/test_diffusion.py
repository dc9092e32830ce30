"""science/diffusion.py: the starter's DDPM schedule, loss and samplers, exactly."""

import pytest
import torch

from hpcdiff.science.diffusion import GaussianDDPM, ddpm_schedules


def test_schedule_is_the_starters():
    s = ddpm_schedules(1e-4, 0.02, 1000)
    assert s["beta_t"].shape == (1001,)
    assert s["beta_t"][0].item() == pytest.approx(1e-4)
    assert s["beta_t"][-1].item() == pytest.approx(0.02)
    alpha = torch.cumprod(1 - s["beta_t"].double(), 0)
    assert torch.allclose(s["alpha_bar"].double(), alpha, rtol=1e-4)
    with pytest.raises(ValueError):
        ddpm_schedules(0.02, 1e-4, 10)


def test_one_ddpm_schedule_for_the_degradation_and_the_model():
    """schedules.ddpm_schedule owns the linear betas: the Gaussian degradation and the DDPM
    read the same numbers, with the same checks."""
    from hpcdiff.science.degradations import ddpm_alpha_bar
    from hpcdiff.science.schedules import ddpm_schedule

    beta, alpha_bar = ddpm_schedule(50, 1e-4, 0.02)
    s = ddpm_schedules(1e-4, 0.02, 50)
    assert torch.equal(s["beta_t"], beta) and torch.equal(s["alpha_bar"], alpha_bar)
    assert torch.equal(ddpm_alpha_bar(50, 1e-4, 0.02), alpha_bar)
    for bad in ((0.02, 1e-4), (0.0, 0.02), (1e-4, 1.0)):
        for build in (lambda bad=bad: ddpm_schedules(*bad, 10), lambda bad=bad: ddpm_alpha_bar(10, *bad)):
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


@pytest.mark.parametrize(
    "sampler,steps,tolerance", [("ancestral", 0, 0.02), ("ancestral", 50, 0.05), ("ddim", 50, 1e-4), ("ddim", 7, 1e-4)]
)
def test_samplers_on_skipped_steps_reach_a_point_mass(sampler, steps, tolerance):
    """With the exact noise prediction, DDIM lands on the image and the respaced ancestral
    sampler close to it; ancestral steps with the unrespaced betas would leave most of x_T."""
    c = torch.linspace(-0.5, 0.5, 16).reshape(1, 1, 4, 4)
    ddpm = GaussianDDPM(torch.nn.Identity(), beta1=1e-4, beta2=0.02, n_T=1000)
    ddpm.denoiser = _PointMassEps(c, ddpm.alpha_bar, 1000)
    calls = []
    ddpm.denoiser.register_forward_hook(lambda *_: calls.append(1))
    x_T = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = ddpm.sample(x_T, generator=torch.Generator().manual_seed(1), sampler=sampler, steps=steps)
    assert (out - c).abs().mean().item() < tolerance
    assert len(calls) == (steps or 1000)
