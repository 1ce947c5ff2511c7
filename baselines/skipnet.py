"""SkipNet (Wang, Yu, Dou, Darrell, Gonzalez, ECCV 2018): a CIFAR ResNet whose blocks are skipped by gates.

Stage depths (2, 3, 1, 2); gate i reads block i's output and decides block i + 1 (the first block
always runs, no gate after the last). The gate is FFGate-I (maxpool 2, two conv3x3 + BN + ReLU,
GAP, 1x1 conv to two logits: skip, execute; ``gate="II"`` gives FFGate-II). A skipped block is
replaced by its shortcut (identity or 1x1 projection); at inference skipped blocks are not
computed, and in a batch the executed and skipped samples are gathered apart and scattered back.

Training (``gate_training``): ``"gumbel"`` (default, a deviation: hard straight-through
Gumbel-softmax gates with a target-rate loss, one stage) or ``"sp_hrl"`` (the paper's supervised
pre-training then hybrid reinforcement learning; the step counter is a buffer so a resumed run
switches at the same step; the harness has no per-stage learning rate).

``calibrate`` picks the test-time threshold on p(execute) among 0.1..0.9 on the validation split:
the lowest mean executed depth whose top-1 is within ``calib_tolerance`` pp of the best candidate.

Deviations: backbone sized to the paper's Table 1, not ResNet-38/74/110; no LSTM gate; no unused
gate after the last block; a calibrated rather than fixed 0.5 threshold.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines._resnet_parts import (
    PAPER_WIDTHS,
    ResidualBlock,
    block_plan,
    bn_params,
    calibrate_global_threshold,
    check_tolerance,
    conv3x3,
    conv_params,
    fc_params,
    hard_gumbel_gate,
    resnet_trunk_params,
    split_threshold,
    stage_widths,
    stem,
)
from puppet.core.registry import register_model
from puppet.layers import scaled

SKIP_DEFAULTS = dict(blocks=(2, 3, 1, 2), gate="I")


class FFGate(nn.Module):
    """SkipNet's feed-forward gate (Wang et al., ECCV 2018): conv features -> GAP -> 1x1 conv to
    2 logits (skip, execute). ``kind="I"``: maxpool 2, conv3x3, conv3x3 stride 2; ``kind="II"``:
    one conv3x3 stride 2. Conv gates are seen by both MAC counters, unlike the RNN gate's LSTM."""

    def __init__(self, channels: int, kind: str = "I"):
        super().__init__()
        layers: list[nn.Module] = []
        if kind == "I":
            layers += [
                nn.MaxPool2d(2, ceil_mode=True),
                conv3x3(channels, channels),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        elif kind != "II":
            raise ValueError(f"gate must be 'I' or 'II' (SkipNet's FFGate-I / FFGate-II), got {kind!r}")
        layers += [conv3x3(channels, channels, stride=2), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.logits = nn.Conv2d(channels, 2, 1)
        with torch.no_grad():  # start mostly "execute" (ConvNet-AIG's bias init (0.1, 2): p ~ 0.87)
            self.logits.bias.copy_(torch.tensor([0.1, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return self.logits(h).flatten(1)  # (B, 2): [skip, execute]


class SkipNet(nn.Module):
    """ResNet whose blocks 2..N are each preceded by a gate on the previous block's output;
    a skipped block is replaced by its shortcut and is not computed at inference."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        max_channels: int = 512,
        *,
        blocks: Sequence[int] = (2, 3, 1, 2),
        gate: str = "I",
        gate_training: str = "gumbel",
        target_rate: float = 0.7,
        rate_weight: float = 1.0,
        sp_steps: int = 0,
        hrl_alpha: float = 0.01,
        rl_weight: float = 0.01,
        default_threshold: float = 0.5,
        calib_tolerance: float = 0.5,
    ):
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must give 4 stage depths >= 1, got {tuple(blocks)}")
        if not 0.0 <= target_rate <= 1.0:
            raise ValueError(f"target_rate is the wanted fraction of executed blocks, in [0, 1]; got {target_rate}")
        if gate_training not in ("gumbel", "sp_hrl"):
            raise ValueError(
                "gate_training must be 'gumbel' (straight-through Gumbel + target rate) or 'sp_hrl' (the paper's SP "
                f"then hybrid RL), got {gate_training!r}"
            )
        self.gate_training, self.sp_steps = gate_training, int(sp_steps)
        self.hrl_alpha, self.rl_weight = float(hrl_alpha), float(rl_weight)
        check_tolerance(calib_tolerance)
        widths = [scaled(w, max_channels) for w in PAPER_WIDTHS]
        specs = [spec for stage in block_plan(widths, blocks) for spec in stage]
        self.stem = stem(in_channels, widths[0])
        self.blocks = nn.ModuleList(ResidualBlock(*spec) for spec in specs)
        # gate i looks at block i's output and decides block i+1; none after the last block (it would be unused)
        self.gates = nn.ModuleList(FFGate(specs[i][1], gate) for i in range(len(specs) - 1))
        self.fc = nn.Linear(widths[-1], num_classes)
        self.target_rate, self.rate_weight = float(target_rate), float(rate_weight)
        self.calib_tolerance = float(calib_tolerance)
        self.register_buffer("gate_threshold", torch.tensor(float(default_threshold)))
        # compute_loss calls so far: SP -> HRL switch of gate_training="sp_hrl"; saved, so a resumed run agrees
        self.register_buffer("train_steps", torch.tensor(0, dtype=torch.long))
        self.last_stats: dict[str, torch.Tensor] = {}

    def _mode(self) -> str:
        if self.gate_training == "gumbel":
            return "gumbel"
        return "sp" if int(self.train_steps) < self.sp_steps else "hrl"

    def _train_forward(
        self, x: torch.Tensor, mode: str = "gumbel"
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Every block computed and mixed with its shortcut by a 0/1 gate g:
        gumbel: hard straight-through Gumbel-softmax; sp: hard p > 0.5 with the straight-through
        gradient of p (SkipNet's supervised pre-training); hrl: g ~ Bernoulli(p), no gradient
        through g, its log-probability returned for REINFORCE (SkipNet's hybrid RL)."""
        h = self.blocks[0](self.stem(x))
        gates, log_probs = [], []
        for block, gate in zip(self.blocks[1:], self.gates):
            logits = gate(h)  # (B, 2)
            if mode == "gumbel":
                g = hard_gumbel_gate(logits)
            else:
                p = F.softmax(logits.float(), 1)[:, 1]  # (B,) p(execute)
                if mode == "sp":
                    g = (p > 0.5).to(p.dtype) + p - p.detach()
                else:
                    g = torch.bernoulli(p.detach())
                    log_probs.append(torch.where(g > 0.5, p, 1 - p).clamp_min(1e-6).log())
                g = g.to(h.dtype)
            m = g[:, None, None, None]  # (B, 1, 1, 1)
            shortcut = block.shortcut(h)
            h = m * F.relu(block.residual(h) + shortcut) + (1 - m) * shortcut
            gates.append(g)
        run = (
            torch.stack([torch.ones_like(gates[0])] + gates, 1) if gates else torch.ones(x.shape[0], 1, device=x.device)
        )
        self._record(run.detach() > 0.5)
        return self.fc(h.mean((2, 3))), gates, log_probs

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gumbel: CE + rate_weight * sum_l (mean_b g_l - target_rate)^2 (ConvNet-AIG's target-rate loss).
        sp_hrl: CE alone for the first ``sp_steps`` calls (SP), then CE + REINFORCE (HRL) with
        per-gate reward (hrl_alpha / N_gates) * (1 - a_l), terminal reward -CE, gamma = 1, scaled by rl_weight."""
        mode = self._mode()
        self.train_steps += 1
        logits, gates, log_probs = self._train_forward(x, mode)
        ce = F.cross_entropy(logits, y, reduction="none")  # (B,)
        loss = ce.mean()
        if gates and mode == "gumbel":
            loss = loss + self.rate_weight * sum((g.mean() - self.target_rate) ** 2 for g in gates)
        if log_probs:
            skip_reward = torch.stack([(self.hrl_alpha / len(gates)) * (1 - g) for g in gates], 1)  # (B, N)
            # return of gate l: its own and later skip rewards plus the terminal -CE (gamma = 1)
            returns = skip_reward.flip(1).cumsum(1).flip(1) - ce.detach()[:, None]  # (B, N)
            loss = loss - self.rl_weight * (torch.stack(log_probs, 1) * returns).sum(1).mean()
        return loss, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self._train_forward(x, self._mode())[0]
        b = x.shape[0]
        run_mask = torch.ones(b, len(self.blocks), dtype=torch.bool, device=x.device)
        h = self.blocks[0](self.stem(x))  # the first block always runs
        for i, (block, gate) in enumerate(zip(self.blocks[1:], self.gates), start=1):
            run = F.softmax(gate(h), 1)[:, 1] > self.gate_threshold  # (B,)
            run_mask[:, i] = run
            if run.all():  # host sync; at batch 1 this is the plain "if gate: x = block(x)"
                h = block(h)
            elif not run.any():
                h = block.shortcut(h)
            else:  # gather both groups, compute each path on its own samples, scatter back
                ran, skipped = run.nonzero().squeeze(1), (~run).nonzero().squeeze(1)
                h_ran = block(h.index_select(0, ran))
                h_new = h_ran.new_empty(b, *h_ran.shape[1:])
                h_new.index_copy_(0, ran, h_ran)
                h_new.index_copy_(0, skipped, block.shortcut(h.index_select(0, skipped)))
                h = h_new
        self._record(run_mask)
        return self.fc(h.mean((2, 3)))

    def _record(self, run_mask: torch.Tensor) -> None:
        executed = run_mask.sum(1)  # (B,)
        self.last_stats = {"blocks": executed, "depth": 1 + 2 * executed, "blocks_run": run_mask}

    @torch.no_grad()
    def calibrate(self, batches: Iterable) -> dict:
        """Choose the gate threshold on p(execute) on the validation split: among 0.1, 0.2, ..., 0.9,
        the one with the fewest executed conv layers whose validation top-1 is within
        ``calib_tolerance`` pp of the best candidate's (conv layers of a CIFAR ResNet cost about
        the same MACs at every stage, so executed depth stands for MACs)."""
        return calibrate_global_threshold(self, self.gate_threshold, batches, self.calib_tolerance)


def skipnet_params(num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, **kw) -> int:
    cfg = {**SKIP_DEFAULTS, **{k: v for k, v in kw.items() if k in SKIP_DEFAULTS}}
    n, outs = resnet_trunk_params(in_channels, stage_widths(max_channels), cfg["blocks"])
    for c in outs[:-1]:  # one gate after every block but the last
        convs = 2 if cfg["gate"] == "I" else 1
        n += convs * (conv_params(3, c, c) + bn_params(c)) + conv_params(1, c, 2, bias=True)
    return n + fc_params(outs[-1], num_classes)


@torch.no_grad()
def _spread_paths(model: SkipNet, x: torch.Tensor) -> None:
    """Steepen the gates (at init p(execute) sits near its bias) and set the threshold at the
    first gate's median p(execute) on ``x`` (tests)."""
    for gate in model.gates:
        gate.logits.bias.zero_()
        gate.logits.weight.mul_(30)
    split_threshold(model.gate_threshold, F.softmax(model.gates[0](model.blocks[0](model.stem(x))), 1)[:, 1])


@register_model(
    "skipnet", family="adaptive_depth", paper_name="SkipNet", param_formula=skipnet_params, spread_paths=_spread_paths
)
def skipnet(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> SkipNet:
    """SkipNet: ResNet (2,3,1,2 blocks) with FFGate-I skip gates, straight-through Gumbel training."""
    return SkipNet(num_classes, in_channels, max_channels, **kwargs)
