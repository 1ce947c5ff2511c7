"""Puppet-CNN (Xing & Wang, arXiv 2411.12876): a CNN whose kernels and depth come from an ODE.

Read ``PuppetCNN.forward`` top to bottom:

1. complexity   H(x) = 1/2 E(pixels) + 1/2 E(Fourier map)              (eqs. 8-9, complexity.py)
2. step, depth  h = H normalised with training-set statistics to [0, 1];
                dl = dl_max - (dl_max - dl_min) h; layers per stage L = round(T / dl)   (eq. 10, our default)
                P0 = p0_scale * (h - 1/2) * ones(C, C, 3, 3) + template                           (eq. 11)
3. Euler steps  P <- P + dl * G(P), one step per puppet conv                            (eqs. 7, 12)
4. kernels      each conv's kernel = P average-pooled to (C_out, C_in, 3, 3), standardised per output channel
5. convs        conv -> BN -> ReLU, max-pool between channel stages, GAP -> FC head        (eq. 13)

Kernel trajectories are generated once per distinct complexity level in the batch. Samples
are sorted by (depth, level): each depth group runs only the layers it uses, and within a
group each level's samples are a contiguous slice convolved densely with that level's
kernels (no kernel is gathered per sample). In training the Euler chain is checkpointed
(each step is recomputed in backward), which keeps 512-channel training within a 24 GB card.
BatchNorm affine parameters are shared by all depths; running statistics are kept per depth.

Only the puppeteer G, the puppet's BatchNorms and the head are trainable; no puppet conv
owns a weight. Every choice the paper leaves open is a ``PuppetConfig`` field (builder
kwarg, hence ``model_kwargs`` in config) and is listed on the docs' Puppet-CNN page.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from puppet.core.registry import register_model
from puppet.layers import batched_conv2d, per_sample_conv2d_loop, scaled
from puppet.models.complexity import DEFAULT_BINS, image_complexity
from puppet.models.puppeteer import KERNEL, Puppeteer, pool_kernel, step_macs

MAX_ENTROPY_BITS = math.log2(DEFAULT_BINS)  # H of a 256-bin histogram lies in [0, 8] bits

# --------------------------------------------------------------------------- the puppet's layer plan


@dataclass(frozen=True)
class ConvSpec:
    """One generated conv (no bias: BN follows) + its own BN, named by ``slot``."""

    c_in: int
    c_out: int
    slot: str
    kernel: int = KERNEL
    stride: int = 1


@dataclass(frozen=True)
class Pool:
    """Max-pool (skipped once the map is smaller than the window, e.g. VGG on 28x28 inputs)."""

    kernel: int = 2
    stride: int = 2


@dataclass(frozen=True)
class GlobalPool:
    """Global average / max pooling to 1x1, before generated "FC" layers (1x1 convs)."""

    kind: str = "avg"


@dataclass(frozen=True)
class Block:
    """ResNet basic block: conv1 -> BN -> ReLU -> conv2 -> BN, + shortcut (1x1 conv + BN when shapes change), ReLU."""

    conv1: ConvSpec
    conv2: ConvSpec
    shortcut: ConvSpec | None = None


Op = Union[ConvSpec, Pool, GlobalPool, Block]


def plan_convs(plan: list[Op]) -> list[ConvSpec]:
    """The generated convs of a plan in Euler-step order (a block: conv1, conv2, shortcut)."""
    convs: list[ConvSpec] = []
    for op in plan:
        if isinstance(op, ConvSpec):
            convs.append(op)
        elif isinstance(op, Block):
            convs += [op.conv1, op.conv2] + ([op.shortcut] if op.shortcut else [])
    return convs


STAGE_WIDTHS = (64, 128, 256, 512)  # paper §3: "output channels 64, 128, 256, 512"


def stage_plan(in_channels: int, max_channels: int, layers_per_stage: int) -> list[Op]:
    """Puppet-CNN's puppet: four 3x3 stages of ``layers_per_stage`` convs, a max-pool at each channel change."""
    plan: list[Op] = []
    c_in = in_channels
    for s, width in enumerate(STAGE_WIDTHS):
        c_out = scaled(width, max_channels)
        if s > 0:
            plan.append(Pool())
        for j in range(layers_per_stage):
            plan.append(ConvSpec(c_in, c_out, f"s{s}_{j}"))
            c_in = c_out
    return plan


