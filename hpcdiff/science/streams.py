"""Named random streams: every seed hpcdiff derives comes from (run seed, purpose, index) here.

One table instead of offsets scattered through the code (in the spirit of JAX's
``fold_in``): a stream's purpose is its name, and two purposes never share a seed by
accident of arithmetic. The formulas are the ones hpcdiff used before the streams had names
and must not change: a resumed run re-derives its data order and noise from them, and
finished runs' samples and metrics were drawn from them (tests/test_streams.py pins values).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# purpose -> (seed, *index) -> integer seed
_STREAMS: dict[str, Callable[..., int]] = {
    # Training noise (t, eps) of rank r; rank 0 keeps the run seed itself. After a resume
    # at step s, ranks other than 0 re-seed with +s (the checkpoint holds rank 0's state).
    "rank_noise": lambda seed, rank, step=0: seed + 7919 * rank + step,
    # Order of the training images in epoch e: (seed, epoch) only, so a resume sees it again.
    "epoch_order": lambda seed, epoch: seed * 100_003 + epoch,
    # Noise of the validation loss of rank r: the same every epoch.
    "validation": lambda seed, rank: seed + 1_000_003 + rank,
    # The per-epoch sample grid: the same starts every epoch.
    "sample_grid": lambda seed: seed + 2_000_003,
    # Evaluation samples, chunk c: the same draws whichever process computes the chunk.
    "eval_chunk": lambda seed, chunk: seed * 1_000_003 + 3_000_017 + chunk,
    # Cold diffusion's stochastic degradations at level s: one fixed draw per level (the
    # draws of degradations whose levels take independent draws; see "degradation_trajectory").
    "degradation_level": lambda seed, level: seed * 1_000_003 + level,
    # The one draw a sampled trajectory's levels share ("shared" degradations), keyed by the
    # seed of the sampling generator, so that a start and the sampler given the same
    # generator degrade with the same draw, and two evaluation chunks with different ones.
    "degradation_trajectory": lambda seed, sampling_seed: seed * 1_000_003 + 5_000_011 + sampling_seed,
    # A level-T prior's fit: 0 picks the training images, 1 draws their level-T degradations.
    "prior_fit": lambda seed, part: seed * 1_000_003 + 6_000_007 + part,
    # Degradation strips of `hpcdiff degrade`, one per degradation name.
    "strip": lambda seed, name_code: seed * 1_000_003 + name_code,
}


def stream_seed(seed: int, purpose: str, *index: int) -> int:
    """The integer seed of stream ``purpose`` (with its index: rank, epoch, chunk, level...)."""
    try:
        rule = _STREAMS[purpose]
    except KeyError:
        from hpcdiff.config.registry import unknown_name_message

        raise KeyError(unknown_name_message("random stream", purpose, _STREAMS)) from None
    return rule(int(seed), *index)


def generator(seed: int, purpose: str, *index: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded with stream ``purpose``."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, purpose, *index))


def purposes() -> list[str]:
    return sorted(_STREAMS)
