"""Fixed CNN baselines at CIFAR scale: AlexNet, VGG, ResNet, MobileNet-v1, MobileNet-v2, SqueezeNet.

Puppet-CNN (arXiv 2411.12876, Tables 2-4) compares against these six with "every model capped at 512
output channels". The paper gives only their "Params Size" (float32 MB at 10 classes); its sizes grow
by 0.19 MB from 10 to 100 classes, so each ends in a fully connected layer with fan-in 512. One recipe
reproduces those sizes (the docs' fixed-CNN page has the numbers):

* take the ImageNet architecture as torchvision/timm define it, with every width ``c`` mapped to
  ``scaled(c, max_channels)``: ImageNet heads wider than the cap (AlexNet/VGG's 4096-wide FCs,
  SqueezeNet's 1000-channel conv10, MobileNet-v1's 1024 stage, MobileNet-v2's 1280 head conv and its
  expanded hidden layers) are capped at ``max_channels``, and a final FC maps ``max_channels`` features
  to the classes;
* CIFAR input: the downsampling of the stem (and MobileNet-v2's first stride-2 stage) is removed so
  32x32 inputs keep >= 2x2 maps in the last stage, and a global pooling layer sits before the
  classifier, so 28x28 (Fashion-MNIST) and 84x84 (mini-ImageNet) inputs work unchanged.

Library parts: torchvision's VGG ``make_layers``/``cfgs``, ResNet ``BasicBlock``, MobileNet-v2
``InvertedResidual`` and ``Conv2dNormActivation``, SqueezeNet ``Fire``; timm's MobileNet-v1
``DepthwiseSeparableConv`` and ``ConvNormAct`` (torchvision has no MobileNet-v1). AlexNet is written
out layer by layer after ``torchvision.models.AlexNet``, whose widths are hard-coded.

Every model exposes ``features`` (input -> last feature map, before global pooling) and
``classifier`` (pooled features -> logits). Each builder has a ``param_formula``: the stored
parameter count derived by layer-by-layer arithmetic, without building the module.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import ConvNormAct, make_divisible

# timm exports no public block with this structure (dw conv-BN-act, pw conv-BN-act): the private
# module is pinned by the timm upper bound in pyproject.toml and checked by tests/test_packaging.py.
from timm.models._efficientnet_blocks import DepthwiseSeparableConv
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock
from torchvision.models.squeezenet import Fire
from torchvision.models.vgg import cfgs as _TORCHVISION_VGG_CFGS
from torchvision.models.vgg import make_layers as _vgg_make_layers
from torchvision.ops.misc import Conv2dNormActivation

from puppet.core.registry import register_model, register_variant
from puppet.layers import scaled, torchvision_init

# The paper's "Params Size (MB)" at 10 classes (Table 2/3, CIFAR-10); tests and docs compare with these.
PAPER_SIZE_MB = {
    "alexnet": 11.65,
    "vgg": 39.01,
    "resnet": 44.84,
    "mobilenet_v1": 7.52,
    "mobilenet_v2": 8.90,
    "squeezenet": 3.96,
}


# ---------------------------------------------------------------------------------------------
# Shared pieces


class FixedCNN(nn.Module):
    """``features`` (B, C_in, H, W) -> (B, C, h, w); global ``pool``; ``classifier`` (B, C) -> (B, classes)."""

    def __init__(self, features: nn.Module, pool: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.pool = pool
        self.classifier = classifier
        torchvision_init(self, linear_std=0.01)  # torchvision VGG / MobileNet-v2: N(0, 0.01) FCs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C, h, w), h, w >= 2 at 32x32 input
        x = torch.flatten(self.pool(x), 1)  # (B, C)
        return self.classifier(x)  # (B, num_classes)


def _require_image_size(name: str, image_size: int, minimum: int) -> None:
    if image_size < minimum:
        raise ValueError(
            f"{name} needs image_size >= {minimum} (its pooling would run out of pixels); got {image_size}"
        )


def _choice(name: str, option: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: {option}={value!r} is not one of {sorted(allowed)}")


# Hand arithmetic used by the param formulas (weights + bias of one layer).
def _conv_params(c_in: int, c_out: int, k: int, groups: int = 1, bias: bool = False) -> int:
    return c_in // groups * c_out * k * k + (c_out if bias else 0)


def _bn_params(c: int) -> int:
    return 2 * c  # affine weight and bias; running statistics are buffers, not stored params


def _fc_params(f_in: int, f_out: int) -> int:
    return f_in * f_out + f_out


# ---------------------------------------------------------------------------------------------
# AlexNet: torchvision's layer sequence, stride-1 stem, 4096-wide FCs capped.

_ALEXNET_WIDTHS = (64, 192, 384, 256, 256)  # conv1..conv5, as torchvision.models.AlexNet
_ALEXNET_KERNELS = (11, 5, 3, 3, 3)
_ALEXNET_FC = 4096  # torchvision's hidden FC width; capped at max_channels


def _alexnet_params(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512) -> int:
    widths = [scaled(c, max_channels) for c in _ALEXNET_WIDTHS]
    total, c_in = 0, in_channels
    for c_out, k in zip(widths, _ALEXNET_KERNELS):
        total += _conv_params(c_in, c_out, k, bias=True)
        c_in = c_out
    hidden = scaled(_ALEXNET_FC, max_channels)
    return total + _fc_params(c_in, hidden) + _fc_params(hidden, hidden) + _fc_params(hidden, num_classes)


@register_model("alexnet", family="fixed", paper_name="AlexNet", param_formula=_alexnet_params)
def alexnet(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512) -> nn.Module:
    """AlexNet (torchvision layout) for 32x32: stride-1 11x11 stem, 3 max-pools, GAP, FCs capped at 512."""
    # Three 3x3/stride-2 max-pools: the last one needs a 3x3 map, i.e. image_size >= 15.
    _require_image_size("alexnet", image_size, 15)
    w = [scaled(c, max_channels) for c in _ALEXNET_WIDTHS]
    hidden = scaled(_ALEXNET_FC, max_channels)
    features = nn.Sequential(
        # torchvision: 11x11 stride 4 -> 1x1 maps (and a crash) at 32x32; stride 1, same padding here.
        nn.Conv2d(in_channels, w[0], kernel_size=11, stride=1, padding=5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # 32 -> 15
        nn.Conv2d(w[0], w[1], kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # 15 -> 7
        nn.Conv2d(w[1], w[2], kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(w[2], w[3], kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(w[3], w[4], kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # 7 -> 3
    )
    # torchvision pools to 6x6 and flattens 9216 features; GAP keeps the FC at fan-in 256 for any input size.
    classifier = nn.Sequential(
        nn.Dropout(0.5),
        nn.Linear(w[4], hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )
    return FixedCNN(features, nn.AdaptiveAvgPool2d(1), classifier)


# ---------------------------------------------------------------------------------------------
# VGG: torchvision's cfgs and make_layers; the 5th max-pool becomes a global max-pool.

_VGG_CFG_BY_DEPTH = {11: "A", 13: "B", 16: "D", 19: "E"}
_VGG_FC = 4096


def _vgg_cfg(depth: int, max_channels: int) -> list[int | str]:
    # torchvision's cfg ends in "M"; it is replaced by the global pool (at 32x32 the same 2x2 -> 1x1 max).
    cfg = _TORCHVISION_VGG_CFGS[_VGG_CFG_BY_DEPTH[depth]][:-1]
    return [v if v == "M" else scaled(int(v), max_channels) for v in cfg]


def _vgg_params(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    depth: int = 11,
    batch_norm: bool = True,
) -> int:
    _choice("vgg", "depth", depth, _VGG_CFG_BY_DEPTH)
    total, c_in = 0, in_channels
    for v in _vgg_cfg(depth, max_channels):
        if v != "M":
            total += _conv_params(c_in, v, 3, bias=True) + (_bn_params(v) if batch_norm else 0)
            c_in = v
    hidden = scaled(_VGG_FC, max_channels)
    return total + _fc_params(c_in, hidden) + _fc_params(hidden, hidden) + _fc_params(hidden, num_classes)


@register_model("vgg", family="fixed", paper_name="VGG", param_formula=_vgg_params)
def vgg(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    depth: int = 11,
    batch_norm: bool = True,
) -> nn.Module:
    """VGG-11-BN (torchvision cfg "A") for 32x32: 4 max-pools + global max-pool, 512-wide 3-layer classifier."""
    _choice("vgg", "depth", depth, _VGG_CFG_BY_DEPTH)
    _require_image_size("vgg", image_size, 16)  # four 2x2 max-pools
    features = _vgg_make_layers(_vgg_cfg(depth, max_channels), batch_norm=batch_norm)
    if in_channels != 3:  # make_layers hard-codes RGB input
        first = features[0]
        features[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, padding=1)
    c_last = [v for v in _vgg_cfg(depth, max_channels) if v != "M"][-1]
    hidden = scaled(_VGG_FC, max_channels)
    classifier = nn.Sequential(  # torchvision's classifier with 4096 capped and fan-in 512 x 1 x 1
        nn.Linear(c_last, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(hidden, num_classes),
    )
    return FixedCNN(features, nn.AdaptiveMaxPool2d(1), classifier)


# ---------------------------------------------------------------------------------------------
# ResNet: torchvision BasicBlock, CIFAR stem (3x3 stride 1, no max-pool).

_RESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # BasicBlock depths; Bottleneck ones widen to 2048
_RESNET_WIDTHS = (64, 128, 256, 512)


def _resnet_params(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, depth: int = 18
) -> int:
    _choice("resnet", "depth", depth, _RESNET_LAYERS)
    stem = scaled(64, max_channels)
    total = _conv_params(in_channels, stem, 3) + _bn_params(stem)
    c_in = stem
    for i, (blocks, width) in enumerate(zip(_RESNET_LAYERS[depth], _RESNET_WIDTHS)):
        c = scaled(width, max_channels)
        for b in range(blocks):
            stride = 2 if (i > 0 and b == 0) else 1
            total += _conv_params(c_in, c, 3) + _bn_params(c) + _conv_params(c, c, 3) + _bn_params(c)
            if stride != 1 or c_in != c:  # projection shortcut: 1x1 conv + BN
                total += _conv_params(c_in, c, 1) + _bn_params(c)
            c_in = c
    return total + _fc_params(c_in, num_classes)


@register_model("resnet", family="fixed", paper_name="ResNet", param_formula=_resnet_params)
def resnet(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, *, depth: int = 18
) -> nn.Module:
    """ResNet-18 (torchvision BasicBlock) with the CIFAR stem: 3x3 stride-1 conv, no max-pool; 4x4 last maps."""
    _choice("resnet", "depth", depth, _RESNET_LAYERS)
    stem = scaled(64, max_channels)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, stem, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(stem),
        nn.ReLU(inplace=True),
    ]
    c_in = stem
    for i, (blocks, width) in enumerate(zip(_RESNET_LAYERS[depth], _RESNET_WIDTHS)):
        c = scaled(width, max_channels)
        for b in range(blocks):
            stride = 2 if (i > 0 and b == 0) else 1
            downsample = None
            if stride != 1 or c_in != c:  # as torchvision's ResNet._make_layer
                downsample = nn.Sequential(nn.Conv2d(c_in, c, 1, stride=stride, bias=False), nn.BatchNorm2d(c))
            layers.append(BasicBlock(c_in, c, stride=stride, downsample=downsample))
            c_in = c
    return FixedCNN(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Linear(c_in, num_classes))


# ---------------------------------------------------------------------------------------------
# MobileNet-v1: timm's depthwise-separable block (torchvision has none); 1024 stage capped.

# (out_channels, stride) of the 13 depthwise-separable blocks; CIFAR strides (the stem has stride 1).
_MOBILENET_V1_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
# depth 12 drops the last block: once 1024 is capped to 512 it is a seventh plain 512 -> 512 repeat,
# and without it the size is 7.55 MB (paper: 7.52 MB; the standard 13 blocks give 8.62 MB).
_MOBILENET_V1_DEPTHS = (12, 13)


def _mobilenet_v1_params(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, depth: int = 12
) -> int:
    _choice("mobilenet_v1", "depth", depth, _MOBILENET_V1_DEPTHS)
    stem = scaled(32, max_channels)
    total = _conv_params(in_channels, stem, 3) + _bn_params(stem)
    c_in = stem
    for width, _ in _MOBILENET_V1_BLOCKS[:depth]:
        c = scaled(width, max_channels)
        total += _conv_params(c_in, c_in, 3, groups=c_in) + _bn_params(c_in)  # depthwise 3x3 + BN
        total += _conv_params(c_in, c, 1) + _bn_params(c)  # pointwise 1x1 + BN
        c_in = c
    return total + _fc_params(c_in, num_classes)


@register_model(
    "mobilenet_v1",
    family="fixed",
    paper_name="MobileNet-v1",
    param_formula=_mobilenet_v1_params,
    configuration="size-matched",
)
def mobilenet_v1(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, *, depth: int = 12
) -> nn.Module:
    """MobileNet-v1 (timm DepthwiseSeparableConv) for 32x32: stride-1 stem, 1024 capped, 12 of 13 blocks."""
    _choice("mobilenet_v1", "depth", depth, _MOBILENET_V1_DEPTHS)
    stem = scaled(32, max_channels)
    layers: list[nn.Module] = [ConvNormAct(in_channels, stem, kernel_size=3, stride=1, act_layer=nn.ReLU6)]
    c_in = stem
    for width, stride in _MOBILENET_V1_BLOCKS[:depth]:
        c = scaled(width, max_channels)
        # timm's "dsa" block (as in timm's mobilenetv1_100): no residual, activation after the pointwise conv.
        layers.append(DepthwiseSeparableConv(c_in, c, stride=stride, noskip=True, pw_act=True, act_layer=nn.ReLU6))
        c_in = c
    return FixedCNN(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Linear(c_in, num_classes))


# ---------------------------------------------------------------------------------------------
# MobileNet-v2: torchvision InvertedResidual; every conv capped, including the expanded hidden layers.

# (expansion t, channels c, repeats n, stride s) as torchvision, with the CIFAR strides of
# kuangliu/pytorch-cifar: the stem and the first 24-channel stage have stride 1 (last maps 4x4 at 32x32).
_MOBILENET_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_MOBILENET_V2_WIDTH_MULTS = (1.0, 1.4)  # torchvision/timm mobilenet_v2 (1.0) and timm's mobilenetv2_140


def _mobilenet_v2_widths(
    width_mult: float, max_channels: int, capped: bool = True
) -> tuple[int, list[tuple[int, int, int, int]], int]:
    """Stem width, [(t, c, n, s)] with c scaled, head width: torchvision's width rule, then ``scaled``."""
    stem = scaled(make_divisible(32 * width_mult, 8), max_channels, cap=capped)
    settings = [
        (t, scaled(make_divisible(c * width_mult, 8), max_channels, cap=capped), n, s)
        for t, c, n, s in _MOBILENET_V2_SETTINGS
    ]
    head = scaled(make_divisible(1280 * max(1.0, width_mult), 8), max_channels, cap=capped)
    return stem, settings, head


