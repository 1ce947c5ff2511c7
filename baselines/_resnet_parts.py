"""What the adaptive-depth baselines of Puppet-CNN's Table 1 (BranchyNet, SkipNet, DRNN) share.

All three share one CIFAR ResNet vocabulary (3x3 stem, basic blocks, widths
64-128-256-512 scaled by ``max_channels / 512``) and one execution rule:

* training mode runs every exit / block / loop on the whole batch, so the
  objective (``compute_loss``) is differentiable and batched;
* eval mode executes conditionally: a sample that has left (BranchyNet), skips a
  block (SkipNet) or has halted (DRNN) does not run the later layers. With a
  batch > 1 the survivors are gathered (``index_select``) and their results
  scattered back (``index_copy_``); at batch 1 this reduces to plain ``if``s.

Each model writes ``last_stats`` (per-sample ``depth`` = conv layers on the
sample's path, plus ``exit`` / ``blocks`` / ``loops``) and chooses its
thresholds in ``calibrate(batches)`` on the validation split; thresholds live in
buffers, so they are saved with the checkpoint.

Initialisation: every model built on these parts calls ``puppet.layers.torchvision_init`` (torchvision's
ResNet rule), so "ResNet vs BranchyNet / SkipNet / DRNN" compares methods, not initialisations. The one
exception is the official B-ResNet-110 (``branchynet_resnet110``, built of ``OptionABlock``), which starts
from the official code's Chainer initialisation, as published.

Calibration: one rule for all three (``pick_threshold``): among the candidate thresholds, the one with
the fewest mean MACs per validation image whose top-1 is within ``calib_tolerance`` pp of the best
candidate's. MACs come from ptflops (``puppet.core.measure.count_macs``, the counter the tables use,
biases included): each model prices its paths from a few forced forward passes (``path_costs``),
and a sample's MACs are the price of the path it took.

Sizes: the default configuration of each model is the one, in a small stated
grid, whose stored size at max_channels=512 and 10 classes is closest to the
paper's Table 1 "Params Size" (the docs' adaptive-depth page lists the grid and the
sizes); the "as published" configurations (SkipNet-38/74/110, B-ResNet-110) are registered beside them.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, conv1x1, conv3x3

from puppet.layers import scaled

PAPER_WIDTHS = (64, 128, 256, 512)  # CIFAR ResNet-18 stage widths at paper scale
CIFAR_WIDTHS = (16, 32, 64)  # the CIFAR ResNet-(6n+2) of He et al. 2016, SkipNet's and B-ResNet-110's backbone


# --------------------------------------------------------------------------- shared pieces


class ResidualBlock(BasicBlock):
    """torchvision's ``BasicBlock`` (same layers, names and forward) with its residual branch and its
    shortcut callable on their own (``residual``, ``shortcut``), which SkipNet and DRNN need. The
    projection shortcut (``downsample``) is torchvision's 1x1 conv + BN, built when shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        downsample = None
        if stride != 1 or c_in != c_out:
            downsample = nn.Sequential(conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))
        super().__init__(c_in, c_out, stride, downsample)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)


def option_a_shortcut(x: torch.Tensor, c_out: int, stride: int = 1) -> torch.Tensor:
    """He et al. 2016's parameter-free shortcut ("option A"), as the official BranchyNet code writes it
    (``branchynet/links/resnet.py``): zero channels concatenated *before* x up to ``c_out`` channels
    (``F.concat((p, x))``), and with a stride every ``stride``-th pixel (Chainer's ``average_pooling_2d(x, 1, 2)``:
    a 1x1 window, so no averaging). Subsampled first here, which gives the same tensor with less padding."""
    if stride != 1:
        x = x[:, :, ::stride, ::stride]
    pad = c_out - x.shape[1]
    if pad > 0:
        x = torch.cat([x.new_zeros(x.shape[0], pad, *x.shape[2:]), x], 1)
    return x


