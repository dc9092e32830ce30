"""Cold diffusion on real MNIST digits: Bansal's samplers with a perfect restorer, losses,
sampling starts, and spec validation of degradations."""

import pytest
import torch

from hpcdiff.config.spec import DataSpec, ModelSpec, RunSpec, SpecError
from hpcdiff.data import load_splits, to_model_range
from hpcdiff.resolve import validate_spec
from hpcdiff.science.degradations import DEGRADATION_INFO, DEGRADATIONS, default_schedule, process_of
from hpcdiff.science.diffusion import SAMPLERS, ColdDiffusion, build_diffusion, sampling_times
from hpcdiff.science.models import build_model

COLD = [n for n in DEGRADATIONS.names() if process_of(n) == "cold"]


@pytest.fixture(scope="module")
def digits():
    splits = load_splits(DataSpec(name="mnist-5k"))
    return to_model_range(splits.test.images[::25])  # 20 real digits, 2 per class


def _cold(name, n_T=None, **params):
    n_T = n_T or min(DEGRADATION_INFO[name].n_steps, 30)
    return ColdDiffusion(
        build_model(ModelSpec(hidden=(4,))),
        degradation=name,
        schedule=default_schedule(name),
        params=params,
        n_T=n_T,
        noise_seed=7,
    )