def _mobilenet_v2_hidden(c_in: int, t: int, max_channels: int, capped: bool = True) -> int:
    # The cap applies to the expanded hidden layers too (the registry test checks every conv);
    # at paper scale it cuts 576 (6 x 96) and 960 (6 x 160) to 512; at width 1.4, 528, 816 and 1344.
    return min(t * c_in, max_channels) if capped else t * c_in


def _mobilenet_v2_params(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    width_mult: float = 1.4,
    capped: bool = True,
) -> int:
    _choice("mobilenet_v2", "width_mult", width_mult, _MOBILENET_V2_WIDTH_MULTS)
    stem, settings, head = _mobilenet_v2_widths(width_mult, max_channels, capped)
    total = _conv_params(in_channels, stem, 3) + _bn_params(stem)
    c_in = stem
    for t, c, n, _ in settings:
        for _ in range(n):
            hidden = _mobilenet_v2_hidden(c_in, t, max_channels, capped)
            if t != 1:
                total += _conv_params(c_in, hidden, 1) + _bn_params(hidden)  # expand 1x1
            total += _conv_params(hidden, hidden, 3, groups=hidden) + _bn_params(hidden)  # depthwise 3x3
            total += _conv_params(hidden, c, 1) + _bn_params(c)  # linear projection 1x1
            c_in = c
    total += _conv_params(c_in, head, 1) + _bn_params(head)  # last 1x1 conv (1280 capped)
    return total + _fc_params(head, num_classes)


