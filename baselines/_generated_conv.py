"""What the sample-wise adaptive-parameter baselines (DFN, WeightNet, DDFN-SW) share.

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
per-pixel goes uncounted). Sizes at max_channels=512 against the paper's Table 1 are on the docs'
adaptive-parameter page.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from puppet.layers import scaled

RESNET18_STAGES: tuple[tuple[int, int, int], ...] = (
    (64, 2, 1),
    (128, 2, 2),
    (256, 2, 2),
    (512, 2, 2),
)  # (width, blocks, stride)


def gap(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3))  # (B, C); a mean, zero MACs under both counters


def bn_params(c: int) -> int:
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
        return sum(layer.generation_macs() for layer in self.generated_layers())

    def _record(self, x: torch.Tensor) -> None:
        gen = float(self.generation_macs_per_sample())  # input-independent for these three methods
        self.last_stats = {"generation_macs": torch.full((x.shape[0],), gen, device=x.device)}


def shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))


def resnet18_plan(max_channels: int) -> list[tuple[int, int, int]]:
    """(c_in, c_out, stride) of every basic block of ResNet-18-CIFAR at this profile."""
    plan, c_prev = [], scaled(RESNET18_STAGES[0][0], max_channels)
    for width, n_blocks, stride in RESNET18_STAGES:
        w = scaled(width, max_channels)
        for i in range(n_blocks):
            plan.append((c_prev, w, stride if i == 0 else 1))
            c_prev = w
    return plan


def shortcut_params(c_in: int, c_out: int, stride: int) -> int:
    return 0 if (stride == 1 and c_in == c_out) else c_in * c_out + bn_params(c_out)
