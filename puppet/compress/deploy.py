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

Options (``DeployContext.options``, from the config's ``mor`` block for this model): ``levels``
(method -> levels) and ``snapshot_images`` (training images whose trajectories give the POD and
DEIM snapshots, collected once per measure job and shared by every POD-DEIM level).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
import torch.nn as nn

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


def deployment_name(method: str, level: int) -> str:
    return f"{method}{SEPARATOR}{int(level)}"


def parse_deployment(name: str) -> tuple[str, int] | None:
    """(method, level) of a reduced deployment's name; None for any other deployment."""
    method, sep, level = str(name).partition(SEPARATOR)
    return (method, int(level)) if sep and method in METHODS and level.isdigit() else None


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
    """A trained Neural ODE with its ODE layer reduced (a snapshot: the reduction holds copies)."""

    def __init__(self, full: nn.Module, reduction: Reduction, snapshots: int | None) -> None:
        super().__init__()
        self.model = reduction.model.eval()
        self._metrics = ode_metrics(reduction.model, full, reduction)
        if snapshots is not None:  # POD-DEIM: the snapshot vectors its bases were fitted on
            self._metrics["snapshots"] = snapshots

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


def reduced_deployments(model: nn.Module, context: DeployContext) -> dict[str, str]:
    """The full model (``default``) and one deployment per (method, level) the options name."""
    names = {DEFAULT_DEPLOYMENT: "full model"}
    for method, values in _levels(model, dict(context.options)).items():
        for level in values:
            names[deployment_name(method, level)] = DESCRIPTION[method].format(level=level)
    return names


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
    parsed = parse_deployment(name)
    levels = _levels(model, dict(context.options))
    if parsed is None or parsed[1] not in levels[parsed[0]]:
        known = [n for n in reduced_deployments(model, context) if n != DEFAULT_DEPLOYMENT]
        raise ValueError(f"unknown deployment {name!r}: this model deploys {known}")
    method, level = parsed
    shape = state_shape(model, model.image_shape)
    snaps = None
    if method == "pod_deim":  # the snapshots are collected once and shared by every level
        key = ("mor_snapshots", id(model))
        if key not in context.cache:
            count = int(context.options.get("snapshot_images", 1000))
            context.cache[key] = collect_snapshots(model.eval(), _first_images(context.train_images(), count))
        snaps = context.cache[key]
    return ReducedNODE(model, reduce(model.eval(), method, level, snaps, shape), snaps.count if snaps else None)
