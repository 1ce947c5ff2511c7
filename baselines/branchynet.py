"""BranchyNet (Teerapittayanon, McDanel, Kung, ICPR 2016): B-ResNets with entropy early exits.

At inference a sample leaves at the first exit whose softmax entropy (nats) is below that exit's
threshold; samples that leave are dropped from the batch and the rest continue from the features
cached at the branch point, as in the official test loop. ``EntropyExits`` holds what the two
networks share: that forward pass, the joint loss sum_n w_n CE(z_n, y) over every exit (w_n = 1, as
the official code; ``exit_weights`` changes them), the per-exit MAC prices and the calibration.

* ``branchynet`` (size-matched, ``BranchyNet``): ResNet-18 widths scaled, stage depths (1, 3, 2, 1)
  picked by the Puppet-CNN paper's Table 1 size, conv branches (conv3x3/2, BN, ReLU, GAP, FC) after
  stages 1 and 2, final GAP + FC; trained in one stage with the joint loss.
* ``branchynet_resnet110`` (as published, ``BResNet110``): the official B-ResNet-110 of kunglab/branchynet,
  ``networks/resnet_cifar10.py`` as of commit 2c61194 ("Update resnet_cifar10.py to align configuration
  with the paper", the file's last change; HEAD a33d136 builds the same network). At 32x32 input:

  - stem: conv3x3 3->16 with bias, *no padding* (32 -> 30), BN, ReLU;
  - exit 1, right after the stem: conv5x5 16->64 (pad 2), ReLU, LRN (Chainer's n=3, k=2, alpha=5e-5,
    beta=0.75; ``nn.LocalResponseNorm`` divides alpha by n, so it gets alpha = 3 * 5e-5), conv3x3 64->32,
    ReLU, conv3x3 32->32, ReLU, flatten, FC 28800->10;
  - 18 blocks at 16 channels (30x30); exit 2: one more block, flatten, FC 14400->10;
  - 18 blocks at 32 (the first stride 2: 15x15), 18 at 64 (the first stride 2: 8x8), average pool 6
    stride 1 (8x8 -> 3x3), flatten, final FC 576->10.

  Every block is the official ``ResBlock``: conv3x3 (bias) -> BN -> ReLU -> conv3x3 (bias) -> BN, plus the
  parameter-free option-A shortcut (zero channels concatenated before x, then x[:, :, ::2, ::2]), then ReLU
  (``_resnet_parts.OptionABlock``). Convs, BNs and FCs start as Chainer 1.17 initialised them: weights
  N(0, sqrt(wscale / fan_in)) with the official wscale = sqrt(2) for the stem's and the blocks' convs and
  Chainer's default wscale = 1 for exit 1's convs and every FC; biases 0; BN eps 2e-5 (Chainer's).
  Trained as ``experiment_resnet_cifar10.py`` does, in two phases (``train.phases``): "main", the final
  exit's CE alone (``utils.train(..., main=True)``), then "joint", the sum of the three exits' CE with
  weight 1; the official run is 100 + 100 epochs at batch 64 with Adam (alpha 1e-3, no weight decay,
  ``branchynet/net.py``). Inference does not depend on the phase.

``calibrate`` chooses the thresholds on the validation split: per early exit the candidates are
0 (never leave) and the 5th..100th percentiles of that exit's validation entropies; the combination
with the fewest mean MACs (ptflops path prices, every branch a sample visits included) whose top-1 is
within ``calib_tolerance`` pp (default 0.5) of the best combination's is kept: the rule of every
adaptive-depth model here (``_resnet_parts.pick_threshold``).

Deviations (both): a percentile threshold grid picked on the validation split instead of the official
fixed list {1e-4, ..., 10} screened on the test set. ``branchynet``: one joint training stage instead of
main-then-joint, our conv branches. ``branchynet_resnet110``: the official final exit at inference is a
copy of the FC 576->10 that only the joint stage trains (the main stage trains the main network's own
copy, which the exits never use), one FC trained in both phases here; the official joint stage runs a
copy of the trunk per exit (parameters copied in, gradients summed back), one shared trunk here (the same
loss and gradients; one set of BN running statistics instead of one per copy); the harness' data
pipeline (its split, its normalisation, a validation split for calibration) replaces the official
preprocessed ``pcifar10`` arrays.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines._resnet_parts import (
    OptionABlock,
    ResidualBlock,
    block_params,
    block_plan,
    bn_params,
    check_tolerance,
    conv3x3,
    conv_params,
    fc_params,
    materialise,
    pick_threshold,
    put_rows,
    resnet_trunk_params,
    softmax_entropy,
    split_threshold,
    stage_plan_widths,
    stage_widths,
    stem,
)
from puppet.core.protocols import check_path
from puppet.core.registry import register_model
from puppet.layers import scaled, torchvision_init

BRANCHY_DEFAULTS = dict(
    blocks=(1, 3, 2, 1), widths=None, exit_after=(1, 2), exit_after_blocks=None, branch_width=128, branches=None
)
BRANCH_KINDS = ("conv", "residual")


class ExitBranch(nn.Module):
    """Side exit of the size-matched B-ResNet. ``kind="conv"``: conv3x3 stride 2 + BN + ReLU + GAP + FC (ours);
    ``kind="residual"``: one extra residual block + GAP + FC."""

    def __init__(self, c_in: int, width: int, num_classes: int, kind: str = "conv"):
        super().__init__()
        if kind == "conv":
            self.body: nn.Module = nn.Sequential(
                conv3x3(c_in, width, stride=2), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
            )
        else:
            self.body, width = ResidualBlock(c_in, c_in), c_in
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))  # (B, classes)


def _exit_blocks(blocks: Sequence[int], exit_after: Sequence[int], exit_after_blocks: Sequence[int] | None) -> tuple:
    """Block counts after which the early exits sit: ``exit_after_blocks`` as given, or after the stages
    named in ``exit_after``; one-line errors for positions outside the trunk."""
    total = sum(blocks)
    if exit_after_blocks is None:
        stages = tuple(sorted(set(exit_after)))
        if not stages or stages[0] < 1 or stages[-1] > len(blocks) - 1:
            raise ValueError(
                f"exit_after must name stages among 1..{len(blocks) - 1} (the last stage ends in the final exit), "
                f"got {tuple(exit_after)}"
            )
        return tuple(sum(blocks[:s]) for s in stages)
    after = tuple(int(b) for b in exit_after_blocks)
    if list(after) != sorted(set(after)):
        raise ValueError(f"exit_after_blocks must be increasing block counts (one per early exit), got {after}")
    if not after or after[0] < 1 or after[-1] > total - 1:
        raise ValueError(f"exit_after_blocks must name blocks among 1..{total - 1}, got {tuple(exit_after_blocks)}")
    return after


class EntropyExits(nn.Module):
    """What BranchyNet's networks share: a trunk cut into ``segments`` with an early exit after each but
    the last, entropy exits at inference, the joint loss, ``exit_macs`` and ``calibrate``.

    A subclass builds ``stem``, ``segments`` (segment n ends where early exit n branches off; the last one
    feeds the final exit, ``final_logits``), ``branches`` (one head per early exit, features -> logits) and
    ``exit_depth`` (conv layers on the path to each exit), then calls ``_setup_exits``."""

    stem: nn.Module
    segments: nn.ModuleList
    branches: nn.ModuleList
    thresholds: torch.Tensor
    exit_depth: tuple[int, ...]

    def _setup_exits(
        self, exit_weights: Sequence[float] | None, default_threshold: float, calib_tolerance: float
    ) -> None:
        """The exits' weights in the joint loss (default 1.0 each, as the official code), the threshold
        buffer (one per early exit) and the calibration tolerance."""
        check_tolerance(calib_tolerance)
        n_exits = len(self.branches) + 1
        self.exit_weights = tuple(float(w) for w in (exit_weights or [1.0] * n_exits))  # official code: all 1.0
        if len(self.exit_weights) != n_exits:
            raise ValueError(f"exit_weights needs {n_exits} values (early exits + final), got {len(self.exit_weights)}")
        self.calib_tolerance = float(calib_tolerance)
        self.register_buffer("thresholds", torch.full((len(self.branches),), float(default_threshold)))
        self.last_stats: dict[str, torch.Tensor] = {}

    def final_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The final exit on the last segment's features: (B, classes)."""
        raise NotImplementedError

    @property
    def num_exits(self) -> int:
        return len(self.branches) + 1

    def exit_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit for every sample (training, calibration): [(B, classes)] * num_exits."""
        h = self.stem(x)
        outs = []
        for n, segment in enumerate(self.segments):
            h = segment(h)
            outs.append(self.branches[n](h) if n < len(self.branches) else self.final_logits(h))
        return outs

    def main_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The main network alone (stem, every segment, final exit), no side branch: (B, classes)."""
        h = self.stem(x)
        for segment in self.segments:
            h = segment(h)
        return self.final_logits(h)

    def joint_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BranchyNet's joint loss sum_n w_n CE(z_n, y) over all exits, every sample through every exit."""
        outs = self.exit_logits(x)
        loss = sum(w * F.cross_entropy(z, y) for w, z in zip(self.exit_weights, outs))
        self._record(torch.full((len(y),), self.num_exits - 1, device=x.device))
        return loss, outs[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._record(torch.full((x.shape[0],), self.num_exits - 1, device=x.device))
            return self.exit_logits(x)[-1]
        b = x.shape[0]
        out: torch.Tensor | None = None  # (B, classes), allocated by the first exit that writes
        exit_index = torch.full((b,), self.num_exits - 1, dtype=torch.long, device=x.device)
        alive = torch.arange(b, device=x.device)  # original batch positions of the samples still running
        h = self.stem(x)
        for n, segment in enumerate(self.segments):
            h = segment(h)
            if n == len(self.branches):  # final exit takes everyone left
                out = put_rows(out, b, alive, self.final_logits(h))
                break
            logits = self.branches[n](h)  # (B_alive, classes)
            leave = softmax_entropy(logits) < self.thresholds[n]  # (B_alive,)
            if leave.any():  # host sync: the decision drives control flow
                out = put_rows(out, b, alive[leave], logits[leave])
                exit_index[alive[leave]] = n
                if leave.all():
                    break
                stay = (~leave).nonzero().squeeze(1)
                alive, h = alive[stay], h.index_select(0, stay)  # later layers run on survivors only
        self._record(exit_index)
        assert out is not None  # written by the final exit or by the exit the last samples left at
        return out

    def _record(self, exit_index: torch.Tensor) -> None:
        depth = torch.tensor(self.exit_depth, device=exit_index.device)[exit_index]
        self.last_stats = {"exit": exit_index, "depth": depth}

    @torch.no_grad()
    def force_path(self, which: str | None) -> None:
        """Cost-only runs (``RoutesPerInput``): ``"cheapest"`` leaves at the first exit, ``"dearest"`` at
        the final one (every early exit still computed on the way), ``None`` restores the thresholds."""
        check_path(which)
        own = getattr(self, "_own_thresholds", None)
        if own is None:
            own = self._own_thresholds = self.thresholds.clone()
        if which is None:
            self.thresholds.copy_(own)
            self._own_thresholds = None
            return
        forced = torch.full_like(own, -math.inf)  # entropy < -inf never holds: no early exit
        if which == "cheapest":
            forced[0] = math.inf  # entropy < inf always holds: everyone leaves at the first exit
        self.thresholds.copy_(forced)

    @torch.no_grad()
    def exit_macs(self, x1: torch.Tensor) -> list[int]:
        """MACs (ptflops, the tables' counter) of a sample that leaves at each exit (trunk + every branch
        it visits), by forcing the exit."""
        from puppet.core.measure import count_macs

        costs = []
        for n in range(self.num_exits):
            probe = copy.deepcopy(self)
            forced = torch.full_like(probe.thresholds, -math.inf)  # entropy < -inf never holds: no exit
            if n < len(forced):
                forced[n] = math.inf  # entropy < inf always holds: leave here
            probe.thresholds.copy_(forced)
            costs.append(count_macs(probe, x1[:1]))
        return costs

    @torch.no_grad()
    def calibrate(self, batches: Iterable) -> dict:
        """Choose entropy thresholds on the validation split.

        Rule: among per-exit candidate thresholds (0 = never leave, and the 5th..100th percentiles of
        that exit's validation entropies), take the combination with the lowest mean MACs whose
        validation top-1 is within ``calib_tolerance`` percentage points of the best combination's
        (``pick_threshold``, the rule of every adaptive-depth model); ties go to higher accuracy.
        """
        was_training = self.training
        self.eval()
        data = materialise(batches)
        outs = [self.exit_logits(x) for x, _ in data]
        y = torch.cat([yy for _, yy in data])  # (N,)
        logits = [torch.cat([o[n] for o in outs]) for n in range(self.num_exits)]
        entropy = torch.stack([softmax_entropy(z) for z in logits[:-1]], 1)  # (N, early exits)
        correct = torch.stack([z.argmax(1) == y for z in logits], 1).float()  # (N, exits)
        cost = torch.tensor(self.exit_macs(data[0][0]), dtype=torch.float64)  # (exits,)
        final_top1 = 100.0 * correct[:, -1].mean().item()
        candidates = []
        for n in range(entropy.shape[1]):
            q = torch.quantile(entropy[:, n].double(), torch.linspace(0.05, 1.0, 20, dtype=torch.float64))
            q = q.to(self.thresholds.dtype).cpu()  # the dtype the forward pass compares in
            # nudged up by one ulp so that "entropy < T" includes the quantile sample itself
            candidates.append(sorted({0.0, *torch.nextafter(q, torch.full_like(q, math.inf)).tolist()}))
        rows = []
        for combo in itertools.product(*candidates):
            leaves = entropy < torch.tensor(combo, dtype=self.thresholds.dtype, device=entropy.device)  # (N, early)
            leaves = torch.cat([leaves, torch.ones_like(leaves[:, :1])], 1)
            first = leaves.float().argmax(1).cpu()  # first exit that holds
            top1 = 100.0 * correct.gather(1, first[:, None].to(correct.device)).mean().item()
            rows.append({"thresholds": combo, "val_top1": top1, "cost": cost[first].mean().item(), "first": first})
        chosen = pick_threshold(rows, self.calib_tolerance)  # never leaving (all 0) reproduces the final exit
        combo, top1, first = chosen["thresholds"], chosen["val_top1"], chosen["first"]
        self.thresholds.copy_(torch.tensor(combo, dtype=self.thresholds.dtype))
        self.train(was_training)
        counts = torch.bincount(first, minlength=self.num_exits).tolist()
        return {
            "rule": f"fewest mean MACs (ptflops) with val top1 >= best candidate top1 - {self.calib_tolerance} pp",
            "thresholds": [float(t) for t in combo],
            "val_top1": top1,
            "val_top1_final_exit": final_top1,
            "val_exit_fraction": [c / len(y) for c in counts],
            "val_top1_best_candidate": max(r["val_top1"] for r in rows),
            "val_mean_macs": float(cost[first].mean()),
            "full_path_macs": float(cost[-1]),
            "val_images": len(y),
        }


class BranchyNet(EntropyExits):
    """B-ResNet with side exits after the stages in ``exit_after``; a sample leaves at the first exit
    whose softmax entropy is below that exit's threshold (Teerapittayanon et al., ICPR 2016)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        max_channels: int = 512,
        *,
        blocks: Sequence[int] = (1, 3, 2, 1),
        widths: Sequence[int] | None = None,
        exit_after: Sequence[int] = (1, 2),
        exit_after_blocks: Sequence[int] | None = None,
        branch_width: int = 128,
        branches: Sequence[str] | None = None,
        exit_weights: Sequence[float] | None = None,
        default_threshold: float = 0.05,
        calib_tolerance: float = 0.5,
    ):
        super().__init__()
        fixed = widths is not None
        widths = stage_plan_widths(widths, blocks, max_channels)
        after = _exit_blocks(blocks, exit_after, exit_after_blocks)
        kinds = tuple(branches or ["conv"] * len(after))
        if len(kinds) != len(after) or any(k not in BRANCH_KINDS for k in kinds):
            raise ValueError(f"branches needs one of {BRANCH_KINDS} per early exit ({len(after)}), got {kinds}")
        self.num_classes = num_classes
        specs = [spec for stage in block_plan(widths, blocks) for spec in stage]
        self.stem = stem(in_channels, widths[0])
        # trunk segments end where an exit sits: segment n = blocks (after[n-1], after[n]]
        bounds = (0, *after, len(specs))
        self.segments = nn.ModuleList(
            nn.Sequential(*[ResidualBlock(*spec) for spec in specs[a:b]]) for a, b in zip(bounds, bounds[1:])
        )
        bw = int(branch_width) if fixed else scaled(branch_width, max_channels)
        self.branches = nn.ModuleList(
            ExitBranch(specs[a - 1][1], bw, num_classes, kind) for a, kind in zip(after, kinds)
        )
        self.fc = nn.Linear(widths[-1], num_classes)
        self._setup_exits(exit_weights, default_threshold, calib_tolerance)
        # conv layers on the path to each exit: stem + 2 per trunk block (+ the branch's convs)
        self.exit_depth = tuple(1 + 2 * a + (1 if k == "conv" else 2) for a, k in zip(after, kinds)) + (
            1 + 2 * len(specs),
        )
        torchvision_init(self)

    def final_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h.mean((2, 3)))  # GAP + FC

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BranchyNet's joint loss sum_n w_n CE(z_n, y) over all exits, every sample through every exit."""
        return self.joint_loss(x, y)


# --------------------------------------------------------------------------- the official B-ResNet-110

OFFICIAL_COMMIT = "2c61194"  # kunglab/branchynet: the last commit that changed networks/resnet_cifar10.py
OFFICIAL_BLOCKS = 18  # n of the official ResNet-110: 18 blocks per stage (+ 1 in the second exit)
OFFICIAL_WIDTHS = (16, 32, 64)
OFFICIAL_WSCALE = math.sqrt(2)  # ``w = math.sqrt(2)`` passed as the wscale of the stem's and every ResBlock's convs
CHAINER_BN_EPS = 2e-5  # chainer.links.BatchNormalization's default eps (its decay 0.9 is torch's momentum 0.1)
LRN = dict(n=3, k=2.0, alpha=5e-5, beta=0.75)  # F.local_response_normalization(n=3, alpha=5e-05, beta=0.75), k default


def official_sizes(image_size: int) -> tuple[int, int, int, int]:
    """Feature-map side after the stem (no padding), after stage 2 and stage 3 (stride 2 each) and after
    the final 6x6 average pool (stride 1): (30, 15, 8, 3) at 32x32 input."""
    s1 = image_size - 2
    s2 = (s1 + 1) // 2
    s3 = (s2 + 1) // 2
    if s3 < 6:
        raise ValueError(
            f"the official B-ResNet-110 needs images of at least 23x23 (its 6x6 final pooling), got {image_size}"
        )
    return s1, s2, s3, s3 - 5


def chainer_init(module: nn.Module, wscale: float = 1.0) -> None:
    """Chainer 1.17's initialisation (``requirements.txt`` of the official code pins chainer==1.17.0) of every
    conv and FC in ``module``: a link built with ``wscale`` draws W from ``HeNormal(sqrt(wscale) / sqrt(2))``,
    i.e. N(0, sqrt(wscale / fan_in)), and sets its bias to 0 (``initializers._get_initializer``)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, math.sqrt(wscale / m.weight[0].numel()))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class BResNet110(EntropyExits):
    """The official B-ResNet-110 of BranchyNet (kunglab/branchynet @ 2c61194, ``networks/resnet_cifar10.py``):
    a CIFAR ResNet-110 (option-A shortcuts, conv biases, no stem padding) with a conv + LRN exit after the stem
    and a one-block exit at the end of stage 1, trained main network first ("main") then jointly ("joint")."""

    phase_names: tuple[str, ...] = ("main", "joint")

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        *,
        exit_weights: Sequence[float] | None = None,
        default_threshold: float = 0.05,
        calib_tolerance: float = 0.5,
    ):
        super().__init__()
        s1, _, _, pooled = official_sizes(image_size)
        c1, c2, c3 = OFFICIAL_WIDTHS
        n = OFFICIAL_BLOCKS

        def block(c_in: int, c_out: int, stride: int = 1) -> OptionABlock:
            return OptionABlock(c_in, c_out, stride, bias=True, eps=CHAINER_BN_EPS)

        self.num_classes = num_classes
        self.phase = "main"  # the trainer sets it (puppet.core.protocols.TrainsInPhases); "main" until told otherwise
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, 1, 0), nn.BatchNorm2d(c1, eps=CHAINER_BN_EPS), nn.ReLU(inplace=True)
        )
        self.segments = nn.ModuleList(
            [
                nn.Sequential(),  # exit 1 branches off right after the stem
                nn.Sequential(*[block(c1, c1) for _ in range(n)]),
                nn.Sequential(
                    *[block(c1 if i == 0 else c2, c2, 2 if i == 0 else 1) for i in range(n)],
                    *[block(c2 if i == 0 else c3, c3, 2 if i == 0 else 1) for i in range(n)],
                ),
            ]
        )
        lrn = nn.LocalResponseNorm(LRN["n"], alpha=LRN["n"] * LRN["alpha"], beta=LRN["beta"], k=LRN["k"])
        self.branches = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(c1, 64, 5, 1, 2),
                    nn.ReLU(inplace=True),
                    lrn,  # torch: k + alpha / n * sum; Chainer: k + alpha * sum
                    nn.Conv2d(64, 32, 3, 1, 1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(32, 32, 3, 1, 1),
                    nn.ReLU(inplace=True),
                    nn.Flatten(),
                    nn.Linear(32 * s1 * s1, num_classes),
                ),
                nn.Sequential(block(c1, c1), nn.Flatten(), nn.Linear(c1 * s1 * s1, num_classes)),
            ]
        )
        self.pool = nn.AvgPool2d(6, stride=1)
        self.fc = nn.Linear(c3 * pooled * pooled, num_classes)
        self._setup_exits(exit_weights, default_threshold, calib_tolerance)
        # conv layers on the path to each exit: stem, 2 per trunk block, the branch's convs
        self.exit_depth = (1 + 3, 1 + 2 * n + 2, 1 + 2 * 3 * n)
        for part in (self.stem, self.segments, self.branches[1][0]):  # the official ``w = math.sqrt(2)``
            chainer_init(part, OFFICIAL_WSCALE)
        for part in (self.branches[0], self.branches[1][-1], self.fc):  # Chainer's default wscale
            chainer_init(part, 1.0)

    def final_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(h).flatten(1))  # average_pooling_2d(6, 1), then the FC on the flattened map

    def set_phase(self, name: str) -> None:
        if name not in self.phase_names:
            raise ValueError(f"B-ResNet-110 has no training phase {name!r}; its: {self.phase_names}")
        self.phase = name

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Phase "main": CE of the final exit, the main network alone (the official ``train_main``);
        phase "joint": sum_n w_n CE(z_n, y) over the three exits, w_n = 1 (the official ``train``)."""
        if self.phase == "joint":
            return self.joint_loss(x, y)
        logits = self.main_logits(x)
        self._record(torch.full((len(y),), self.num_exits - 1, device=x.device))
        return F.cross_entropy(logits, y), logits


# --------------------------------------------------------------------------- parameter formulas


def branchynet_params(num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, **kw) -> int:
    cfg = {**BRANCHY_DEFAULTS, **{k: v for k, v in kw.items() if k in BRANCHY_DEFAULTS}}
    widths = stage_widths(max_channels, cfg["widths"])
    n, outs = resnet_trunk_params(in_channels, widths, cfg["blocks"])
    after = _exit_blocks(cfg["blocks"], cfg["exit_after"], cfg["exit_after_blocks"])
    b = cfg["branch_width"] if cfg["widths"] is not None else scaled(cfg["branch_width"], max_channels)
    for a, kind in zip(after, cfg["branches"] or ["conv"] * len(after)):
        c = outs[a - 1]
        if kind == "conv":
            n += conv_params(3, c, b) + bn_params(b) + fc_params(b, num_classes)
        else:
            n += block_params(c, c, 1) + fc_params(c, num_classes)
    return n + fc_params(widths[-1], num_classes)


def bresnet110_params(num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, **kw) -> int:
    """The official B-ResNet-110's layer list, counted: every conv with its bias, option-A shortcuts without
    parameters; ``max_channels`` is ignored (fixed widths)."""
    s1, _, _, pooled = official_sizes(image_size)
    c1, c2, c3 = OFFICIAL_WIDTHS

    def block(c_in: int, c_out: int) -> int:
        return conv_params(3, c_in, c_out, True) + conv_params(3, c_out, c_out, True) + 2 * bn_params(c_out)

    stem_ = conv_params(3, in_channels, c1, True) + bn_params(c1)
    exit1 = (
        conv_params(5, c1, 64, True)
        + conv_params(3, 64, 32, True)
        + conv_params(3, 32, 32, True)
        + fc_params(32 * s1 * s1, num_classes)
    )
    exit2 = block(c1, c1) + fc_params(c1 * s1 * s1, num_classes)
    n = OFFICIAL_BLOCKS
    trunk = n * block(c1, c1) + block(c1, c2) + (n - 1) * block(c2, c2) + block(c2, c3) + (n - 1) * block(c3, c3)
    return stem_ + exit1 + exit2 + trunk + fc_params(c3 * pooled * pooled, num_classes)


# --------------------------------------------------------------------------- registry


@torch.no_grad()
def _spread_paths(model: EntropyExits, x: torch.Tensor) -> None:
    """Set every exit threshold at the first exit's median entropy on ``x`` (tests)."""
    split_threshold(model.thresholds, softmax_entropy(model.branches[0](model.segments[0](model.stem(x)))))


@register_model(
    "branchynet",
    family="adaptive_depth",
    paper_name="BranchyNet",
    param_formula=branchynet_params,
    spread_paths=_spread_paths,
    configuration="size-matched",
    revision=1,  # 1: torchvision init, the MAC-priced calibration rule, torchvision BasicBlock keys
)
def branchynet(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> BranchyNet:
    """BranchyNet, size-matched: B-ResNet (1,3,2,1 blocks, ResNet-18 widths), entropy exits after stages 1 and 2."""
    return BranchyNet(num_classes, in_channels, max_channels, **kwargs)


@register_model(
    "branchynet_resnet110",
    family="adaptive_depth",
    paper_name="BranchyNet",
    param_formula=bresnet110_params,
    spread_paths=_spread_paths,
    # phase "main" (the phase until the trainer sets one) trains the main network alone: the side
    # branches get their gradients in phase "joint" (tests/test_branchynet_official.py checks it)
    no_grad_ok=("branches.*",),
    fixed_width=True,
    configuration="as published",
    # the official code's Chainer 1.17 initialisation (``chainer_init``), not torchvision's
    init_exempt=("*",),
    # 2: the official network as kunglab/branchynet @ 2c61194 builds it, trained main then joint (revision 1
    # was a CIFAR ResNet-110 with torchvision blocks, our conv branch and GAP heads, one joint stage)
    revision=2,
)
def branchynet_resnet110(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> BResNet110:
    """BranchyNet as published: the official B-ResNet-110 (kunglab/branchynet @ 2c61194), trained main then joint."""
    return BResNet110(num_classes, in_channels, image_size, **kwargs)
