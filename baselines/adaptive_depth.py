"""Adaptive-depth baselines of Puppet-CNN's Table 1: BranchyNet, SkipNet and DRNN.

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
paper's Table 1 "Params Size" (the README, adaptive-depth section, lists the grid and the
sizes). Spec: shared/spec/baselines.md section 3.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from puppet.layers import scaled
from puppet.core.registry import register_model

PAPER_WIDTHS = (64, 128, 256, 512)  # CIFAR ResNet-18 stage widths at paper scale


# --------------------------------------------------------------------------- shared pieces


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block; ``shortcut`` is the identity or a 1x1 conv + BN projection."""

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


def stage_plan(widths: Sequence[int], blocks: Sequence[int]) -> list[list[tuple[int, int, int]]]:
    """(c_in, c_out, stride) of every block, per stage; stages after the first halve the resolution."""
    plan, c = [], widths[0]
    for s, (w, n) in enumerate(zip(widths, blocks)):
        plan.append([(c if j == 0 else w, w, 2 if (s > 0 and j == 0) else 1) for j in range(n)])
        c = w
    return plan


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits), per row; BranchyNet's exit criterion."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)  # (B,)


def hard_gumbel_gate(logits: torch.Tensor) -> torch.Tensor:
    """Straight-through Gumbel-softmax (tau = 1): a hard 0/1 "execute" decision per sample in the
    forward pass with the gradient of the soft sample (ConvNet-AIG, Veit & Belongie 2018)."""
    return F.gumbel_softmax(logits.float(), tau=1.0, hard=True)[:, 1].to(logits.dtype)  # (B,)


