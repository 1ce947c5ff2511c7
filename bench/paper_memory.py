"""Peak training memory of every registered model at the paper profile: does each train within a 24 GB RTX 4090?

Benchmark (not a test): writes results/bench/paper_memory.csv (+ paper_memory.png).

    OMP_NUM_THREADS=1 python bench/paper_memory.py --validate all

The committed CSV is that command on 2 shared CPU cores, 1 thread: 15 min, of which ~5 for the
grids and fits of the 21 models (``bench/paper_memory.py`` alone: ~5-9 min) and ~9 for the
direct 512-channel measurements of ``--validate all`` (Puppet models with adaptive kernels: ~2 min
each). ``--models resnet,puppet_cnn`` restricts it; ``--widths`` / ``--batches`` set the grid.

The paper profile (config/paper.yaml): CIFAR-10, batch 128, every conv capped at 512 channels,
Adam (lr 1e-3, weight decay 5e-4), ``amp: true`` (bf16 autocast on a GPU). One training step is
measured in the harness' order (``puppet.core.memory.training_step``: autocast forward and loss via
``model.compute_loss`` where the model has one, else cross-entropy; zero_grad; backward; Adam
step) on *real* CIFAR-10 training batches (``--data``; Puppet models are ``prepare()``-d on the
training images first), after a first optimizer step, so Adam's states exist (steady state: every
trainable parameter has a gradient and both moments).

* GPU (``method = measured_cuda``): ``torch.cuda.max_memory_allocated`` at batch 128 and 512
  channels, directly; the worst step over the batches of an epoch (``--gpu-steps``; batches differ
  in their complexity mix). ``tracked_peak_gib`` is puppet.core.memory's tracker on the same steps.
* CPU (``method = extrapolated_cpu``): the live-tensor tracker (puppet.core.memory; it cannot see
  kernel scratch, cuDNN workspaces or allocator rounding: see its docstring) under bf16 autocast
  on the CPU too, so tensor dtypes and sizes are those of the paper's amp profile, and Adam with
  ``foreach=True``, the implementation PyTorch picks on CUDA (its temporaries are counted). Each
  model is measured on a grid of widths (``--widths``) and batch sizes (``--batches``), and a law
  is fitted per model and per phase (forward, backward, optimizer step), then evaluated at 128/512:

      peak = before + max over phases of  sum_k c_k * term_k        (c_k >= 0, least squares)

  ``before`` (parameters, buffers, the previous step's gradients, Adam's two moments, the batch)
  is not fitted: it is counted exactly on the model built on the meta device at 512 channels
  (``before_check_bytes``: the largest difference between that count and the tracker's on the
  grid: Adam's 4-byte step counters, which live on the CPU even on CUDA, are left out). The terms
  (``LAW_TERMS``, by family; ``w`` = max_channels, ``B`` = batch size):

  * ``params``: trainable parameters (bf16 weight copies, new gradients, foreach temporaries);
  * ``B``: input-sized tensors (casts of the batch, Puppet's complexity maps);
  * ``B*A``: activations, A(w) = the bytes autograd saves for backward per sample, counted in a
    float32 forward at each width, on the meta device (free), or on the CPU at batch 2 and 4 where
    the forward reads data (DRNN); exact whatever the width rounding (MobileNet's divisible-by-8
    widths do not scale with w below 512). Fixed and adaptive-depth models; adaptive-parameter
    models add ``B*w^2`` (float32 temporaries of the generated kernels); a model where A cannot be
    counted falls back to ``B*w`` and ``B*w^2``;
  * Puppet models, whose work depends on the batch's mix of complexity levels (the meta device
    cannot run them; every width is an exact multiple of w for w >= 32): ``D*w``, ``D*w^2`` with
    D = the generated conv layers summed over the batch's samples (activations, per-sample
    kernels of conv_impl="grouped"), ``S*w^2`` with S = the Euler steps summed over the batch's N
    distinct complexity levels (C x C x 3 x 3 states kept for backward, pooled kernels per level)
    and ``N*w^2`` (one step's working set for every trajectory: what a checkpointed chain
    recomputes at a time). D, S and N at batch 128 come from ``last_stats`` after a cheap forward
    at the smallest width on every batch of epoch 0 (levels and depths depend on complexity, not
    on width); the row is the epoch's worst batch (``levels``, ``D``, ``S``).

Columns: ``peak_gib`` (GiB = 2^30 bytes); ``fit_rel_err``: the worst |relative error| of the total
peak at the widest grid width and its two largest batches (the points nearest the target),
predicted by a law fitted without the widest width (extrapolation over 1.33x in width);
``fit_rel_err_widest``: the same over every batch of the widest width (a small batch can sit in
another regime: e.g. a static Puppet's backward peak is its Euler chain at batch 4, its
activations at 64; a linear law per phase fits one of them); ``loo_rel_err``: the worst
leave-one-out error of the full fit; ``peak_hi_gib`` = peak x (1 + fit_rel_err);
``fits_24gb``: peak_hi_gib + ``margin_gib`` <= 24 (the margin stands for what neither count sees:
CUDA context, cuDNN workspaces, fragmentation); ``static_gib`` / ``transient_gib``: ``before``
and the fitted part; ``dominant_term``: the phase and term that contribute most at 128/512;
``law``: the fitted coefficients (bytes per unit of each term). ``--validate`` adds
``measured_cpu`` rows: the tracker run directly at 512 channels (``name`` or ``name:batch``),
with ``predicted_gib`` (the law, for that very batch) and ``rel_err`` = predicted / measured - 1.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from puppet.core.config import load_config, run_spec
from puppet.core.data import Batches, Splits, make_splits
from puppet.core.datasets import load_dataset
from puppet.core.io import atomic_write, atomic_write_csv, git_commit
from puppet.core.memory import GIB, StepMemory, training_step_memory
from puppet.core.optim import make_optimizer
from puppet.core.registry import create_model, list_models, model_info
from puppet.core.specs import RunSpec

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10_subset.npz"
CARD_GIB = 24.0  # RTX 4090
PHASES = ("forward", "backward", "step")

# Terms of the law for the bytes a step adds above ``before``, by registry family (one place).
# Every family also gets an intercept. The optimizer step never depends on the batch: its law is
# params + intercept for every model.
LAW_TERMS = {
    # activations = B x A(w), the bytes saved for backward per sample, counted at each width
    # (saved_bytes_per_sample: exact whatever the width rounding; saved per-sample kernels included)
    "fixed": ("params", "B", "B*A"),
    "adaptive_depth": ("params", "B", "B*A"),  # training runs every exit / block / loop on the whole batch
    # + the float32 temporaries of a generated kernel (B x c_out x c_in x k x k, before its bf16 cast)
    "adaptive_params": ("params", "B", "B*A", "B*w^2"),
    # work that depends on the batch's complexity mix (D, S, N from last_stats); the meta device
    # cannot run it (torch.unique), but every width is an exact multiple of w for w >= 32
    "puppet": ("params", "B", "D*w", "D*w^2", "S*w^2", "N*w^2"),
}
# where A cannot be counted or the family is not listed: activations (B*w) and per-sample kernels (B*w^2)
FALLBACK_TERMS = ("params", "B", "B*w", "B*w^2")
STEP_TERMS = ("params",)


# --------------------------------------------------------------------------- data and models


def load_splits(path: Path) -> Splits:
    """Real CIFAR-10: the paper profile's 80/20 train/validation proportion of the file's training pool."""
    data = load_dataset("cifar10", source=path)
    return make_splits(data, train_size=None, val_size=len(data.y_train) // 5, split_seed=0)


def train_batches(
    splits: Splits, batch: int, device: torch.device, n: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` (default: all) full batches of epoch 0 as the harness shuffles them (seed 0), normalised."""
    it = Batches(
        splits.x_train,
        splits.y_train,
        batch,
        splits.mean,
        splits.std,
        shuffle=True,
        seed=0,
        device=device,
        drop_last=True,
    )
    return itertools.islice(it.epoch(0), n)


