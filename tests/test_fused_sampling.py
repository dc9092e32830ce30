"""Fused cold sampling (science/fused_sampling.py): K cold-diffusion members sampled as one,
one stacked network call per level, each member's degradation draws from its own level
generators, against each member's sampler alone (Algorithms 1 and 2, all levels and a
subsequence, vmap and loop), for a degradation with one draw per trajectory (impulse,
pixel_swap) and a deterministic one (blur). The Gaussian case is in tests/test_fused.py."""

from __future__ import annotations

import copy

import pytest
import torch

from hpcdiff.config.spec import DataSpec, RunSpec
from hpcdiff.data import load_splits, to_model_range
from hpcdiff.resolve import validate_spec
from hpcdiff.science.diffusion import build_diffusion
from hpcdiff.science.fused_sampling import FusedProcess, sampling_blocker
from hpcdiff.science.models import build_model
from hpcdiff.science.stacked import StackedNetworks

N_T = 12


@pytest.fixture(scope="module")
def test_digits():
    splits = load_splits(DataSpec(name="mnist-5k", subset=64))
    return to_model_range(splits.test.images[:12])


def _member(degradation: str, seed: int, n_T: int = N_T):
    raw = {
        "model": {"name": "cnn", "hidden": [8, 16, 8]},
        "degradation": {"name": degradation},
        "diffusion": {"n_T": n_T},
        "train": {"seed": seed},
    }
    spec = validate_spec(RunSpec.from_dict(raw))
    torch.manual_seed(seed)
    return build_diffusion(spec, build_model(spec.model, (1, 28, 28))).eval()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


@pytest.mark.parametrize("mode", ["vmap", "loop"])
@pytest.mark.parametrize("sampler,steps", [("cold_alg2", 0), ("cold_alg2", 5), ("cold_alg1", 0)])
@pytest.mark.parametrize("degradation", ["impulse", "pixel_swap", "blur"])
def test_fused_cold_sampling_gives_each_member_its_samples_alone(test_digits, degradation, sampler, steps, mode):
    processes = [_member(degradation, seed) for seed in (0, 1, 2)]
    alone = [copy.deepcopy(p) for p in processes]

    def generators(order=(0, 1, 2)):
        return [torch.Generator().manual_seed(100 + k) for k in order]

    # Each member's starts: 4 held-out digits degraded to level T with its own draw.
    x_T = torch.stack(
        [p.degrade_to_start(test_digits[4 * k : 4 * k + 4], g) for k, (p, g) in enumerate(zip(processes, generators()))]
    )
    fused = FusedProcess(processes, StackedNetworks([p.denoiser for p in processes], mode))
    together = fused.sample(x_T, generators(), sampler=sampler, steps=steps)
    for k, (p, g) in enumerate(zip(alone, generators())):
        mine = p.sample(x_T[k], generator=g, sampler=sampler, steps=steps)
        assert _relative(together[k], mine) < 1e-5, k
    # Controls: the members' networks differ (a wrong slot would show), and for a degradation
    # with one draw per trajectory another member's generator changes the samples.
    other = alone[1].sample(x_T[0], generator=generators()[0], sampler=sampler, steps=steps)
    assert _relative(together[0], other) > 1e-3
    if degradation != "blur":
        swapped = fused.sample(x_T, generators((1, 0, 2)), sampler=sampler, steps=steps)
        assert _relative(swapped[0], together[0]) > 1e-3
        assert _relative(swapped[2], together[2]) < 1e-5


def test_cold_members_that_do_not_share_levels_sample_apart():
    assert "n_T" in sampling_blocker([_member("impulse", 0), _member("impulse", 1, n_T=8)])
    assert "different kinds" in sampling_blocker([_member("impulse", 0), _member("gaussian", 1)])
    assert sampling_blocker([_member("blur", 0), _member("blur", 1)]) is None
    processes = [_member("impulse", 0), _member("impulse", 1)]
    with pytest.raises(ValueError, match="sampler 'ddim' is not one of the cold process's"):
        FusedProcess.of(processes).sample(torch.zeros(2, 1, 1, 28, 28), [None, None], sampler="ddim")
