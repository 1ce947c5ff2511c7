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

Sizes: the default configuration of each model is the one, in a small stated
grid, whose stored size at max_channels=512 and 10 classes is closest to the
paper's Table 1 "Params Size" (the docs' adaptive-depth page lists the grid and the
sizes).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from puppet.layers import scaled

PAPER_WIDTHS = (64, 128, 256, 512)  # CIFAR ResNet-18 stage widths at paper scale


# --------------------------------------------------------------------------- shared pieces


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """ResNet basic block with its residual branch callable on its own (``residual``), which
    SkipNet and DRNN need; torchvision's ``BasicBlock`` (used by the fixed ResNet) has no such
    method. Same layers and parameter names as torchvision's, otherwise; ``shortcut`` is the identity
    or a 1x1 conv + BN projection."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


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
    """The cheapest row whose accuracy is within ``tolerance_pp`` of the best row's; ties -> more accurate."""
    best = max(r["val_top1"] for r in rows)
    ok = [r for r in rows if r["val_top1"] >= best - tolerance_pp]
    return min(ok, key=lambda r: (r["cost"], -r["val_top1"]))


def calibrate_global_threshold(
    model: nn.Module, threshold: torch.Tensor, batches: Iterable, tolerance_pp: float
) -> dict:
    was_training = model.training
    model.eval()
    data = materialise(batches)
    rows = []
    for t in [round(0.1 * k, 2) for k in range(1, 10)]:
        threshold.fill_(t)
        correct = seen = depth = 0.0
        for x, y in data:
            correct += (model(x).argmax(1) == y).sum().item()
            depth += model.last_stats["depth"].float().sum().item()
            seen += len(y)
        rows.append({"threshold": t, "val_top1": 100.0 * correct / seen, "cost": depth / seen})
    chosen = pick_threshold(rows, tolerance_pp)
    threshold.fill_(chosen["threshold"])
    model.train(was_training)
    return {
        "rule": f"fewest executed conv layers with val top1 >= best candidate top1 - {tolerance_pp} pp",
        "threshold": chosen["threshold"],
        "val_top1": chosen["val_top1"],
        "val_mean_depth": chosen["cost"],
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


def stage_widths(max_channels: int) -> list[int]:
    return [scaled(w, max_channels) for w in PAPER_WIDTHS]


def resnet_trunk_params(in_channels: int, widths: list[int], blocks: Sequence[int]) -> tuple[int, list[int]]:
    """Stem + blocks; also the output width of every block in order."""
    n, c, outs = conv_params(3, in_channels, widths[0]) + bn_params(widths[0]), widths[0], []
    for s, (w, nb) in enumerate(zip(widths, blocks)):
        for j in range(nb):
            n += block_params(c, w, 2 if (s > 0 and j == 0) else 1)
            c = w
            outs.append(w)
    return n, outs
