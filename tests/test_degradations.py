"""Degradations and schedules, checked on real MNIST digits (the 5,000 shipped with hpcdiff)."""

from __future__ import annotations

import pytest
import torch

from hpcdiff.science.degradations import (
    DEGRADATION_INFO,
    DEGRADATIONS,
    blur_by_convolution,
    ddpm_alpha_bar,
    default_schedule,
    degradation_params,
    degrade,
    is_gaussian,
    pixel_swap_loop_reference,
    process_of,
)
from hpcdiff.science.schedules import SCHEDULES, strength

NAMES = DEGRADATIONS.names()
STOCHASTIC = [n for n in NAMES if not DEGRADATION_INFO[n].deterministic]
DETERMINISTIC = [n for n in NAMES if DEGRADATION_INFO[n].deterministic]
BOUNDED = [n for n in NAMES if not is_gaussian(n)]  # all but gaussian keep data in [-0.5, 0.5]
LOW, HIGH = -0.5, 0.5


@pytest.fixture(scope="session")
def digits() -> torch.Tensor:
    """64 real MNIST digits (all ten classes), [64, 1, 28, 28] float32 in [-0.5, 0.5]."""
    from hpcdiff.data import mnist_5k_arrays

    X, y = mnist_5k_arrays()  # 5000 x 28 x 28, uint8, 500 per class sorted by label
    idx = torch.arange(64) * 78
    assert len(set(y[idx.numpy()].tolist())) == 10
    x = torch.tensor(X[idx.numpy()], dtype=torch.float32).view(64, 1, 28, 28) / 255.0 - 0.5
    assert x.min() == LOW and x.max() == HIGH
    return x


def n_steps_of(name: str) -> int:
    return DEGRADATION_INFO[name].n_steps


def run(name, x0, t, seed=0, **kw):
    n = kw.pop("n_steps", n_steps_of(name))
    g = torch.Generator().manual_seed(seed)
    return degrade(name, x0, t, n_steps=n, generator=g, **kw)


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("schedule", SCHEDULES.names())
@pytest.mark.parametrize("n", [1, 7, 20, 150, 1000])
def test_schedule_endpoints_and_monotone(schedule, n):
    t = torch.arange(n + 1)
    f = SCHEDULES.get(schedule)(t, n)
    assert f.dtype == torch.float32 and f.shape == (n + 1,)
    assert f[0].item() == 0.0 and f[-1].item() == 1.0
    assert (f.diff() >= 0).all()
    assert ((f >= 0) & (f <= 1)).all()


def test_schedule_shapes():
    t = torch.tensor([0, 25, 50, 75, 100])
    lin = SCHEDULES.get("linear")(t, 100)
    cos = SCHEDULES.get("cosine")(t, 100)
    assert torch.allclose(lin, torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))
    # Nichol & Dhariwal: slow start, ~half way at the middle, slow end
    assert cos[1] < lin[1] and abs(cos[2].item() - 0.5) < 0.02 and cos[3] > lin[3]


def test_strength():
    t = torch.tensor([0, 75, 150])
    s = strength("cosine", t, 150, 0.05, 0.25)
    assert s[0].item() == pytest.approx(0.05) and s[2].item() == pytest.approx(0.25)
    assert 0.05 < s[1].item() < 0.25


# --------------------------------------------------------------------------- every degradation


@pytest.mark.parametrize("name", NAMES)
def test_t0_is_identity(name, digits):
    out = run(name, digits, 0)
    assert torch.equal(out, digits)


