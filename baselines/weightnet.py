"""WeightNet (Ma, Zhang, Huang, Sun, ECCV 2020) in a ResNet-18-CIFAR.

Every 3x3 conv inside the basic blocks is a WeightNet conv followed by BN; the stem, the
shortcuts and the FC stay static. Per block, as the official code: x_gap = FC(C_in -> r)(GAP(x))
with r = max(16, C_in / 16), read by both convs. Per conv: a = sigmoid(FC1(x_gap)) of size
M C_out, then a grouped FC2 (G C_out groups, M/G inputs each, no bias) emits the kernel
(B, C_out, C_in, 3, 3). M = G = 2 is the official "WeightNet 1x" (FC2 then holds exactly the
static conv's weights); ``m`` and ``g`` are the size knobs. FC2 is one ``torch.bmm`` over the
groups (a test checks it equals the official grouped 1x1 conv): an ``einsum`` would lower to an
element-wise product that no MAC counter sees.

Deviations: a ResNet-18 backbone instead of ShuffleNetV2 (the paper's CIFAR backbone is not
known); the floor 16 of r is scaled with the width; FC2 is initialised for He variance.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines._generated_conv import (
    RESNET18_STAGES,
    AdaptiveParamsNet,
    GeneratedConv2d,
    bn_params,
    gap,
    resnet18_plan,
    shortcut,
    shortcut_params,
)
from puppet.core.registry import register_model
from puppet.layers import batched_conv2d, scaled, torchvision_init

WEIGHTNET_M, WEIGHTNET_G = 2, 2  # official defaults ("WeightNet 1x"); M / G sets the generator size


class WeightNetConv2d(GeneratedConv2d):
    """One WeightNet conv: a = sigmoid(FC1(x_gap)) (r -> M C_out), W = grouped FC2(a)
    (G C_out groups, each M/G inputs -> C_in k^2 / G outputs, no bias)."""

    def __init__(
        self, c_in: int, c_out: int, reduced: int, m: int, g: int, kernel_size: int = 3, stride: int = 1
    ) -> None:
        super().__init__()
        fan_in = c_in * kernel_size * kernel_size
        if m % g or fan_in % g:
            raise ValueError(f"WeightNet needs M % G == 0 and C_in*k*k % G == 0; got M={m}, G={g}, C_in*k*k={fan_in}")
        self.c_in, self.c_out, self.k, self.stride, self.m, self.g, self.reduced = (
            c_in,
            c_out,
            kernel_size,
            stride,
            m,
            g,
            reduced,
        )
        self.fc1 = nn.Linear(reduced, m * c_out)
        # grouped FC2 as one weight per group: (groups, in per group, out per group); applied with bmm,
        # which both counters see (an einsum with M/G = 1 lowers to an uncounted element-wise mul)
        self.fc2_weight = nn.Parameter(torch.empty(g * c_out, m // g, fan_in // g))
        # official init is N(0, 1/fan) in MegEngine's layout; we scale so the generated kernel
        # has He variance at sigmoid ~ 0.5: var(W) = (M/G) * 0.25 * std^2 = 2 / fan_in
        nn.init.normal_(self.fc2_weight, std=math.sqrt(8.0 / (fan_in * (m // g))))

    def generate_kernels(self, x_gap: torch.Tensor) -> torch.Tensor:
        b = x_gap.shape[0]
        a = torch.sigmoid(self.fc1(x_gap))  # (B, M C_out)
        a = a.view(b, self.g * self.c_out, self.m // self.g).transpose(0, 1)  # (G C_out, B, M/G)
        w = torch.bmm(a, self.fc2_weight)  # (G C_out, B, C_in k^2 / G)
        return w.transpose(0, 1).reshape(b, self.c_out, self.c_in, self.k, self.k)  # (B, C_out, C_in, k, k)

    def generation_macs(self) -> int:
        fan_in = self.c_in * self.k * self.k
        return self.reduced * self.m * self.c_out + (self.m // self.g) * self.c_out * fan_in

    def forward(self, x: torch.Tensor, x_gap: torch.Tensor) -> torch.Tensor:
        kernels = self.generate_kernels(x_gap)  # (B, C_out, C_in, k, k)
        self._keep(kernels)
        return batched_conv2d(x, kernels, stride=self.stride, padding=self.k // 2)


def _weightnet_reduced(c_in: int, max_channels: int) -> int:
    # official: max(16, C_in // 16); the floor 16 is a paper-scale width, so it scales with the profile
    return max(scaled(16, max_channels), c_in // 16)


class WeightNetBasicBlock(nn.Module):
    """ResNet basic block whose two 3x3 convs are WeightNet convs; both read x_gap of the block input."""

    def __init__(self, c_in: int, c_out: int, stride: int, max_channels: int, m: int, g: int) -> None:
        super().__init__()
        r = _weightnet_reduced(c_in, max_channels)
        self.reduce = nn.Linear(c_in, r)  # official: 1x1 conv with bias on the GAP'd block input
        self.conv1 = WeightNetConv2d(c_in, c_out, r, m, g, stride=stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = WeightNetConv2d(c_out, c_out, r, m, g)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_gap = self.reduce(gap(x))  # (B, r)
        out = F.relu(self.bn1(self.conv1(x, x_gap)))
        out = self.bn2(self.conv2(out, x_gap))
        return F.relu(out + self.shortcut(x))


class WeightNetResNet(AdaptiveParamsNet):
    """ResNet-18-CIFAR (3x3 stem, no max-pool) with every block 3x3 conv a WeightNet conv."""

    def __init__(self, num_classes: int, in_channels: int, max_channels: int, m: int, g: int) -> None:
        super().__init__()
        c0 = scaled(RESNET18_STAGES[0][0], max_channels)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c0, 3, padding=1, bias=False), nn.BatchNorm2d(c0), nn.ReLU(inplace=True)
        )
        blocks: list[nn.Module] = []
        c_prev = c0
        for width, n_blocks, stride in RESNET18_STAGES:
            w = scaled(width, max_channels)
            for i in range(n_blocks):
                blocks.append(WeightNetBasicBlock(c_prev, w, stride if i == 0 else 1, max_channels, m, g))
                c_prev = w
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c_prev, num_classes)
        self.last_stats: dict[str, torch.Tensor] = {}
        torchvision_init(self)  # static convs and BNs as every trunk here; generators keep their own init

    def generation_macs_per_sample(self) -> int:
        # each block's reduce FC (GAP -> r) is generation cost too: it only feeds the generators
        reduce = sum(
            b.reduce.in_features * b.reduce.out_features for b in self.modules() if isinstance(b, WeightNetBasicBlock)
        )
        return super().generation_macs_per_sample() + reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record(x)
        return self.classifier(gap(self.blocks(self.stem(x))))  # (B, num_classes)


def _weightnet_params(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    m: int = WEIGHTNET_M,
    g: int = WEIGHTNET_G,
) -> int:
    c0 = scaled(64, max_channels)
    n = in_channels * c0 * 9 + bn_params(c0)
    for c_in, c_out, stride in resnet18_plan(max_channels):
        r = max(scaled(16, max_channels), c_in // 16)
        n += c_in * r + r  # reduce FC
        for conv_in in (c_in, c_out):  # conv1: c_in -> c_out, conv2: c_out -> c_out
            n += r * m * c_out + m * c_out  # FC1 with bias
            n += (m // g) * c_out * conv_in * 9  # grouped FC2: M/G x the static conv's weights
            n += bn_params(c_out)
        n += shortcut_params(c_in, c_out, stride)
    return n + scaled(512, max_channels) * num_classes + num_classes


@register_model(
    "weightnet",
    family="adaptive_params",
    paper_name="WeightNet",
    param_formula=_weightnet_params,
    revision=1,  # 1: torchvision init of the static convs and BNs
)
def weightnet(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    m: int = WEIGHTNET_M,
    g: int = WEIGHTNET_G,
) -> WeightNetResNet:
    """WeightNet (ECCV'20) in ResNet-18-CIFAR: GAP->FC->FC+sigmoid->grouped FC generates each block's 3x3 kernels."""
    return WeightNetResNet(num_classes, in_channels, max_channels, m, g)