@register_model(
    "mobilenet_v2",
    family="fixed",
    paper_name="MobileNet-v2",
    param_formula=_mobilenet_v2_params,
    configuration="size-matched",
)
def mobilenet_v2(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    width_mult: float = 1.4,
    capped: bool = True,
) -> nn.Module:
    """MobileNet-v2 1.4 (torchvision InvertedResidual), CIFAR strides, every conv incl. expansions capped."""
    _choice("mobilenet_v2", "width_mult", width_mult, _MOBILENET_V2_WIDTH_MULTS)
    stem, settings, head = _mobilenet_v2_widths(width_mult, max_channels, capped)
    layers: list[nn.Module] = [
        Conv2dNormActivation(in_channels, stem, kernel_size=3, stride=1, activation_layer=nn.ReLU6)
    ]
    c_in = stem
    for t, c, n, s in settings:
        for i in range(n):
            hidden = _mobilenet_v2_hidden(c_in, t, max_channels, capped)
            # InvertedResidual builds hidden = round(c_in * expand_ratio); a capped ratio of exactly 1 would
            # drop the expansion conv, which cannot happen since block widths stay below the cap.
            assert t == 1 or hidden != c_in, (c_in, hidden)
            layers.append(InvertedResidual(c_in, c, stride=s if i == 0 else 1, expand_ratio=hidden / c_in))
            c_in = c
    layers.append(Conv2dNormActivation(c_in, head, kernel_size=1, activation_layer=nn.ReLU6))
    classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(head, num_classes))
    return FixedCNN(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), classifier)


