"""The PDE poster's illustrative networks against the official script's layer list and update rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from puppet.core.registry import create_model, model_info

# train_mnist_illustrative_example.py, ConvBlock(1, 1, 3) + NetworkMNIST: the parameter shapes its
# modules build (f, g: Conv2d(1, 1, 3, bias=False); bn_out, bn_f1, bn_g: BatchNorm2d(1); fc: Linear(49, 10)).
OFFICIAL_SHAPES = sorted(
    [(1, 1, 3, 3), (1, 1, 3, 3)] + [(1,), (1,)] * 3 + [(10, 49), (10,)],
)
NAMES = ("illustrative_conv", "illustrative_residual", "illustrative_global")


@pytest.mark.parametrize("name", NAMES)
def test_parameters_are_the_official_layer_list(name):
    model = create_model(name, 10, 1, 28)
    shapes = sorted(tuple(p.shape) for p in model.parameters())
    assert shapes == OFFICIAL_SHAPES
    assert sum(p.numel() for p in model.parameters()) == 524
    assert model_info(name).param_formula(10, 1, 28) == 524


def _official_step_rule(f, g, steps=5, dt=0.2):
    """The official pde branch written out with torch.roll: constant D = 1, u = v = g, dx = dy = 1."""
    bx = by = dt
    ux = 0.5 * (torch.roll(g, 1, dims=2) - torch.roll(g, -1, dims=2))
    vy = 0.5 * (torch.roll(g, 1, dims=3) - torch.roll(g, -1, dims=3))
    ax, ay, e = g * dt, g * dt, (ux + vy) * dt
    d = 1.0 / (1 + 2 * bx + 2 * by)
    h0 = h = f
    for _ in range(steps):
        new = d * (
            (1 - 2 * bx - 2 * by) * h0
            - 2 * e * h
            + (-ax + 2 * bx) * torch.roll(h, 1, dims=2)
            + (ax + 2 * bx) * torch.roll(h, -1, dims=2)
            + (-ay + 2 * by) * torch.roll(h, 1, dims=3)
            + (ay + 2 * by) * torch.roll(h, -1, dims=3)
            + 2 * dt * f
        )
        h0, h = h, new
    return h


def test_global_backbone_is_the_official_update():
    torch.manual_seed(0)
    model = create_model("illustrative_global", 10, 1, 28).double().eval()
    for bn in (model.features.bn_f, model.features.bn_g, model.features.bn_out):  # non-trivial statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    feats = model.features
    f = feats.f(F.relu(feats.bn_f(x)))
    g = feats.g(F.relu(feats.bn_g(f)))
    expected = F.relu(feats.bn_out(_official_step_rule(f, g)))
    torch.testing.assert_close(feats(x), expected, rtol=0, atol=1e-12)


def test_backbones_differ_only_in_the_update():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    state = create_model("illustrative_conv", 10, 1, 28).state_dict()
    outputs = {}
    for name in NAMES:
        model = create_model(name, 10, 1, 28).eval()
        model.load_state_dict(state)  # same weights: only the backbone's rule differs
        outputs[name] = model(x)
    assert not torch.allclose(outputs["illustrative_conv"], outputs["illustrative_residual"])
    assert not torch.allclose(outputs["illustrative_residual"], outputs["illustrative_global"])
