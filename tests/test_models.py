"""science/models.py: the starter CNN's shapes, time encoding and FLOPs."""

import math

import torch

from hpcdiff.config.spec import ModelSpec
from hpcdiff.science.models import CNN, build_model, conv_flops_per_image


def test_cnn_shapes_and_layers():
    model = build_model(ModelSpec(hidden=(16, 32, 32, 16)))
    x = torch.randn(5, 1, 28, 28)
    assert model(x, torch.rand(5)).shape == (5, 1, 28, 28)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(7, 7)] * 4 + [(3, 3)]
    assert [c.out_channels for c in convs] == [16, 32, 32, 16, 1]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert [tuple(n.normalized_shape) for n in norms] == [(16, 28, 28), (32, 28, 28), (32, 28, 28), (16, 28, 28)]
    linears = [m for m in model.time_embed if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(32, 128), (128, 128), (128, 128), (128, 16)]


def test_time_encoding_frequencies():
    model = CNN(ModelSpec())
    expected = [0.0] + [2 * math.pi * 1.5**i for i in range(15)]
    assert torch.allclose(model.frequencies, torch.tensor(expected))
    t = torch.tensor([0.3])
    phases = t[:, None] * torch.tensor(expected)[None]
    feats = torch.cat([torch.sin(phases), torch.cos(phases) - 1], dim=1)
    assert torch.allclose(model.time_encoding(t), model.time_embed(feats)[:, :, None, None])


def test_flops_of_default_model():
    flops = conv_flops_per_image(CNN(ModelSpec()))
    assert abs(flops / 1e6 - 159) < 1  # ~159 MFLOP per image forward
