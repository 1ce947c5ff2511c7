"""Adaptive-parameter baselines, sample-wise: DFN, WeightNet and DDFN-SW.

Each model generates some of its convolution kernels from the input, one kernel per
sample, and applies them with ``batched_conv2d`` (the batch folded into the channels of
one grouped convolution, as Puppet-CNN does). Generated kernels are activations, never
parameters: the stored size is the generators plus the static layers.

* ``dfn``       De Brabandere et al., NIPS 2016: the "dynamic convolutional layer" form,
                GAP -> FC -> ReLU -> FC emits each dynamic layer's whole kernel.
* ``weightnet`` Ma et al., ECCV 2020: GAP -> FC (reduce) -> FC + sigmoid -> grouped FC
                emits each 3x3 kernel of a ResNet-18 (M = G = 2, as the official code).
* ``ddfn_sw``   Zhou et al., CVPR 2021, made sample-wise: depthwise kernel = spatial
                filter (one k x k per sample) x channel filter (C x k x k per sample),
                both filter-normalised, in a ResNet-18-width separable network.

Every generator is a matmul (``nn.Linear`` or ``torch.bmm``) and every generated kernel
is applied by ``F.conv2d``, so ptflops' aten backend and FlopCounterMode both count the
generation and the dynamic convolutions (element-wise products are invisible to both:
the DDF filter product is a kernel-sized multiply, not a per-pixel one, so nothing
per-pixel goes uncounted). Sizes at max_channels=512 against the paper's Table 1 are in
the README (adaptive-parameter section).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from puppet.layers import batched_conv2d, scaled
from puppet.core.registry import register_model

# DFN: a VGG-like CIFAR stack; ints are 3x3 conv widths (paper scale), "M" a 2x2 max-pool.
DFN_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, "M")
DFN_HIDDEN = 7  # d, the generator's hidden width: the size knob (params ~ (d + 1) x static convs)
RESNET18_STAGES: tuple[tuple[int, int, int], ...] = ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2))  # (width, blocks, stride)
WEIGHTNET_M, WEIGHTNET_G = 2, 2  # official defaults ("WeightNet 1x"); M / G sets the generator size
DDF_KERNEL = 3
DDF_CHANNEL_HIDDEN_RATIO = 6.5  # official se_ratio is 0.2; raised to reach the paper's 300.83 MB (see docs)


def _gap(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3))  # (B, C); a mean, zero MACs under both counters


def _bn_params(c: int) -> int:
    return 2 * c


class GeneratedConv2d(nn.Module):
    """Base of the layers whose kernel is generated per sample.

    Set ``record_kernels = True`` to keep the last generated kernels (detached) in
    ``last_kernels`` (B, C_out, C_in / groups, k, k): the tests use it to check that
    kernels differ per sample and that the grouped application equals a per-sample loop.
    """

    record_kernels: bool = False
    last_kernels: torch.Tensor | None = None

    def generation_macs(self) -> int:
        """Per-sample MACs of this layer's kernel generator (FCs: in x out, bias and GAP free)."""
        raise NotImplementedError

    def _keep(self, kernels: torch.Tensor) -> None:
        if self.record_kernels:
            self.last_kernels = kernels.detach()


class AdaptiveParamsNet(nn.Module):
    """Shared bookkeeping: ``last_stats['generation_macs']`` per sample after each forward."""

    def generated_layers(self) -> list[GeneratedConv2d]:
        return [m for m in self.modules() if isinstance(m, GeneratedConv2d)]

    def generation_macs_per_sample(self) -> int:
        # WeightNet's per-block reduce FC is generation cost too; blocks expose it as `reduce`.
        extra = sum(m.reduce.in_features * m.reduce.out_features for m in self.modules() if isinstance(m, WeightNetBasicBlock))
        return sum(layer.generation_macs() for layer in self.generated_layers()) + extra

    def _record(self, x: torch.Tensor) -> None:
        gen = float(self.generation_macs_per_sample())  # input-independent for these three methods
        self.last_stats = {"generation_macs": torch.full((x.shape[0],), gen, device=x.device)}


