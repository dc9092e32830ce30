"""The denoiser's forward pass replayed from a CUDA graph, for the samplers' hot loop.

A sampler calls the network hundreds of times on a batch of the same shape; on a GPU each
call is a dozen small kernels whose launches can cost more than their work (a 16-image grid)
or a noticeable share of it (an evaluation chunk). ``GraphedDenoisers`` records one call per
batch shape and replays it. The graph reads the weights where they live, so in-place
changes (an optimiser step, the EMA weights swapped in by ``load_state_dict``) are seen by
the next replay; weights moved to new memory (``.to()``) are detected and recaptured.
On the CPU, or when a capture fails, the network is called as usual.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

MAX_SHAPES = 4  # one graph per batch shape in use (grid, evaluation chunk, its remainder, ...)


class CaptureError(RuntimeError):
    """The body could not be recorded (a host sync in it); nothing recorded ran."""


def capture(body, *, warmup: int, before_capture=None):
    """``body()`` recorded in a CUDA graph: (graph, what body returned during the capture).

    ``warmup`` uncaptured calls run first on a side stream (cuDNN/cuBLAS choose algorithms
    and allocate, optimisers create their state), then ``before_capture()`` if given (e.g.
    to put back what the warm-up changed). Raises CaptureError when the body cannot be
    captured (errors of the warm-up propagate as they are), with the caller's stream current
    again: torch.cuda.graph leaves its capture stream current when capture_end fails."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            body()
    torch.cuda.current_stream().wait_stream(side)
    if before_capture is not None:
        before_capture()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.current_stream()
    try:
        with torch.cuda.graph(graph):
            out = body()
    except RuntimeError as err:
        torch.cuda.set_stream(stream)
        raise CaptureError(str(err)) from err
    return graph, out


class _Replay:
    def __init__(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor):
        self.x, self.t = x.clone(), t.clone()
        self.graph, self.out = capture(lambda: net(self.x, self.t), warmup=2)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.t.copy_(t)
        self.graph.replay()
        return self.out.clone()  # the next replay overwrites out


class GraphedDenoisers:
    """``denoise(net, x, t)``: ``net(x, t)``, from a CUDA graph for CUDA inputs without grad."""

    def __init__(self):
        self._replays: dict[tuple, _Replay] = {}
        self._failed = False

    def __call__(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self._failed or not x.is_cuda or torch.is_grad_enabled() or net.training:
            return net(x, t)
        key = (tuple(x.shape), x.dtype, t.dtype, tuple(p.data_ptr() for p in net.parameters()))
        replay = self._replays.get(key)
        if replay is None:
            if len(self._replays) >= MAX_SHAPES:
                self._replays.clear()
            try:
                replay = self._replays[key] = _Replay(net, x, t)
            except RuntimeError as err:
                self._failed = True
                log.warning(
                    "sampling without CUDA graphs: the denoiser could not be captured (%s)", str(err).splitlines()[0]
                )
                return net(x, t)
        return replay(x, t)
