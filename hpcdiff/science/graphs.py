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


class _Replay:
    def __init__(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor):
        self.x, self.t = x.clone(), t.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # cuDNN/cuBLAS choose and allocate outside the capture
                net(self.x, self.t)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(self.graph):
                self.out = net(self.x, self.t)
        except RuntimeError:
            torch.cuda.set_stream(stream)  # torch.cuda.graph leaves its stream current on failure
            raise

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
                log.warning("sampling without CUDA graphs: the denoiser could not be captured (%s)",
                            str(err).splitlines()[0])
                return net(x, t)
        return replay(x, t)
