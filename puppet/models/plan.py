"""The puppet's layer plan, and the one interpreter of it.

A *plan* is what one complexity level of a Puppet model runs: a list of ops (generated convs,
max-pools, global pools, ResNet blocks), built for L layers per stage by ``stage_plan`` or fixed
by ``cfg_plan`` / ``resnet_plan``. ``run_plan`` is the only code that interprets the ops. Its
three users differ only in where a conv's kernel and BN come from, the ``conv_bn`` they pass:

* the training forward (``PuppetCNN``): kernels just generated, BNs with running statistics per depth;
* the precomputed deployment (``deploy.PrecomputedPuppet``): stored kernels, frozen BN rows;
* the same-plan fixed CNN (``deploy.FixedCNN``): ``nn.Conv2d`` / ``nn.BatchNorm2d`` layers.

A batch whose samples use several levels (hence kernels, and maybe depths) is run by
``run_by_depth``: samples sorted by (depth, level), one ``run_plan`` per depth group, and inside
a group one dense conv per level (``conv_per_level``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from puppet.layers import scaled
from puppet.models.puppeteer import KERNEL

# --------------------------------------------------------------------------- the ops


@dataclass(frozen=True)
class ConvSpec:
    """One generated conv (no bias: BN follows) + its own BN, named by ``slot``."""

    c_in: int
    c_out: int
    slot: str
    kernel: int = KERNEL
    stride: int = 1


@dataclass(frozen=True)
class Pool:
    """Max-pool (skipped once the map is smaller than the window, e.g. VGG on 28x28 inputs)."""

    kernel: int = 2
    stride: int = 2


@dataclass(frozen=True)
class GlobalPool:
    """Global average / max pooling to 1x1, before generated "FC" layers (1x1 convs)."""

    kind: str = "avg"


@dataclass(frozen=True)
class Block:
    """ResNet basic block: conv1 -> BN -> ReLU -> conv2 -> BN, + shortcut (1x1 conv + BN when shapes change), ReLU."""

    conv1: ConvSpec
    conv2: ConvSpec
    shortcut: ConvSpec | None = None


Op = Union[ConvSpec, Pool, GlobalPool, Block]


def plan_convs(plan: list[Op]) -> list[ConvSpec]:
    """The generated convs of a plan in Euler-step order (a block: conv1, conv2, shortcut)."""
    convs: list[ConvSpec] = []
    for op in plan:
        if isinstance(op, ConvSpec):
            convs.append(op)
        elif isinstance(op, Block):
            convs += [op.conv1, op.conv2] + ([op.shortcut] if op.shortcut else [])
    return convs


# --------------------------------------------------------------------------- plan builders

STAGE_WIDTHS = (64, 128, 256, 512)  # paper §3: "output channels 64, 128, 256, 512"


def stage_plan(in_channels: int, max_channels: int, layers_per_stage: int) -> list[Op]:
    """Puppet-CNN's puppet: four 3x3 stages of ``layers_per_stage`` convs, a max-pool at each channel change."""
    plan: list[Op] = []
    c_in = in_channels
    for s, width in enumerate(STAGE_WIDTHS):
        c_out = scaled(width, max_channels)
        if s > 0:
            plan.append(Pool())
        for j in range(layers_per_stage):
            plan.append(ConvSpec(c_in, c_out, f"s{s}_{j}"))
            c_in = c_out
    return plan


# The fixed CNNs' structures of baselines/fixed.py re-declared here (the puppet package never
# imports a baseline): same widths, pools and global pooling; the hidden FC layers of AlexNet and
# VGG (4096 capped at max_channels) become generated 1x1 convs on the pooled features; the last
# FC is the trainable head. Every generated conv is 3x3 (paper: "All the convolutions use 3x3
# kernels"), so AlexNet's 11x11 and 5x5 convs become 3x3 with the same channels; each generated
# conv is followed by BN (+ ReLU), as in the paper's puppet.
ALEXNET_CFG = (64, "P3", 192, "P3", 384, 256, 256, "P3", "GAP", "FC", "FC")  # P3: 3x3 stride-2 max-pool
FC_WIDTH = 4096  # AlexNet / VGG hidden FC width, capped at max_channels
RESNET_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (width, first stride)
RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # basic blocks per stage


def vgg_cfg(depth: int = 11) -> tuple:
    """torchvision's VGG cfg ("A", "B", "D", "E") with the 5th max-pool as a global max-pool, then two FCs."""
    from torchvision.models.vgg import cfgs  # a library table, not a baseline module

    letters = {11: "A", 13: "B", 16: "D", 19: "E"}
    if depth not in letters:
        raise ValueError(f"VGG depth must be one of {sorted(letters)}, got {depth}")
    return tuple(cfgs[letters[depth]][:-1]) + ("GMP", "FC", "FC")


def cfg_plan(cfg: tuple, in_channels: int, max_channels: int) -> list[Op]:
    plan: list[Op] = []
    c_in = in_channels
    tokens = {"M": Pool(), "P3": Pool(3, 2), "GAP": GlobalPool("avg"), "GMP": GlobalPool("max")}
    for i, item in enumerate(cfg):
        if item in tokens:
            plan.append(tokens[item])
            continue
        kernel = 1 if item == "FC" else KERNEL
        c_out = scaled(FC_WIDTH if item == "FC" else item, max_channels)
        plan.append(ConvSpec(c_in, c_out, f"{'fc' if item == 'FC' else 'c'}{i}", kernel=kernel))
        c_in = c_out
    return plan


