"""The puppeteer G of Puppet-CNN: the derivative network of the kernel ODE dP/dl = G(P) (paper eq. 6).

G is "a 1-layer depth-separable convolution, followed by batch-norm and tanh" (paper §3).
We build it as the MobileNet block DW 3x3 (bias) -> BN -> PW 1x1 (bias) -> BN -> tanh,
because exactly that count, C^2 + 15C, reproduces every row of the paper's Table 5:
10C (DW) + 2C (BN) + C^2 + C (PW) + 2C (BN).

The state P is one C_max x C_max x 3 x 3 kernel tensor per trajectory, stored as
(N, C_out, C_in, 3, 3). G sees it as N*C_out "images" with C_in channels and a 3x3
spatial grid: the depthwise conv mixes the 3x3 taps of each input channel, the pointwise
conv mixes input channels. Each puppet layer gets its kernel by average-pooling the state
over the two channel axes to (C_out, C_in) (paper: "an average pooling layer").
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

KERNEL = 3  # the paper's kernel size; Table 5's 9 C^2 term pins it down
PUPPETEER_NORMS = ("trajectory", "batch")


def puppeteer_param_count(c_max: int) -> int:
    """Trainable parameters of G, by hand: DW 3x3 + bias, BN, PW 1x1 + bias, BN."""
    return (9 * c_max + c_max) + 2 * c_max + (c_max * c_max + c_max) + 2 * c_max  # = C^2 + 15C


def step_macs(c_max: int) -> int:
    """MACs of one Euler step of one trajectory (conv weights only, no bias: FlopCounterMode's rule).

    DW: C_out slices x C_in channels x 9 positions x 9 taps; PW: C_out slices x 9 positions x C_in x C_out.
    At C_max = 512 this is 1.23 G, the reason generation dominates the cost at paper scale.
    """
    return 81 * c_max**2 + 9 * c_max**3


class Puppeteer(nn.Module):
    """G(P) for a batch of kernel states P: (N, C, C, 3, 3) -> (N, C, C, 3, 3), values in (-1, 1).

    ``norm="trajectory"`` (default) normalises each trajectory's state on its own (statistics
    over its C_out slices and 3x3 taps, per input channel), in training and inference alike:
    that is what BatchNorm computes when one kernel state is generated at a time (the batch
    is then the C_out slices), it keeps trajectories independent (a batched forward equals
    per-sample forwards, kernel caching is exact) and avoids running statistics averaged over
    Euler steps whose state distributions differ. ``norm="batch"`` is plain BatchNorm2d over
    all trajectories' slices with running statistics at inference.
    """

    def __init__(self, c_max: int, norm: str = "trajectory"):
        super().__init__()
        if norm not in PUPPETEER_NORMS:
            raise ValueError(f"puppeteer_norm must be one of {PUPPETEER_NORMS}, got {norm!r}")
        self.c_max, self.norm = c_max, norm
        track = norm == "batch"
        self.dw = nn.Conv2d(c_max, c_max, KERNEL, padding=1, groups=c_max, bias=True)
        self.bn1 = nn.BatchNorm2d(c_max, track_running_stats=track)
        self.pw = nn.Conv2d(c_max, c_max, 1, bias=True)
        self.bn2 = nn.BatchNorm2d(c_max, track_running_stats=track)

    def _normalise(self, bn: nn.BatchNorm2d, z: torch.Tensor, n: int) -> torch.Tensor:
        if self.norm == "batch":
            return bn(z)
        c = self.c_max
        zt = z.view(n, c, c, 9).transpose(1, 2).reshape(n, c, c * 9)  # (N, C_in, C_out*9)
        zt = F.instance_norm(zt, weight=bn.weight, bias=bn.bias, eps=bn.eps)
        return zt.view(n, c, c, 9).transpose(1, 2).reshape(n * c, c, KERNEL, KERNEL)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        n, c = p.shape[0], self.c_max
        z = p.reshape(n * c, c, KERNEL, KERNEL)  # (N*C_out, C_in, 3, 3)
        # biases are added element-wise, not inside the conv: a bias add is not a multiply-accumulate,
        # and this way ptflops (which counts conv bias) and FlopCounterMode (which does not) agree
        z = F.conv2d(z, self.dw.weight, None, padding=1, groups=c) + self.dw.bias.view(1, c, 1, 1)
        z = self._normalise(self.bn1, z, n)
        z = F.conv2d(z, self.pw.weight) + self.pw.bias.view(1, c, 1, 1)
        z = self._normalise(self.bn2, z, n)
        return torch.tanh(z).view_as(p)  # (N, C_out, C_in, 3, 3)


def pool_kernel(p: torch.Tensor, c_out: int, c_in: int, kernel: int = KERNEL) -> torch.Tensor:
    """Average-pool states (N, C, C, 3, 3) to one layer's kernels (N, c_out, c_in, k, k), k in {1, 3}.

    Adaptive average pooling over the (C_out, C_in) axes; a 1x1 kernel (ResNet shortcut)
    also averages the 3x3 taps. Pooling is not a MAC (the harness' convention).
    """
    n, c = p.shape[:2]
    z = p.reshape(n, c, c, KERNEL * KERNEL).permute(0, 3, 1, 2)  # (N, 9, C, C)
    z = F.adaptive_avg_pool2d(z, (c_out, c_in))  # (N, 9, c_out, c_in)
    w = z.permute(0, 2, 3, 1).reshape(n, c_out, c_in, KERNEL, KERNEL)  # (N, c_out, c_in, 3, 3)
    if kernel == 1:
        return w.mean(dim=(-2, -1), keepdim=True)  # (N, c_out, c_in, 1, 1)
    if kernel != KERNEL:
        raise ValueError(f"generated kernels are 3x3 or 1x1, not {kernel}x{kernel}")
    return w