register_variant(
    "mobilenet_v1_published",
    "mobilenet_v1",
    kwargs={"depth": 13},
    description="MobileNet-v1 as published: all 13 depthwise-separable blocks (1024 capped at 512, the paper's rule).",
)
register_variant(
    "mobilenet_v2_published",
    "mobilenet_v2",
    kwargs={"width_mult": 1.0, "capped": False},
    uncapped=True,
    description="MobileNet-v2 as published: torchvision's mobilenet_v2 1.0, no layer capped (1280-wide head).",
)


# ---------------------------------------------------------------------------------------------
# SqueezeNet: torchvision Fire modules (SqueezeNet 1.1), stride-1 stem, conv10 capped, then an FC.

# Fire(squeeze, expand1x1, expand3x3) of torchvision's squeezenet1_1, "M" = 3x3/2 ceil-mode max-pool.
_SQUEEZENET_1_1 = (
    "M",
    (16, 64, 64),
    (16, 64, 64),
    "M",
    (32, 128, 128),
    (32, 128, 128),
    "M",
    (48, 192, 192),
    (48, 192, 192),
    (64, 256, 256),
    (64, 256, 256),
)
_SQUEEZENET_STEM = 64
_SQUEEZENET_CONV10 = 1000  # ImageNet classes; capped at max_channels