def resnet_plan(in_channels: int, max_channels: int, depth: int = 18) -> list[Op]:
    """CIFAR ResNet-18/34: 3x3 stem (64), no max-pool, stages 64/128/256/512 of basic blocks."""
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_BLOCKS)}, got {depth}")
    stem = scaled(64, max_channels)
    plan: list[Op] = [ConvSpec(in_channels, stem, "stem")]
    c_in = stem
    for s, ((width, stride), blocks) in enumerate(zip(RESNET_STAGES, RESNET_BLOCKS[depth])):
        c_out = scaled(width, max_channels)
        for b in range(blocks):
            st = stride if b == 0 else 1
            shortcut = (
                ConvSpec(c_in, c_out, f"s{s}b{b}_sc", kernel=1, stride=st) if (st != 1 or c_in != c_out) else None
            )
            plan.append(
                Block(
                    ConvSpec(c_in, c_out, f"s{s}b{b}_c1", stride=st), ConvSpec(c_out, c_out, f"s{s}b{b}_c2"), shortcut
                )
            )
            c_in = c_out
    return plan


# --------------------------------------------------------------------------- the interpreter

# conv_bn(x, spec, relu): the plan's conv ``spec`` on x, then its BN, then ReLU if ``relu``
ConvBN = Callable[[torch.Tensor, ConvSpec, bool], torch.Tensor]


def run_plan(plan: list[Op], x: torch.Tensor, conv_bn: ConvBN, head: nn.Module) -> torch.Tensor:
    """Puppet F (eq. 13) on a batch (B, C, H, W) whose samples share a plan: its ops in order,
    then GAP -> FC ``head``. Returns logits (B, classes)."""
    for op in plan:
        if isinstance(op, Pool):
            # skipped once the map is smaller than the window: a small input runs out of map before the last pool
            x = F.max_pool2d(x, op.kernel, op.stride) if x.shape[-1] >= op.kernel else x
        elif isinstance(op, GlobalPool):
            x = x.mean(dim=(-2, -1), keepdim=True) if op.kind == "avg" else x.amax(dim=(-2, -1), keepdim=True)
        elif isinstance(op, ConvSpec):
            x = conv_bn(x, op, True)
        else:  # Block
            out = conv_bn(conv_bn(x, op.conv1, True), op.conv2, False)
            short = conv_bn(x, op.shortcut, False) if op.shortcut else x
            x = F.relu(out + short)
    return head(x.mean(dim=(-2, -1)))  # GAP -> FC, (B, classes)


def conv_per_level(x: torch.Tensor, kernels: Sequence[torch.Tensor], counts: list[int], spec: ConvSpec) -> torch.Tensor:
    """The conv ``spec`` on a batch sorted by level: the first ``counts[0]`` samples with
    ``kernels[0]`` (c_out, c_in, k, k), the next ``counts[1]`` with ``kernels[1]``, ...: one dense
    conv per level, so no kernel is gathered per sample."""
    pad = spec.kernel // 2
    if len(counts) == 1:  # the whole batch shares one kernel: a plain conv
        return F.conv2d(x, kernels[0], stride=spec.stride, padding=pad)  # (B, c_out, H', W')
    return torch.cat([F.conv2d(xs, k, stride=spec.stride, padding=pad) for xs, k in zip(x.split(counts), kernels)])


# --------------------------------------------------------------------------- batches of mixed levels


def rank_by_depth(depth: torch.Tensor) -> torch.Tensor:
    """Each level's position (N,) int64 when the levels, of layers per stage ``depth`` (N,), are
    sorted by (depth, level)."""
    n = len(depth)
    order = torch.argsort(depth * n + torch.arange(n, device=depth.device))  # (N,) levels by (depth, level)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=depth.device)
    return rank


# run_group(x, depth, levels, counts): logits of a slice of equal depth, sorted by level,
# ``counts[i]`` samples of level ``levels[i]`` (levels ascending)
RunGroup = Callable[[torch.Tensor, int, list[int], list[int]], torch.Tensor]


def run_by_depth(
    x: torch.Tensor,
    level: torch.Tensor,
    level_rank: torch.Tensor,
    level_depth: list[int],
    run_group: RunGroup,
    by_level: bool = False,
) -> torch.Tensor:
    """Logits (B, classes) of a batch whose samples use different levels: ``level`` (B,) each
    sample's level, ``level_rank`` (N,) from ``rank_by_depth``, ``level_depth`` each level's depth.

    Samples are sorted by (depth, level), so each depth group is a slice (nobody runs layers it
    does not use) and, inside it, so is each level (dense convs); ``by_level``: each level's
    slice is run on its own instead. The logits come back in input order.
    """
    counts = torch.bincount(level, minlength=len(level_depth)).tolist()  # (N,) the one device -> host copy
    present = [j for j, c in enumerate(counts) if c]
    groups = [[j for j in present if level_depth[j] == d] for d in sorted({level_depth[j] for j in present})]
    if by_level:
        groups = [[j] for group in groups for j in group]
    sort = len(present) > 1  # one level: the batch is already in order
    if sort:
        order = torch.argsort(level_rank[level], stable=True)  # (B,) samples by (depth, level)
        x = x[order]
    outputs, first = [], 0
    for levels in groups:  # levels ascending within a depth
        size = sum(counts[j] for j in levels)
        outputs.append(run_group(x[first : first + size], level_depth[levels[0]], levels, [counts[j] for j in levels]))
        first += size
    logits = torch.cat(outputs) if len(outputs) > 1 else outputs[0]  # (B, classes), sorted
    return logits[torch.argsort(order)] if sort else logits  # back to input order
