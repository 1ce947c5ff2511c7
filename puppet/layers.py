"""Layers shared by Puppet-CNN and the baselines."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

PAPER_MAX_CHANNELS = 512


def scaled(channels: int, max_channels: int, minimum: int = 4, cap: bool = True) -> int:
    """A width of the paper-scale model (max 512 channels) scaled by ``max_channels / 512``
    and capped at ``max_channels`` (``cap=False``: not capped, for an "as published" configuration
    that keeps its wider layers); never below ``minimum``."""
    width = round(channels * max_channels / PAPER_MAX_CHANNELS)
    return max(minimum, min(width, max_channels) if cap else width)


def torchvision_init(model: nn.Module, linear_std: float | None = None) -> None:
    """torchvision's ResNet initialisation, the one every ResNet-style trunk here starts from: every
    ``nn.Conv2d`` He-normal with fan-out (``kaiming_normal_(mode="fan_out", nonlinearity="relu")``), conv
    biases 0, BatchNorm / GroupNorm weight 1 and bias 0. ``nn.Linear`` layers keep PyTorch's default
    (torchvision's ResNet) unless ``linear_std`` is given (torchvision's VGG / MobileNet-v2: N(0, 0.01),
    bias 0). Generators written as ``nn.Linear`` keep their own initialisation. Call it at the end of
    ``__init__``, before any layer-specific initialisation (e.g. a gate's bias) that must survive."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)


def batched_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Convolve each sample with its own kernel in one grouped convolution (no loop over samples).

    x: (B, C_in, H, W); weight: (B, C_out, C_in / groups, k, k); bias: (B, C_out) or None.
    The batch is folded into channels: (1, B*C_in, H, W) convolved with B*groups groups.
    """
    b, c_in, h, w = x.shape
    c_out = weight.shape[1]
    out = F.conv2d(
        x.reshape(1, b * c_in, h, w),
        weight.reshape(b * c_out, *weight.shape[2:]),  # (B*C_out, C_in/groups, k, k)
        None if bias is None else bias.reshape(b * c_out),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=b * groups,
    )
    return out.reshape(b, c_out, *out.shape[-2:])  # (B, C_out, H', W')


def per_sample_conv2d_loop(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """Reference implementation of ``batched_conv2d`` with a Python loop (tests, benchmarks)."""
    outs = [
        F.conv2d(x[i : i + 1], weight[i], None if bias is None else bias[i], stride, padding, dilation, groups)
        for i in range(x.shape[0])
    ]
    return torch.cat(outs)
