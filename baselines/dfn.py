"""DFN (De Brabandere, Jia, Tuytelaars, Van Gool, "Dynamic Filter Networks", NIPS 2016), for classification.

DFN's "dynamic convolutional layer" (d = 1 in the paper's notation): one kernel per sample,
shared over positions. A VGG-like backbone (64, 64, M, 128, 128, M, 256, 256, M, 512, M; M a 2x2
max-pool) with GAP and an FC; the stem is a static 3x3 conv and each of the other six 3x3 convs
is dynamic, followed by BN and ReLU. Each dynamic layer's filter-generating network reads that
layer's own input: theta = FC(d -> C_out C_in 9)(ReLU(FC(C_in -> d)(GAP(x)))).

Deviations: DFN has no classification experiment, so the classifier and the GAP -> FC -> ReLU
-> FC generator are our adaptation; the kernel FC's bias is stored as a static kernel added to
the generated one (the same as an ``nn.Linear`` bias, stored so that no MAC counter charges
the addition); BN after each dynamic conv. ``hidden`` (d = 7) is the size knob, chosen to match
the paper's Table 1 size.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines._generated_conv import AdaptiveParamsNet, GeneratedConv2d, bn_params, gap
from puppet.core.registry import register_model
from puppet.layers import batched_conv2d, scaled, torchvision_init

# DFN: a VGG-like CIFAR stack; ints are 3x3 conv widths (paper scale), "M" a 2x2 max-pool.
DFN_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, "M")
DFN_HIDDEN = 7  # d, the generator's hidden width: the size knob (params ~ (d + 1) x static convs)


class DynamicConv2d(GeneratedConv2d):
    """DFN's dynamic convolutional layer (d = 1: one kernel per sample, shared over positions).

    Filter-generating network: z = GAP(x), h = ReLU(FC(C_in -> d)), theta = FC(d -> C_out C_in k^2).
    The output FC's bias is kept as ``static_kernel`` and added to theta: identical to an
    ``nn.Linear`` bias (W = W_static + dW(x)), but stored as a kernel so that neither MAC
    counter charges an addition as multiply-accumulates.
    """

    def __init__(self, c_in: int, c_out: int, hidden: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.c_in, self.c_out, self.k, self.stride, self.hidden = c_in, c_out, kernel_size, stride, hidden
        fan_in = c_in * kernel_size * kernel_size
        self.hidden_fc = nn.Linear(c_in, hidden)
        self.kernel_fc = nn.Linear(hidden, c_out * fan_in, bias=False)
        self.static_kernel = nn.Parameter(torch.empty(c_out, c_in, kernel_size, kernel_size))
        # He variance for the static part; sqrt(2 / fan_in) / sqrt(d) for the generated part
        nn.init.kaiming_normal_(self.static_kernel, mode="fan_in", nonlinearity="relu")
        nn.init.normal_(self.kernel_fc.weight, std=math.sqrt(2.0 / fan_in) / math.sqrt(hidden))

    def generate_kernels(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.hidden_fc(gap(x)))  # (B, d)
        theta = self.kernel_fc(h).view(-1, self.c_out, self.c_in, self.k, self.k)  # (B, C_out, C_in, k, k)
        return theta + self.static_kernel

    def generation_macs(self) -> int:
        return self.c_in * self.hidden + self.hidden * self.c_out * self.c_in * self.k * self.k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = self.generate_kernels(x)  # (B, C_out, C_in, k, k)
        self._keep(kernels)
        return batched_conv2d(x, kernels, stride=self.stride, padding=self.k // 2)


class DFNNet(AdaptiveParamsNet):
    """VGG-like CIFAR net: static 3x3 stem, every later 3x3 conv a DFN dynamic conv, BN + ReLU after each."""

    def __init__(
        self, num_classes: int, in_channels: int, max_channels: int, cfg: tuple[int | str, ...], hidden: int
    ) -> None:
        super().__init__()
        widths = [scaled(c, max_channels) if c != "M" else "M" for c in cfg]
        layers: list[nn.Module] = []
        c_prev = in_channels
        for i, w in enumerate(widths):
            if w == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            # the stem stays static: a 3-channel input gives the generator almost nothing to see
            conv = nn.Conv2d(c_prev, w, 3, padding=1, bias=False) if i == 0 else DynamicConv2d(c_prev, w, hidden)
            layers += [conv, nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c_prev = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_prev, num_classes)
        self.last_stats: dict[str, torch.Tensor] = {}
        torchvision_init(self)  # static convs and BNs as every trunk here; generators keep their own init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record(x)
        return self.classifier(gap(self.features(x)))  # (B, num_classes)


def _dfn_params(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, hidden: int = DFN_HIDDEN
) -> int:
    widths = [scaled(c, max_channels) for c in DFN_CFG if c != "M"]
    n = in_channels * widths[0] * 9 + bn_params(widths[0])  # static stem
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        n += c_in * hidden + hidden  # hidden FC
        n += hidden * c_out * c_in * 9  # kernel FC (no bias)
        n += c_out * c_in * 9  # static kernel (the kernel FC's bias)
        n += bn_params(c_out)
    return n + widths[-1] * num_classes + num_classes


@register_model(
    "dfn",
    family="adaptive_params",
    paper_name="DFN",
    param_formula=_dfn_params,
    revision=1,  # 1: torchvision init of the static convs and BNs
)
def dfn(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    hidden: int = DFN_HIDDEN,
) -> DFNNet:
    """DFN (NIPS'16), sample-wise dynamic convs: GAP->FC->ReLU->FC generates each 3x3 kernel of a VGG-like net."""
    return DFNNet(num_classes, in_channels, max_channels, DFN_CFG, hidden)