# --------------------------------------------------------------------------- DFN


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
        # He variance for the static part; the spec's sqrt(2 / fan_in) / sqrt(d) for the generated part
        nn.init.kaiming_normal_(self.static_kernel, mode="fan_in", nonlinearity="relu")
        nn.init.normal_(self.kernel_fc.weight, std=math.sqrt(2.0 / fan_in) / math.sqrt(hidden))

    def generate_kernels(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.hidden_fc(_gap(x)))  # (B, d)
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

    def __init__(self, num_classes: int, in_channels: int, max_channels: int, cfg: tuple[int | str, ...], hidden: int) -> None:
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record(x)
        return self.classifier(_gap(self.features(x)))  # (B, num_classes)


def _dfn_params(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512,
                hidden: int = DFN_HIDDEN) -> int:
    widths = [scaled(c, max_channels) for c in DFN_CFG if c != "M"]
    n = in_channels * widths[0] * 9 + _bn_params(widths[0])  # static stem
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        n += c_in * hidden + hidden  # hidden FC
        n += hidden * c_out * c_in * 9  # kernel FC (no bias)
        n += c_out * c_in * 9  # static kernel (the kernel FC's bias)
        n += _bn_params(c_out)
    return n + widths[-1] * num_classes + num_classes


@register_model("dfn", family="adaptive_params", paper_name="DFN", param_formula=_dfn_params)
def dfn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, *,
        hidden: int = DFN_HIDDEN) -> DFNNet:
    """DFN (NIPS'16), sample-wise dynamic convs: GAP->FC->ReLU->FC generates each 3x3 kernel of a VGG-like net."""
    return DFNNet(num_classes, in_channels, max_channels, DFN_CFG, hidden)


# --------------------------------------------------------------------------- WeightNet


class WeightNetConv2d(GeneratedConv2d):
    """One WeightNet conv: a = sigmoid(FC1(x_gap)) (r -> M C_out), W = grouped FC2(a)
    (G C_out groups, each M/G inputs -> C_in k^2 / G outputs, no bias)."""

    def __init__(self, c_in: int, c_out: int, reduced: int, m: int, g: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        fan_in = c_in * kernel_size * kernel_size
        if m % g or fan_in % g:
            raise ValueError(f"WeightNet needs M % G == 0 and C_in*k*k % G == 0; got M={m}, G={g}, C_in*k*k={fan_in}")
        self.c_in, self.c_out, self.k, self.stride, self.m, self.g, self.reduced = c_in, c_out, kernel_size, stride, m, g, reduced
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


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))


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
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_gap = self.reduce(_gap(x))  # (B, r)
        out = F.relu(self.bn1(self.conv1(x, x_gap)))
        out = self.bn2(self.conv2(out, x_gap))
        return F.relu(out + self.shortcut(x))


class WeightNetResNet(AdaptiveParamsNet):
    """ResNet-18-CIFAR (3x3 stem, no max-pool) with every block 3x3 conv a WeightNet conv."""

    def __init__(self, num_classes: int, in_channels: int, max_channels: int, m: int, g: int) -> None:
        super().__init__()
        c0 = scaled(RESNET18_STAGES[0][0], max_channels)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c0, 3, padding=1, bias=False), nn.BatchNorm2d(c0), nn.ReLU(inplace=True))
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record(x)
        return self.classifier(_gap(self.blocks(self.stem(x))))  # (B, num_classes)


def _resnet18_plan(max_channels: int) -> list[tuple[int, int, int]]:
    """(c_in, c_out, stride) of every basic block of ResNet-18-CIFAR at this profile."""
    plan, c_prev = [], scaled(RESNET18_STAGES[0][0], max_channels)
    for width, n_blocks, stride in RESNET18_STAGES:
        w = scaled(width, max_channels)
        for i in range(n_blocks):
            plan.append((c_prev, w, stride if i == 0 else 1))
            c_prev = w
    return plan


