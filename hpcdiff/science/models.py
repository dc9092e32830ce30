"""Denoising networks by name (``model.name``). No diffusion logic here: a model maps
(x, t/n_T) -> image. The facts about each model (how to build it, how many times it halves
the image) live beside its registration in MODELS."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hpcdiff.config import catalog
from hpcdiff.config.model_spec import MAX_LEVELS, ModelSpec
from hpcdiff.config.registry import Registry
from hpcdiff.science.unet import UNet

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh}


class CNNBlock(nn.Module):
    def __init__(self, c_in, c_out, *, image_hw, kernel_size, act, dropout=0.0):
        super().__init__()
        layers = [
            nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            # LayerNorm over (C, H, W), as in the coursework starter.
            nn.LayerNorm((c_out, *image_hw)),
            act(),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """The coursework starter's denoiser: conv blocks, a sinusoidal time embedding passed
    through an MLP and added after the first block, a final 3x3 conv back to the input
    channels."""

    def __init__(self, spec: ModelSpec, image_shape=(1, 28, 28), time_embeddings: int = 16):
        super().__init__()
        channels, h, w = image_shape
        act = ACTIVATIONS[spec.activation]
        self.blocks = nn.ModuleList()
        last = channels
        for hidden in spec.hidden:
            self.blocks.append(
                CNNBlock(last, hidden, image_hw=(h, w), kernel_size=spec.kernel_size, act=act, dropout=spec.dropout)
            )
            last = hidden
        self.blocks.append(nn.Conv2d(last, channels, spec.last_kernel_size, padding=spec.last_kernel_size // 2))
        self.time_embed = nn.Sequential(
            nn.Linear(time_embeddings * 2, 128),
            act(),
            nn.Linear(128, 128),
            act(),
            nn.Linear(128, 128),
            act(),
            nn.Linear(128, spec.hidden[0]),
        )
        frequencies = torch.tensor([0.0] + [2 * math.pi * 1.5**i for i in range(time_embeddings - 1)])
        self.register_buffer("frequencies", frequencies, persistent=False)

    def time_encoding(self, t: torch.Tensor) -> torch.Tensor:
        phases = t[:, None].float() * self.frequencies[None, :]
        # cos - 1 (as in the starter) so that the t = 0 encoding is all zeros.
        feats = torch.cat((torch.sin(phases), torch.cos(phases) - 1), dim=1)
        return self.time_embed(feats)[:, :, None, None]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.blocks[0](x) + self.time_encoding(t)
        for block in self.blocks[1:]:
            h = block(h)
        return h


@dataclass(frozen=True)
class ModelInfo:
    build: Callable[[ModelSpec, tuple], nn.Module]
    # Times the model halves H and W (each must stay an integer for the skips to line up).
    halvings: Callable[[ModelSpec], int]
    # Its shape in a few characters, for tables: the keys that size it.
    shape: Callable[[ModelSpec], str]


MODELS: Registry[ModelInfo] = Registry("model", declared=catalog.MODELS)
MODELS.register("cnn")(
    ModelInfo(build=CNN, halvings=lambda spec: 0, shape=lambda spec: "[" + ",".join(map(str, spec.hidden)) + "]")
)
MODELS.register("unet")(
    ModelInfo(
        build=UNet,
        halvings=lambda spec: len(spec.channel_mults) - 1,
        shape=lambda spec: (
            f"{spec.base_channels}x({','.join(map(str, spec.channel_mults))})"
            + (f"x{spec.res_blocks}" if spec.res_blocks != 1 else "")
            + ("+attn" if spec.attention else "")
        ),
    )
)
MODELS.seal()


@functools.lru_cache(maxsize=64)
def describe_model(spec: ModelSpec, image_shape=(1, 28, 28)) -> str:
    """One compact value for a table: ``unet 16x(1,2,4) 0.48M``, ``cnn [16,32,32,16] 0.29M``
    (name, the sizes that shape it, parameters)."""
    info = MODELS.get(spec.name)
    try:
        params = sum(p.numel() for p in build_model(spec, image_shape).parameters())
        size = f" {params / 1e6:.2f}M"
    except (ValueError, RuntimeError):  # a spec that cannot be built here still gets its shape
        size = ""
    return f"{spec.name} {info.shape(spec)}{size}"


class ImageSizeError(ValueError):
    """The model cannot take images of this size; the message names model.channel_mults."""


def image_size_problem(spec: ModelSpec, image_shape) -> str | None:
    """Why the model cannot take images of ``image_shape`` (C, H, W), or None."""
    _, h, w = image_shape
    halvings = MODELS.get(spec.name).halvings(spec)
    factor = 2**halvings
    if h % factor == 0 and w % factor == 0:
        return None
    fits = max(k for k in range(MAX_LEVELS) if h % 2**k == 0 and w % 2**k == 0) + 1
    return (
        f"{halvings + 1} levels halve the image {halvings} times, so H and W must be divisible by "
        f"{factor}, but the images are {h}x{w}: use at most {fits} multiplier(s)"
    )


def check_image_shape(spec: ModelSpec, image_shape) -> None:
    problem = image_size_problem(spec, image_shape)
    if problem is not None:
        raise ImageSizeError(f"key 'model.channel_mults': {problem}")


def build_model(spec: ModelSpec, image_shape=(1, 28, 28)) -> nn.Module:
    check_image_shape(spec, image_shape)
    return MODELS.get(spec.name).build(spec, tuple(image_shape))


def conv_flops_per_image(model: CNN, image_shape=(1, 28, 28)) -> int:
    """Multiply-adds x 2 of the model's convolutions for one image (forward)."""
    _, h, w = image_shape
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += 2 * m.in_channels * m.out_channels * kh * kw * h * w
    return total