@pytest.mark.parametrize("name", NAMES)
def test_severity_grows_with_t(name, digits):
    n = n_steps_of(name)
    ts = sorted({0, 1, 2, n // 4, n // 2, 3 * n // 4, n - 1, n})
    sev = [(run(name, digits, t, seed=0) - digits).abs().mean().item() for t in ts]
    tol = 1e-6 if DEGRADATION_INFO[name].deterministic else 2e-3
    for (t_a, a), (t_b, b) in zip(zip(ts, sev), zip(ts[1:], sev[1:])):
        assert b >= a - tol, f"{name}: severity drops from t={t_a} ({a:.4f}) to t={t_b} ({b:.4f})"
    assert sev[1] > 0, f"{name}: t=1 leaves the images unchanged"
    assert sev[-1] > 2 * sev[1] or sev[-1] > 0.1, f"{name}: hardly more severe at t=n: {sev}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_device_kept(name, dtype, digits):
    x0 = digits[:16].to(dtype)
    t = torch.randint(0, n_steps_of(name) + 1, (16,), generator=torch.Generator().manual_seed(1))
    out = run(name, x0, t)
    assert out.shape == x0.shape and out.dtype == dtype and out.device == x0.device
    assert torch.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_cuda_with_cpu_generator_matches_cpu(name, digits, test_device):
    t = torch.randint(0, n_steps_of(name) + 1, (64,), generator=torch.Generator().manual_seed(1))
    cpu = run(name, digits, t)
    gpu = run(name, digits.to(test_device), t.to(test_device))
    assert gpu.device.type == test_device and gpu.dtype == cpu.dtype
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
    no_gen = degrade(name, digits.to(test_device), t.to(test_device), n_steps=n_steps_of(name))  # the device's RNG
    assert no_gen.device.type == test_device and no_gen.shape == digits.shape


@pytest.mark.parametrize("name", NAMES)
def test_seeding(name, digits):
    n = n_steps_of(name)
    t = torch.full((64,), n // 2)
    a, b, c = run(name, digits, t, seed=1), run(name, digits, t, seed=1), run(name, digits, t, seed=2)
    assert torch.equal(a, b)
    if DEGRADATION_INFO[name].deterministic:
        assert torch.equal(a, c)
        assert torch.equal(a, degrade(name, digits, t, n_steps=n))  # generator unused
    else:
        assert not torch.equal(a, c)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_per_sample_t_deterministic(name, digits):
    n = n_steps_of(name)
    t = torch.tensor([0, n, n // 2, 1, n - 1, n // 3, 2, n] * 8)
    mixed = run(name, digits, t)
    for level in t.unique().tolist():
        sel = t == level
        alone = run(name, digits[sel], level)
        torch.testing.assert_close(mixed[sel], alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_per_sample_t_stochastic(name, digits):
    n = n_steps_of(name)
    t = torch.tensor([0, n] * 32)
    out = run(name, digits, t)
    assert torch.equal(out[t == 0], digits[t == 0])
    changed = (out[t == n] != digits[t == n]).flatten(1).any(1)
    assert changed.all()


@pytest.mark.parametrize("name", BOUNDED)
def test_values_stay_in_range(name, digits):
    n = n_steps_of(name)
    t = torch.randint(0, n + 1, (64,), generator=torch.Generator().manual_seed(3))
    for tt in (t, torch.full((64,), n)):
        out = run(name, digits, tt)
        # convolutions / averages are convex combinations: allow float32 rounding only
        assert out.min() >= LOW - 1e-6 and out.max() <= HIGH + 1e-6


def test_info_flags():
    assert DEGRADATION_INFO["gaussian"].has_known_prior
    assert DEGRADATION_INFO["blur"].has_known_prior and "mean" in DEGRADATION_INFO["blur"].prior
    for name in ("impulse", "pixel_swap", "luminance_mask", "inpaint", "downsample"):
        assert not DEGRADATION_INFO[name].has_known_prior
    assert set(DETERMINISTIC) == {"blur", "inpaint", "downsample"}
    assert all(DEGRADATIONS.get(n).deterministic == DEGRADATION_INFO[n].deterministic for n in NAMES)


def test_process_is_registered_with_the_degradation():
    assert process_of("gaussian") == "gaussian" and is_gaussian("gaussian")
    for name in NAMES:
        assert process_of(name) == DEGRADATION_INFO[name].process
        assert process_of(name) == ("gaussian" if name == "gaussian" else "cold")
    with pytest.raises(KeyError, match="did you mean 'gaussian'"):
        process_of("gausian")


# --------------------------------------------------------------------------- names and parameters


def test_signature_facts_are_read_once_at_registration(digits, monkeypatch):
    """degrade runs every training step: it reads the facts kept at registration and does
    not inspect the function's signature again."""
    import inspect

    for name in NAMES:
        sig = inspect.signature(DEGRADATIONS.get(name)).parameters.values()
        kw = {p.name: p.default for p in sig if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert default_schedule(name) == kw["schedule"]
        assert degradation_params(name) == {
            k: v for k, v in kw.items() if k not in ("n_steps", "schedule", "generator")
        }

    def no_signature(*args, **kwargs):
        raise AssertionError("inspect.signature called by degrade")

    monkeypatch.setattr(inspect, "signature", no_signature)
    for name in NAMES:
        degrade(name, digits[:2], 1, n_steps=10)


def test_params_and_defaults():
    assert degradation_params("gaussian") == {"beta1": 1e-4, "beta2": 0.02}
    assert degradation_params("impulse") == {"rho_start": 0.05, "rho_end": 0.25, "low": -0.5, "high": 0.5}
    assert degradation_params("blur") == {"kernel_size": 11, "sigma": 7.0, "padding": "circular"}
    assert default_schedule("impulse") == "cosine"
    for name in NAMES:
        assert not set(degradation_params(name)) & {"n_steps", "schedule", "generator"}


def test_unknown_names_suggest(digits):
    with pytest.raises(KeyError, match="did you mean 'impulse'"):
        degrade("impuls", digits, 1, n_steps=10)
    with pytest.raises(ValueError, match=r"'rho_ed'.*did you mean 'rho_end'"):
        degrade("impulse", digits, 1, n_steps=10, rho_ed=0.3)
    with pytest.raises(KeyError, match="did you mean 'cosine'"):
        degrade("blur", digits, 1, n_steps=10, schedule="cosin")


def test_bad_inputs(digits):
    with pytest.raises(ValueError, match=r"0\.\.10"):
        degrade("blur", digits, 11, n_steps=10)
    with pytest.raises(ValueError, match=r"0\.\.10, got -1\.\.3"):
        degrade("blur", digits[:2], torch.tensor([3, -1]), n_steps=10)
    with pytest.raises(ValueError, match="shape"):
        degrade("blur", digits, torch.zeros(3, dtype=torch.long), n_steps=10)
    with pytest.raises(ValueError):
        degrade("blur", digits[0], 1, n_steps=10)


@pytest.mark.parametrize("name", NAMES)
def test_degrade_is_the_registered_function_plus_checks(name, digits):
    """degrade adds checks only: its output is the registered function's, bit for bit, for a
    tensor of levels and for an int level, with the default and an explicit schedule."""
    n = min(DEGRADATION_INFO[name].n_steps, 30)
    x0 = digits[:16]
    t = torch.randint(0, n + 1, (16,), generator=torch.Generator().manual_seed(1))
    fn = DEGRADATIONS.get(name)
    for level, schedule in ((t, None), (n // 2, "cosine")):
        got = degrade(name, x0, level, n_steps=n, schedule=schedule, generator=torch.Generator().manual_seed(2))
        tt = level if torch.is_tensor(level) else torch.full((16,), level, dtype=torch.long)
        want = fn(
            x0, tt, n_steps=n, schedule=schedule or default_schedule(name), generator=torch.Generator().manual_seed(2)
        )
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["gaussian", "impulse", "pixel_swap", "luminance_mask", "inpaint", "blur"])
def test_degrade_reads_no_value_from_the_device(name):
    """On the meta device a tensor holds no data, so reading a value (``int(t.max())``, what
    makes a GPU wait) fails: degrade checks the levels of a device tensor on the device."""
    x0 = torch.zeros(4, 1, 28, 28, device="meta")
    t = torch.zeros(4, dtype=torch.long, device="meta")
    out = degrade(name, x0, t, n_steps=10)
    assert out.shape == x0.shape and out.device.type == "meta"


def test_params_are_used(digits):
    weak = run("impulse", digits, 150, rho_end=0.05)
    strong = run("impulse", digits, 150)
    assert (weak != digits).float().mean() < (strong != digits).float().mean()


# --------------------------------------------------------------------------- per-degradation facts


def test_gaussian_matches_starter_formula(digits):
    n = 1000
    ab = ddpm_alpha_bar(n, 1e-4, 0.02)
    assert ab[0].item() == pytest.approx(1 - 1e-4)
    beta = torch.linspace(1e-4, 0.02, n + 1)
    torch.testing.assert_close(ab, torch.cumprod(1 - beta, 0), rtol=1e-4, atol=1e-7)
    t = torch.tensor([500] * 64)
    out = run("gaussian", digits, t, seed=5)
    eps = torch.randn(digits.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out, ab[500].sqrt() * digits + (1 - ab[500]).sqrt() * eps)
    z = run("gaussian", digits, n)  # alpha_bar_T ~ 4e-5: pure noise
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02


def test_impulse_density_matches_definition(digits):
    # pixel -> high with prob rho, -> low with prob rho: 2 * rho_end = 0.5 corrupted at t=T
    x0 = torch.zeros(64, 1, 28, 28)  # a value neither high nor low, so corruption is visible
    out = run("impulse", x0, 150)
    assert set(out.unique().tolist()) == {LOW, 0.0, HIGH}
    assert (out == HIGH).float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert (out == LOW).float().mean().item() == pytest.approx(0.25, abs=0.01)
    early = run("impulse", x0, 1)
    assert (early != 0).float().mean().item() == pytest.approx(0.10, abs=0.01)
    on_digits = run("impulse", digits, 75)
    kept = (on_digits == digits) | (on_digits == LOW) | (on_digits == HIGH)
    assert kept.all()


def test_luminance_mask_definition(digits):
    n = 100
    out = run("luminance_mask", digits, n)
    masked = out != digits
    # p = d * n with n ~ U(0,1): about d / 2 = 10% masked at t=T (less where value unchanged)
    assert 0.07 < masked.float().mean().item() < 0.11
    mean = digits.mean(dim=(1, 2, 3), keepdim=True).expand_as(digits)
    shift = (out - mean)[masked]
    assert shift.min() >= -0.1 - 1e-6 and shift.max() <= 0.2 + 1e-6


def test_blur_keeps_mean_and_flattens(digits):
    for t in (1, 5, 20):
        out = run("blur", digits, t)
        torch.testing.assert_close(out.mean(dim=(2, 3)), digits.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    final = run("blur", digits, 20)
    assert final.std(dim=(2, 3)).max() < 0.1 * digits.std(dim=(2, 3)).min()


def test_blur_closed_form_equals_repeated_convolution(digits):
    t = torch.tensor([0, 1, 2, 7, 13, 20, 19, 5] * 8)
    fft = run("blur", digits, t)
    conv = blur_by_convolution(digits, t, n_steps=20)
    torch.testing.assert_close(fft, conv, atol=2e-6, rtol=0)
    # a plain 2-D circular convolution applied 3 times, the way Bansal's code does it
    k = torch.outer(*[torch.exp(-((torch.arange(11.0) - 5) ** 2) / 98)] * 2)
    x = digits[:4]
    for _ in range(3):
        x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (5,) * 4, mode="circular"), (k / k.sum())[None, None])
    torch.testing.assert_close(run("blur", digits[:4], 3), x, atol=2e-6, rtol=0)


@pytest.mark.parametrize("padding", ["reflect", "zeros"])
def test_blur_other_paddings_per_sample(padding, digits):
    t = torch.tensor([0, 20, 10, 1] * 4)
    x0 = digits[:16]
    mixed = run("blur", x0, t, padding=padding)
    assert torch.equal(mixed[t == 0], x0[t == 0])
    for level in (1, 10, 20):
        alone = run("blur", x0[t == level], level, padding=padding)
        torch.testing.assert_close(mixed[t == level], alone, atol=1e-6, rtol=0)
    sev = [(run("blur", x0, k, padding=padding) - x0).abs().mean().item() for k in (1, 10, 20)]
    assert sev[0] < sev[1] < sev[2]


def test_inpaint_mask_shape(digits):
    ones = torch.full((1, 1, 28, 28), HIGH)
    mask = lambda t: (run("inpaint", ones, t) - LOW)[0, 0]  # noqa: E731
    m1, mT = mask(1), mask(50)
    assert m1[13:15, 13:15].abs().max() < 1e-6  # centre pixels faded first
    assert m1[0, 0] == 1.0  # corner untouched
    assert mT.mean() < 0.5 and (mT <= m1 + 1e-6).all()
    assert mT[0, 0] > mT[7, 7] > mT[13, 13]


def test_downsample_block_count(digits):
    out = run("downsample", digits, 20)  # factor 7 -> 4 x 4 blocks
    for img in out:
        assert img.unique().numel() <= 16
    blocks = out[:, :, ::7, ::7]
    torch.testing.assert_close(blocks, torch.nn.functional.avg_pool2d(digits, 7))


def _positions(hw: int = 28) -> torch.Tensor:
    return torch.arange(hw * hw, dtype=torch.float32).view(1, 1, hw, hw)


def test_pixel_swap_swaps_pairs_within_a_reach_that_grows_with_t():
    """A permutation of each image made of swaps of fixed pairs (an involution), each within
    the reach w_t; for one draw the swapped set only grows with t, and at t = T every pixel
    has left its place (what lets the sampler put each pixel back once)."""
    n = 100
    pos = _positions().expand(32, 1, 28, 28).contiguous()
    moved_before = torch.zeros(32, 1, 28, 28, dtype=torch.bool)
    for t, w in ((1, 1), (10, 1 + round(26 * 0.1)), (50, 14), (100, 27)):
        out = run("pixel_swap", pos, t)
        assert torch.equal(out.flatten(1).sort(1).values, pos.flatten(1))  # a permutation
        src = out.long()
        again = src.flatten(1).gather(1, src.flatten(1))  # swapping twice puts every pixel back
        assert torch.equal(again, pos.long().flatten(1))
        dy = (src // 28 - pos.long() // 28).abs()
        dx = (src % 28 - pos.long() % 28).abs()
        assert torch.maximum(dy, dx).max() <= w
        moved = src != pos.long()
        assert moved.any() and (moved | ~moved_before).all()  # nested: what moved stays moved
        moved_before = moved
    assert moved_before.all()
    mixed = run("pixel_swap", pos, n).long()
    disp = (mixed // 28 - pos.long() // 28).abs() + (mixed % 28 - pos.long() % 28).abs()
    assert disp.float().mean() > 8  # whole-image mixing at t = T


def test_pixel_swap_local_tiles_keep_each_tiles_pixels(digits):
    """max_half_width = 3: pairs within 4x4 tiles (the users' local swap). At T every pixel
    has moved, but only inside its tile, so each tile keeps its pixels (and its mean: the
    digit's coarse shape); the swapped set still grows with t. The default (one tile) moves
    pixels across the image: the control."""
    pos = _positions().expand(8, 1, 28, 28).contiguous()
    tile = lambda i: (i // 28 // 4) * 7 + (i % 28 // 4)
    moved_before = torch.zeros(8, 1, 28, 28, dtype=torch.bool)
    for t in (1, 30, 70, 100):
        src = run("pixel_swap", pos, t, max_half_width=3).long()
        assert torch.equal(tile(src), tile(pos.long()))
        moved = src != pos.long()
        assert (moved | ~moved_before).all()
        moved_before = moved
    assert moved_before.all()
    at_T = run("pixel_swap", digits, 100, max_half_width=3)
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(at_T, 4), torch.nn.functional.avg_pool2d(digits, 4))
    src = run("pixel_swap", pos, 100).long()
    assert not torch.equal(tile(src), tile(pos.long()))


def test_pixel_swap_vectorised_vs_loop_reference(digits):
    x0 = digits[:2]
    t = torch.tensor([0, 100])
    g = torch.Generator().manual_seed(0)
    loop = pixel_swap_loop_reference(x0, t, n_steps=100, generator=g)
    vec = run("pixel_swap", x0, t)
    for out in (loop, vec):  # both permute each image's pixels and leave t=0 alone
        assert torch.equal(out[0], x0[0])
        assert not torch.equal(out[1], x0[1])
        assert torch.equal(out.flatten(1).sort(1).values, x0.flatten(1).sort(1).values)
    # both move about as much mass at t=T on a digit
    d_loop = (loop[1] - x0[1]).abs().mean().item()
    d_vec = (vec[1] - x0[1]).abs().mean().item()
    assert 0.5 < d_vec / d_loop < 2
