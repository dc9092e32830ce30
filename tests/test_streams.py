"""Named random streams reproduce the seeds hpcdiff used before they had names: a resumed run
re-derives its data order and noise from them (tests/test_legacy_compat.py resumes a run
written by that code and gets the uninterrupted run's losses)."""

import pytest
import torch

from hpcdiff.science.streams import generator, purposes, stream_seed


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1])
def test_streams_equal_the_old_offsets(seed):
    for rank in (0, 1, 3):
        assert stream_seed(seed, "rank_noise", rank) == seed + 7919 * rank
        assert stream_seed(seed, "rank_noise", rank, 250) == seed + 7919 * rank + 250
        assert stream_seed(seed, "validation", rank) == seed + 1_000_003 + rank
    for epoch in (1, 2, 75):
        assert stream_seed(seed, "epoch_order", epoch) == seed * 100_003 + epoch
    assert stream_seed(seed, "sample_grid") == seed + 2_000_003
    for chunk in (0, 1, 7):
        assert stream_seed(seed, "eval_chunk", chunk) == seed * 1_000_003 + 3_000_017 + chunk
    assert stream_seed(seed, "degradation_level", 9) == seed * 1_000_003 + 9


def test_generator_draws_what_the_old_generator_drew():
    new = torch.randperm(100, generator=generator(3, "epoch_order", 2))
    old = torch.randperm(100, generator=torch.Generator().manual_seed(3 * 100_003 + 2))
    assert torch.equal(new, old)


def test_unknown_purpose_names_the_nearest():
    with pytest.raises(KeyError, match="did you mean 'epoch_order'"):
        stream_seed(0, "epoch_ordr", 1)
    assert "eval_chunk" in purposes()