def _shortcut_params(c_in: int, c_out: int, stride: int) -> int:
    return 0 if (stride == 1 and c_in == c_out) else c_in * c_out + _bn_params(c_out)


def _weightnet_params(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512,
                      m: int = WEIGHTNET_M, g: int = WEIGHTNET_G) -> int:
    c0 = scaled(64, max_channels)
    n = in_channels * c0 * 9 + _bn_params(c0)
    for c_in, c_out, stride in _resnet18_plan(max_channels):
        r = max(scaled(16, max_channels), c_in // 16)
        n += c_in * r + r  # reduce FC
        for conv_in in (c_in, c_out):  # conv1: c_in -> c_out, conv2: c_out -> c_out
            n += r * m * c_out + m * c_out  # FC1 with bias
            n += (m // g) * c_out * conv_in * 9  # grouped FC2: M/G x the static conv's weights
            n += _bn_params(c_out)
        n += _shortcut_params(c_in, c_out, stride)
    return n + scaled(512, max_channels) * num_classes + num_classes


@register_model("weightnet", family="adaptive_params", paper_name="WeightNet", param_formula=_weightnet_params)
def weightnet(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, *,
              m: int = WEIGHTNET_M, g: int = WEIGHTNET_G) -> WeightNetResNet:
    """WeightNet (ECCV'20) in ResNet-18-CIFAR: GAP->FC->FC+sigmoid->grouped FC generates each block's 3x3 kernels."""
    return WeightNetResNet(num_classes, in_channels, max_channels, m, g)


# --------------------------------------------------------------------------- DDFN-SW


def _filter_norm(f: torch.Tensor) -> torch.Tensor:
    """DDF's FilterNorm core: standardise each filter over its k^2 taps (last dim; unbiased std, as official)."""
    return (f - f.mean(dim=-1, keepdim=True)) / (f.std(dim=-1, keepdim=True) + 1e-10)


class DDFSampleWise(GeneratedConv2d):
    """Decoupled dynamic filter, sample-wise: depthwise kernel K[b, c] = s[b] * Cf[b, c] ("mul").

    Spatial branch: GAP -> FC(C -> k^2) -> FilterNorm x sqrt(2)/k; one k x k filter per sample
    (the official branch is a per-pixel 1x1 conv C -> k^2; a linear map commutes with the mean,
    so this is that map averaged over the image). Channel branch as official: GAP -> FC(C -> mid)
    -> ReLU -> FC(mid -> C k^2) -> FilterNorm x learnable per-(c, tap) gain.
    """

    def __init__(self, channels: int, hidden_ratio: float, kernel_size: int = DDF_KERNEL, stride: int = 1) -> None:
        super().__init__()
        self.c, self.k, self.stride = channels, kernel_size, stride
        taps = kernel_size * kernel_size
        self.mid = max(1, int(channels * hidden_ratio))
        self.spatial_fc = nn.Linear(channels, taps)
        self.channel_fc1 = nn.Linear(channels, self.mid)
        self.channel_fc2 = nn.Linear(self.mid, channels * taps)
        self.spatial_gain = math.sqrt(2.0) / kernel_size  # official: calculate_gain('relu') / k, a constant
        self.channel_gain = nn.Parameter(torch.randn(channels, taps) * self.spatial_gain)  # official running_std

    def generate_kernels(self, x: torch.Tensor) -> torch.Tensor:
        z = _gap(x)  # (B, C)
        s = _filter_norm(self.spatial_fc(z)) * self.spatial_gain  # (B, k^2)
        cf = self.channel_fc2(F.relu(self.channel_fc1(z))).view(-1, self.c, self.k * self.k)  # (B, C, k^2)
        cf = _filter_norm(cf) * self.channel_gain  # (B, C, k^2)
        return (s[:, None, :] * cf).view(-1, self.c, 1, self.k, self.k)  # (B, C, 1, k, k)

    def generation_macs(self) -> int:
        taps = self.k * self.k
        return self.c * taps + self.c * self.mid + self.mid * self.c * taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = self.generate_kernels(x)  # (B, C, 1, k, k)
        self._keep(kernels)
        # a grouped depthwise conv, so both counters charge the filtering (C k^2 H' W' per sample)
        return batched_conv2d(x, kernels, stride=self.stride, padding=self.k // 2, groups=self.c)


class DDFBasicBlock(nn.Module):
    """ResNet-18-width block, twice (DDF-SW depthwise 3x3 + BN + ReLU + static 1x1 + BN), projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, hidden_ratio: float) -> None:
        super().__init__()
        self.ddf1 = DDFSampleWise(c_in, hidden_ratio, stride=stride)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.pw1 = nn.Conv2d(c_in, c_out, 1, bias=False)  # DDF has no channel mixing; the 1x1 convs do it
        self.bn2 = nn.BatchNorm2d(c_out)
        self.ddf2 = DDFSampleWise(c_out, hidden_ratio)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.pw2 = nn.Conv2d(c_out, c_out, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(c_out)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.ddf1(x)))
        out = F.relu(self.bn2(self.pw1(out)))
        out = F.relu(self.bn3(self.ddf2(out)))
        out = self.bn4(self.pw2(out))
        return F.relu(out + self.shortcut(x))


class DDFResNet(AdaptiveParamsNet):
    """ResNet-18 layout and widths (3x3 static stem) built from DDF-SW separable basic blocks."""

    def __init__(self, num_classes: int, in_channels: int, max_channels: int, hidden_ratio: float) -> None:
        super().__init__()
        c0 = scaled(RESNET18_STAGES[0][0], max_channels)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c0, 3, padding=1, bias=False), nn.BatchNorm2d(c0), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*[DDFBasicBlock(c_in, c_out, s, hidden_ratio) for c_in, c_out, s in _resnet18_plan(max_channels)])
        self.classifier = nn.Linear(scaled(RESNET18_STAGES[-1][0], max_channels), num_classes)
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record(x)
        return self.classifier(_gap(self.blocks(self.stem(x))))  # (B, num_classes)


def _ddf_layer_params(c: int, hidden_ratio: float) -> int:
    mid = max(1, int(c * hidden_ratio))
    return (c * 9 + 9) + (c * mid + mid) + (mid * c * 9 + c * 9) + c * 9  # spatial FC, channel FC1, FC2, gain


def _ddfn_sw_params(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512,
                    channel_hidden_ratio: float = DDF_CHANNEL_HIDDEN_RATIO) -> int:
    c0 = scaled(64, max_channels)
    n = in_channels * c0 * 9 + _bn_params(c0)
    for c_in, c_out, stride in _resnet18_plan(max_channels):
        n += _ddf_layer_params(c_in, channel_hidden_ratio) + _bn_params(c_in) + c_in * c_out + _bn_params(c_out)
        n += _ddf_layer_params(c_out, channel_hidden_ratio) + _bn_params(c_out) + c_out * c_out + _bn_params(c_out)
        n += _shortcut_params(c_in, c_out, stride)
    return n + scaled(512, max_channels) * num_classes + num_classes


@register_model("ddfn_sw", family="adaptive_params", paper_name="DDFN-SW", param_formula=_ddfn_sw_params)
def ddfn_sw(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, *,
            channel_hidden_ratio: float = DDF_CHANNEL_HIDDEN_RATIO) -> DDFResNet:
    """DDF (CVPR'21) made sample-wise: per-sample spatial x channel depthwise filters in a ResNet-18-width net."""
    return DDFResNet(num_classes, in_channels, max_channels, channel_hidden_ratio)
