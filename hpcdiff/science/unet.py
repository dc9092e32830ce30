"""A small UNet denoiser: residual blocks over resolutions, after lucidrains' and diffusers'
small UNets (written anew, and kept to what 28x28 images need).

    init conv -> [level i: res_blocks x ResBlock(base*mult_i), skip, downsample (not last)]
              -> middle: ResBlock, optional self-attention, ResBlock (lowest resolution)
              -> [level i reversed: ResBlock(cat(h, skip)), res_blocks-1 more, upsample (not first)]
              -> GroupNorm, SiLU, 3x3 conv to the image channels

Forward ``(x, t)`` with t in [0, 1], like the CNN. No host syncs in forward (no ``.item()``,
no shapes that depend on values): the CUDA-graph step captures it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# t in [0, 1] is scaled to DDPM's integer step range before the sinusoids, so that the
# embedding's frequencies separate neighbouring steps as in the DDPM paper.
TIME_SCALE = 1000.0


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] -> [B, dim]: sin and cos at geometrically spaced frequencies (Vaswani et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    phases = t.float()[:, None] * TIME_SCALE * freqs[None, :]
    emb = torch.cat((phases.sin(), phases.cos()), dim=1)
    return F.pad(emb, (0, dim - 2 * half))  # an odd dim gets one zero column


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; the time embedding added per channel; GroupNorm, SiLU,
    dropout, conv; plus the input (through a 1x1 conv when the channel count changes)."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels, residual. Only at the lowest resolution,
    where there are few pixels (7x7 = 49 for MNIST) and the quadratic cost is small."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # [B, HW, C]
        a = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (no checkerboard of a transposed conv)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    def __init__(self, spec, image_shape=(1, 28, 28)):
        super().__init__()
        channels = image_shape[0]
        base, g, p = spec.base_channels, spec.groups, spec.dropout
        widths = [base * m for m in spec.channel_mults]
        self.t_dim = t_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.init_conv = nn.Conv2d(channels, base, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch = base
        for i, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(spec.res_blocks):
                blocks.append(ResBlock(ch, width, t_dim, g, p))
                ch = width
            self.down.append(blocks)
            # Strided conv: a learned halving (avg-pool would throw detail away before the skip is used).
            self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1) if i < len(widths) - 1 else nn.Identity())
        self.mid1 = ResBlock(ch, ch, t_dim, g, p)
        self.attention = SelfAttention(ch, g) if spec.attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, t_dim, g, p)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            blocks = nn.ModuleList([ResBlock(ch + widths[i], widths[i], t_dim, g, p)])
            ch = widths[i]
            blocks.extend(ResBlock(ch, ch, t_dim, g, p) for _ in range(spec.res_blocks - 1))
            self.up.append(blocks)
            self.upsample.append(Upsample(ch) if i > 0 else nn.Identity())
        self.out = nn.Sequential(nn.GroupNorm(g, ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(sinusoidal_embedding(t, self.time_mlp[0].in_features))
        h = self.init_conv(x)
        skips = []
        for blocks, down in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, temb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.attention(self.mid1(h, temb)), temb)
        for blocks, up in zip(self.up, self.upsample):
            h = torch.cat((h, skips.pop()), dim=1)
            for block in blocks:
                h = block(h, temb)
            h = up(h)
        return self.out(h)