# The fixed CNNs' structures of baselines/fixed.py re-declared here (the puppet package never
# imports a baseline): same widths, pools and global pooling; the hidden FC layers of AlexNet and
# VGG (4096 capped at max_channels) become generated 1x1 convs on the pooled features; the last
# FC is the trainable head. Every generated conv is 3x3 (paper: "All the convolutions use 3x3
# kernels"), so AlexNet's 11x11 and 5x5 convs become 3x3 with the same channels; each generated
# conv is followed by BN (+ ReLU), as in the paper's puppet.
ALEXNET_CFG = (64, "P3", 192, "P3", 384, 256, 256, "P3", "GAP", "FC", "FC")  # P3: 3x3 stride-2 max-pool
FC_WIDTH = 4096  # AlexNet / VGG hidden FC width, capped at max_channels
RESNET_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (width, first stride)
RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # basic blocks per stage


def vgg_cfg(depth: int = 11) -> tuple:
    """torchvision's VGG cfg ("A", "B", "D", "E") with the 5th max-pool as a global max-pool, then two FCs."""
    from torchvision.models.vgg import cfgs  # a library table, not a baseline module

    letters = {11: "A", 13: "B", 16: "D", 19: "E"}
    if depth not in letters:
        raise ValueError(f"VGG depth must be one of {sorted(letters)}, got {depth}")
    return tuple(cfgs[letters[depth]][:-1]) + ("GMP", "FC", "FC")


def cfg_plan(cfg: tuple, in_channels: int, max_channels: int) -> list[Op]:
    plan: list[Op] = []
    c_in = in_channels
    tokens = {"M": Pool(), "P3": Pool(3, 2), "GAP": GlobalPool("avg"), "GMP": GlobalPool("max")}
    for i, item in enumerate(cfg):
        if item in tokens:
            plan.append(tokens[item])
            continue
        kernel = 1 if item == "FC" else KERNEL
        c_out = scaled(FC_WIDTH if item == "FC" else item, max_channels)
        plan.append(ConvSpec(c_in, c_out, f"{'fc' if item == 'FC' else 'c'}{i}", kernel=kernel))
        c_in = c_out
    return plan


def resnet_plan(in_channels: int, max_channels: int, depth: int = 18) -> list[Op]:
    """CIFAR ResNet-18/34: 3x3 stem (64), no max-pool, stages 64/128/256/512 of basic blocks."""
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_BLOCKS)}, got {depth}")
    stem = scaled(64, max_channels)
    plan: list[Op] = [ConvSpec(in_channels, stem, "stem")]
    c_in = stem
    for s, ((width, stride), blocks) in enumerate(zip(RESNET_STAGES, RESNET_BLOCKS[depth])):
        c_out = scaled(width, max_channels)
        for b in range(blocks):
            st = stride if b == 0 else 1
            shortcut = (
                ConvSpec(c_in, c_out, f"s{s}b{b}_sc", kernel=1, stride=st) if (st != 1 or c_in != c_out) else None
            )
            plan.append(
                Block(
                    ConvSpec(c_in, c_out, f"s{s}b{b}_c1", stride=st), ConvSpec(c_out, c_out, f"s{s}b{b}_c2"), shortcut
                )
            )
            c_in = c_out
    return plan


# --------------------------------------------------------------------------- configuration

CONV_IMPLS = ("level", "grouped", "loop")
INFERENCE_MODES = ("on_the_fly", "precomputed")


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


# ------------------------------------------------------------------ plain torch.nn parts of PuppetCNN.fixed_cnn


