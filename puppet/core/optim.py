"""The learning rate of every optimizer step: the optimizer, the epoch schedule and ``train.phases``.

``make_optimizer`` and ``make_schedule`` build what ``train`` names. With ``train.phases`` the run's
optimizer steps are split into named phases, each with its own learning-rate rule, and a
``TrainsInPhases`` model is told its phase: ``PhasePlan`` lays the phases out on the steps.
Separate from ``puppet.core.train``: its loop only asks the plan which phase and which rate a step
has.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from puppet.core.protocols import TrainsInPhases
from puppet.core.specs import Phase, RunSpec, TrainSpec


def make_optimizer(model: nn.Module, train: TrainSpec) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, nesterov=True
        )
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)


def make_schedule(opt: torch.optim.Optimizer, train: TrainSpec, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    if train.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if train.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=train.step_every, gamma=0.1)
    if train.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(train.milestones), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def phase_bounds(phases: tuple[Phase, ...], total_steps: int) -> list[tuple[int, int]]:
    """Each phase's optimizer steps ``[first, stop)`` in a run of ``total_steps``: phase i covers
    ``[round(end_(i-1) * total), round(end_i * total))``, the first starting at 0."""
    stops = [round(p.end * total_steps) for p in phases]
    return list(zip([0] + stops[:-1], stops))


def describe_phases(phases: tuple[Phase, ...] | None, total_steps: int | None = None) -> str:
    """``"sp[0,318) x1; hrl[318,375) lr=0.0001"`` (steps), or with fractions of the run when
    ``total_steps`` is unknown; ``""`` without phases."""
    if not phases:
        return ""
    if total_steps is None:
        ranges = [f"[{a:g},{p.end:g})" for a, p in zip([0.0] + [p.end for p in phases[:-1]], phases)]
    else:
        ranges = [f"[{a},{b})" for a, b in phase_bounds(phases, total_steps)]
    return "; ".join(f"{p.name}{r} {p.rule}" for p, r in zip(phases, ranges))


@dataclass
class PhasePlan:
    """``train.phases`` laid out on one run's optimizer steps, and the model it tells of them
    (``TrainsInPhases``). One plan per sitting: the model is told its phase at the sitting's
    first step, then at each phase's first step."""

    phases: tuple[Phase, ...]
    bounds: list[tuple[int, int]]  # each phase's steps [first, stop)
    model: nn.Module
    say: Callable[[str], None] | None = None
    current: int | None = None  # the phase the model was last told of in this sitting

    @classmethod
    def build(cls, spec: RunSpec, model: nn.Module, steps_per_epoch: int) -> PhasePlan | None:
        """The run's plan, or None without phases; a one-line ValueError, before training,
        when the model and ``train.phases`` do not fit each other or the run is too short."""
        phases = spec.train.phases
        names = tuple(model.phase_names) if isinstance(model, TrainsInPhases) else None
        if phases and names is None:
            raise ValueError(f"{spec.model} does not train in phases; remove train.phases from its recipe")
        if not phases:
            if names:
                ends = [f"{{name: {n}, end: {(i + 1) / len(names):.2g}}}" for i, n in enumerate(names[:-1])]
                example = ", ".join(ends + [f"{{name: {names[-1]}}}"])
                raise ValueError(
                    f"{spec.model} trains in phases ({', '.join(names)}): give train.phases in its recipe, "
                    f"e.g. train: {{phases: [{example}]}}"
                )
            return None
        if not names:
            raise ValueError(
                f"{spec.model} trains in no phases as built (model_kwargs {dict(spec.model_kwargs)}); "
                f"remove train.phases from its recipe"
            )
        unknown = [p.name for p in phases if p.name not in names]
        if unknown:
            raise ValueError(
                f"{spec.model} has no phase {unknown[0]!r} (its phases: {', '.join(names)}); "
                f"use those names in train.phases of its recipe"
            )
        total = spec.epochs * steps_per_epoch
        bounds = phase_bounds(phases, total)
        for phase, (first, stop) in zip(phases, bounds):
            if stop <= first:
                raise ValueError(
                    f"train.phases: phase {phase.name!r} gets no optimizer step of the run's {total} "
                    f"({spec.epochs} epochs x {steps_per_epoch} batches); move its end or train longer"
                )
        return cls(phases, bounds, model)

    def enter(self, step: int) -> None:
        """Before global optimizer step ``step`` (past the last: the last phase): tell the model
        its phase if it is not the one it was last told of in this sitting."""
        i = bisect.bisect_right([stop for _, stop in self.bounds], min(step, self.bounds[-1][1] - 1))
        if i != self.current:
            self.current = i
            phase = self.phases[i]
            self.model.set_phase(phase.name)
            if self.say is not None:
                first, stop = self.bounds[i]
                self.say(f"phase {phase.name}: steps [{first},{stop}) at {phase.rule}, from step {step}")

    def lr(self, scheduled: float) -> float:
        """The learning rate of the current phase's step, given the schedule's."""
        phase = self.phases[self.current]
        return phase.lr if phase.lr is not None else scheduled * phase.lr_mult

    def names_in(self, first: int, stop: int) -> list[str]:
        """The phases of steps ``[first, stop)`` (one epoch's)."""
        return [p.name for p, (a, b) in zip(self.phases, self.bounds) if a < stop and first < b]

    def record(self) -> list[dict]:
        """Per phase: its name, first and last global step, and its learning-rate rule (train.json)."""
        return [
            {"name": p.name, "first_step": a, "last_step": b - 1, "lr": p.lr, "lr_mult": p.lr_mult}
            for p, (a, b) in zip(self.phases, self.bounds)
        ]