class OptionABlock(nn.Module):
    """A basic block with the option-A shortcut (``option_a_shortcut``): conv3x3 (stride) -> BN -> ReLU ->
    conv3x3 -> BN, plus the shortcut, then ReLU; no parameter outside the residual branch. ``bias`` and
    ``eps`` let it be the official BranchyNet ``ResBlock`` (Chainer convs with bias, BN eps 2e-5).
    ``residual`` and ``shortcut`` are callable on their own, as in ``ResidualBlock``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, *, bias: bool = False, eps: float = 1e-5):
        super().__init__()
        if c_out < c_in:
            raise ValueError(f"an option-A shortcut pads channels, it cannot drop them: {c_in} -> {c_out}")
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(c_out, eps=eps)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(c_out, eps=eps)
        self.c_out, self.stride = c_out, stride

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return option_a_shortcut(x, self.c_out, self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


def stage_plan_widths(widths: Sequence[int] | None, blocks: Sequence[int], max_channels: int) -> list[int]:
    """Stage widths: the paper-scale ResNet-18 widths scaled to ``max_channels`` (``widths=None``), or the
    given widths as they are (an "as published" CIFAR ResNet, e.g. 16-32-64); one per entry of ``blocks``."""
    if not blocks or any(not isinstance(b, int) or isinstance(b, bool) for b in blocks):
        raise ValueError(f"blocks must be whole numbers of blocks per stage, got {tuple(blocks) or '()'}")
    if widths is None:
        if len(blocks) != len(PAPER_WIDTHS):
            raise ValueError(f"blocks must give {len(PAPER_WIDTHS)} stage depths >= 1, got {tuple(blocks)}")
        widths = [scaled(w, max_channels) for w in PAPER_WIDTHS]
    widths = [int(w) for w in widths]
    if len(widths) != len(blocks) or min(blocks) < 1 or min(widths) < 1:
        raise ValueError(
            f"blocks must give one stage depth >= 1 per stage width; got blocks {tuple(blocks)}, widths {tuple(widths)}"
        )
    return widths


def cifar_resnet_blocks(depth: int) -> tuple[int, int, int]:
    """Blocks per stage of the CIFAR ResNet-``depth`` (depth = 6n + 2, He et al. 2016)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet's depth is 6n + 2 (20, 32, 38, 56, 74, 110, ...), got {depth}")
    n = (depth - 2) // 6
    return (n, n, n)


def stem(in_channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))


def block_plan(widths: Sequence[int], blocks: Sequence[int]) -> list[list[tuple[int, int, int]]]:
    """(c_in, c_out, stride) of every block, per stage; stages after the first halve the resolution."""
    plan, c = [], widths[0]
    for s, (w, n) in enumerate(zip(widths, blocks)):
        plan.append([(c if j == 0 else w, w, 2 if (s > 0 and j == 0) else 1) for j in range(n)])
        c = w
    return plan


def split_threshold(threshold: torch.Tensor, score: torch.Tensor) -> None:
    s = score.sort().values
    k = len(s) // 2
    threshold.fill_(float(s[k - 1] + s[k]) / 2)  # between two samples: half the batch on each side


@torch.no_grad()
def spread_gate(last: nn.Module, logits: Callable[[], torch.Tensor], threshold: torch.Tensor) -> None:
    """For the tests' ``spread_paths``: scale and shift a gate's last layer (``last``, with weight and a
    two-entry bias) so that its logit difference on the batch ``logits()`` evaluates has mean 0 and unit
    spread (He-initialised gates on an untrained trunk saturate p at exactly 0 or 1), then set
    ``threshold`` between the two middle p(second class) of the batch."""
    last.bias.zero_()
    d = logits()
    last.weight.div_((d[:, 1] - d[:, 0]).std().clamp_min(1e-6))
    d = logits()
    last.bias[1] = -(d[:, 1] - d[:, 0]).mean()
    split_threshold(threshold, F.softmax(logits(), 1)[:, 1])


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits), per row; BranchyNet's exit criterion."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)  # (B,)


def hard_gumbel_gate(logits: torch.Tensor) -> torch.Tensor:
    """Straight-through Gumbel-softmax (tau = 1): a hard 0/1 "execute" decision per sample in the
    forward pass with the gradient of the soft sample (ConvNet-AIG, Veit & Belongie 2018)."""
    return F.gumbel_softmax(logits.float(), tau=1.0, hard=True)[:, 1].to(logits.dtype)  # (B,)


