"""Layers shared by Puppet-CNN and the baselines."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAPER_MAX_CHANNELS = 512


def scaled(channels: int, max_channels: int, minimum: int = 4) -> int:
    """A width of the paper-scale model (max 512 channels) scaled by ``max_channels / 512``
    and capped at ``max_channels``; never below ``minimum``."""
    width = round(channels * max_channels / PAPER_MAX_CHANNELS)
    return max(minimum, min(width, max_channels))


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