class _MaxPoolIfFits(nn.MaxPool2d):
    """Max-pool, skipped once the map is smaller than the window (as ``Pool`` in run_puppet)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if x.shape[-1] >= self.kernel_size else x


class _PlainBlock(nn.Module):
    """ResNet basic block from stored layers: ReLU(body(x) + shortcut(x))."""

    def __init__(self, body: nn.Module, shortcut: nn.Module):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class _GapFlatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))  # (B, C, H, W) -> (B, C)


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
        # Inference mode (a runtime switch, not config: one trained model is measured both ways)
        # and the precomputed kernels: per level, its layers per stage and one 4-D kernel per conv
        self.inference = "on_the_fly"
        self._deployed: list[tuple[int, list[tuple[torch.Tensor]]]] = []
        self._deployed_version: tuple = ()
        self._programs: list[list[tuple] | None] = []
        self._pending_levels: torch.Tensor | None = None  # precomputed forward: last_stats built on first read
        # H(x) of a batch; a benchmark may swap in a compiled version (bench/puppet_speed.py)
        self.complexity_fn: Callable[[torch.Tensor, int], torch.Tensor] = image_complexity
        self.last_stats: dict[str, torch.Tensor | float] = {}

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

    # ---------------------------------------------------------------- precomputed ("deployed") inference

    inference_modes = INFERENCE_MODES  # puppet.core.protocols.HasInferenceModes

    def set_inference(self, mode: str) -> "PuppetCNN":
        """``"on_the_fly"`` (kernels generated for every batch, as the paper describes) or
        ``"precomputed"``: in eval mode, every level's kernels are generated once
        (``precompute``) and inference is complexity -> level -> plain convs with stored kernels.
        Training always generates on the fly (the gradient flows through the generation)."""
        if mode not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {INFERENCE_MODES}, got {mode!r}")
        self.inference = mode
        return self

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

    def _generation_version(self) -> tuple:
        """Changes whenever what the precomputed state depends on does (the puppeteer, the
        template, the complexity range): an optimizer step or load_state_dict bumps a tensor's
        version counter, ``.to()`` gives it new storage (a model built under inference_mode has
        no version counters: its tensors are known by their storage)."""
        tensors = self.__dict__.get("_version_tensors")
        if tensors is None:  # load_state_dict and optimizers change these objects in place; _apply drops the list
            tensors = [*self.puppeteer.parameters(), *self.puppeteer.buffers(), self.template, self.complexity_range]
            self.__dict__["_version_tensors"] = tensors
        return tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors)

    @torch.no_grad()
    def precompute(self) -> None:
        """Generate the kernels of every complexity level once (inference, eval mode)."""
        n = self.num_levels
        h = torch.arange(n, device=self.template.device) / max(n - 1, 1)  # as normalised_complexity's levels
        dl, fill = self.step_and_fill(h)  # (n,), (n,)
        depth = self.depth_per_stage(dl)  # (n,)
        was_training = self.training
        self.eval()
        try:
            kernels = self.generate_kernels(fill, dl, depth)  # {d: [(n_d, c_out, c_in, k, k)]}
        finally:
            self.train(was_training)
        deployed = []
        rank = {d: 0 for d in kernels}
        for d in depth.tolist():  # generate_kernels keeps the levels of one depth in input order
            deployed.append((d, [(k[rank[d]].contiguous(),) for k in kernels[d]]))
            rank[d] += 1
        self._deployed = deployed
        self._programs = [self._program(d, [k for (k,) in ks]) for d, ks in deployed]
        self._deployed_version = self._generation_version()
        lo, hi = self.complexity_range
        self._range = (float(lo), float(hi - lo))  # float32 values, so level_index rounds as forward does
        # per level, on the device: generated conv layers run, and the step (for last_stats)
        self._level_steps = torch.tensor([len(ks) for _, ks in deployed], device=h.device)
        self._level_dl = dl
        # levels sorted by (depth, level), as forward groups samples
        self._level_rank = torch.empty(n, dtype=torch.long, device=h.device)
        self._level_rank[torch.argsort(depth * n + torch.arange(n, device=h.device))] = torch.arange(n, device=h.device)

    def _program(self, depth: int, kernels: list[torch.Tensor]) -> list[tuple] | None:
        """A level's plan as a flat list of functional steps with its stored kernels and its depth's
        BN rows bound (views: in-place updates of the buffers show through), so a precomputed
        batch-1 forward runs no plan walk and no module call. None for residual plans (run_puppet)."""
        program, it = [], iter(kernels)
        for op in self.plan_for_depth(depth):
            if isinstance(op, Pool):
                program.append(("pool", op.kernel, op.stride))
            elif isinstance(op, GlobalPool):
                program.append(("gap" if op.kind == "avg" else "gmp",))
            elif isinstance(op, ConvSpec):
                bn = self.bns[op.slot]
                row = bn.depths.index(depth)
                program.append(
                    (
                        "conv",
                        next(it),
                        op.stride,
                        op.kernel // 2,
                        bn.running_mean[row],
                        bn.running_var[row],
                        bn.weight,
                        bn.bias,
                        bn.eps,
                    )
                )
            else:
                return None
        return program

    def _run_program(self, x: torch.Tensor, program: list[tuple]) -> torch.Tensor:
        for step in program:
            kind = step[0]
            if kind == "conv":
                _, kernel, stride, pad, mean, var, weight, bias, eps = step
                x = F.relu(
                    F.batch_norm(F.conv2d(x, kernel, None, stride, pad), mean, var, weight, bias, False, 0.0, eps)
                )
            elif kind == "pool":
                x = F.max_pool2d(x, step[1], step[2]) if x.shape[-1] >= step[1] else x
            elif kind == "gap":
                x = x.mean(dim=(-2, -1), keepdim=True)
            else:
                x = x.amax(dim=(-2, -1), keepdim=True)
        return self.head(x.mean(dim=(-2, -1)))

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .half() give buffers new tensor objects: forget the precomputed state
        self.__dict__.pop("_version_tensors", None)
        self._deployed, self._programs, self._deployed_version = [], [], ()
        return super()._apply(fn, *args, **kwargs)

    def precomputed_kernel_bytes(self) -> int:
        """Memory the precomputed kernels take (every level's kernel of every conv)."""
        if self._deployed_version != self._generation_version():
            self.precompute()
        return sum(k.numel() * k.element_size() for _, ks in self._deployed for (k,) in ks)

    def level_index(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's complexity level (B,) int64 in [0, num_levels): the level whose kernels
        ``forward`` would generate for it (the same float32 arithmetic as normalised_complexity)."""
        if not self.adapt_kernels:
            return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if self._deployed_version != self._generation_version():
            self.precompute()
        return self._level_index(x)

    def _level_index(self, x: torch.Tensor) -> torch.Tensor:
        lo, span = self._range
        h = ((self.complexity_fn(x, self.cfg.bins) - lo) / span).clamp_(0, 1)  # (B,)
        return (h * (self.num_levels - 1)).round_().long()

    def _forward_precomputed(self, x: torch.Tensor) -> torch.Tensor:
        if self._deployed_version != self._generation_version():  # parameters changed: regenerate
            self.precompute()
        q = self._level_index(x) if self.adapt_kernels else torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if x.shape[0] == 1:  # one image: its level's plain CNN
            level = int(q)
            program = self._programs[level]
            if program is not None:
                logits = self._run_program(x, program)
            else:
                d, kernels = self._deployed[level]
                logits = self.run_puppet(x, d, kernels, [1])
        elif self._programs[0] is not None:  # samples sorted by level; each level's slice runs its program
            order = torch.argsort(q, stable=True)  # (B,)
            counts = torch.bincount(q, minlength=len(self._programs)).tolist()  # the one device -> host copy
            x_sorted, outputs, first = x[order], [], 0
            for level, count in enumerate(counts):
                if count:
                    outputs.append(self._run_program(x_sorted[first : first + count], self._programs[level]))
                    first += count
            logits = torch.cat(outputs)[torch.argsort(order)]
        else:  # residual plans: samples sorted by (depth, level); per depth group, a dense conv per level present
            n = len(self._deployed)
            order = torch.argsort(self._level_rank[q], stable=True)  # (B,)
            counts = torch.bincount(q, minlength=n).tolist()  # the one device -> host copy
            levels = sorted((j for j in range(n) if counts[j]), key=lambda j: (self._deployed[j][0], j))
            x_sorted, outputs, first = x[order], [], 0
            for d in sorted({self._deployed[j][0] for j in levels}):
                group = [j for j in levels if self._deployed[j][0] == d]
                size = sum(counts[j] for j in group)
                per_conv = [
                    tuple(self._deployed[j][1][t][0] for j in group) for t in range(len(self._deployed[group[0]][1]))
                ]
                outputs.append(self.run_puppet(x_sorted[first : first + size], d, per_conv, [counts[j] for j in group]))
                first += size
            logits = torch.cat(outputs)[torch.argsort(order)]
        self.last_stats = {}
        self._pending_levels = q  # the per-sample statistics cost kernels: built when read
        return logits

    @property
    def last_stats(self) -> dict:
        """Per-sample statistics of the last forward (depth, step, generation MACs, complexity)."""
        q = self.__dict__.get("_pending_levels")
        if q is not None:
            self.__dict__["_pending_levels"] = None
            self.__dict__["_last_stats"] = {
                "depth": self._level_steps[q],
                "step": self._level_dl[q],
                "generation_macs": torch.zeros(q.shape, dtype=torch.float64, device=q.device),
            }
        return self.__dict__["_last_stats"]

    @last_stats.setter
    def last_stats(self, value: dict) -> None:
        self.__dict__["_pending_levels"] = None
        self.__dict__["_last_stats"] = value

    def fixed_cnn(self, level: int) -> nn.Module:
        """The fixed CNN this model runs for complexity level ``level``: its realised plan with
        the level's precomputed kernels as ordinary stored conv weights, the same BNs (running
        statistics of that depth) and the same head. Built from torch.nn layers only; in eval
        mode it gives the precomputed model's logits on images of that level."""
        if self._deployed_version != self._generation_version():
            self.precompute()
        depth, kernels = self._deployed[level]
        it = iter(k for (k,) in kernels)

        def conv_bn(spec: ConvSpec) -> list[nn.Module]:
            kernel = next(it)
            conv = nn.Conv2d(spec.c_in, spec.c_out, spec.kernel, spec.stride, spec.kernel // 2, bias=False)
            conv.weight = nn.Parameter(kernel.clone())
            src, row = self.bns[spec.slot], self.bns[spec.slot].depths.index(depth)
            bn = nn.BatchNorm2d(spec.c_out, eps=src.eps).to(kernel.device)
            with torch.no_grad():
                bn.weight.copy_(src.weight), bn.bias.copy_(src.bias)
                bn.running_mean.copy_(src.running_mean[row]), bn.running_var.copy_(src.running_var[row])
            return [conv, bn]

        layers: list[nn.Module] = []
        for op in self.plan_for_depth(depth):
            if isinstance(op, Pool):
                layers.append(_MaxPoolIfFits(op.kernel, op.stride))
            elif isinstance(op, GlobalPool):
                layers.append(nn.AdaptiveAvgPool2d(1) if op.kind == "avg" else nn.AdaptiveMaxPool2d(1))
            elif isinstance(op, ConvSpec):
                layers += conv_bn(op) + [nn.ReLU()]
            else:
                body = nn.Sequential(*conv_bn(op.conv1), nn.ReLU(), *conv_bn(op.conv2))
                layers.append(_PlainBlock(body, nn.Sequential(*conv_bn(op.shortcut)) if op.shortcut else nn.Identity()))
        head = nn.Linear(self.head.in_features, self.head.out_features).to(self.head.weight.device)
        head.load_state_dict(self.head.state_dict())
        return nn.Sequential(*layers, _GapFlatten(), head).eval()

    # ---------------------------------------------------------------- the puppet's convs

    def _conv_bn(
        self,
        x: torch.Tensor,
        spec: ConvSpec,
        kernel: torch.Tensor,
        counts: list[int],
        traj: torch.Tensor | None,
        depth: int,
        relu: bool,
    ) -> torch.Tensor:
        """Generated conv -> BN (-> ReLU) on one depth group, its samples sorted by level.

        kernel: (N, c_out, c_in, k, k), one per level; counts: samples per level (contiguous
        slices of x); traj (B,): each sample's level, for the "grouped" and "loop" references.
        """
        pad = spec.kernel // 2
        if len(counts) == 1:  # the whole group shares one trajectory: a plain conv
            y = F.conv2d(x, kernel[0], stride=spec.stride, padding=pad)
        elif self.cfg.conv_impl == "level" or not isinstance(
            kernel, torch.Tensor
        ):  # a dense conv per level (precomputed: always)
            y = torch.cat([F.conv2d(xs, k, stride=spec.stride, padding=pad) for xs, k in zip(x.split(counts), kernel)])
        else:
            conv = batched_conv2d if self.cfg.conv_impl == "grouped" else per_sample_conv2d_loop
            y = conv(x, kernel[traj], stride=spec.stride, padding=pad)  # (B, c_out, H', W')
        y = self.bns[spec.slot](y, depth)
        return F.relu(y) if relu else y

    def run_puppet(self, x: torch.Tensor, depth: int, kernels: list[torch.Tensor], counts: list[int]) -> torch.Tensor:
        """Puppet F on a group of equal depth (eq. 13), samples sorted by level, ``counts[j]``
        of them using level j's kernels; kernels aligned with plan_convs(plan_for_depth(depth))."""
        traj = None
        if self.cfg.conv_impl != "level" and len(counts) > 1:
            traj = torch.repeat_interleave(
                torch.arange(len(counts), device=x.device), torch.tensor(counts, device=x.device)
            )
        it = iter(kernels)

        def conv_bn(x, spec, relu):
            return self._conv_bn(x, spec, next(it), counts, traj, depth, relu)

        for op in self.plan_for_depth(depth):
            if isinstance(op, Pool):
                x = F.max_pool2d(x, op.kernel, op.stride) if x.shape[-1] >= op.kernel else x
            elif isinstance(op, GlobalPool):
                x = x.mean(dim=(-2, -1), keepdim=True) if op.kind == "avg" else x.amax(dim=(-2, -1), keepdim=True)
            elif isinstance(op, ConvSpec):
                x = conv_bn(x, op, relu=True)
            else:
                out = conv_bn(conv_bn(x, op.conv1, relu=True), op.conv2, relu=False)
                short = conv_bn(x, op.shortcut, relu=False) if op.shortcut else x
                x = F.relu(out + short)
        return self.head(x.mean(dim=(-2, -1)))  # GAP -> FC, (B, classes)

    # ---------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inference == "precomputed" and not self.training:
            return self._forward_precomputed(x)
        b = x.shape[0]
        # 1. complexity H (no gradient), normalised and quantised to h in [0, 1]
        if self.adapt_kernels:
            complexity = image_complexity(x, self.cfg.bins)  # (B,) bits
            h = self.normalised_complexity(complexity)  # (B,)
        else:  # static scheme: one input-independent trajectory
            complexity, h = None, torch.full((b,), 0.5, device=x.device)
        # 2. step dl, P0 fill value and layers per stage, once per distinct level in the batch
        levels, traj = torch.unique(h, return_inverse=True)  # (N,), (B,): sample -> its level
        n = len(levels)
        dl, fill = self.step_and_fill(levels)  # (N,), (N,)
        depth = self.depth_per_stage(dl)  # (N,)
        # 3.-4. Euler steps -> pooled kernels, one trajectory per level
        kernels = self.generate_kernels(fill, dl, depth)  # {d: [(N_d, c_out, c_in, k, k)]}
        # 5. the puppet's convs. Sort the samples by (depth, level): each depth group is a slice
        # (nobody runs layers it does not use) and, inside it, so is each level (dense convs)
        level_order = torch.argsort(depth * n + torch.arange(n, device=x.device))  # (N,) levels by (depth, h)
        rank = torch.empty_like(level_order)
        rank[level_order] = torch.arange(n, device=x.device)
        order = torch.argsort(rank[traj], stable=True)  # (B,) samples by (depth, level)
        counts = torch.bincount(traj, minlength=n)[level_order].tolist()  # samples per level, sorted
        depth_sorted = depth[level_order].tolist()
        x_sorted = x[order] if n > 1 else x
        outputs, first = [], 0
        for d in sorted(kernels):  # ascending, as level_order
            group = [c for c, dd in zip(counts, depth_sorted) if dd == d]  # samples per level of depth d
            size = sum(group)
            outputs.append(self.run_puppet(x_sorted[first : first + size], d, kernels[d], group))
            first += size
        logits = torch.cat(outputs) if len(outputs) > 1 else outputs[0]  # (B, classes), sorted
        if n > 1:
            logits = logits[torch.argsort(order)]  # back to input order

        # generation MACs actually spent, shared among the samples that use each trajectory
        steps = torch.tensor([len(plan_convs(self.plan_for_depth(d))) for d in depth.tolist()], device=x.device)  # (N,)
        per_level = steps.double() * step_macs(self.c_max)  # (N,)
        users = torch.bincount(traj, minlength=n).double()  # (N,)
        self.last_stats = {
            "depth": steps[traj],  # generated conv layers run per sample
            "step": dl[traj],
            "generation_macs": (per_level / users)[traj],
        }
        if complexity is not None:
            self.last_stats.update(complexity=complexity, complexity_normalised=h)
        return logits


# --------------------------------------------------------------------------- registry


def _config(kwargs: dict) -> PuppetConfig:
    return PuppetConfig(**kwargs)  # unknown keys: TypeError, as the registry contract asks


def _stages(in_channels: int, max_channels: int) -> Callable[[int], list[Op]]:
    return lambda depth: stage_plan(in_channels, max_channels, depth)


def _fixed(plan: list[Op]) -> Callable[[int], list[Op]]:
    return lambda depth: plan


def _stage_formula(adapt_depth: bool) -> Callable[..., int]:
    def formula(num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, **kw) -> int:
        """C^2 + 15C (puppeteer) + 2 c_out per BN slot + head; slots per stage = round(T / dl_min) or fixed_depth."""
        c = max_channels
        dl_min, horizon = kw.get("dl_min", 1 / 8), kw.get("stage_horizon", 1.0)
        per_stage = math.floor(horizon / dl_min + 0.5) if adapt_depth else kw.get("fixed_depth", 4)
        widths = [max(4, min(round(w * c / 512), c)) for w in (64, 128, 256, 512)]
        bn = sum(2 * w * per_stage for w in widths)
        return (c * c + 15 * c) + bn + widths[-1] * num_classes + num_classes

    return formula


_ALEXNET_CONVS = (64, 192, 384, 256, 256)
_VGG_CONVS = {
    11: (64, 128, 256, 256, 512, 512, 512, 512),
    13: (64, 64, 128, 128, 256, 256, 512, 512, 512, 512),
    16: (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512),
    19: (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512),
}


def _cfg_formula(conv_widths: tuple[int, ...], c: int, num_classes: int) -> int:
    """Puppeteer + a BN per generated conv (the convs, then two hidden FCs of width min(4096 scaled, C)) + head."""
    widths = [max(4, min(round(w * c / 512), c)) for w in conv_widths] + [c, c]
    return (c * c + 15 * c) + sum(2 * w for w in widths) + widths[-1] * num_classes + num_classes


def _alexnet_formula(num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, **kw) -> int:
    return _cfg_formula(_ALEXNET_CONVS, max_channels, num_classes)


def _vgg_formula(
    num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, depth: int = 11, **kw
) -> int:
    return _cfg_formula(_VGG_CONVS[depth], max_channels, num_classes)


def _resnet_formula(
    num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, depth: int = 18, **kw
) -> int:
    """Stem + two convs per block + a 1x1 shortcut at each stage change, each with a BN; head from the last width."""
    c = max_channels
    w = [max(4, min(round(v * c / 512), c)) for v in (64, 128, 256, 512)]
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}[depth]
    bn = 2 * w[0]  # stem
    bn += 2 * (2 * blocks[0] * w[0])  # stage 1: no shortcut (64 -> 64, stride 1)
    for width, n in zip(w[1:], blocks[1:]):
        bn += 2 * (2 * n * width + width)  # two convs per block + one shortcut
    return (c * c + 15 * c) + bn + w[3] * num_classes + num_classes


def _build(
    plan_for_depth, num_classes: int, max_channels: int, kwargs: dict, adapt_kernels: bool, adapt_depth: bool
) -> PuppetCNN:
    return PuppetCNN(
        plan_for_depth, num_classes, max_channels, _config(kwargs), adapt_kernels=adapt_kernels, adapt_depth=adapt_depth
    )


# The puppeteer (the small neural ODE that generates the kernels) keeps the initialisation of the
# Puppet-CNN spec, not torchvision's ResNet rule; the puppet's kernels are generated, not conv weights.
_PUPPETEER_INIT = ("puppeteer", "puppeteer.*")


@register_model(
    "puppet_cnn",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name="Puppet-CNN",
    param_formula=_stage_formula(True),
)
def puppet_cnn(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> PuppetCNN:
    """Puppet-CNN: kernels and depth generated from the input's complexity by the puppeteer ODE."""
    return _build(_stages(in_channels, max_channels), num_classes, max_channels, kwargs, True, True)


@register_model(
    "puppet_cnn_param",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name="Puppet-CNN (parameter adaptation)",
    param_formula=_stage_formula(False),
)
def puppet_cnn_param(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> PuppetCNN:
    """Puppet-CNN with input-adaptive kernels and a fixed depth (fixed_depth layers per stage)."""
    return _build(_stages(in_channels, max_channels), num_classes, max_channels, kwargs, True, False)


@register_model(
    "puppet_cnn_static",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name="Puppet-CNN (Puppeteer-Puppet scheme)",
    param_formula=_stage_formula(False),
)
def puppet_cnn_static(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> PuppetCNN:
    """Puppeteer-Puppet scheme: kernels generated by the ODE from a constant P0 and step (no input adaptation)."""
    return _build(_stages(in_channels, max_channels), num_classes, max_channels, kwargs, False, False)


# Table 3: a fixed CNN's structure with puppeteer-generated 3x3 kernels, fixed depth.
# puppet_<name>: P0 and the step from the input ("parameter adaptation");
# puppet_<name>_static: a constant P0 and step ("Puppeteer-Puppet scheme").
_ADAPTIVE, _STATIC = "parameter adaptation", "Puppeteer-Puppet scheme"


@register_model(
    "puppet_alexnet",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name=f"Puppet-AlexNet ({_ADAPTIVE})",
    param_formula=_alexnet_formula,
)
def puppet_alexnet(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> PuppetCNN:
    """Puppet-AlexNet: the AlexNet structure with puppeteer-generated 3x3 kernels (parameter adaptation)."""
    plan = cfg_plan(ALEXNET_CFG, in_channels, max_channels)
    return _build(_fixed(plan), num_classes, max_channels, kwargs, True, False)


@register_model(
    "puppet_alexnet_static",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name=f"Puppet-AlexNet ({_STATIC})",
    param_formula=_alexnet_formula,
)
def puppet_alexnet_static(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> PuppetCNN:
    """Puppet-AlexNet: the AlexNet structure with puppeteer-generated 3x3 kernels (Puppeteer-Puppet scheme)."""
    plan = cfg_plan(ALEXNET_CFG, in_channels, max_channels)
    return _build(_fixed(plan), num_classes, max_channels, kwargs, False, False)


@register_model(
    "puppet_vgg",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name=f"Puppet-VGG ({_ADAPTIVE})",
    param_formula=_vgg_formula,
)
def puppet_vgg(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    depth: int = 11,
    **kwargs,
) -> PuppetCNN:
    """Puppet-VGG: the VGG structure with puppeteer-generated 3x3 kernels (parameter adaptation)."""
    plan = cfg_plan(vgg_cfg(depth), in_channels, max_channels)  # depth: the VGG variant (Fig. 4)
    return _build(_fixed(plan), num_classes, max_channels, kwargs, True, False)


@register_model(
    "puppet_vgg_static",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name=f"Puppet-VGG ({_STATIC})",
    param_formula=_vgg_formula,
)
def puppet_vgg_static(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    depth: int = 11,
    **kwargs,
) -> PuppetCNN:
    """Puppet-VGG: the VGG structure with puppeteer-generated 3x3 kernels (Puppeteer-Puppet scheme)."""
    plan = cfg_plan(vgg_cfg(depth), in_channels, max_channels)
    return _build(_fixed(plan), num_classes, max_channels, kwargs, False, False)


@register_model(
    "puppet_resnet",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name=f"Puppet-ResNet ({_ADAPTIVE})",
    param_formula=_resnet_formula,
)
def puppet_resnet(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    depth: int = 18,
    **kwargs,
) -> PuppetCNN:
    """Puppet-ResNet: the ResNet structure with puppeteer-generated 3x3 kernels (parameter adaptation)."""
    plan = resnet_plan(in_channels, max_channels, depth)  # depth: the ResNet variant (Fig. 4)
    return _build(_fixed(plan), num_classes, max_channels, kwargs, True, False)


@register_model(
    "puppet_resnet_static",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name=f"Puppet-ResNet ({_STATIC})",
    param_formula=_resnet_formula,
)
def puppet_resnet_static(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    depth: int = 18,
    **kwargs,
) -> PuppetCNN:
    """Puppet-ResNet: the ResNet structure with puppeteer-generated 3x3 kernels (Puppeteer-Puppet scheme)."""
    plan = resnet_plan(in_channels, max_channels, depth)
    return _build(_fixed(plan), num_classes, max_channels, kwargs, False, False)