def _squeezenet_params(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512
) -> int:
    stem = scaled(_SQUEEZENET_STEM, max_channels)
    total = _conv_params(in_channels, stem, 3, bias=True)
    c_in = stem
    for item in _SQUEEZENET_1_1:
        if item == "M":
            continue
        s, e1, e3 = (scaled(c, max_channels) for c in item)
        total += (
            _conv_params(c_in, s, 1, bias=True) + _conv_params(s, e1, 1, bias=True) + _conv_params(s, e3, 3, bias=True)
        )
        c_in = e1 + e3
    conv10 = scaled(_SQUEEZENET_CONV10, max_channels)
    return total + _conv_params(c_in, conv10, 1, bias=True) + _fc_params(conv10, num_classes)


@register_model("squeezenet", family="fixed", paper_name="SqueezeNet", param_formula=_squeezenet_params)
def squeezenet(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512) -> nn.Module:
    """SqueezeNet 1.1 (torchvision Fire) for 32x32: stride-1 stem, conv10 capped at 512, GAP, FC."""
    # Three ceil-mode 3x3/2 max-pools: 12 -> 6 -> 3 -> 1 is the smallest input that still pools.
    _require_image_size("squeezenet", image_size, 12)
    stem = scaled(_SQUEEZENET_STEM, max_channels)
    layers: list[nn.Module] = [
        # torchvision 1.1: 3x3 stride 2, no padding -> 1x1 maps at 32x32; stride 1 with padding here.
        nn.Conv2d(in_channels, stem, kernel_size=3, stride=1, padding=1),
        nn.ReLU(inplace=True),
    ]
    c_in = stem
    for item in _SQUEEZENET_1_1:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))  # 32 -> 16 -> 8 -> 4
            continue
        s, e1, e3 = (scaled(c, max_channels) for c in item)
        layers.append(Fire(c_in, s, e1, e3))
        c_in = e1 + e3
    conv10 = scaled(_SQUEEZENET_CONV10, max_channels)
    # torchvision's conv10 maps to the 1000 classes; with the cap it is 512 wide and an FC follows, which
    # reproduces the paper's 3.96 MB and its 0.19 MB growth from 10 to 100 classes.
    layers += [nn.Dropout(0.5), nn.Conv2d(c_in, conv10, kernel_size=1), nn.ReLU(inplace=True)]
    return FixedCNN(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Linear(conv10, num_classes))
