"""DRNN (Guo et al., "Dynamic Recursive Neural Network", CVPR 2019): our reconstruction.

There is no public code and only the abstract was available (recursive shared blocks, a gate that
decides the loop count, "Loopy Variable BN"); everything below that level is ours. Per stage: one
transition block (stride, width change), then one residual block with shared conv weights looped
t = 1..T (``loops`` = 4): x_t = ReLU(x_{t-1} + F(x_{t-1})). Each loop index has its own BN
(LVBN), whose training statistics come only from the samples still looping
(``masked_batch_norm``). A halting gate after loops 1..T-1 (GAP -> FC -> BN -> ReLU -> FC to
stop / continue) stops a sample monotonically; its BatchNorm, too, sees only the samples still
looping in training (a halted sample never reaches it at test time). Training uses hard
straight-through Gumbel gates and a target-rate loss; at inference halted samples leave the batch
(a plain ``break`` at batch 1). ``calibrate`` chooses ``halt_threshold`` on p(continue) by the
adaptive-depth rule (``_resnet_parts.pick_threshold``: fewest mean MACs within ``calib_tolerance`` pp
of the best candidate).

Depth runs from 17 to 41 conv layers (stem + 4 x (2 + 2 x loops)); ``loops`` and
``gate_reduction`` were picked by the paper's Table 1 size.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines._resnet_parts import (
    PAPER_WIDTHS,
    ResidualBlock,
    block_params,
    bn_params,
    calibrate_global_threshold,
    check_tolerance,
    conv3x3,
    conv_params,
    fc_params,
    hard_gumbel_gate,
    spread_gate,
    stage_widths,
    stem,
)
from puppet.core.protocols import check_path
from puppet.core.registry import register_model
from puppet.layers import scaled, torchvision_init

DRNN_DEFAULTS = dict(loops=4, gate_reduction=4)


class HaltGate(nn.Module):
    """GAP -> FC -> BN -> ReLU -> FC to 2 logits (stop, continue); our design (the paper's gate is not published)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 2)
        with torch.no_grad():  # start mostly "continue", as the SkipNet gate
            self.fc2.bias.copy_(torch.tensor([0.1, 2.0]))

    def forward(self, x: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2) logits; in training, ``active`` (B,) bool names the samples still looping: the BN's
        statistics come from them alone (the halted ones get a decision nobody uses)."""
        z = self.fc1(x.mean((2, 3)))  # (B, hidden)
        z = self.bn(z) if active is None else masked_batch_norm(z, active, self.bn)
        return self.fc2(F.relu(z))


def masked_batch_norm(x: torch.Tensor, active: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """Gate-corrected LVBN (our reading of DRNN): in training, batch statistics and the running
    statistics come only from the samples still looping (``active``), so halted samples do not
    bias loop t's BN. In eval this is the plain BN with its running statistics.

    Mixed precision: as ``nn.BatchNorm2d`` under autocast, the statistics and the normalisation are
    computed in the running buffers' dtype (float32) and the result has ``x``'s dtype (bf16 / fp16):
    bf16 batch statistics are too coarse, and ``lerp_`` into a float32 buffer raises. In float32
    both casts are no-ops."""
    if not bn.training:
        return bn(x)
    xs = x.to(torch.promote_types(x.dtype, bn.running_mean.dtype))  # (B, C, ...) in the statistics' dtype
    xa = xs[active]  # (B_active, C, ...)
    dims = (0, *range(2, x.dim()))  # every dim but the channels: BatchNorm1d on (B, C) and BatchNorm2d alike
    n = xa.numel() // xa.shape[1]
    mean = xa.mean(dims)  # (C,)
    var = xa.var(dims, unbiased=False)  # (C,)
    if n > 1:  # one value per channel (a single active sample in BatchNorm1d) has no variance to track
        with torch.no_grad():
            bn.num_batches_tracked += 1
            # momentum None: a cumulative average, as nn.BatchNorm
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.lerp_(mean.detach(), factor)
            bn.running_var.lerp_(var.detach() * n / max(n - 1, 1), factor)
    shape = (1, -1) + (1,) * (x.dim() - 2)  # broadcast (C,) over (B, C, ...)
    scale = bn.weight * torch.rsqrt(var + bn.eps)  # (C,)
    y = (xs - mean.view(shape)) * scale.view(shape) + bn.bias.view(shape)
    return y.to(x.dtype)


class RecursiveStage(nn.Module):
    """A transition block, then one shared residual block looped up to ``loops`` times with BN
    parameters and statistics per loop index (LVBN); a gate after loop t decides loop t+1."""

    def __init__(self, c_in: int, c_out: int, stride: int, loops: int, gate_hidden: int):
        super().__init__()
        self.transition = ResidualBlock(c_in, c_out, stride)
        self.conv1, self.conv2 = conv3x3(c_out, c_out), conv3x3(c_out, c_out)  # shared across loops
        self.bn1 = nn.ModuleList(nn.BatchNorm2d(c_out) for _ in range(loops))
        self.bn2 = nn.ModuleList(nn.BatchNorm2d(c_out) for _ in range(loops))
        self.gates = nn.ModuleList(HaltGate(c_out, gate_hidden) for _ in range(loops - 1))

    @property
    def max_loops(self) -> int:
        return len(self.bn1)

    def loop(self, h: torch.Tensor, t: int, active: torch.Tensor | None = None) -> torch.Tensor:
        if active is None:
            r = self.bn2[t](self.conv2(F.relu(self.bn1[t](self.conv1(h)))))
        else:
            r = masked_batch_norm(
                self.conv2(F.relu(masked_batch_norm(self.conv1(h), active, self.bn1[t]))), active, self.bn2[t]
            )
        return F.relu(h + r)

    def forward_train(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """All loops computed; a(t) = prod_{s<=t} g(s) is the monotone "still looping" indicator."""
        h = self.loop(self.transition(h), 0)
        a = torch.ones(h.shape[0], device=h.device, dtype=h.dtype)
        rates, loops = [], torch.ones_like(a)
        for t in range(1, self.max_loops):
            a = a * hard_gumbel_gate(self.gates[t - 1](h, a.detach() > 0.5))  # (B,), straight-through 0/1
            active = a.detach() > 0.5
            rates.append(a)
            if not active.any():  # nobody loops further: nothing to compute or normalise
                break
            m = a[:, None, None, None]
            h = m * self.loop(h, t, active) + (1 - m) * h
            loops = loops + active.to(loops.dtype)
        return h, loops, rates

    def forward_eval(
        self, h: torch.Tensor, threshold: torch.Tensor, force: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional execution; ``force`` = k runs exactly k loops for every sample (path pricing)."""
        h = self.loop(self.transition(h), 0)  # the first loop always runs
        b = h.shape[0]
        loops = torch.ones(b, dtype=torch.long, device=h.device)
        alive = torch.arange(b, device=h.device)  # batch positions of the samples still looping
        out: torch.Tensor | None = None  # full batch; holds the rows of halted samples
        for t in range(1, self.max_loops):
            go = F.softmax(self.gates[t - 1](h), 1)[:, 1] > threshold  # (B_alive,)
            if force is not None:
                go = torch.full_like(go, t < force)
            if not go.any():  # host sync; at batch 1 the plain "if continue: loop again"
                break
            if not go.all():
                stop, keep = (~go).nonzero().squeeze(1), go.nonzero().squeeze(1)
                if out is None:  # first halt: h still holds the whole batch
                    out = h
                else:
                    out.index_copy_(0, alive[stop], h.index_select(0, stop))
                alive, h = alive[keep], h.index_select(0, keep)  # halted samples stop here
            h = self.loop(h, t)
            loops[alive] += 1
        if out is None:
            return h, loops
        out.index_copy_(0, alive, h)
        return out, loops


class DRNN(nn.Module):
    """Dynamic Recursive Neural Network (Guo et al., CVPR 2019), our reconstruction: per stage a
    transition block and one weight-shared residual block looped 1..``loops`` times, with a per-loop
    BN (LVBN, statistics over active samples only) and a halting gate after each loop."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        max_channels: int = 512,
        *,
        loops: int = 4,
        gate_reduction: int = 4,
        target_rate: float = 0.6,
        rate_weight: float = 1.0,
        default_threshold: float = 0.5,
        calib_tolerance: float = 0.5,
    ):
        super().__init__()
        if loops < 1 or gate_reduction < 1:
            raise ValueError(f"loops and gate_reduction must be >= 1, got {loops}, {gate_reduction}")
        if not 0.0 <= target_rate <= 1.0:
            raise ValueError(f"target_rate is the wanted fraction of optional loops run, in [0, 1]; got {target_rate}")
        check_tolerance(calib_tolerance)
        widths = [scaled(w, max_channels) for w in PAPER_WIDTHS]
        self.stem = stem(in_channels, widths[0])
        c_in = widths[0]
        stages = []
        for s, w in enumerate(widths):
            stages.append(RecursiveStage(c_in, w, 1 if s == 0 else 2, loops, max(4, w // gate_reduction)))
            c_in = w
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.target_rate, self.rate_weight = float(target_rate), float(rate_weight)
        self.calib_tolerance = float(calib_tolerance)
        self.register_buffer("halt_threshold", torch.tensor(float(default_threshold)))
        self.last_stats: dict[str, torch.Tensor] = {}
        self._force_loops: list[int] | None = None  # loops per stage: path_costs' forced decisions
        torchvision_init(self)
        for stage in self.stages:  # then the gates' bias (0.1, 2), as SkipNet's: start mostly "continue"
            for gate in stage.gates:
                with torch.no_grad():
                    gate.fc2.bias.copy_(torch.tensor([0.1, 2.0]))

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.stem(x)
        rates, loops = [], []
        for stage in self.stages:
            h, n, r = stage.forward_train(h)
            rates += r
            loops.append(n.detach())
        self._record(torch.stack(loops, 1).long())
        return self.fc(h.mean((2, 3))), rates

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CE + rate_weight * sum over optional loops (mean_b a_t - target_rate)^2 (our choice)."""
        logits, rates = self._train_forward(x)
        loss = F.cross_entropy(logits, y)
        if rates:
            loss = loss + self.rate_weight * sum((a.mean() - self.target_rate) ** 2 for a in rates)
        return loss, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self._train_forward(x)[0]
        h = self.stem(x)
        loops = []
        for s, stage in enumerate(self.stages):
            force = None if self._force_loops is None else self._force_loops[s]
            h, n = stage.forward_eval(h, self.halt_threshold, force)
            loops.append(n)
        self._record(torch.stack(loops, 1))
        return self.fc(h.mean((2, 3)))

    def _record(self, loops: torch.Tensor) -> None:
        total = loops.sum(1)  # (B,)
        # stem + per stage 2 transition convs + 2 per loop
        self.last_stats = {"loops": total, "depth": 1 + 2 * len(self.stages) + 2 * total, "loops_per_stage": loops}

    @torch.no_grad()
    def path_costs(self, x1: torch.Tensor) -> dict:
        """Prices of the paths, by ptflops on forced loop counts: ``base`` (one loop in every stage) and
        ``extra[s, k - 1]``, the extra MACs of k loops in stage s (its loops and the gates they consult:
        a sample that stops after k < T loops has asked k gates, one that runs all T loops T - 1)."""
        from puppet.core.measure import count_macs

        was_training = self.training
        self.eval()
        n_stages, t_max = len(self.stages), self.stages[0].max_loops
        try:
            self._force_loops = [1] * n_stages
            base = count_macs(self, x1[:1])
            extra = torch.zeros(n_stages, t_max, dtype=torch.float64)
            for s in range(n_stages):
                for k in range(2, t_max + 1):
                    self._force_loops = [k if j == s else 1 for j in range(n_stages)]
                    extra[s, k - 1] = count_macs(self, x1[:1]) - base
        finally:
            self._force_loops = None
            self.train(was_training)
        return {"base": float(base), "extra": extra}

    def force_path(self, which: str | None) -> None:
        """Cost-only runs (``RoutesPerInput``): ``"cheapest"`` halts after one loop in every stage,
        ``"dearest"`` runs every stage's ``max_loops``, ``None`` lets the gates decide again."""
        check_path(which)
        loops = {"cheapest": 1, "dearest": self.stages[0].max_loops}
        self._force_loops = None if which is None else [loops[which]] * len(self.stages)

    @staticmethod
    def sample_macs(stats: dict[str, torch.Tensor], prices: dict) -> torch.Tensor:
        """(B,) MACs of each sample's path from ``last_stats['loops_per_stage']`` and ``path_costs``."""
        loops = stats["loops_per_stage"].long().cpu()  # (B, stages)
        extra = prices["extra"]  # (stages, T)
        return prices["base"] + extra[torch.arange(extra.shape[0]), loops - 1].sum(1)

    @torch.no_grad()
    def calibrate(self, batches: Iterable) -> dict:
        """Choose the halting threshold on p(continue) on the validation split, by the adaptive-depth rule
        (fewest mean MACs within ``calib_tolerance`` pp of the best candidate)."""
        return calibrate_global_threshold(self, self.halt_threshold, batches, self.calib_tolerance)


def drnn_params(num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, **kw) -> int:
    cfg = {**DRNN_DEFAULTS, **{k: v for k, v in kw.items() if k in DRNN_DEFAULTS}}
    t, widths = cfg["loops"], stage_widths(max_channels)
    n, c = conv_params(3, in_channels, widths[0]) + bn_params(widths[0]), widths[0]
    for s, w in enumerate(widths):
        hidden = max(4, w // cfg["gate_reduction"])  # at least 4 units, as scaled() widths
        n += block_params(c, w, 1 if s == 0 else 2)  # transition block
        n += 2 * conv_params(3, w, w) + t * 2 * bn_params(w)  # shared block, BN pair per loop
        n += (t - 1) * (
            fc_params(w, hidden, bias=False) + 2 * hidden + fc_params(hidden, 2)
        )  # halting gates (BN1d: 2*hidden)
        c = w
    return n + fc_params(widths[-1], num_classes)


@torch.no_grad()
def _spread_paths(model: DRNN, x: torch.Tensor) -> None:
    """Spread the first halting gate's p(continue) on ``x`` and set the threshold at its median (tests)."""
    model.eval()
    stage = model.stages[0]
    h = stage.loop(stage.transition(model.stem(x)), 0)
    spread_gate(stage.gates[0].fc2, lambda: stage.gates[0](h), model.halt_threshold)


@register_model(
    "drnn",
    family="adaptive_depth",
    paper_name="DRNN",
    param_formula=drnn_params,
    spread_paths=_spread_paths,
    revision=1,  # 1: torchvision init, halting-gate BN on looping samples, the MAC-priced calibration rule
)
def drnn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs) -> DRNN:
    """DRNN (our reconstruction): per stage a shared residual block looped <= 4 times with LVBN and halting gates."""
    return DRNN(num_classes, in_channels, max_channels, **kwargs)