def _put_rows(out: torch.Tensor | None, batch: int, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out[rows] = values`` for a (batch, ...) result that is allocated at the first write, in the
    dtype the layers return: under autocast that is bf16 / fp16, and a float32 buffer would make
    ``index_copy_`` raise (it never casts; CPU autocast promotes only the out-of-place form)."""
    if out is None:
        out = values.new_empty(batch, *values.shape[1:])
    return out.index_copy_(0, rows, values.to(out.dtype))


def _materialise(batches: Iterable) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = [(x, y) for x, y in batches]
    if not data:
        raise ValueError("calibrate: the validation batches are empty; set data.val_size > 0")
    return data


def _check_tolerance(tolerance_pp: float) -> None:
    if not tolerance_pp >= 0:
        raise ValueError(f"calib_tolerance must be >= 0 percentage points, got {tolerance_pp}")


def _pick_threshold(rows: list[dict], tolerance_pp: float) -> dict:
    """The cheapest row whose accuracy is within ``tolerance_pp`` of the best row's; ties -> more accurate."""
    best = max(r["val_top1"] for r in rows)
    ok = [r for r in rows if r["val_top1"] >= best - tolerance_pp]
    return min(ok, key=lambda r: (r["cost"], -r["val_top1"]))


# --------------------------------------------------------------------------- BranchyNet


class ExitBranch(nn.Module):
    """Side exit of the B-ResNet (spec 3.1): conv3x3 stride 2 + BN + ReLU + GAP + FC."""

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
            raise ValueError(f"exit_after must name stages among 1, 2, 3 (stage 4 ends in the final exit), got {exit_after}")
        _check_tolerance(calib_tolerance)
        n_exits = len(exit_after) + 1
        self.exit_weights = tuple(float(w) for w in (exit_weights or [1.0] * n_exits))  # official code: all 1.0
        if len(self.exit_weights) != n_exits:
            raise ValueError(f"exit_weights needs {n_exits} values (early exits + final), got {len(self.exit_weights)}")
        self.calib_tolerance = float(calib_tolerance)
        self.num_classes = num_classes
        widths = [scaled(w, max_channels) for w in PAPER_WIDTHS]
        plan = stage_plan(widths, blocks)
        self.stem = stem(in_channels, widths[0])
        # trunk segments end where an exit sits: segment n = stages (exit_after[n-1], exit_after[n]]
        bounds = (0, *exit_after, 4)
        self.segments = nn.ModuleList(
            nn.Sequential(*[BasicBlock(*spec) for s in range(a, b) for spec in plan[s]]) for a, b in zip(bounds, bounds[1:])
        )
        bw = scaled(branch_width, max_channels)
        self.branches = nn.ModuleList(ExitBranch(widths[s - 1], bw, num_classes) for s in exit_after)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.register_buffer("thresholds", torch.full((len(exit_after),), float(default_threshold)))
        # conv layers on the path to each exit: stem + 2 per trunk block (+ the branch conv)
        trunk = [1 + 2 * sum(blocks[: s]) for s in exit_after]
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
                out = _put_rows(out, b, alive, self.fc(h.mean((2, 3))))
                break
            logits = self.branches[n](h)  # (B_alive, classes)
            leave = softmax_entropy(logits) < self.thresholds[n]  # (B_alive,)
            if leave.any():  # host sync: the decision drives control flow
                out = _put_rows(out, b, alive[leave], logits[leave])
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
        (spec 3.1: "largest MAC saving with at most a 0.5 pp drop"); ties go to higher accuracy.
        """
        was_training = self.training
        self.eval()
        data = _materialise(batches)
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


# --------------------------------------------------------------------------- SkipNet


class FFGate(nn.Module):
    """SkipNet's feed-forward gate (Wang et al., ECCV 2018): conv features -> GAP -> 1x1 conv to
    2 logits (skip, execute). ``kind="I"``: maxpool 2, conv3x3, conv3x3 stride 2; ``kind="II"``:
    one conv3x3 stride 2. Conv gates are seen by both MAC counters, unlike the RNN gate's LSTM."""

    def __init__(self, channels: int, kind: str = "I"):
        super().__init__()
        layers: list[nn.Module] = []
        if kind == "I":
            layers += [nn.MaxPool2d(2, ceil_mode=True), conv3x3(channels, channels), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
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
            raise ValueError(f"gate_training must be 'gumbel' (straight-through Gumbel + target rate) or 'sp_hrl' (the paper's SP then hybrid RL), got {gate_training!r}")
        self.gate_training, self.sp_steps = gate_training, int(sp_steps)
        self.hrl_alpha, self.rl_weight = float(hrl_alpha), float(rl_weight)
        _check_tolerance(calib_tolerance)
        widths = [scaled(w, max_channels) for w in PAPER_WIDTHS]
        specs = [spec for stage in stage_plan(widths, blocks) for spec in stage]
        self.stem = stem(in_channels, widths[0])
        self.blocks = nn.ModuleList(BasicBlock(*spec) for spec in specs)
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

    def _train_forward(self, x: torch.Tensor, mode: str = "gumbel") -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
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
        run = torch.stack([torch.ones_like(gates[0])] + gates, 1) if gates else torch.ones(x.shape[0], 1, device=x.device)
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
        return _calibrate_global_threshold(self, self.gate_threshold, batches, self.calib_tolerance)


def _calibrate_global_threshold(model: nn.Module, threshold: torch.Tensor, batches: Iterable, tolerance_pp: float) -> dict:
    was_training = model.training
    model.eval()
    data = _materialise(batches)
    rows = []
    for t in [round(0.1 * k, 2) for k in range(1, 10)]:
        threshold.fill_(t)
        correct = seen = depth = 0.0
        for x, y in data:
            correct += (model(x).argmax(1) == y).sum().item()
            depth += model.last_stats["depth"].float().sum().item()
            seen += len(y)
        rows.append({"threshold": t, "val_top1": 100.0 * correct / seen, "cost": depth / seen})
    chosen = _pick_threshold(rows, tolerance_pp)
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


# --------------------------------------------------------------------------- DRNN


class HaltGate(nn.Module):
    """GAP -> FC -> BN -> ReLU -> FC to 2 logits (stop, continue); our design (spec 3.3)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 2)
        with torch.no_grad():  # start mostly "continue", as the SkipNet gate
            self.fc2.bias.copy_(torch.tensor([0.1, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.bn(self.fc1(x.mean((2, 3))))))  # (B, 2)


def masked_batch_norm(x: torch.Tensor, active: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Gate-corrected LVBN (our reading of DRNN): in training, batch statistics and the running
    statistics come only from the samples still looping (``active``), so halted samples do not
    bias loop t's BN. In eval this is the plain BN with its running statistics.

    Mixed precision: as ``nn.BatchNorm2d`` under autocast, the statistics and the normalisation are
    computed in the running buffers' dtype (float32) and the result has ``x``'s dtype (bf16 / fp16):
    bf16 batch statistics are too coarse, and ``lerp_`` into a float32 buffer raises. In float32
    both casts are no-ops."""
    if not bn.training:
        return bn(x)
    xs = x.to(torch.promote_types(x.dtype, bn.running_mean.dtype))  # (B, C, H, W) in the statistics' dtype
    xa = xs[active]  # (B_active, C, H, W)
    n = xa.numel() // xa.shape[1]
    mean = xa.mean((0, 2, 3))  # (C,)
    var = xa.var((0, 2, 3), unbiased=False)  # (C,)
    with torch.no_grad():
        bn.num_batches_tracked += 1
        bn.running_mean.lerp_(mean.detach(), bn.momentum)
        bn.running_var.lerp_(var.detach() * n / max(n - 1, 1), bn.momentum)
    scale = bn.weight * torch.rsqrt(var + bn.eps)  # (C,)
    y = (xs - mean[None, :, None, None]) * scale[None, :, None, None] + bn.bias[None, :, None, None]
    return y.to(x.dtype)


class RecursiveStage(nn.Module):
    """A transition block, then one shared residual block looped up to ``loops`` times with BN
    parameters and statistics per loop index (LVBN); a gate after loop t decides loop t+1."""

    def __init__(self, c_in: int, c_out: int, stride: int, loops: int, gate_hidden: int):
        super().__init__()
        self.transition = BasicBlock(c_in, c_out, stride)
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
            r = masked_batch_norm(self.conv2(F.relu(masked_batch_norm(self.conv1(h), active, self.bn1[t]))), active, self.bn2[t])
        return F.relu(h + r)

    def forward_train(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """All loops computed; a(t) = prod_{s<=t} g(s) is the monotone "still looping" indicator."""
        h = self.loop(self.transition(h), 0)
        a = torch.ones(h.shape[0], device=h.device, dtype=h.dtype)
        rates, loops = [], torch.ones_like(a)
        for t in range(1, self.max_loops):
            a = a * hard_gumbel_gate(self.gates[t - 1](h))  # (B,), straight-through 0/1
            active = a.detach() > 0.5
            rates.append(a)
            if not active.any():  # nobody loops further: nothing to compute or normalise
                break
            m = a[:, None, None, None]
            h = m * self.loop(h, t, active) + (1 - m) * h
            loops = loops + active.to(loops.dtype)
        return h, loops, rates

    def forward_eval(self, h: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.loop(self.transition(h), 0)  # the first loop always runs
        b = h.shape[0]
        loops = torch.ones(b, dtype=torch.long, device=h.device)
        alive = torch.arange(b, device=h.device)  # batch positions of the samples still looping
        out: torch.Tensor | None = None  # full batch; holds the rows of halted samples
        for t in range(1, self.max_loops):
            go = F.softmax(self.gates[t - 1](h), 1)[:, 1] > threshold  # (B_alive,)
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
        _check_tolerance(calib_tolerance)
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
        for stage in self.stages:
            h, n = stage.forward_eval(h, self.halt_threshold)
            loops.append(n)
        self._record(torch.stack(loops, 1))
        return self.fc(h.mean((2, 3)))

    def _record(self, loops: torch.Tensor) -> None:
        total = loops.sum(1)  # (B,)
        # stem + per stage 2 transition convs + 2 per loop
        self.last_stats = {"loops": total, "depth": 1 + 2 * len(self.stages) + 2 * total, "loops_per_stage": loops}

    @torch.no_grad()
    def calibrate(self, batches: Iterable) -> dict:
        """Choose the halting threshold on p(continue) on the validation split, by the SkipNet rule."""
        return _calibrate_global_threshold(self, self.halt_threshold, batches, self.calib_tolerance)


# --------------------------------------------------------------------------- parameter formulas
# Written from the architecture description, layer by layer, without instantiating a module.


def _conv(k: int, c_in: int, c_out: int, bias: bool = False) -> int:
    return k * k * c_in * c_out + (c_out if bias else 0)


def _bn(c: int) -> int:
    return 2 * c  # weight + bias (running statistics are buffers)


def _fc(c_in: int, c_out: int, bias: bool = True) -> int:
    return c_in * c_out + (c_out if bias else 0)


def _block(c_in: int, c_out: int, stride: int) -> int:
    n = _conv(3, c_in, c_out) + _bn(c_out) + _conv(3, c_out, c_out) + _bn(c_out)
    if stride != 1 or c_in != c_out:
        n += _conv(1, c_in, c_out) + _bn(c_out)
    return n


def _widths(max_channels: int) -> list[int]:
    return [scaled(w, max_channels) for w in PAPER_WIDTHS]


def _resnet_trunk(in_channels: int, widths: list[int], blocks: Sequence[int]) -> tuple[int, list[int]]:
    """Stem + blocks; also the output width of every block in order."""
    n, c, outs = _conv(3, in_channels, widths[0]) + _bn(widths[0]), widths[0], []
    for s, (w, nb) in enumerate(zip(widths, blocks)):
        for j in range(nb):
            n += _block(c, w, 2 if (s > 0 and j == 0) else 1)
            c = w
            outs.append(w)
    return n, outs


_BRANCHY_DEFAULTS = dict(blocks=(1, 3, 2, 1), exit_after=(1, 2), branch_width=128)
_SKIP_DEFAULTS = dict(blocks=(2, 3, 1, 2), gate="I")
_DRNN_DEFAULTS = dict(loops=4, gate_reduction=4)


def branchynet_params(num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, **kw) -> int:
    cfg = {**_BRANCHY_DEFAULTS, **{k: v for k, v in kw.items() if k in _BRANCHY_DEFAULTS}}
    widths = _widths(max_channels)
    n, _ = _resnet_trunk(in_channels, widths, cfg["blocks"])
    b = scaled(cfg["branch_width"], max_channels)
    for s in sorted(set(cfg["exit_after"])):
        n += _conv(3, widths[s - 1], b) + _bn(b) + _fc(b, num_classes)
    return n + _fc(widths[-1], num_classes)


def skipnet_params(num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, **kw) -> int:
    cfg = {**_SKIP_DEFAULTS, **{k: v for k, v in kw.items() if k in _SKIP_DEFAULTS}}
    n, outs = _resnet_trunk(in_channels, _widths(max_channels), cfg["blocks"])
    for c in outs[:-1]:  # one gate after every block but the last
        convs = 2 if cfg["gate"] == "I" else 1
        n += convs * (_conv(3, c, c) + _bn(c)) + _conv(1, c, 2, bias=True)
    return n + _fc(outs[-1], num_classes)


def drnn_params(num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, **kw) -> int:
    cfg = {**_DRNN_DEFAULTS, **{k: v for k, v in kw.items() if k in _DRNN_DEFAULTS}}
    t, widths = cfg["loops"], _widths(max_channels)
    n, c = _conv(3, in_channels, widths[0]) + _bn(widths[0]), widths[0]
    for s, w in enumerate(widths):
        hidden = max(4, w // cfg["gate_reduction"])  # at least 4 units, as scaled() widths
        n += _block(c, w, 1 if s == 0 else 2)  # transition block
        n += 2 * _conv(3, w, w) + t * 2 * _bn(w)  # shared block, BN pair per loop
        n += (t - 1) * (_fc(w, hidden, bias=False) + 2 * hidden + _fc(hidden, 2))  # halting gates (BN1d: 2*hidden)
        c = w
    return n + _fc(widths[-1], num_classes)


# --------------------------------------------------------------------------- registry entries


@register_model("branchynet", family="adaptive_depth", paper_name="BranchyNet", param_formula=branchynet_params)
def branchynet(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs) -> BranchyNet:
    """BranchyNet: B-ResNet (1,3,2,1 blocks) with entropy early exits after stages 1 and 2."""
    return BranchyNet(num_classes, in_channels, max_channels, **kwargs)


@register_model("skipnet", family="adaptive_depth", paper_name="SkipNet", param_formula=skipnet_params)
def skipnet(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs) -> SkipNet:
    """SkipNet: ResNet (2,3,1,2 blocks) with FFGate-I skip gates, straight-through Gumbel training."""
    return SkipNet(num_classes, in_channels, max_channels, **kwargs)


@register_model("drnn", family="adaptive_depth", paper_name="DRNN", param_formula=drnn_params)
def drnn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs) -> DRNN:
    """DRNN (our reconstruction): per stage a shared residual block looped <= 4 times with LVBN and halting gates."""
    return DRNN(num_classes, in_channels, max_channels, **kwargs)