def put_rows(out: torch.Tensor | None, batch: int, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out[rows] = values`` for a (batch, ...) result that is allocated at the first write, in the
    dtype the layers return: under autocast that is bf16 / fp16, and a float32 buffer would make
    ``index_copy_`` raise (it never casts; CPU autocast promotes only the out-of-place form)."""
    if out is None:
        out = values.new_empty(batch, *values.shape[1:])
    return out.index_copy_(0, rows, values.to(out.dtype))


def materialise(batches: Iterable) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = [(x, y) for x, y in batches]
    if not data:
        raise ValueError("calibrate: the validation batches are empty; set data.val_size > 0")
    return data


def check_tolerance(tolerance_pp: float) -> None:
    if not tolerance_pp >= 0:
        raise ValueError(f"calib_tolerance must be >= 0 percentage points, got {tolerance_pp}")


def pick_threshold(rows: list[dict], tolerance_pp: float) -> dict:
    """The calibration rule of every adaptive-depth model: the cheapest row (``cost``: mean MACs per
    validation image) whose accuracy is within ``tolerance_pp`` of the best row's; ties -> more accurate."""
    best = max(r["val_top1"] for r in rows)
    ok = [r for r in rows if r["val_top1"] >= best - tolerance_pp]
    return min(ok, key=lambda r: (r["cost"], -r["val_top1"]))


def calibrate_global_threshold(
    model: nn.Module, threshold: torch.Tensor, batches: Iterable, tolerance_pp: float
) -> dict:
    """One threshold for every gate (SkipNet, DRNN), among 0.1, 0.2, ..., 0.9, by ``pick_threshold``;
    a sample's MACs are ``model.sample_macs(last_stats, prices)`` with ``prices = model.path_costs(x1)``."""
    was_training = model.training
    model.eval()
    data = materialise(batches)
    prices = model.path_costs(data[0][0][:1])
    rows = []
    for t in [round(0.1 * k, 2) for k in range(1, 10)]:
        threshold.fill_(t)
        correct = seen = depth = macs = 0.0
        for x, y in data:
            correct += (model(x).argmax(1) == y).sum().item()
            depth += model.last_stats["depth"].float().sum().item()
            macs += model.sample_macs(model.last_stats, prices).sum().item()
            seen += len(y)
        rows.append({"threshold": t, "val_top1": 100.0 * correct / seen, "cost": macs / seen, "depth": depth / seen})
    chosen = pick_threshold(rows, tolerance_pp)
    threshold.fill_(chosen["threshold"])
    model.train(was_training)
    return {
        "rule": f"fewest mean MACs (ptflops) with val top1 >= best candidate top1 - {tolerance_pp} pp",
        "threshold": chosen["threshold"],
        "val_top1": chosen["val_top1"],
        "val_mean_macs": chosen["cost"],
        "val_mean_depth": chosen["depth"],
        "candidates": rows,
        "val_images": int(seen),
    }


# --------------------------------------------------------------------------- parameter formulas
# Written from the architecture description, layer by layer, without instantiating a module.


def conv_params(k: int, c_in: int, c_out: int, bias: bool = False) -> int:
    return k * k * c_in * c_out + (c_out if bias else 0)


def bn_params(c: int) -> int:
    return 2 * c  # weight + bias (running statistics are buffers)


def fc_params(c_in: int, c_out: int, bias: bool = True) -> int:
    return c_in * c_out + (c_out if bias else 0)


def block_params(c_in: int, c_out: int, stride: int) -> int:
    n = conv_params(3, c_in, c_out) + bn_params(c_out) + conv_params(3, c_out, c_out) + bn_params(c_out)
    if stride != 1 or c_in != c_out:
        n += conv_params(1, c_in, c_out) + bn_params(c_out)
    return n


def stage_widths(max_channels: int, widths: Sequence[int] | None = None) -> list[int]:
    return [scaled(w, max_channels) for w in PAPER_WIDTHS] if widths is None else [int(w) for w in widths]


def resnet_trunk_params(in_channels: int, widths: list[int], blocks: Sequence[int]) -> tuple[int, list[int]]:
    """Stem + blocks; also the output width of every block in order."""
    n, c, outs = conv_params(3, in_channels, widths[0]) + bn_params(widths[0]), widths[0], []
    for s, (w, nb) in enumerate(zip(widths, blocks)):
        for j in range(nb):
            n += block_params(c, w, 2 if (s > 0 and j == 0) else 1)
            c = w
            outs.append(w)
    return n, outs