class Oracle(torch.nn.Module):
    """A perfect restorer: returns the true x0 whatever it is given."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t):
        return self.x0


@pytest.mark.parametrize("name", COLD)
def test_alg2_with_perfect_restorer_recovers_x0(name, digits):
    cd = _cold(name)
    x_T = cd.degrade(digits, torch.full((len(digits),), cd.n_T), cd.level_generator(cd.n_T))
    assert not torch.allclose(x_T, digits)
    out = SAMPLERS.get("cold_alg2")(cd, x_T, generator=None, restorer=lambda x, s: digits)
    torch.testing.assert_close(out, digits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [0, 7])
@pytest.mark.parametrize("name", COLD)
def test_alg2_with_perfect_restorer_returns_x0_from_its_own_start_on_any_subsequence(name, steps, digits):
    """Started from a degraded image with the draw the sampler uses (start and sampler given
    one generator), Algorithm 2 telescopes on all levels or on a subsequence of them (with
    another generator's start it would not for a stochastic degradation: the control).
    Algorithm 1 ends with D(x0, 0) = x0, checked alongside."""
    cd = _cold(name)
    cd.sample_start = "degraded_test"
    g = torch.Generator().manual_seed(11)
    times = sampling_times(cd.n_T, steps)
    x_T = cd.degrade_to_start(digits, g)
    for alg in ("cold_alg2", "cold_alg1"):
        out = SAMPLERS.get(alg)(cd, x_T, generator=g, restorer=lambda x, s: digits, times=times)
        torch.testing.assert_close(out, digits, atol=1e-5, rtol=0)
    if not DEGRADATION_INFO[name].deterministic:
        other = SAMPLERS.get("cold_alg2")(
            cd, x_T, generator=torch.Generator().manual_seed(12), restorer=lambda x, s: digits, times=times
        )
        assert (other - digits).abs().max() > 0.1


def _leaky(x0, eps):
    """A restorer off by a fixed small error: it leaks a fraction eps of what its input
    still gets wrong (a real restorer's error depends on its input)."""
    return lambda x, s: x0 + eps * (x - x0)


def _full_sampler_error(cd, digits, eps):
    g = torch.Generator().manual_seed(3)
    x_T = cd.degrade_to_start(digits, g)
    out = SAMPLERS.get("cold_alg2")(cd, x_T, generator=g, restorer=_leaky(digits, eps))
    return float((out - digits).abs().max())


def _independent_draws(monkeypatch, name):
    import dataclasses

    monkeypatch.setitem(DEGRADATION_INFO, name, dataclasses.replace(DEGRADATION_INFO[name], draws="independent"))


@pytest.mark.parametrize("name", ["impulse", "luminance_mask"])
def test_alg2_stays_within_the_restorers_error_under_masks(name, digits, monkeypatch):
    """Impulse noise and the luminance mask share one draw across a trajectory's levels, so
    each pixel is uncovered once and keeps the restorer's error of that one step: the output
    is within eps of the truth (every pixel's error |x - x0| <= 1) at any number of levels.
    The control (the old per-level draws) re-corrupts pixels at every step and its error
    grows with the number of levels."""
    eps = 0.05
    for n_T in (10, 50, 200):
        assert _full_sampler_error(_cold(name, n_T), digits, eps) <= eps + 1e-5
    _independent_draws(monkeypatch, name)
    assert _full_sampler_error(_cold(name, 200), digits, eps) > 5 * eps


@pytest.mark.parametrize("max_half_width", [0, 3])
def test_alg2_error_under_pixel_swap_stays_within_the_restorers_error(max_half_width, digits, monkeypatch):
    """pixel_swap swaps fixed pairs whose reach grows with t, so each pixel moves once along a
    trajectory and is put back once, carrying the restorer's error at both ends of its swap:
    within 2 eps at any number of levels, whole-image pairs or local tiles. The control's
    per-level draws pair pixels anew at every level and its error grows with n_T."""
    eps = 0.05
    for n_T in (10, 50, 200):
        cd = _cold("pixel_swap", n_T, max_half_width=max_half_width)
        assert _full_sampler_error(cd, digits, eps) <= 2 * eps + 1e-5
    _independent_draws(monkeypatch, "pixel_swap")
    independent = [
        _full_sampler_error(_cold("pixel_swap", n_T, max_half_width=max_half_width), digits, eps) for n_T in (10, 200)
    ]
    assert independent[1] > 2 * independent[0] and independent[1] > 5 * eps


def test_evaluation_chunks_draw_different_trajectories(digits):
    """The shared draw is keyed by the sampling generator: the generators of two evaluation
    chunks corrupt different pixels, one generator always the same ones, and a generator
    seeded from the OS (any 64-bit seed) works too."""
    from hpcdiff.science.streams import generator

    cd = _cold("impulse")
    a = cd.degrade_to_start(digits, generator(0, "eval_chunk", 0))
    b = cd.degrade_to_start(digits, generator(0, "eval_chunk", 1))
    again = cd.degrade_to_start(digits, generator(0, "eval_chunk", 0))
    assert torch.equal(a, again) and not torch.equal(a, b)
    os_seeded = torch.Generator()
    os_seeded.seed()
    assert cd.degrade_to_start(digits, os_seeded).shape == digits.shape


@pytest.mark.parametrize("name", [n for n in COLD if DEGRADATION_INFO[n].deterministic])
def test_alg1_with_perfect_restorer_recovers_x0_for_deterministic(name, digits):
    cd = _cold(name)
    x_T = cd.degrade(digits, cd.n_T)
    out = SAMPLERS.get("cold_alg1")(cd, x_T, generator=None, restorer=lambda x, s: digits)
    torch.testing.assert_close(out, digits, atol=1e-6, rtol=0)


def test_alg2_with_a_wrong_restorer_does_not_recover(digits):
    cd = _cold("blur")
    x_T = cd.degrade(digits, cd.n_T)
    out = SAMPLERS.get("cold_alg2")(cd, x_T, generator=None, restorer=lambda x, s: digits.flip(0))
    assert (out - digits).abs().mean() > 0.05


@pytest.mark.parametrize("name", COLD)
@pytest.mark.parametrize("sampler", ["cold_alg1", "cold_alg2"])
def test_samplers_with_network_are_finite(name, sampler, digits):
    cd = _cold(name, n_T=5)
    cd.sampler = sampler
    x_T, start = cd.start(
        6, (1, 28, 28), generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), test_images=digits
    )
    assert start == "maximally degraded test images"
    out = cd.sample(x_T)
    assert out.shape == (6, 1, 28, 28) and torch.isfinite(out).all()


def test_loss_is_on_x0_and_l1_or_l2(digits):
    cd = _cold("inpaint")
    cd.denoiser = Oracle(digits)  # perfect restorer -> zero loss whatever t is drawn
    assert cd(digits).item() == 0.0
    cd.denoiser = Oracle(digits + 0.1)
    assert cd(digits).item() == pytest.approx(0.1, rel=1e-5)  # l1 by default


def test_blur_channel_mean_start(digits):
    cd = _cold("blur")
    cd.sample_start = "channel_mean"
    x_T, start = cd.start(
        4, (1, 28, 28), generator=torch.Generator().manual_seed(1), device=torch.device("cpu"), test_images=digits
    )
    assert "channel-mean" in start
    assert x_T.std(dim=(1, 2, 3)).max() < 0.01  # nearly constant images


def test_ddim_runs_with_fewer_steps():
    spec = validate_spec(
        RunSpec.from_dict({"diffusion": {"n_T": 50, "sampler": "ddim", "sample_steps": 10}, "model": {"hidden": [4]}})
    )
    ddpm = build_diffusion(spec, build_model(spec.model))
    calls = []
    ddpm.denoiser.register_forward_hook(lambda *_: calls.append(1))
    x_T, _ = ddpm.start(3, (1, 28, 28), generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    out = ddpm.sample(x_T)
    assert out.shape == (3, 1, 28, 28) and torch.isfinite(out).all() and len(calls) == 10


def test_spec_resolves_recipes_and_rejects_bad_params():
    spec = validate_spec(RunSpec.from_dict({"degradation": {"name": "blur"}}))
    assert spec.diffusion.n_T == 20 and spec.diffusion.sampler == "cold_alg2"
    assert spec.diffusion.sample_start == "degraded_test" and spec.degradation.schedule
    gauss = validate_spec(RunSpec())
    assert gauss.diffusion.n_T == 1000 and gauss.diffusion.sampler == "ancestral"
    cases = [
        ({"degradation": {"name": "impulse", "params": {"rho_ed": 0.2}}}, "did you mean 'rho_end'"),
        ({"degradation": {"name": "impulse", "params": {"rho_end": "high"}}}, "degradation.params.rho_end"),
        ({"degradation": {"name": "impluse"}}, "did you mean 'impulse'"),
        ({"degradation": {"name": "blur", "schedule": "cosin"}}, "did you mean 'cosine'"),
        ({"degradation": {"name": "blur"}, "diffusion": {"sampler": "ancestral"}}, "does not apply"),
        ({"diffusion": {"sampler": "cold_alg2"}}, "does not apply"),
        ({"degradation": {"name": "impulse"}, "diffusion": {"sample_start": "channel_mean"}}, "blur"),
    ]
    for raw, expected in cases:
        with pytest.raises(SpecError, match=expected):
            validate_spec(RunSpec.from_dict(raw))


@pytest.mark.parametrize("name", COLD)
def test_alg2_on_skipped_levels_recovers_x0(name, digits):
    """Evaluation samples skip levels; Algorithm 2's terms still telescope."""
    cd = _cold(name)
    x_T = cd.degrade(digits, torch.full((len(digits),), cd.n_T), cd.level_generator(cd.n_T))
    times = sampling_times(cd.n_T, 4)
    assert len(times) == 4 and times[0] == cd.n_T and times[-1] == 1
    seen = []
    out = SAMPLERS.get("cold_alg2")(
        cd, x_T, generator=None, times=times, restorer=lambda x, s: seen.append(s) or digits
    )
    assert seen == times
    torch.testing.assert_close(out, digits, atol=1e-5, rtol=0)


def test_sample_takes_sampler_and_steps_overrides(digits):
    cd = _cold("blur", n_T=20)
    calls = []
    cd.denoiser.register_forward_hook(lambda *_: calls.append(1))
    x_T = cd.degrade(digits[:3], cd.n_T)
    cd.sample(x_T, steps=5)
    assert len(calls) == 5
    calls.clear()
    cd.sample(x_T, sampler="cold_alg1", steps=0)
    assert len(calls) == 20
