"""The Neural ODEs' reduced deployments: a trained ``node_conv`` / ``node_rnn`` run deployed with its
ODE layer reduced by POD-DEIM, pruning or SVD truncation (``puppet.compress.reduce``) at each level
the config names.

Each reduction is a deployment ``<method>@<level>`` (``pod_deim@16``, ``prune@8``, ``svd@4``) of the
run, built from its loaded ``model.pt`` by ``deploy`` and measured by the one measure path
(``puppet.core.measure``) like every deployment: test accuracy, parameters, MACs, latency and
throughput timed interleaved with the full model (``default``), a row of ``metrics.csv`` each.
What only a reduction has (its level, state dimension, nonlinearities per evaluation, the POD and
DEIM energies, the DEIM condition number, the ODE layer's parameters and MACs beside the hand
formula) is reported by the deployed module's ``deployment_metrics`` and becomes columns of its
row; the full model reports the same for itself. ``results/mor.csv`` and the MOR figures are a
view of those rows (``puppet.report.mor``).

Each reduction is measured twice: as reduced, and after a short fine-tune (``<method>@<level>+ft``)
of the same budget for every method and level: ``finetune_steps`` Adam steps at ``finetune_lr`` on
``finetune_batch`` training images each, drawn shuffled (a fixed seed: the same images in the same
order for every reduction), every parameter of the reduced model trained (stem, reduced ODE layer,
head). Pruning's reference method (Li et al. 2017) retrains after pruning; a comparison without it
handicaps the methods whose error a few steps repair.

Options (``DeployContext.options``, from the config's ``mor`` block for this model): ``levels``
(method -> levels), ``snapshot_images`` (training images whose trajectories give the POD and
DEIM snapshots, collected once per measure job and shared by every POD-DEIM level) and the
fine-tuning budget (``finetune_steps``, 0: no fine-tuned deployments; ``finetune_batch``,
``finetune_lr``).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from puppet.compress.reduce import (
    METHODS,
    Reduction,
    collect_snapshots,
    full_dimensions,
    ode_macs_formula,
    reduce,
    state_shape,
)
from puppet.core.protocols import DEFAULT_DEPLOYMENT, DeployContext

# How each method is named and drawn wherever its curves appear (puppet.report.mor): label, colour,
# marker and line style, and the name of its level.
CURVES = {
    "pod_deim": ("POD-DEIM (k = m)", "tab:red", "o-"),
    "prune": ("pruning (L1)", "tab:blue", "s-"),
    "svd": ("SVD truncation", "tab:green", "^-"),
}
LEVEL_NAME = {"pod_deim": "k", "prune": "kept", "svd": "rank"}
DESCRIPTION = {
    "pod_deim": "POD-DEIM, k = m = {level}",
    "prune": "L1 pruning, {level} channels/neurons kept",
    "svd": "SVD truncation, rank {level}",
}
SEPARATOR = "@"
FINETUNED = "+ft"  # the suffix of a reduction measured after its fine-tune
FINETUNE_SEED = 0  # the fine-tuning images' order: the same for every method and level


class Reduced(NamedTuple):
    method: str
    level: int
    finetuned: bool = False


def deployment_name(method: str, level: int, finetuned: bool = False) -> str:
    return f"{method}{SEPARATOR}{int(level)}{FINETUNED if finetuned else ''}"


def parse_deployment(name: str) -> Reduced | None:
    """(method, level, finetuned) of a reduced deployment's name; None for any other deployment."""
    method, sep, level = str(name).partition(SEPARATOR)
    finetuned = level.endswith(FINETUNED)
    level = level.removesuffix(FINETUNED)
    return Reduced(method, int(level), finetuned) if sep and method in METHODS and level.isdigit() else None


def _ode_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the ODE layer receives for images ``x``: the stem's output, or the row sequence."""
    with torch.no_grad():
        return model.stem(x) if hasattr(model, "stem") else x.permute(0, 2, 1, 3).flatten(2)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def ode_metrics(model: nn.Module, full: nn.Module, reduction: Reduction | None) -> dict[str, float]:
    """The ODE layer's own numbers: level, state dimension, nonlinearities per evaluation,
    parameters, MACs (ptflops, at one image of the model's input shape: the cost does not depend
    on the image) beside the hand formula, and a reduction's energies and DEIM condition number."""
    from puppet.core.measure import count_macs

    image_shape = full.image_shape
    shape = state_shape(full, image_shape)
    n = int(torch.tensor(shape).prod())
    x1 = torch.zeros(1, *image_shape, device=next(full.parameters()).device)
    record: dict[str, float] = {
        "level": full_dimensions(full, shape)["pod_deim"] if reduction is None else reduction.level,
        "state_dim": n if reduction is None else reduction.state_dim,
        "nonlinearities": n if reduction is None else reduction.nonlinearities,
        "params_ode": _params(model.ode),
        "macs_ode": count_macs(model.ode, _ode_input(full, x1)),
        "macs_ode_formula": ode_macs_formula(full, reduction, shape, image_shape),
    }
    if reduction is not None:
        record.update(
            energy_state=reduction.energy_state,
            energy_nonlinear=reduction.energy_nonlinear,
            deim_condition=reduction.deim_condition,
        )
    return record


