"""BranchyNet (Teerapittayanon, McDanel, Kung, ICPR 2016): a B-ResNet with entropy early exits.

Side exits and a final GAP + FC exit. Training uses the joint loss sum_n w_n CE(z_n, y) over every
exit with w_n = 1, as the official code (``exit_weights`` changes them). At inference a sample leaves
at the first exit whose softmax entropy (nats) is below that exit's threshold; samples that leave are
dropped from the batch and the rest continue from the features at the branch point.

Configurations: ``branchynet`` (size-matched: ResNet-18 widths scaled, stage depths (1, 3, 2, 1) picked
by the Puppet-CNN paper's Table 1 size, conv branches after stages 1 and 2) and ``branchynet_resnet110``
(as published: the official B-ResNet-110 of ``networks/resnet_cifar10.py``, a CIFAR ResNet at 16-32-64
with 19, 18 and 18 blocks per stage and exits after blocks 1 and 19, the end of stage 1. The second
branch is one extra residual block + FC, as official, with a GAP before the FC where the official one
flattens 16 x 30 x 30. The first is our conv branch: the official one (ReLU, LRN, conv 16->32,
conv 32->32, max-pool, FC 7200->3600->10) would add 25.9 M parameters, 104 MB, in one FC).

``calibrate`` chooses the thresholds on the validation split: per early exit the candidates are
0 (never leave) and the 5th..100th percentiles of that exit's validation entropies; the combination
with the fewest mean MACs (ptflops path prices, every branch a sample visits included) whose top-1 is
within ``calib_tolerance`` pp (default 0.5) of the best combination's is kept: the rule of every
adaptive-depth model here (``_resnet_parts.pick_threshold``).

Deviations: one joint training stage instead of the official main-then-joint schedule; a percentile
threshold grid instead of a fixed list.
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
    CIFAR_WIDTHS,
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
from puppet.core.registry import register_model, register_variant
from puppet.layers import scaled, torchvision_init

BRANCHY_DEFAULTS = dict(
    blocks=(1, 3, 2, 1), widths=None, exit_after=(1, 2), exit_after_blocks=None, branch_width=128, branches=None
)
BRANCH_KINDS = ("conv", "residual")


class ExitBranch(nn.Module):
    """Side exit of the B-ResNet. ``kind="conv"``: conv3x3 stride 2 + BN + ReLU + GAP + FC (ours);
    ``kind="residual"``: one extra residual block + GAP + FC (the official B-ResNet-110's later branch)."""

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


class BranchyNet(nn.Module):
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
        check_tolerance(calib_tolerance)
        n_exits = len(after) + 1
        self.exit_weights = tuple(float(w) for w in (exit_weights or [1.0] * n_exits))  # official code: all 1.0
        if len(self.exit_weights) != n_exits:
            raise ValueError(f"exit_weights needs {n_exits} values (early exits + final), got {len(self.exit_weights)}")
        self.calib_tolerance = float(calib_tolerance)
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
        self.register_buffer("thresholds", torch.full((len(after),), float(default_threshold)))
        # conv layers on the path to each exit: stem + 2 per trunk block (+ the branch's convs)
        self.exit_depth = tuple(1 + 2 * a + (1 if k == "conv" else 2) for a, k in zip(after, kinds)) + (
            1 + 2 * len(specs),
        )
        self.last_stats: dict[str, torch.Tensor] = {}
        torchvision_init(self)

    @property
    def num_exits(self) -> int:
        return len(self.branches) + 1

    def exit_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit for every sample (training, calibration): [(B, classes)] * num_exits."""
        h = self.stem(x)
        outs = []
        for n, segment in enumerate(self.segments):
            h = segment(h)
            outs.append(self.branches[n](h) if n < len(self.branches) else self.fc(h.mean((2, 3))))
        return outs

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
                out = put_rows(out, b, alive, self.fc(h.mean((2, 3))))
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


@torch.no_grad()
def _spread_paths(model: BranchyNet, x: torch.Tensor) -> None:
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


register_variant(
    "branchynet_resnet110",
    "branchynet",
    kwargs={
        "widths": CIFAR_WIDTHS,
        "blocks": (19, 18, 18),  # the official code: 1 + n blocks in stage 1, n = 18 in the others
        "exit_after_blocks": (1, 19),  # after the first block and at the end of stage 1
        "branches": ("conv", "residual"),
        "branch_width": 16,
    },
    fixed_width=True,
    description="BranchyNet as published: the official B-ResNet-110 (16-32-64), exits after blocks 1 and 19.",
)
