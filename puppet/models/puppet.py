"""Puppet-CNN (Xing & Wang, arXiv 2411.12876): a CNN whose kernels and depth come from an ODE.

Read ``PuppetCNN.forward`` top to bottom:

1. complexity   H(x) = 1/2 E(pixels) + 1/2 E(Fourier map)              (eqs. 8-9, complexity.py)
2. step, depth  h = H normalised with training-set statistics to [0, 1];
                dl = dl_max - (dl_max - dl_min) h; layers per stage L = round(T / dl)   (eq. 10, our default)
                P0 = p0_scale * (h - 1/2) * ones(C, C, 3, 3) + template                           (eq. 11)
3. Euler steps  P <- P + dl * G(P), one step per puppet conv                            (eqs. 7, 12)
4. kernels      each conv's kernel = P average-pooled to (C_out, C_in, 3, 3), standardised per output channel
5. convs        conv -> BN -> ReLU, max-pool between channel stages, GAP -> FC head   (eq. 13, plan.run_plan)

Kernel trajectories are generated once per distinct complexity level in the batch. Samples
are sorted by (depth, level): each depth group runs only the layers it uses, and within a
group each level's samples are a contiguous slice convolved densely with that level's
kernels (no kernel is gathered per sample; plan.run_by_depth). In training the Euler chain is
checkpointed (each step is recomputed in backward), which keeps 512-channel training within a
24 GB card. BatchNorm affine parameters are shared by all depths; running statistics are kept per depth.

Only the puppeteer G, the puppet's BatchNorms and the head are trainable; no puppet conv
owns a weight. Every choice the paper leaves open is a ``PuppetConfig`` field (builder
kwarg, hence ``model_kwargs`` in config) and is listed on the docs' Puppet-CNN page.

Files: ``plan.py`` the layer plans and their one interpreter; this file the model;
``deploy.py`` the precomputed deployment (``deploy("precomputed", context)``);
``variants.py`` the registered models (puppet_cnn, puppet_alexnet, ...) and their parameter formulas.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from puppet.core.protocols import DEFAULT_DEPLOYMENT, DeployContext
from puppet.layers import batched_conv2d, per_sample_conv2d_loop
from puppet.models.complexity import DEFAULT_BINS, image_complexity
from puppet.models.deploy import PrecomputedPuppet
from puppet.models.plan import ConvSpec, Op, conv_per_level, plan_convs, rank_by_depth, run_by_depth, run_plan
from puppet.models.puppeteer import KERNEL, Puppeteer, pool_kernel, step_macs

MAX_ENTROPY_BITS = math.log2(DEFAULT_BINS)  # H of a 256-bin histogram lies in [0, 8] bits

# --------------------------------------------------------------------------- configuration

CONV_IMPLS = ("level", "grouped", "loop")


@dataclass(frozen=True)
class PuppetConfig:
    """Every choice the paper does not pin down (docs: the Puppet-CNN page). Unknown keys raise TypeError."""

    dl_min: float = 1 / 8  # Euler step of the most complex inputs  (our default; the paper gives none)
    dl_max: float = 1 / 2  # Euler step of the simplest inputs
    stage_horizon: float = 1.0  # ODE time T integrated per channel stage: L = round(T / dl)
    fixed_depth: int = 4  # layers per stage when depth is not adaptive
    dl_static: float = 1 / 4  # the step of the "static" (Puppeteer-Puppet scheme) variants
    p0_scale: float = 0.2  # P0 fill value v(h) = p0_scale * (h - 1/2)                  (eq. 11)
    p0_static: float = 0.0  # the fill value of the static variants (v at h = 1/2)
    template_std: float = 1.0  # fixed random template added to P0 (breaks the C_out symmetry)
    template_seed: int = 0
    complexity_levels: int = 16  # quantise h to this many levels (0: continuous)
    complexity_quantile: float = 0.01  # h = 0 / 1 at these training-set quantiles of H
    bins: int = DEFAULT_BINS
    standardise_kernels: bool = True  # zero mean, He-scaled std per output channel after pooling
    puppeteer_norm: str = "trajectory"  # or "batch" (see Puppeteer)
    conv_impl: str = "level"  # "level" (a dense conv per level), "grouped" (one grouped conv), "loop" (reference)
    checkpoint_generation: bool = True  # training: recompute each Euler step in backward (memory)

    def __post_init__(self) -> None:
        if not 0 < self.dl_min <= self.dl_max:
            raise ValueError(f"need 0 < dl_min <= dl_max, got {self.dl_min}, {self.dl_max}")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")
        if self.fixed_depth < 1:
            raise ValueError("fixed_depth must be >= 1")

    def depth_for_step(self, dl: float) -> int:
        """Layers per stage for step ``dl``: round(T / dl), halves rounded up, at least 1."""
        return max(1, math.floor(self.stage_horizon / dl + 0.5))

    @property
    def max_depth(self) -> int:
        return self.depth_for_step(self.dl_min)

    @property
    def min_depth(self) -> int:
        return self.depth_for_step(self.dl_max)


class DepthBatchNorm2d(nn.Module):
    """BatchNorm2d of one puppet conv slot: affine parameters shared by every depth, running
    statistics kept per depth (row ``i`` of the buffers belongs to ``depths[i]``).

    A slot is used by samples of several depths, and what reaches it differs with depth (the
    kernels come from trajectories of other lengths and steps, and a deeper sample has been
    through more layers). One running statistic updated by every depth group fitted none of
    them: at width 32, a depth's batch variance was 0.67x to 1.63x the running variance. With
    statistics per depth, evaluation normalises a depth-d sample as training did. The affine
    parameters stay shared, so the stored parameter count (Table 5, the registry's formula)
    does not change; buffers are not parameters.
    """

    def __init__(self, num_features: int, depths: tuple[int, ...], eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        self.depths, self.eps, self.momentum = tuple(depths), eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(len(depths), num_features))  # (depths, C)
        self.register_buffer("running_var", torch.ones(len(depths), num_features))  # (depths, C)
        self.register_buffer("num_batches_tracked", torch.zeros(len(depths), dtype=torch.long))

    def forward(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        row = self.depths.index(depth)
        momentum = self.momentum if self.momentum is not None else 0.0  # unused in eval
        if self.training:
            self.num_batches_tracked[row] += 1
            if self.momentum is None:  # cumulative average, as nn.BatchNorm2d (re-estimating statistics)
                momentum = 1.0 / float(self.num_batches_tracked[row])
        # rows are views: batch_norm updates this depth's running statistics in place
        return F.batch_norm(
            x, self.running_mean[row], self.running_var[row], self.weight, self.bias, self.training, momentum, self.eps
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before statistics were kept per depth hold one (C,) statistic
        # per slot: start every depth from it, so an older run still loads and resumes
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            old = state_dict.get(prefix + name)
            if old is not None and old.dim() == getattr(self, name).dim() - 1:
                state_dict[prefix + name] = old.expand_as(getattr(self, name)).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, depths={self.depths}, eps={self.eps}, momentum={self.momentum}"


# --------------------------------------------------------------------------- the model


class PuppetCNN(nn.Module):
    """Puppet F whose kernels are generated by the puppeteer ODE G from the input's complexity.

    ``plan_for_depth(L)`` gives the layer plan for L layers per stage (fixed-structure puppets
    ignore L); ``adapt_kernels``: P0 and dl follow the input (else constant: the
    "Puppeteer-Puppet scheme"); ``adapt_depth``: L follows dl (else ``fixed_depth``).
    """

    def __init__(
        self,
        plan_for_depth: Callable[[int], list[Op]],
        num_classes: int,
        c_max: int,
        config: PuppetConfig,
        *,
        adapt_kernels: bool,
        adapt_depth: bool,
    ):
        super().__init__()
        if adapt_depth and not adapt_kernels:
            raise ValueError("adaptive depth needs adaptive kernels (both follow the step dl)")
        self.cfg, self.c_max = config, c_max
        self.adapt_kernels, self.adapt_depth = adapt_kernels, adapt_depth
        self.plan_for_depth = functools.lru_cache(maxsize=None)(plan_for_depth)  # plans are built once per depth
        # BN slots: one BN per conv of the deepest plan, so a shallower sample uses the first
        # L slots of each stage; each slot keeps running statistics per depth (DepthBatchNorm2d).
        depths = tuple(range(config.min_depth, config.max_depth + 1)) if adapt_depth else (config.fixed_depth,)
        deepest = plan_for_depth(depths[-1])
        self.bns = nn.ModuleDict({c.slot: DepthBatchNorm2d(c.c_out, depths) for c in plan_convs(deepest)})
        c_last = plan_convs(deepest)[-1].c_out
        self.head = nn.Linear(c_last, num_classes)  # GAP -> FC (the paper does not describe its head)
        self.puppeteer = Puppeteer(c_max, config.puppeteer_norm)
        # Fixed random template (not trained; regenerated from template_seed): a constant-filled
        # P0 makes every C_out slice of the state identical forever (G treats slices alike), so all
        # output channels of every layer would be equal. A (C, C, 3, 3) parameter outside any leaf
        # module is also what torchinfo's "Total params" counts beside the puppeteer (Table 5).
        template = torch.empty(c_max, c_max, KERNEL, KERNEL)  # (C, C, 3, 3); on "meta" when sizing (table5.py)
        if template.device.type != "meta":  # drawn on the CPU so a seed gives the same template everywhere
            g = torch.Generator().manual_seed(config.template_seed)
            template = config.template_std * torch.randn(template.shape, generator=g, device="cpu").to(template.device)
        self.template = nn.Parameter(template, requires_grad=False)  # (C, C, 3, 3)
        # Normalisation statistics of H, fitted by prepare() on training data; saved in the checkpoint.
        self.register_buffer("complexity_range", torch.tensor([0.0, MAX_ENTROPY_BITS]))
        self.register_buffer("complexity_fitted", torch.tensor(False))
        self.last_stats: dict[str, torch.Tensor] = {}  # of the last forward, per sample (see forward)

    # ---------------------------------------------------------------- parameter counts

    def stored_param_count(self) -> int:
        """Puppeteer + puppet BNs + head: what one stores (the template is regenerated from its seed)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def total_param_count(self) -> int:
        """torchinfo's "Total params": every parameter, the fixed template included."""
        return sum(p.numel() for p in self.parameters())

    # ---------------------------------------------------------------- complexity -> step, depth, P0

    @torch.no_grad()
    def prepare(self, batches: Iterable[torch.Tensor]) -> None:
        """Fit H's normalisation on (normalised) training images: h = 0 / 1 at the q / 1-q quantiles."""
        values = torch.cat([image_complexity(x, self.cfg.bins).cpu() for x in batches])  # (N_train,)
        q = self.cfg.complexity_quantile
        lo, hi = torch.quantile(values.double(), torch.tensor([q, 1 - q], dtype=torch.double)).float()
        self.complexity_range.copy_(torch.stack([lo, torch.maximum(hi, lo + 1e-3)]))
        self.complexity_fitted.fill_(True)

    def normalised_complexity(self, complexity: torch.Tensor) -> torch.Tensor:
        """H (B,) in bits -> h (B,) in [0, 1], quantised to ``complexity_levels`` levels."""
        lo, hi = self.complexity_range
        h = ((complexity - lo) / (hi - lo)).clamp(0, 1)
        levels = self.cfg.complexity_levels
        return torch.round(h * (levels - 1)) / (levels - 1) if levels > 1 else h

    def step_and_fill(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Euler step dl and P0 fill value v for normalised complexities h (N,)."""
        cfg = self.cfg
        if not self.adapt_kernels:
            return torch.full_like(h, cfg.dl_static), torch.full_like(h, cfg.p0_static)
        dl = cfg.dl_max - (cfg.dl_max - cfg.dl_min) * h  # more complex -> smaller step -> more layers
        # centred and small: a large constant fill would dominate the pooled template and make
        # all output channels of the first layers nearly equal (docs: the Puppet-CNN page)
        return dl, cfg.p0_scale * (h - 0.5)

    def depth_per_stage(self, dl: torch.Tensor) -> torch.Tensor:
        """Layers per stage (B,) int64: round(T / dl) (eq. 10, our default), or the fixed depth."""
        if not self.adapt_depth:
            return torch.full(dl.shape, self.cfg.fixed_depth, dtype=torch.long, device=dl.device)
        depth = torch.floor(self.cfg.stage_horizon / dl + 0.5).long()
        # dl lies in [dl_min, dl_max]; the clamp only guards float32 rounding at the two ends
        return depth.clamp(self.cfg.min_depth, self.cfg.max_depth)

    # ---------------------------------------------------------------- Euler steps -> kernels

    def generate_kernels(
        self, fill: torch.Tensor, dl: torch.Tensor, depth: torch.Tensor
    ) -> dict[int, list[torch.Tensor]]:
        """Euler trajectories for N (fill value, step, layers per stage) triples (N,) each.

        Every trajectory starts at P0 = fill * ones + template and takes one Euler step per conv
        of its plan; after each step the state is average-pooled to that conv's kernel. All
        trajectories step together, deepest first, and drop out when their plan is done, so a
        batch costs max(steps) puppeteer calls, not the sum. Returns {depth d: [kernels of conv t:
        (N_d, c_out, c_in, k, k)]}, trajectories of depth d in their input order.
        """
        depths = sorted(set(depth.tolist()), reverse=True)
        members = [(depth == d).nonzero().squeeze(1) for d in depths]
        order = torch.cat(members)  # deepest first: the still-active trajectories are always a prefix
        convs = {d: plan_convs(self.plan_for_depth(d)) for d in depths}
        n = len(order)
        p = fill[order].view(n, 1, 1, 1, 1) + self.template  # (N, C, C, 3, 3), eq. (11)
        step = dl[order].view(n, 1, 1, 1, 1)
        # Training at 512 channels: each step's intermediates (a few copies of the 2.4 M-number
        # state per trajectory, plus the pooled copies) would be kept for backward over up to 32
        # steps and 16 levels. Checkpointed, a step keeps only its input state and recomputes the
        # rest in backward (a third more generation compute). Not with puppeteer_norm="batch",
        # whose running statistics would be updated twice by the recomputation.
        recompute = (
            self.cfg.checkpoint_generation
            and self.training
            and torch.is_grad_enabled()
            and self.cfg.puppeteer_norm == "trajectory"
        )
        kernels: dict[int, list[torch.Tensor]] = {d: [] for d in depths}
        for t in range(len(convs[depths[0]])):
            groups = [(d, len(m)) for d, m in zip(depths, members) if len(convs[d]) > t]  # still active
            active = sum(size for _, size in groups)
            specs = tuple((convs[d][t], size) for d, size in groups)
            if recompute:
                p, *ks = checkpoint(
                    self._euler_step, p[:active], step[:active], specs, use_reentrant=False, preserve_rng_state=False
                )
            else:
                p, *ks = self._euler_step(p[:active], step[:active], specs)
            for (d, _), k in zip(groups, ks):
                kernels[d].append(k)  # (N_d, c_out, c_in, k, k)
        return kernels

    def _euler_step(
        self, p: torch.Tensor, step: torch.Tensor, specs: tuple[tuple[ConvSpec, int], ...]
    ) -> tuple[torch.Tensor, ...]:
        """One Euler step of N states (N, C, C, 3, 3), then each group's kernel for this step.

        ``specs``: (conv, trajectories) per depth group, groups contiguous along N in that order.
        Returns (next state, kernel of group 0, kernel of group 1, ...).
        """
        p = p + step * self.puppeteer(p)  # eq. (7): P_l = P_{l-dl} + dl G(P_{l-dl})
        kernels, start = [], 0
        for conv, size in specs:
            kernel = pool_kernel(p[start : start + size], conv.c_out, conv.c_in, conv.kernel)
            kernels.append(self._standardise(kernel))  # (N_d, c_out, c_in, k, k)
            start += size
        return (p, *kernels)

    def _standardise(self, kernel: torch.Tensor) -> torch.Tensor:
        """Weight standardisation of generated kernels (N, c_out, c_in, k, k), per output channel.

        The state's scale grows along the trajectory (tanh updates add up), so the same BN slot
        would see kernels of very different scale from trajectories of different length and its
        running statistics would fit none of them: training went well and inference was at
        chance. Standardising also removes the constant-fill component shared by all output
        channels. BN follows every conv, so this changes nothing else.
        """
        if not self.cfg.standardise_kernels:
            return kernel
        mean = kernel.mean(dim=(2, 3, 4), keepdim=True)
        std = kernel.std(dim=(2, 3, 4), keepdim=True, unbiased=False)
        fan_in = kernel[0, 0].numel()  # c_in * k * k
        # He scale sqrt(2 / fan_in): activations keep their size even before BN has statistics
        return (kernel - mean) / (std + 1e-5) * math.sqrt(2.0 / fan_in)

    # ---------------------------------------------------------------- deployments (puppet.core.protocols.Deploys)

    def deployments(self, context: DeployContext | None = None) -> dict[str, str]:
        """The default forward, and precomputed kernels where complexity is quantised."""
        names = {DEFAULT_DEPLOYMENT: "kernels generated on the fly"}
        if not self.adapt_kernels or self.cfg.complexity_levels > 1:
            names["precomputed"] = "kernels precomputed per complexity level"
        return names

    def deploy(self, name: str, context: DeployContext | None = None) -> nn.Module:
        """``"precomputed"``: every level's kernels generated once (``deploy.PrecomputedPuppet``), a
        snapshot in eval mode. Training always generates on the fly (the gradient flows through it)."""
        if name == "precomputed":
            return PrecomputedPuppet(self).eval()
        built = [n for n in self.deployments(context) if n != DEFAULT_DEPLOYMENT]
        raise ValueError(
            f"unknown deployment {name!r}: this model deploys {built} ({DEFAULT_DEPLOYMENT!r} is its forward)"
        )

    @property
    def num_levels(self) -> int:
        """Distinct kernel sets the model can use: the complexity levels (1 for the static scheme)."""
        if not self.adapt_kernels:
            return 1
        if self.cfg.complexity_levels <= 1:
            raise ValueError(
                "precomputed inference needs quantised complexity (continuous h has no finite set of "
                "kernels): set model_kwargs complexity_levels to 2 or more (default 16)"
            )
        return self.cfg.complexity_levels

    # ---------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1. complexity H (no gradient), normalised and quantised to h in [0, 1]
        complexity, h = self.input_complexity(x)  # (B,) bits or None (static scheme), (B,)
        # 2. step dl, P0 fill value and layers per stage, once per distinct level in the batch
        levels, traj = torch.unique(h, return_inverse=True)  # (N,), (B,): sample -> its level
        dl, fill = self.step_and_fill(levels)  # (N,), (N,)
        depth = self.depth_per_stage(dl)  # (N,)
        # 3.-4. Euler steps -> pooled kernels, one trajectory per level
        kernels = self.generate_kernels(fill, dl, depth)  # {d: [(N_d, c_out, c_in, k, k)]}
        # 5. the puppet's convs, samples sorted by (depth, level); a depth group's kernels[d] are its levels
        run_group = functools.partial(self._run_group, kernels=kernels)
        logits = run_by_depth(x, traj, rank_by_depth(depth), depth.tolist(), run_group)  # (B, classes)
        self.last_stats = self._stats(traj, dl, depth, complexity, h)
        return logits

    def input_complexity(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """H(x) (B,) in bits and h (B,) in [0, 1], quantised; the static scheme: None and h = 1/2."""
        if not self.adapt_kernels:  # one input-independent trajectory
            return None, torch.full((x.shape[0],), 0.5, device=x.device)
        complexity = image_complexity(x, self.cfg.bins)  # (B,) bits
        return complexity, self.normalised_complexity(complexity)

    def _run_group(
        self, x: torch.Tensor, depth: int, levels: list[int], counts: list[int], kernels: dict[int, list[torch.Tensor]]
    ) -> torch.Tensor:
        """Puppet F on a group of equal depth, sorted by level, ``counts[i]`` samples using the
        i-th trajectory of ``kernels[depth]`` (every level of the batch has samples, so ``levels``
        are that depth's trajectories in order)."""
        slots = [c.slot for c in plan_convs(self.plan_for_depth(depth))]
        by_slot = dict(zip(slots, kernels[depth]))  # slot -> (N_d, c_out, c_in, k, k)
        traj = None  # each sample's level in the group, for the "grouped" and "loop" references
        if self.cfg.conv_impl != "level" and len(counts) > 1:
            traj = torch.repeat_interleave(
                torch.arange(len(counts), device=x.device), torch.tensor(counts, device=x.device)
            )

        def conv_bn(x: torch.Tensor, spec: ConvSpec, relu: bool) -> torch.Tensor:
            y = self._conv(x, spec, by_slot[spec.slot], counts, traj)
            y = self.bns[spec.slot](y, depth)
            return F.relu(y) if relu else y

        return run_plan(self.plan_for_depth(depth), x, conv_bn, self.head)

    def _conv(
        self, x: torch.Tensor, spec: ConvSpec, kernel: torch.Tensor, counts: list[int], traj: torch.Tensor | None
    ) -> torch.Tensor:
        """Generated conv on one depth group: kernel (N, c_out, c_in, k, k), one per level;
        counts: samples per level (contiguous slices of x); traj (B,): each sample's level."""
        if traj is None:  # conv_impl "level", or one level: a dense conv per level
            return conv_per_level(x, kernel, counts, spec)
        conv = batched_conv2d if self.cfg.conv_impl == "grouped" else per_sample_conv2d_loop
        return conv(x, kernel[traj], stride=spec.stride, padding=spec.kernel // 2)  # (B, c_out, H', W')

    def _stats(
        self,
        traj: torch.Tensor,
        dl: torch.Tensor,
        depth: torch.Tensor,
        complexity: torch.Tensor | None,
        h: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Per sample: generated conv layers run, the step, and the generation MACs actually spent,
        shared among the samples that use each trajectory."""
        n = len(dl)
        steps = torch.tensor([len(plan_convs(self.plan_for_depth(d))) for d in depth.tolist()], device=dl.device)
        per_level = steps.double() * step_macs(self.c_max)  # (N,)
        users = torch.bincount(traj, minlength=n).double()  # (N,)
        stats = {"depth": steps[traj], "step": dl[traj], "generation_macs": (per_level / users)[traj]}
        if complexity is not None:
            stats.update(complexity=complexity, complexity_normalised=h)
        return stats
