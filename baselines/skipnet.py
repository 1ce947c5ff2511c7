"""SkipNet (Wang, Yu, Dou, Darrell, Gonzalez, ECCV 2018): a CIFAR ResNet whose blocks are skipped by gates.

Gate i reads block i's output and decides block i + 1 (the first block always runs, no gate after the
last). The gate is FFGate-I (maxpool 2, two conv3x3 + BN + ReLU, GAP, 1x1 conv to two logits: skip,
execute; ``gate="II"`` gives FFGate-II). A skipped block is replaced by its shortcut (identity or 1x1
projection); at inference skipped blocks are not computed, and in a batch the executed and skipped
samples are gathered apart and scattered back.

Configurations: ``skipnet`` (size-matched: ResNet-18 widths 64-512 scaled, stage depths (2, 3, 1, 2),
picked by the Puppet-CNN paper's Table 1 size) and, as published, ``skipnet38`` / ``skipnet74`` /
``skipnet110`` (CIFAR ResNet-(6n+2), widths 16-32-64, FFGate-I for 38 and 74, FFGate-II for 110), all
at the official ``train_rl.py`` default skip reward alpha = 0.1. ``skipnet38_alpha1e-2`` /
``skipnet38_alpha1e-3`` are SkipNet-38 at the paper's other skip rewards (the trade-off curve);
``skipnet_gumbel`` is the size-matched model trained ConvNet-AIG-style, and ``skipnet_gumbel_rate30`` /
``skipnet_gumbel_rate50`` the same at target rates 0.3 and 0.5 (its curve).

Training (``gate_training``): ``"sp_hrl"`` (default; the paper's supervised pre-training, then hybrid
reinforcement learning; the REINFORCE term summed over the batch as the official ``action.reinforce``
applies it, beside the batch-mean cross-entropy). The model trains in two phases, ``sp`` and ``hrl``,
which the trainer sets from the recipe's ``train.phases`` (where SP ends as a fraction of the run's
steps, and HRL's own learning rate). ``"gumbel"``: ConvNet-AIG-style training (Veit & Belongie 2018),
hard straight-through Gumbel-softmax gates with a target-rate loss, one phase; a documented
alternative, not SkipNet's.

``calibrate`` picks the test-time threshold on p(execute) among 0.1..0.9 on the validation split by
the adaptive-depth rule (``_resnet_parts.pick_threshold``: fewest mean MACs within ``calib_tolerance``
pp of the best candidate): the ``default`` deployment. SkipNet's own rule, a block runs when
p(execute) > 0.5, is the deployment ``fixed_0.5`` of the same trained model, measured beside it.

Deviations: no RNN gate; no unused gate after the last block; the ``default`` deployment's threshold
is calibrated on validation data (SkipNet's fixed 0.5 is the ``fixed_0.5`` deployment beside it); both
training phases keep the profile's optimiser, data and batch (the official HRL stage uses SGD at lr
1e-4, weight decay 1e-4, batch 128), so the same loss is followed by another optimiser.
"""

from __future__ import annotations

import copy
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines._resnet_parts import (
    CIFAR_WIDTHS,
    ResidualBlock,
    block_plan,
    bn_params,
    calibrate_global_threshold,
    check_tolerance,
    cifar_resnet_blocks,
    conv3x3,
    conv_params,
    fc_params,
    hard_gumbel_gate,
    resnet_trunk_params,
    spread_gate,
    stage_plan_widths,
    stage_widths,
    stem,
)
from puppet.core.protocols import DEFAULT_DEPLOYMENT, DeployContext, check_path
from puppet.core.registry import register_model, register_variant
from puppet.layers import torchvision_init

