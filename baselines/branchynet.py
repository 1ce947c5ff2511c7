"""BranchyNet (Teerapittayanon, McDanel, Kung, ICPR 2016): a B-ResNet with entropy early exits.

Side exits (conv3x3 stride 2 + BN + ReLU + GAP + FC) after stages 1 and 2, then the final
GAP + FC exit. Training uses the joint loss sum_n w_n CE(z_n, y) over every exit with w_n = 1,
as the official code (``exit_weights`` changes them). At inference a sample leaves at the first
exit whose softmax entropy (nats) is below that exit's threshold; samples that leave are dropped
from the batch and the rest continue from the features at the branch point.

``calibrate`` chooses the thresholds on the validation split: per early exit the candidates are
0 (never leave) and the 5th..100th percentiles of that exit's validation entropies; the
cheapest combination (mean MACs from exact per-exit path costs) whose top-1 is within
``calib_tolerance`` pp (default 0.5) of the final exit's is kept.

Deviations: stage depths (1, 3, 2, 1) picked by the paper's Table 1 size, not the official
B-AlexNet / B-ResNet-110; one joint training stage instead of the official main-then-joint
schedule; our branch design (conv, BN, ReLU, GAP, FC) instead of the official LRN + conv + FC
branches; a percentile threshold grid instead of a fixed list.
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
    PAPER_WIDTHS,
    ResidualBlock,
    block_plan,
    bn_params,
    check_tolerance,
    conv3x3,
    conv_params,
    fc_params,
    materialise,
    put_rows,
    resnet_trunk_params,
    softmax_entropy,
    split_threshold,
    stage_widths,
    stem,
)
from puppet.core.registry import register_model
from puppet.layers import scaled

BRANCHY_DEFAULTS = dict(blocks=(1, 3, 2, 1), exit_after=(1, 2), branch_width=128)


class ExitBranch(nn.Module):
    """Side exit of the B-ResNet: conv3x3 stride 2 + BN + ReLU + GAP + FC."""

    def __init__(self, c_in: int, width: int, num_classes: int):
        super().__init__()
        self.conv = conv3x3(c_in, width, stride=2)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(x)))  # (B, width, H/2, W/2)
        return self.fc(h.mean((2, 3)))  # (B, classes)


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
        exit_after: Sequence[int] = (1, 2),
        branch_width: int = 128,
        exit_weights: Sequence[float] | None = None,
        default_threshold: float = 0.05,
        calib_tolerance: float = 0.5,
    ):
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must give 4 stage depths >= 1, got {tuple(blocks)}")
        exit_after = tuple(sorted(set(exit_after)))
        if not exit_after or exit_after[0] < 1 or exit_after[-1] > 3:
            raise ValueError(
                f"exit_after must name stages among 1, 2, 3 (stage 4 ends in the final exit), got {exit_after}"
            )
        check_tolerance(calib_tolerance)
        n_exits = len(exit_after) + 1
        self.exit_weights = tuple(float(w) for w in (exit_weights or [1.0] * n_exits))  # official code: all 1.0
        if len(self.exit_weights) != n_exits:
            raise ValueError(f"exit_weights needs {n_exits} values (early exits + final), got {len(self.exit_weights)}")
        self.calib_tolerance = float(calib_tolerance)
        self.num_classes = num_classes
        widths = [scaled(w, max_channels) for w in PAPER_WIDTHS]
        plan = block_plan(widths, blocks)
        self.stem = stem(in_channels, widths[0])
        # trunk segments end where an exit sits: segment n = stages (exit_after[n-1], exit_after[n]]
        bounds = (0, *exit_after, 4)
        self.segments = nn.ModuleList(
            nn.Sequential(*[ResidualBlock(*spec) for s in range(a, b) for spec in plan[s]])
            for a, b in zip(bounds, bounds[1:])
        )
        bw = scaled(branch_width, max_channels)
        self.branches = nn.ModuleList(ExitBranch(widths[s - 1], bw, num_classes) for s in exit_after)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.register_buffer("thresholds", torch.full((len(exit_after),), float(default_threshold)))
        # conv layers on the path to each exit: stem + 2 per trunk block (+ the branch conv)
        trunk = [1 + 2 * sum(blocks[:s]) for s in exit_after]
        self.exit_depth = tuple(d + 1 for d in trunk) + (1 + 2 * sum(blocks),)
        self.last_stats: dict[str, torch.Tensor] = {}

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
        """MACs of a sample that leaves at each exit (trunk + every branch it visits), by forcing the exit."""
        from puppet.core.measure import count_macs_flopcounter

        costs = []
        for n in range(self.num_exits):
            probe = copy.deepcopy(self)
            forced = torch.full_like(probe.thresholds, -math.inf)  # entropy < -inf never holds: no exit
            if n < len(forced):
                forced[n] = math.inf  # entropy < inf always holds: leave here
            probe.thresholds.copy_(forced)
            costs.append(count_macs_flopcounter(probe, x1[:1]))
        return costs

    @torch.no_grad()
    def calibrate(self, batches: Iterable) -> dict:
        """Choose entropy thresholds on the validation split.

        Rule: among per-exit candidate thresholds (0 = never leave, and the 5th..100th percentiles of
        that exit's validation entropies), take the combination with the lowest mean MACs whose
        validation top-1 is within ``calib_tolerance`` percentage points of the final exit's
        (the largest MAC saving with at most a 0.5 pp drop); ties go to higher accuracy.
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
        best = None
        for combo in itertools.product(*candidates):
            leaves = entropy < torch.tensor(combo, dtype=self.thresholds.dtype, device=entropy.device)  # (N, early)
            leaves = torch.cat([leaves, torch.ones_like(leaves[:, :1])], 1)
            first = leaves.float().argmax(1)  # first exit that holds
            top1 = 100.0 * correct.gather(1, first[:, None]).mean().item()
            mean_cost = cost[first.cpu()].mean().item()
            if top1 < final_top1 - self.calib_tolerance:
                continue
            key = (mean_cost, -top1)
            if best is None or key < best[0]:
                best = (key, combo, top1, first)
        assert best is not None  # thresholds of 0 (never leave) reproduce the final exit
        _, combo, top1, first = best
        self.thresholds.copy_(torch.tensor(combo, dtype=self.thresholds.dtype))
        self.train(was_training)
        counts = torch.bincount(first.cpu(), minlength=self.num_exits).tolist()
        return {
            "rule": f"lowest mean MACs with val top1 >= final-exit top1 - {self.calib_tolerance} pp",
            "thresholds": [float(t) for t in combo],
            "val_top1": top1,
            "val_top1_final_exit": final_top1,
            "val_exit_fraction": [c / len(y) for c in counts],
            "val_mean_macs": float(cost[first.cpu()].mean()),
            "full_path_macs": float(cost[-1]),
            "val_images": len(y),
        }


def branchynet_params(num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, **kw) -> int:
    cfg = {**BRANCHY_DEFAULTS, **{k: v for k, v in kw.items() if k in BRANCHY_DEFAULTS}}
    widths = stage_widths(max_channels)
    n, _ = resnet_trunk_params(in_channels, widths, cfg["blocks"])
    b = scaled(cfg["branch_width"], max_channels)
    for s in sorted(set(cfg["exit_after"])):
        n += conv_params(3, widths[s - 1], b) + bn_params(b) + fc_params(b, num_classes)
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
)
def branchynet(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> BranchyNet:
    """BranchyNet: B-ResNet (1,3,2,1 blocks) with entropy early exits after stages 1 and 2."""
    return BranchyNet(num_classes, in_channels, max_channels, **kwargs)