def build(name: str, spec: RunSpec, width: int, splits: Splits, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(
        name,
        num_classes=splits.num_classes,
        in_channels=splits.in_channels,
        image_size=splits.image_size,
        max_channels=width,
        **spec.model_kwargs,
    )
    if hasattr(model, "prepare"):  # complexity statistics of the real training images (Puppet models)
        prep = Batches(splits.x_train, splits.y_train, 512, splits.mean, splits.std)
        model.prepare(x for x, _ in prep)
    return model.to(device).train()


def optimizer_in_steady_state(model: nn.Module, spec: RunSpec, device: torch.device) -> torch.optim.Optimizer:
    """The harness' optimizer after one step: every trainable parameter has a gradient and Adam's moments.

    A zero gradient stands in for the first step (same tensors, no forward/backward to pay for).
    On the CPU, ``foreach=True`` is what PyTorch's default picks on CUDA, so its temporaries count.
    """
    opt = make_optimizer(model, spec.train)
    if device.type == "cpu":
        for group in opt.param_groups:
            group["foreach"] = True
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    return opt


def exact_before_bytes(name: str, spec: RunSpec, width: int, batch: int, splits: Splits) -> tuple[int, int]:
    """(bytes alive before a step, trainable parameters) at ``width``, from the model built on the meta device.

    Parameters and buffers + gradient, exp_avg, exp_avg_sq of every trainable parameter + the batch
    (float32 images, int64 labels). Adam's 0-dim ``step`` counters are left out: on CUDA they live on
    the CPU (foreach, not capturable); on the CPU grid they add 4 bytes per parameter tensor.
    """
    with torch.device("meta"):
        model = create_model(
            name,
            num_classes=splits.num_classes,
            in_channels=splits.in_channels,
            image_size=splits.image_size,
            max_channels=width,
            **spec.model_kwargs,
        )
    tensors = list(model.parameters()) + list(model.buffers())
    trainable = [p for p in model.parameters() if p.requires_grad]
    state = sum(t.numel() * t.element_size() for t in tensors) + 3 * sum(
        p.numel() * p.element_size() for p in trainable
    )
    pixels = splits.in_channels * splits.image_size**2
    return state + batch * (4 * pixels + 8), sum(p.numel() for p in trainable)


# --------------------------------------------------------------------------- regressors of the law


def composition(stats: dict, batch: int) -> dict[str, int]:
    """D (generated conv layers summed over samples), S (Euler steps summed over distinct levels), N (levels).

    Read from a Puppet model's ``last_stats`` (per-sample ``depth`` and ``complexity_normalised``;
    the static scheme has no complexity: one trajectory). Other models: D = batch, S = N = 0.
    """
    depth = stats.get("depth")
    if depth is None or "generation_macs" not in stats:
        return {"D": batch, "S": 0, "N": 0}
    depth = depth.detach().cpu().long()
    h = stats.get("complexity_normalised")
    if h is None:
        return {"D": int(depth.sum()), "S": int(depth.max()), "N": 1}
    levels, inverse = torch.unique(h.detach().cpu(), return_inverse=True)
    per_level = torch.zeros(len(levels), dtype=torch.long).scatter_reduce(0, inverse, depth, "amax")
    return {"D": int(depth.sum()), "S": int(per_level.sum()), "N": len(levels)}


@torch.no_grad()
def target_compositions(name: str, spec: RunSpec, splits: Splits, width: int, batch: int) -> list[dict[str, int]]:
    """The composition of every full batch of epoch 0 at the target batch size (a cheap forward at ``width``)."""
    model = build(name, spec, width, splits, torch.device("cpu"))
    out = []
    for x, _ in train_batches(splits, batch, torch.device("cpu")):
        model(x)
        out.append(composition(getattr(model, "last_stats", {}) or {}, batch))
        if out[-1]["S"] == 0:  # no kernel trajectories: nothing depends on the batch's mix
            break
    return out


def saved_bytes_per_sample(name: str, spec: RunSpec, width: int, splits: Splits) -> float | None:
    """Bytes autograd saves for backward per sample, weights excluded, in a float32 forward at ``width``.

    Counted on the meta device (free: no data, no arithmetic), or where the forward reads data
    (DRNN's ``.item()``) on the CPU with batches of 2 and 4 random images (cheap at any width).
    Exact at any width, so the law needs no assumption on how activations scale with width:
    MobileNet's divisible-by-8 rounding, minimum widths and saved per-sample kernels are all in it.
    float32 here, mostly bf16 under autocast: the fitted coefficient takes the ratio (~0.5). None
    where neither works.
    """
    from puppet.core.train import compute_loss

    for device in ("meta", "cpu"):
        saved = []
        for batch in (2, 4):  # the difference removes anything that does not scale with the batch
            torch.manual_seed(0)
            with torch.device(device):
                model = create_model(
                    name,
                    num_classes=splits.num_classes,
                    in_channels=splits.in_channels,
                    image_size=splits.image_size,
                    max_channels=width,
                    **spec.model_kwargs,
                )
            model.train()
            weights = {id(p.untyped_storage()) for p in model.parameters()}
            storages: dict[int, torch.UntypedStorage] = {}

            def pack(t: torch.Tensor) -> torch.Tensor:
                st = t.untyped_storage()
                if id(st) not in weights:  # noqa: B023 (called in this iteration)
                    storages[id(st)] = st  # kept alive: ids stay unique  # noqa: B023 (called in this iteration)
                return t

            x = torch.randn(batch, splits.in_channels, splits.image_size, splits.image_size, device=device)
            y = torch.arange(batch, device=device) % splits.num_classes
            try:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    compute_loss(model, x, y)
            except (RuntimeError, NotImplementedError):
                break
            saved.append(sum(st.nbytes() for st in storages.values()))
        if len(saved) == 2:
            return (saved[1] - saved[0]) / 2
    return None


def regressors(width: int, batch: int, params: int, comp: dict[str, int], saved: float | None) -> dict[str, float]:
    """Every quantity a law term is a product of, at one (width, batch, batch composition)."""
    return {"w": width, "B": batch, "params": params, **comp, "A": saved if saved is not None else math.nan}


def term_values(terms: tuple[str, ...], r: dict[str, float]) -> np.ndarray:
    """The terms' values (+ 1 for the intercept); a term is a product of regressors, "w^2" = w * w."""
    values = []
    for term in terms:
        v = 1.0
        for factor in term.split("*"):
            name, _, power = factor.partition("^")
            v *= float(r[name]) ** int(power or 1)
        values.append(v)
    return np.array(values + [1.0])


def law_terms(family: str, saved_known: bool) -> tuple[str, ...]:
    terms = LAW_TERMS.get(family, FALLBACK_TERMS)
    return terms if saved_known or not any("A" in t.split("*") for t in terms) else FALLBACK_TERMS


# --------------------------------------------------------------------------- measuring


@dataclass
class Point:
    width: int
    batch: int
    before: int
    peaks: dict[str, int]  # per phase, bytes
    r: dict[str, float]  # regressors
    seconds: float

    @property
    def peak(self) -> int:
        return max(self.peaks.values())


def measure(
    name: str,
    spec: RunSpec,
    splits: Splits,
    width: int,
    batch: int,
    device: torch.device,
    amp_dtype: torch.dtype,
    saved: float | None,
    batch_index: int = 1,
) -> Point:
    """The tracked (CPU) or allocator (CUDA) peak of one training step at (width, batch), on real
    batch ``batch_index``."""
    t0 = time.perf_counter()
    model = build(name, spec, width, splits, device)
    opt = optimizer_in_steady_state(model, spec, device)
    x, y = list(train_batches(splits, batch, device, batch_index + 1))[batch_index]
    mem = training_step_memory(model, opt, x, y, amp_dtype=amp_dtype)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    r = regressors(width, batch, params, composition(mem.stats, batch), saved)
    return Point(width, batch, mem.before_bytes, mem.phase_peak_bytes, r, time.perf_counter() - t0)


# --------------------------------------------------------------------------- the law


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares by enumerating the active set (a handful of columns)."""
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    an = a / scale
    best, best_res = np.zeros(a.shape[1]), float(np.sum(b**2))
    for k in range(1, a.shape[1] + 1):
        for cols in itertools.combinations(range(a.shape[1]), k):
            sol, *_ = np.linalg.lstsq(an[:, cols], b, rcond=None)
            if np.all(sol >= 0):
                res = float(np.sum((an[:, cols] @ sol - b) ** 2))
                if res < best_res - 1e-9 * abs(best_res):
                    best, best_res = np.zeros(a.shape[1]), res
                    best[list(cols)] = sol
    return best / scale


@dataclass
class Law:
    """One non-negative linear law per phase for the bytes above ``before``."""

    terms: tuple[str, ...]
    coef: dict[str, np.ndarray]

    def phase_terms(self, phase: str) -> tuple[str, ...]:
        return STEP_TERMS if phase == "step" else self.terms

    @classmethod
    def fit(cls, points: list[Point], terms: tuple[str, ...]) -> "Law":
        law = cls(terms, {})
        for phase in PHASES:
            a = np.stack([term_values(law.phase_terms(phase), p.r) for p in points])
            b = np.array([float(p.peaks[phase] - p.before) for p in points])
            law.coef[phase] = nnls(a, np.maximum(b, 0.0))
        return law

    def transient(self, r: dict[str, float]) -> tuple[float, str]:
        """(bytes above ``before`` at the peak phase, the term contributing most there)."""
        parts = {ph: self.coef[ph] * term_values(self.phase_terms(ph), r) for ph in PHASES}
        phase = max(PHASES, key=lambda ph: parts[ph].sum())
        best = float(parts[phase].sum())
        names = list(self.phase_terms(phase)) + ["const"]
        k = int(np.argmax(parts[phase]))
        return best, f"{phase}: {names[k]} ({parts[phase][k] / best if best > 0 else 0:.0%})"

    def describe(self) -> str:
        out = []
        for phase in PHASES:
            names = list(self.phase_terms(phase)) + ["1"]
            out.append(f"{phase}: " + " + ".join(f"{c:.4g}*{n}" for c, n in zip(self.coef[phase], names) if c > 0))
        return "; ".join(out)


def relative_errors(fit_points: list[Point], test_points: list[Point], terms: tuple[str, ...]) -> tuple[float, float]:
    """Worst |rel. error| of the total peak and of the transient part on ``test_points``."""
    law = Law.fit(fit_points, terms)
    total, transient = 0.0, 0.0
    for p in test_points:
        pred, _ = law.transient(p.r)
        total = max(total, abs(p.before + pred - p.peak) / p.peak)
        transient = max(transient, abs(pred - (p.peak - p.before)) / max(p.peak - p.before, 1))
    return total, transient


# --------------------------------------------------------------------------- one model


def cpu_rows(
    name: str, spec: RunSpec, splits: Splits, args, amp_dtype: torch.dtype, validate: dict[str, list[int]]
) -> list[dict]:
    family = model_info(name).family
    width_t, batch_t = args.target_channels, args.target_batch
    cpu = torch.device("cpu")
    uses_saved = any("A" in t.split("*") for t in LAW_TERMS.get(family, ()))
    saved = {w: saved_bytes_per_sample(name, spec, w, splits) for w in [*args.widths, width_t]} if uses_saved else {}
    terms = law_terms(family, bool(saved) and all(v is not None for v in saved.values()))
    points = []
    for width, batch in itertools.product(args.widths, args.batches):
        point = measure(name, spec, splits, width, batch, cpu, amp_dtype, saved.get(width))
        points.append(point)
        print(
            f"  {name:<22} w={width:<4} B={batch:<3} peak {point.peak / 2**20:9.1f} MiB "
            f"(before {point.before / 2**20:8.1f}; fwd/bwd/step "
            f"{'/'.join(f'{point.peaks[p] / 2**20:.1f}' for p in PHASES)}) "
            f"D={point.r['D']} S={point.r['S']} N={point.r['N']} {point.seconds:.1f}s",
            file=sys.stderr,
        )
    # extrapolation check: a law fitted without the widest points predicts them; fit_rel_err on the
    # two largest batches there (nearest the target), fit_rel_err_widest on all of them
    widest = max(args.widths)
    fitted_without = [p for p in points if p.width != widest]
    held_out = [p for p in points if p.width == widest]
    largest_batches = sorted({p.batch for p in held_out})[-2:]
    fit_rel, fit_rel_transient = relative_errors(
        fitted_without, [p for p in held_out if p.batch in largest_batches], terms
    )
    fit_rel_widest, _ = relative_errors(fitted_without, held_out, terms)
    loo = max(relative_errors([q for q in points if q is not p], [p], terms)[0] for p in points)
    law = Law.fit(points, terms)
    # the exact count of `before` must agree with the tracker's at every grid point (Adam's step counters aside)
    before_check = max(abs(exact_before_bytes(name, spec, p.width, p.batch, splits)[0] - p.before) for p in points)

    before_t, params_t = exact_before_bytes(name, spec, width_t, batch_t, splits)
    comps = target_compositions(name, spec, splits, min(args.widths), batch_t)
    preds = [(law.transient(regressors(width_t, batch_t, params_t, c, saved.get(width_t))), c) for c in comps]
    (transient, dominant), comp = max(preds, key=lambda pc: pc[0][0])  # the epoch's worst batch
    peak = (before_t + transient) / GIB
    largest = max(points, key=lambda p: p.peak)
    common = {
        "model": name,
        "family": family,
        "status": "ok",
        "error": "",
        "amp_dtype": str(amp_dtype).replace("torch.", ""),
        "optimizer": spec.train.optimizer,
        "fit_rel_err": fit_rel,
        "fit_rel_err_transient": fit_rel_transient,
        "fit_rel_err_widest": fit_rel_widest,
        "loo_rel_err": loo,
        "n_points": len(points),
        "grid_widths": " ".join(map(str, args.widths)),
        "grid_batches": " ".join(map(str, args.batches)),
        "largest_point": f"w{largest.width}xB{largest.batch}",
        "largest_measured_gib": largest.peak / GIB,
        "law_terms": " + ".join(terms),
        "law": law.describe(),
        "before_check_bytes": before_check,
    }
    rows = [
        {
            **common,
            "method": "extrapolated_cpu",
            "batch_size": batch_t,
            "max_channels": width_t,
            "peak_gib": peak,
            "peak_hi_gib": peak * (1 + fit_rel),
            "static_gib": before_t / GIB,
            "transient_gib": transient / GIB,
            "dominant_term": dominant,
            "levels": comp["N"],
            "D": comp["D"],
            "S": comp["S"],
            "batches_in_epoch": len(comps),
            "seconds": sum(p.seconds for p in points),
        }
    ]
    for batch in validate.get(name, []):  # direct measurement at the target width: validates the extrapolation
        point = measure(name, spec, splits, width_t, batch, cpu, amp_dtype, saved.get(width_t))
        pred, _ = law.transient(
            regressors(width_t, batch, params_t, {k: point.r[k] for k in ("D", "S", "N")}, saved.get(width_t))
        )
        predicted = (exact_before_bytes(name, spec, width_t, batch, splits)[0] + pred) / GIB
        rows.append(
            {
                **common,
                "method": "measured_cpu",
                "batch_size": batch,
                "max_channels": width_t,
                "peak_gib": point.peak / GIB,
                "static_gib": point.before / GIB,
                "transient_gib": (point.peak - point.before) / GIB,
                "predicted_gib": predicted,
                "rel_err": predicted / (point.peak / GIB) - 1,
                "levels": point.r["N"],
                "D": point.r["D"],
                "S": point.r["S"],
                "seconds": point.seconds,
            }
        )
        print(
            f"  {name:<22} validation w={width_t} B={batch}: measured {point.peak / GIB:.3f} GiB, law {predicted:.3f} "
            "GiB "
            f"({predicted / (point.peak / GIB) - 1:+.1%}), {point.seconds:.0f}s",
            file=sys.stderr,
        )
    return rows


def cuda_rows(name: str, spec: RunSpec, splits: Splits, args, amp_dtype: torch.dtype) -> list[dict]:
    """Direct measurement at the target: the worst of ``--gpu-steps`` consecutive steps (after a first one)."""
    device = torch.device("cuda")
    t0 = time.perf_counter()
    model = build(name, spec, args.target_channels, splits, device)
    opt = optimizer_in_steady_state(model, spec, device)
    worst: StepMemory | None = None
    steps = 0
    for x, y in train_batches(splits, args.target_batch, device, args.gpu_steps):  # one batch on the device at a time
        mem = training_step_memory(model, opt, x, y, amp_dtype=amp_dtype)
        steps += 1
        if worst is None or mem.peak_bytes > worst.peak_bytes:
            worst = mem
        del x, y
    comp = composition(worst.stats, args.target_batch)
    return [
        {
            "model": name,
            "family": model_info(name).family,
            "status": "ok",
            "error": "",
            "method": "measured_cuda",
            "batch_size": args.target_batch,
            "max_channels": args.target_channels,
            "amp_dtype": str(amp_dtype).replace("torch.", ""),
            "optimizer": spec.train.optimizer,
            "peak_gib": worst.peak_bytes / GIB,
            "peak_hi_gib": worst.peak_bytes / GIB,
            "static_gib": worst.before_bytes / GIB,
            "transient_gib": (worst.peak_bytes - worst.before_bytes) / GIB,
            "tracked_peak_gib": worst.tracked_peak_bytes / GIB,
            "fit_rel_err": 0.0,
            "n_points": steps,
            "levels": comp["N"],
            "D": comp["D"],
            "S": comp["S"],
            "seconds": time.perf_counter() - t0,
        }
    ]


# --------------------------------------------------------------------------- main


def parse_validate(text: str, batch: int, names: list[str]) -> dict[str, list[int]]:
    """``"resnet,puppet_cnn:16"`` -> ``{"resnet": [batch], "puppet_cnn": [16]}``; ``"all"`` (or
    ``"all:16"``) = every model measured."""
    out: dict[str, list[int]] = {}
    for item in filter(None, text.split(",")):
        name, _, b = item.partition(":")
        for n in names if name == "all" else [name]:
            model_info(n)  # an unknown name fails here, with the list of valid ones
            out.setdefault(n, []).append(int(b) if b else batch)
    return out


def figure(frame: pd.DataFrame, path: Path, margin: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = frame[frame["method"].isin(["extrapolated_cpu", "measured_cuda"]) & (frame["status"] == "ok")].sort_values(
        "peak_gib"
    )
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.4))
    colours = ["tab:green" if f else "tab:red" for f in rows["fits_24gb"]]
    err = (rows["peak_hi_gib"] - rows["peak_gib"]).clip(lower=0)
    ax.barh(rows["model"], rows["peak_gib"], xerr=err, color=colours, capsize=2)
    same = frame[(frame["method"] == "measured_cpu") & (frame["batch_size"] == rows["batch_size"].iloc[0])]
    same = same[same["model"].isin(rows["model"])]
    if len(same):  # direct CPU measurements at the target (another batch of the epoch than the worst one)
        ax.plot(same["peak_gib"], same["model"], "kx", label="measured directly (CPU tracker)")
    ax.axvline(CARD_GIB, color="k", lw=1, label=f"{CARD_GIB:g} GiB (RTX 4090)")
    ax.axvline(CARD_GIB - margin, color="k", lw=1, ls="--", label=f"{CARD_GIB - margin:g} GiB (margin {margin:g})")
    ax.set_xscale("log")
    b, c = int(rows["batch_size"].iloc[0]), int(rows["max_channels"].iloc[0])
    ax.set_xlabel(f"peak training memory (GiB)\nbatch {b}, {c} channels, {rows['amp_dtype'].iloc[0]} autocast, Adam")
    ax.set_title(f"{rows['method'].iloc[0]} (worst batch of an epoch); error bar: fit_rel_err", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default=str(REPO / "config" / "paper.yaml"), help="the profile whose train settings are measured"
    )
    parser.add_argument("--models", default="", help="comma list (default: every registered model)")
    parser.add_argument(
        "--widths",
        default="32,48,64,96,128",
        help="CPU grid: max_channels values (>= 32 keeps every stage width proportional)",
    )
    parser.add_argument("--batches", default="4,8,16,32,64", help="CPU grid: batch sizes")
    parser.add_argument(
        "--validate",
        default="",
        help="measure these directly on CPU at the target width: name or name:batch "
        "(default batch: the target's), comma list; 'all' for every model",
    )
    parser.add_argument(
        "--margin-gib", type=float, default=2.0, help="GiB kept free for what the counts do not see (fits_24gb)"
    )
    parser.add_argument(
        "--gpu-steps",
        type=int,
        default=None,
        help="CUDA: steps measured, on consecutive batches of epoch 0 "
        "(default: all of them, as the CPU rows take the epoch's worst batch); the worst is reported",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 .npz (shared/data/README.md format)")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("OMP_NUM_THREADS", "1")),
        help="torch threads (1: memory does not depend on it, and 2 threads on a busy 2-core machine crawl)",
    )
    parser.add_argument("--out", default=str(REPO / "results" / "bench" / "paper_memory.csv"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = load_config(args.config)
    args.target_batch, args.target_channels = config["train"]["batch_size"], config["max_channels"]
    args.widths = sorted(int(w) for w in args.widths.split(","))
    args.batches = sorted(int(b) for b in args.batches.split(","))
    names = [n for n in args.models.split(",") if n] or list_models()
    for n in names:
        model_info(n)  # unknown names fail here, with the list of valid ones
    validate = parse_validate(args.validate, args.target_batch, names)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as puppet.core.train does: its workspaces are part of the real peak
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        label = torch.cuda.get_device_name(device)
    else:
        amp_dtype = torch.bfloat16  # the paper profile's amp dtype, emulated on the CPU
        label = f"cpu ({platform.processor() or platform.machine()})"
    if not config["train"]["amp"]:
        amp_dtype = None
    splits = load_splits(Path(args.data))
    gc.freeze()  # ~0.4 M long-lived objects (config schema, data, libraries): no gen-2 collection rescans them
    print(
        f"{label}, {args.threads} threads; target batch {args.target_batch}, {args.target_channels} channels, "
        f"{amp_dtype} autocast; {len(names)} models",
        file=sys.stderr,
    )

    rows, t_start = [], time.perf_counter()
    for name in names:
        spec = run_spec(config, "cifar10", name, 0)
        try:
            if device.type == "cuda":
                rows += cuda_rows(name, spec, splits, args, amp_dtype)
            else:
                rows += cpu_rows(name, spec, splits, args, amp_dtype, validate)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recorded, not swallowed: the row says what failed
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                message = f"out of memory on {label}: does not fit ({message[:200]})"
            print(f"  {name}: FAILED {message}", file=sys.stderr)
            rows.append(
                {
                    "model": name,
                    "family": model_info(name).family,
                    "status": "error",
                    "error": message,
                    "method": "measured_cuda" if device.type == "cuda" else "extrapolated_cpu",
                    "batch_size": args.target_batch,
                    "max_channels": args.target_channels,
                }
            )
        if device.type == "cuda":
            torch.cuda.empty_cache()

    frame = pd.DataFrame(rows)
    headline = frame["method"].isin(["extrapolated_cpu", "measured_cuda"])
    frame["margin_gib"] = args.margin_gib
    frame["fits_24gb"] = (frame["peak_hi_gib"] + args.margin_gib <= CARD_GIB).where(
        headline & (frame["status"] == "ok")
    )
    if "error" in frame:  # out of memory on a card larger than 24 GB: it does not fit
        frame.loc[headline & frame["error"].fillna("").str.startswith("out of memory"), "fits_24gb"] = False
    frame["device"], frame["threads"] = label, torch.get_num_threads()
    frame["torch_version"], frame["git_commit"] = torch.__version__, git_commit()
    frame["bench_seconds"] = time.perf_counter() - t_start
    first = [
        "model",
        "family",
        "method",
        "status",
        "batch_size",
        "max_channels",
        "amp_dtype",
        "peak_gib",
        "peak_hi_gib",
        "fits_24gb",
        "fit_rel_err",
        "fit_rel_err_widest",
        "loo_rel_err",
        "n_points",
        "largest_point",
        "largest_measured_gib",
        "dominant_term",
        "static_gib",
        "transient_gib",
        "predicted_gib",
        "rel_err",
        "levels",
        "D",
        "S",
    ]
    frame = frame[[c for c in first if c in frame] + [c for c in frame if c not in first]]
    out = Path(args.out)
    atomic_write_csv(frame, out)
    if headline.any() and (frame["status"] == "ok").any():
        figure(frame, out.with_suffix(".png"), args.margin_gib)
    print(f"wrote {out} ({time.perf_counter() - t_start:.0f}s)", file=sys.stderr)
    shown = frame[headline][
        [c for c in ("model", "peak_gib", "fits_24gb", "fit_rel_err", "dominant_term") if c in frame]
    ]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"), file=sys.stderr)
    return frame


if __name__ == "__main__":
    main()