SKIP_DEFAULTS = dict(blocks=(2, 3, 1, 2), gate="I", widths=None)
OFFICIAL_ALPHA = 0.1  # the skip reward's default in the official cifar/train_rl.py (--alpha)
OFFICIAL_THRESHOLD = 0.5  # the official gates execute a block when p(execute) > 0.5 at test time
FIXED_RULE = "fixed_0.5"  # the deployment that applies it


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
        with torch.no_grad():  # ConvNet-AIG's bias init (0.1, 2): lean towards "execute"
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
        widths: Sequence[int] | None = None,
        gate: str = "I",
        gate_training: str = "sp_hrl",
        target_rate: float = 0.7,
        rate_weight: float = 1.0,
        hrl_alpha: float = OFFICIAL_ALPHA,
        rl_weight: float = 0.01,
        default_threshold: float = 0.5,
        calib_tolerance: float = 0.5,
    ):
        super().__init__()
        widths = stage_plan_widths(widths, blocks, max_channels)
        if not 0.0 <= target_rate <= 1.0:
            raise ValueError(f"target_rate is the wanted fraction of executed blocks, in [0, 1]; got {target_rate}")
        if gate_training not in ("gumbel", "sp_hrl"):
            raise ValueError(
                "gate_training must be 'gumbel' (straight-through Gumbel + target rate) or 'sp_hrl' (the paper's SP "
                f"then hybrid RL), got {gate_training!r}"
            )
        self.gate_training = gate_training
        # the phases the trainer sets (puppet.core.protocols.TrainsInPhases); "sp" until told otherwise
        self.phase_names: tuple[str, ...] = ("sp", "hrl") if gate_training == "sp_hrl" else ()
        self.phase = "sp"
        self.hrl_alpha, self.rl_weight = float(hrl_alpha), float(rl_weight)
        check_tolerance(calib_tolerance)
        specs = [spec for stage in block_plan(widths, blocks) for spec in stage]
        self.stem = stem(in_channels, widths[0])
        self.blocks = nn.ModuleList(ResidualBlock(*spec) for spec in specs)
        # gate i looks at block i's output and decides block i+1; none after the last block (it would be unused)
        self.gates = nn.ModuleList(FFGate(specs[i][1], gate) for i in range(len(specs) - 1))
        self.fc = nn.Linear(widths[-1], num_classes)
        self.target_rate, self.rate_weight = float(target_rate), float(rate_weight)
        self.calib_tolerance = float(calib_tolerance)
        self.register_buffer("gate_threshold", torch.tensor(float(default_threshold)))
        self.last_stats: dict[str, torch.Tensor] = {}
        self._force_run: torch.Tensor | None = None  # (blocks,) bool: path_costs' forced decisions
        torchvision_init(self)  # as every ResNet trunk here; the official SkipNet init is the same rule
        for g in self.gates:  # then ConvNet-AIG's gate bias (0.1, 2), leaning towards "execute" (docs: how much)
            with torch.no_grad():
                g.logits.bias.copy_(torch.tensor([0.1, 2.0]))

    def set_phase(self, name: str) -> None:
        if name not in self.phase_names:
            raise ValueError(f"SkipNet ({self.gate_training}) has no training phase {name!r}; its: {self.phase_names}")
        self.phase = name

    def _mode(self) -> str:
        return "gumbel" if self.gate_training == "gumbel" else self.phase

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
        sp_hrl: CE alone in phase "sp", then CE + REINFORCE in phase "hrl" with per-gate reward
        (hrl_alpha / N_gates) * (1 - a_l), terminal reward -CE, gamma = 1, scaled by rl_weight.

        The REINFORCE term is summed over the batch's samples while the CE is their mean: the
        official ``action.reinforce(rl_weight * R)`` on ``multinomial()`` samples passes each
        sample's reward to its log-probability's gradient unnormalised, beside ``CrossEntropyLoss``'s
        batch mean (``cifar/train_rl.py``)."""
        mode = self._mode()
        logits, gates, log_probs = self._train_forward(x, mode)
        ce = F.cross_entropy(logits, y, reduction="none")  # (B,)
        loss = ce.mean()
        if gates and mode == "gumbel":
            loss = loss + self.rate_weight * sum((g.mean() - self.target_rate) ** 2 for g in gates)
        if log_probs:
            skip_reward = torch.stack([(self.hrl_alpha / len(gates)) * (1 - g) for g in gates], 1)  # (B, N)
            # return of gate l: its own and later skip rewards plus the terminal -CE (gamma = 1)
            returns = skip_reward.flip(1).cumsum(1).flip(1) - ce.detach()[:, None]  # (B, N)
            loss = loss - self.rl_weight * (torch.stack(log_probs, 1) * returns).sum()
        return loss, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self._train_forward(x, self._mode())[0]
        b = x.shape[0]
        run_mask = torch.ones(b, len(self.blocks), dtype=torch.bool, device=x.device)
        h = self.blocks[0](self.stem(x))  # the first block always runs
        for i, (block, gate) in enumerate(zip(self.blocks[1:], self.gates), start=1):
            run = F.softmax(gate(h), 1)[:, 1] > self.gate_threshold  # (B,)
            if self._force_run is not None:
                run = self._force_run[i].expand(b)
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
    def path_costs(self, x1: torch.Tensor) -> torch.Tensor:
        """Prices of the paths, by ptflops on forced decisions: [MACs with every gated block skipped,
        then the extra MACs of running block i instead of its shortcut, for i = 1..N-1] (every gate
        runs on every path; a block's cost does not depend on the path before it)."""
        from puppet.core.measure import count_macs

        was_training = self.training
        self.eval()
        n = len(self.blocks)
        try:
            self._force_run = torch.zeros(n, dtype=torch.bool, device=x1.device)
            self._force_run[0] = True
            base = count_macs(self, x1[:1])
            extra = []
            for i in range(1, n):
                self._force_run[i] = True
                extra.append(count_macs(self, x1[:1]) - base)
                self._force_run[i] = False
        finally:
            self._force_run = None
            self.train(was_training)
        return torch.tensor([base, *extra], dtype=torch.float64)

    def force_path(self, which: str | None) -> None:
        """Cost-only runs (``RoutesPerInput``): ``"cheapest"`` skips every gated block (the first block
        always runs), ``"dearest"`` runs them all, ``None`` lets the gates decide again."""
        check_path(which)
        if which is None:
            self._force_run = None
            return
        device = self.gate_threshold.device
        self._force_run = torch.full((len(self.blocks),), which == "dearest", dtype=torch.bool, device=device)
        self._force_run[0] = True

    @staticmethod
    def sample_macs(stats: dict[str, torch.Tensor], prices: torch.Tensor) -> torch.Tensor:
        """(B,) MACs of each sample's path from ``last_stats['blocks_run']`` and ``path_costs``."""
        ran = stats["blocks_run"][:, 1:].to(torch.float64).cpu()  # (B, N-1)
        return prices[0] + ran @ prices[1:]

    def deployments(self, context: DeployContext) -> dict[str, str]:
        """``default``: the threshold calibrated on validation data; ``fixed_0.5``: SkipNet's own rule."""
        return {
            DEFAULT_DEPLOYMENT: "threshold calibrated on validation",
            FIXED_RULE: f"SkipNet's rule: a block runs when p(execute) > {OFFICIAL_THRESHOLD:g}",
        }

    def deploy(self, name: str, context: DeployContext) -> "SkipNet":
        """A copy of the trained model whose gates use SkipNet's fixed threshold (``fixed_0.5``)."""
        if name != FIXED_RULE:
            raise ValueError(f"unknown deployment {name!r}: SkipNet deploys {[FIXED_RULE]}")
        fixed = copy.deepcopy(self).eval()
        fixed.gate_threshold.fill_(OFFICIAL_THRESHOLD)
        return fixed

    @torch.no_grad()
    def calibrate(self, batches: Iterable) -> dict:
        """Choose the gate threshold on p(execute) on the validation split: among 0.1, 0.2, ..., 0.9,
        the one with the fewest mean MACs (ptflops, per sample path) whose validation top-1 is within
        ``calib_tolerance`` pp of the best candidate's."""
        return calibrate_global_threshold(self, self.gate_threshold, batches, self.calib_tolerance)


def skipnet_params(num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, **kw) -> int:
    cfg = {**SKIP_DEFAULTS, **{k: v for k, v in kw.items() if k in SKIP_DEFAULTS}}
    n, outs = resnet_trunk_params(in_channels, stage_widths(max_channels, cfg["widths"]), cfg["blocks"])
    for c in outs[:-1]:  # one gate after every block but the last
        convs = 2 if cfg["gate"] == "I" else 1
        n += convs * (conv_params(3, c, c) + bn_params(c)) + conv_params(1, c, 2, bias=True)
    return n + fc_params(outs[-1], num_classes)


@torch.no_grad()
def _spread_paths(model: SkipNet, x: torch.Tensor) -> None:
    """Spread the first gate's p(execute) on ``x`` and set the threshold at its median (tests)."""
    model.eval()
    h = model.blocks[0](model.stem(x))
    spread_gate(model.gates[0].logits, lambda: model.gates[0](h), model.gate_threshold)


@register_model(
    "skipnet",
    family="adaptive_depth",
    paper_name="SkipNet",
    param_formula=skipnet_params,
    spread_paths=_spread_paths,
    configuration="size-matched",
    revision=1,  # 1: REINFORCE summed over the batch (official strength), skip reward 0.1 (official default)
)
def skipnet(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> SkipNet:
    """SkipNet, size-matched: ResNet-18 widths, (2,3,1,2) blocks, FFGate-I, trained SP then HRL."""
    return SkipNet(num_classes, in_channels, max_channels, **kwargs)


register_variant(
    "skipnet_gumbel",
    "skipnet",
    kwargs={"gate_training": "gumbel"},
    configuration="size-matched",
    description="SkipNet, size-matched, trained ConvNet-AIG-style (straight-through Gumbel gates, target rate 0.7).",
)
for _rate in (30, 50):  # the Gumbel-trained model's trade-off curve: target rates 0.3 and 0.5 (0.7 is the default)
    register_variant(
        f"skipnet_gumbel_rate{_rate}",
        "skipnet",
        kwargs={"gate_training": "gumbel", "target_rate": _rate / 100},
        configuration="size-matched",
        description=f"SkipNet, size-matched, ConvNet-AIG-style training at target rate {_rate / 100:g} (its curve).",
    )
for _depth, _gate in ((38, "I"), (74, "I"), (110, "II")):  # the paper's CIFAR configurations
    register_variant(
        f"skipnet{_depth}",
        "skipnet",
        kwargs={"widths": CIFAR_WIDTHS, "blocks": cifar_resnet_blocks(_depth), "gate": f"{_gate}"},
        fixed_width=True,
        description=(
            f"SkipNet-{_depth} as published: CIFAR ResNet-{_depth} (16-32-64), FFGate-{_gate}, SP then HRL at the "
            f"official skip reward alpha = {OFFICIAL_ALPHA:g}."
        ),
    )
for _alpha, _tag in ((0.01, "1e-2"), (0.001, "1e-3")):  # the paper's other skip rewards (0.1 is the official default)
    register_variant(
        f"skipnet38_alpha{_tag}",
        "skipnet",
        kwargs={"widths": CIFAR_WIDTHS, "blocks": cifar_resnet_blocks(38), "gate": "I", "hrl_alpha": _alpha},
        fixed_width=True,
        description=f"SkipNet-38 as published with skip reward alpha = {_alpha} (the trade-off curve).",
    )