class ReducedNODE(nn.Module):
    """A trained Neural ODE with its ODE layer reduced (a snapshot: the reduction holds copies);
    ``extra``: more columns of its row (a fine-tune's budget)."""

    def __init__(
        self, full: nn.Module, reduction: Reduction, snapshots: int | None, extra: dict[str, float] | None = None
    ) -> None:
        super().__init__()
        self.model = reduction.model.eval()
        self._metrics = ode_metrics(reduction.model, full, reduction)
        if snapshots is not None:  # POD-DEIM: the snapshot vectors its bases were fitted on
            self._metrics["snapshots"] = snapshots
        self._metrics.update(extra or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def deployment_metrics(self) -> dict[str, float]:
        return dict(self._metrics)


def _levels(model: nn.Module, options: dict[str, Any]) -> dict[str, list[int]]:
    """The levels the options name, refused in one line (before any work) when a method is unknown
    or a level exceeds the model's size."""
    levels = dict(options.get("levels") or {})
    limits = full_dimensions(model, state_shape(model, model.image_shape))
    for method, values in levels.items():
        if method not in METHODS:
            raise ValueError(f"mor.levels: unknown method {method!r}; choose from {', '.join(METHODS)}")
        too_big = [v for v in values if int(v) > limits[method]]
        if too_big:
            raise ValueError(f"mor.levels.{method}: {too_big} exceed {limits[method]}, the model's largest level")
    return {method: [int(v) for v in levels.get(method, [])] for method in METHODS}


def _finetune_budget(options: dict[str, Any]) -> tuple[int, int, float]:
    """(steps, batch, lr) of the fine-tune every reduction also gets; steps 0: none."""
    return (
        int(options.get("finetune_steps", 200)),  # the config schema's defaults
        int(options.get("finetune_batch", 64)),
        float(options.get("finetune_lr", 1e-3)),
    )


def reduced_deployments(model: nn.Module, context: DeployContext) -> dict[str, str]:
    """The full model (``default``) and, per (method, level) the options name, the reduction as
    reduced and (with a fine-tuning budget) after its fine-tune."""
    names = {DEFAULT_DEPLOYMENT: "full model"}
    steps, batch, _ = _finetune_budget(dict(context.options))
    for method, values in _levels(model, dict(context.options)).items():
        for level in values:
            described = DESCRIPTION[method].format(level=level)
            names[deployment_name(method, level)] = described
            if steps:
                names[deployment_name(method, level, True)] = f"{described}, fine-tuned {steps} x {batch} images"
    return names


def finetune(model: nn.Module, batches: Any, steps: int, lr: float) -> dict[str, float]:
    """Train every parameter of ``model`` for ``steps`` Adam steps (constant ``lr``, cross-entropy) on
    ``batches`` (``epoch(e)`` gives epoch e's labelled batches), in place; returns the budget and the
    mean training loss over the first and the last 10 % of the steps."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    model.train()
    with torch.enable_grad():
        epoch = 0
        while len(losses) < steps:
            before = len(losses)
            for x, y in batches.epoch(epoch):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if len(losses) == steps:
                    break
            if len(losses) == before:
                raise ValueError(
                    "fine-tuning needs a training batch: the training split is smaller than finetune_batch"
                )
            epoch += 1
    model.eval()
    tenth = max(1, steps // 10)
    return {
        "finetune_steps": steps,
        "finetune_images": steps * batches.batch_size,
        "finetune_lr": lr,
        "finetune_loss_first": sum(losses[:tenth]) / tenth,
        "finetune_loss_last": sum(losses[-tenth:]) / tenth,
    }


def _first_images(batches: Iterable[torch.Tensor], count: int) -> Iterator[torch.Tensor]:
    """The first ``count`` images of ``batches``, in their batches (the last one cut)."""
    seen = 0
    for x in batches:
        if seen >= count:
            return
        x = x[: count - seen]
        seen += len(x)
        yield x


def deploy_reduced(model: nn.Module, name: str, context: DeployContext) -> nn.Module:
    """Build the reduced deployment ``name`` (``<method>@<level>``) of the trained ``model``."""
    known = [n for n in reduced_deployments(model, context) if n != DEFAULT_DEPLOYMENT]
    parsed = parse_deployment(name)
    if parsed is None or name not in known:
        raise ValueError(f"unknown deployment {name!r}: this model deploys {known}")
    method, level, finetuned = parsed
    shape = state_shape(model, model.image_shape)
    snaps = None
    if method == "pod_deim":  # the snapshots are collected once and shared by every level
        key = ("mor_snapshots", id(model))
        if key not in context.cache:
            count = int(context.options.get("snapshot_images", 1000))
            context.cache[key] = collect_snapshots(model.eval(), _first_images(context.train_images(), count))
        snaps = context.cache[key]
    reduction = reduce(model.eval(), method, level, snaps, shape)
    extra = None
    if finetuned:
        steps, batch, lr = _finetune_budget(dict(context.options))
        # in place: the reduction's model is its own copy of the trained one
        extra = finetune(reduction.model, context.train_batches(batch, FINETUNE_SEED), steps, lr)
    return ReducedNODE(model, reduction, snaps.count if snaps else None, extra)
