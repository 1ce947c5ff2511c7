"""Puppet-CNN deployed with precomputed kernels: ``PuppetCNN.deploy("precomputed", context)``.

With quantised complexity a trained model only ever uses ``complexity_levels`` kernel sets, so
they can be generated once: ``PrecomputedPuppet`` does so at construction and inference is
complexity -> level -> plain convs with that level's stored kernels (``plan.run_plan``), with no
puppeteer call. The logits are the model's on-the-fly ones.

It is a snapshot: it copies what it uses (each level's kernels, each depth's BN rows, the head)
and holds no reference to the model's tensors, so training or reloading the model afterwards
leaves it as it was (deploy again to follow), and ``.to()`` moves its own copies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from puppet.models.complexity import image_complexity
from puppet.models.plan import Block, ConvSpec, Op, conv_per_level, plan_convs, rank_by_depth, run_by_depth, run_plan

if TYPE_CHECKING:
    from puppet.models.puppet import PuppetCNN


class _Kernels(nn.Module):
    """One level's stored kernels: a buffer (c_out, c_in, k, k) per conv slot."""

    def __init__(self, kernels: dict[str, torch.Tensor]):
        super().__init__()
        for slot, kernel in kernels.items():
            self.register_buffer(slot, kernel)


class _FrozenNorms(nn.Module):
    """The BNs of one depth in eval form: per conv slot, that depth's running statistics and
    the shared affine parameters, copied (``{slot}_mean``, ``_var``, ``_weight``, ``_bias`` buffers)."""

    def __init__(self, model: PuppetCNN, depth: int):
        super().__init__()
        self.eps: dict[str, float] = {}
        for spec in plan_convs(model.plan_for_depth(depth)):
            bn = model.bns[spec.slot]
            row = bn.depths.index(depth)
            for name, value in (
                ("mean", bn.running_mean[row]),
                ("var", bn.running_var[row]),
                ("weight", bn.weight),
                ("bias", bn.bias),
            ):
                self.register_buffer(f"{spec.slot}_{name}", value.detach().clone())  # (c_out,)
            self.eps[spec.slot] = bn.eps

    def rows(self, slot: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(running mean, running var, weight, bias) of ``slot``, each (c_out,)."""
        b = self._buffers
        return b[f"{slot}_mean"], b[f"{slot}_var"], b[f"{slot}_weight"], b[f"{slot}_bias"]

    def normalise(self, y: torch.Tensor, slot: str) -> torch.Tensor:
        return F.batch_norm(y, *self.rows(slot), False, 0.0, self.eps[slot])


class PrecomputedPuppet(nn.Module):
    """A trained ``PuppetCNN`` with every complexity level's kernels generated once (eval mode).

    Batch of one: its level's plan with stored kernels, no sort. Larger batches: samples sorted
    by (depth, level) as the model's forward does (``plan.run_by_depth``).
    ``last_stats``: each sample's depth and step, and generation MACs 0 (nothing is generated).
    """

    def __init__(self, model: PuppetCNN):
        super().__init__()
        n = model.num_levels  # refuses continuous complexity
        device = model.template.device
        with torch.no_grad():
            h = torch.arange(n, device=device) / max(n - 1, 1)  # (n,) as normalised_complexity's levels
            dl, fill = model.step_and_fill(h)  # (n,), (n,)
            depth = model.depth_per_stage(dl)  # (n,)
            was_training = model.training
            model.eval()
            try:
                generated = model.generate_kernels(fill, dl, depth)  # {d: [(n_d, c_out, c_in, k, k)]}
            finally:
                model.train(was_training)
        self.level_depth: list[int] = depth.tolist()  # layers per stage of each level
        self.plans: dict[int, list[Op]] = {d: model.plan_for_depth(d) for d in generated}
        # A batch of plain (block-free) plans runs level by level, each level's slice as its fixed
        # CNN would; residual plans by depth group. The grouping is kept because the head's matmul
        # rounds differently with its number of rows: the logits stay those of earlier runs, bit for bit.
        self.by_level = not any(isinstance(op, Block) for plan in self.plans.values() for op in plan)
        kernels, rank = [], dict.fromkeys(generated, 0)
        for d in self.level_depth:  # generate_kernels keeps the levels of one depth in input order
            slots = [c.slot for c in plan_convs(self.plans[d])]
            kernels.append(_Kernels({s: k[rank[d]].contiguous() for s, k in zip(slots, generated[d])}))
            rank[d] += 1
        self.kernels = nn.ModuleList(kernels)  # per level
        self.norms = nn.ModuleDict({str(d): _FrozenNorms(model, d) for d in generated})  # per depth
        source = model.head.weight
        self.head = nn.Linear(source.shape[1], source.shape[0], device=source.device, dtype=source.dtype)
        self.head.load_state_dict(model.head.state_dict())
        self.head.requires_grad_(False)
        # per level: generated conv layers run and the Euler step (last_stats); rank by (depth, level)
        self.register_buffer(
            "level_steps", torch.tensor([len(plan_convs(self.plans[d])) for d in self.level_depth], device=device)
        )
        self.register_buffer("level_dl", dl)
        self.register_buffer("level_rank", rank_by_depth(depth))
        self.adaptive, self.num_levels, self.bins = model.adapt_kernels, n, model.cfg.bins
        lo, hi = model.complexity_range
        self.complexity_range = (float(lo), float(hi - lo))  # float32 values: levels rounded as forward does
        self._stored, self._total = model.stored_param_count(), model.total_param_count()
        # H(x) of a batch; a benchmark may swap in a compiled version (bench/puppet_speed.py)
        self.complexity_fn: Callable[[torch.Tensor, int], torch.Tensor] = image_complexity
        self._levels: torch.Tensor | None = None  # of the last forward's samples, for last_stats
        self.eval()

    # ---------------------------------------------------------------- inference

    def level_index(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's complexity level (B,) int64 in [0, num_levels): the level whose kernels
        the model's forward would generate for it (normalised_complexity's float32 arithmetic)."""
        if not self.adaptive:
            return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        lo, span = self.complexity_range
        h = ((self.complexity_fn(x, self.bins) - lo) / span).clamp_(0, 1)  # (B,)
        return (h * (self.num_levels - 1)).round_().long()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = self.level_index(x)  # (B,)
        self._levels = level
        if x.shape[0] == 1:  # one image: its level's plain CNN
            j = int(level)
            return self._run_group(x, self.level_depth[j], [j], [1])
        return run_by_depth(x, level, self.level_rank, self.level_depth, self._run_group, self.by_level)

    def _run_group(self, x: torch.Tensor, depth: int, levels: list[int], counts: list[int]) -> torch.Tensor:
        """The plan of ``depth`` on a slice sorted by level, ``counts[i]`` samples of ``levels[i]``."""
        norm = self.norms[str(depth)]
        kernels = [self.kernels[j]._buffers for j in levels]

        def conv_bn(x: torch.Tensor, spec: ConvSpec, relu: bool) -> torch.Tensor:
            y = norm.normalise(conv_per_level(x, [k[spec.slot] for k in kernels], counts, spec), spec.slot)
            return F.relu(y) if relu else y

        return run_plan(self.plans[depth], x, conv_bn, self.head)

    @property
    def last_stats(self) -> dict[str, torch.Tensor]:
        """Per-sample statistics of the last forward, built when read (a batch-1 forward stays lean)."""
        q = self._levels
        if q is None:
            return {}
        return {
            "depth": self.level_steps[q],  # generated conv layers run per sample
            "step": self.level_dl[q],
            "generation_macs": torch.zeros(q.shape, dtype=torch.float64, device=q.device),
        }

    # ---------------------------------------------------------------- costs

    def stored_param_count(self) -> int:
        """The source model's: the kernels are generated from its stored parameters, not stored."""
        return self._stored

    def total_param_count(self) -> int:
        return self._total

    def deployment_metrics(self) -> dict[str, float]:
        """Memory the precomputed kernels take (every level's kernel of every conv)."""
        kernel_bytes = sum(k.numel() * k.element_size() for level in self.kernels for k in level.buffers())
        return {"kernels_mb": kernel_bytes / 1e6}

    # ---------------------------------------------------------------- the same-plan fixed CNN

    def fixed_cnn(self, level: int) -> FixedCNN:
        """The fixed CNN this deployment runs for complexity level ``level``: its realised plan with
        the level's kernels as ordinary ``nn.Conv2d`` weights, ``nn.BatchNorm2d`` at that depth's
        statistics and the same head, copied. In eval mode it gives this deployment's logits on
        images of that level."""
        depth = self.level_depth[level]
        kernels, norm = self.kernels[level], self.norms[str(depth)]
        convs, bns = {}, {}
        for spec in plan_convs(self.plans[depth]):
            kernel = getattr(kernels, spec.slot)
            kw = {"device": kernel.device, "dtype": kernel.dtype}
            conv = nn.Conv2d(spec.c_in, spec.c_out, spec.kernel, spec.stride, spec.kernel // 2, bias=False, **kw)
            bn = nn.BatchNorm2d(spec.c_out, eps=norm.eps[spec.slot], **kw)
            mean, var, weight, bias = norm.rows(spec.slot)
            with torch.no_grad():
                conv.weight.copy_(kernel)
                bn.running_mean.copy_(mean), bn.running_var.copy_(var), bn.weight.copy_(weight), bn.bias.copy_(bias)
            convs[spec.slot], bns[spec.slot] = conv, bn
        source = self.head.weight
        head = nn.Linear(source.shape[1], source.shape[0], device=source.device, dtype=source.dtype)
        head.load_state_dict(self.head.state_dict())
        return FixedCNN(self.plans[depth], convs, bns, head).eval()


class FixedCNN(nn.Module):
    """A realised plan as plain torch.nn layers: a stored ``nn.Conv2d`` and an ``nn.BatchNorm2d``
    per conv of the plan, pools and blocks as the plan says (``run_plan``), GAP -> ``nn.Linear``."""

    def __init__(self, plan: list[Op], convs: dict[str, nn.Conv2d], bns: dict[str, nn.BatchNorm2d], head: nn.Linear):
        super().__init__()
        self.plan = plan
        self.convs, self.bns, self.head = nn.ModuleDict(convs), nn.ModuleDict(bns), head

    def _conv_bn(self, x: torch.Tensor, spec: ConvSpec, relu: bool) -> torch.Tensor:
        y = self.bns[spec.slot](self.convs[spec.slot](x))
        return F.relu(y) if relu else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_plan(self.plan, x, self._conv_bn, self.head)
