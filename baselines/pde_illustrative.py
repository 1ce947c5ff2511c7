"""The PDE poster's illustrative MNIST experiment: one one-channel "feature backbone" of each kind.

Kag & Saligrama (CVPR 2022) illustrate the Global layer with three tiny networks that differ only in
their feature backbone; the official ``train_mnist_illustrative_example.py`` builds them as:

1. a source map f = conv3x3(ReLU(BN(x))), one channel in and out, no bias;
2. the backbone, on h = f, with one more 3x3 conv g (one channel, no bias) and its BatchNorm:

   - ``conv``: h = g(ReLU(BN_g(f))), nothing after it;
   - ``residual``: one step h = h + g(ReLU(BN_g(h))), then ReLU(BN_out(h));
   - ``global``: K = 5 steps of the Global layer's three-level scheme (``baselines.pde_global.solve``)
     with constant diffusion Dx = Dy = 1 and both advection velocities u = v = g(ReLU(BN_g(f))),
     dt = 0.2, periodic boundary, then ReLU(BN_out(h));
3. ReLU, 4x4 average pooling (28x28 -> 7x7) and a 49 -> 10 linear classifier.

All three hold the same 524 parameters at 28x28 one-channel inputs and 10 classes (a C-channel input
makes every conv C -> C): two 3x3 convs (18), three
one-channel BatchNorms (6, ``BN_out`` is built but unused by ``conv``, as in the official code) and the
linear layer (500). The official script trains each for 30 epochs with SGD + Nesterov (momentum 0.9),
lr 0.01 (its step milestones 60/120/160 are never reached), weight decay 5e-4, batch 128 and gradient
clipping at norm 5; the recipe ``pde_illustrative`` in the claims profile repeats that. It returns
log-softmax and trains on NLL, the same loss as cross-entropy on the logits returned here. What the
harness does differently: images are normalised with the training split's own mean and standard deviation
(the script: MNIST's constants), and a profile with a validation part trains on the rest of the split.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.pde_global import solve
from puppet.core.registry import register_model

BACKBONES = ("conv", "residual", "global")
POOL = 4  # the official 4x4 average pooling


class FeatureBackbone(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): the source conv, then one backbone of ``BACKBONES``."""

    def __init__(self, backbone: str, channels: int = 1, steps: int = 5, dt: float = 0.2) -> None:
        super().__init__()
        self.backbone, self.steps, self.dt = backbone, steps, dt
        self.bn_f = nn.BatchNorm2d(channels)
        self.f = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn_g = nn.BatchNorm2d(channels)
        self.g = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn_out = nn.BatchNorm2d(channels)  # unused by "conv" (kept: the official parameter count)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.f(F.relu(self.bn_f(x)))
        if self.backbone == "conv":
            return self.g(F.relu(self.bn_g(f)))
        if self.backbone == "residual":
            h = f + self.g(F.relu(self.bn_g(f)))
        else:  # the velocity field is computed once from H^0 = f and held over the K steps
            velocity = self.g(F.relu(self.bn_g(f)))
            one = f.new_ones(())  # constant diffusion Dx = Dy = 1
            h = solve(f, velocity, velocity, one, one, steps=self.steps, dt=self.dt)
        return F.relu(self.bn_out(h))


class IllustrativeNet(nn.Module):
    def __init__(self, backbone: str, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.features = FeatureBackbone(backbone, in_channels)
        self.fc = nn.Linear(in_channels * (image_size // POOL) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(F.relu(self.features(x)), POOL)
        return self.fc(torch.flatten(h, 1))


def _params(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, max_channels: int = 512) -> int:
    """Two c x c 3x3 convs, three BatchNorms (2c each) and the linear layer: 524 at (10, 1, 28)."""
    c = in_channels
    return 2 * 9 * c * c + 3 * 2 * c + (c * (image_size // POOL) ** 2 + 1) * num_classes


def _builder(backbone: str):
    def build(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, max_channels: int = 512):
        # max_channels is the registry's signature; the experiment's one-channel width is fixed (fixed_width)
        if image_size < POOL:
            raise ValueError(f"illustrative_{backbone} needs image_size >= {POOL} (its {POOL}x{POOL} pooling)")
        return IllustrativeNet(backbone, num_classes, in_channels, image_size)

    build.__doc__ = f"The PDE poster's illustrative network, {backbone} feature backbone (524 params at 1x28x28)."
    return build


_LABELS = {"conv": "Conv", "residual": "Residual", "global": "Global"}
for _backbone in BACKBONES:
    register_model(
        f"illustrative_{_backbone}",
        family="pde",
        paper_name=f"{_LABELS[_backbone]} backbone (illustrative)",
        param_formula=_params,
        fixed_width=True,
        description=f"PDE poster's illustrative MNIST network: one-channel {_backbone} feature backbone",
        # the official "cnn" backbone builds BN_out and never calls it
        no_grad_ok=("features.bn_out.*",) if _backbone == "conv" else (),
        # the official script keeps PyTorch's default conv initialisation
        init_exempt=("features.f", "features.g"),
    )(_builder(_backbone))
