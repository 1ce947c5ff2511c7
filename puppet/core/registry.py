"""Model registry: one name per model, the name is the Snakemake ``{model}`` wildcard.

A builder has the signature
``(num_classes, in_channels, image_size, max_channels=512, **kwargs) -> nn.Module``;
``max_channels`` caps every conv's output channels (the paper: 512) and scales
widths by ``max_channels / 512`` so CPU profiles stay cheap; a model registered with
``fixed_width=True`` (a CIFAR-width model of another paper, e.g. ResNet-Global) is built at its
paper's widths whatever ``max_channels`` says.
Model modules live in ``puppet.models`` and in the ``baselines`` package; they are
imported lazily the first time the registry is read, so ``puppet`` never has to
name a baseline module explicitly.

Beyond ``forward``, a model may implement the optional hooks of
``puppet.core.protocols`` (``prepare``, ``compute_loss``, ``calibrate``, ``last_stats``,
``stored_param_count``, ...); that module says who calls each, when, and on which split.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

ModelBuilder = Callable[..., nn.Module]

# Packages scanned for modules that register models.
_MODEL_PACKAGES = ("puppet.models", "baselines")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: ModelBuilder
    family: str  # "fixed", "puppet", "adaptive_params", "adaptive_depth", ...
    paper_name: str  # the label the paper's tables use
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    # (num_classes, in_channels, image_size, max_channels, **kwargs) -> expected stored
    # parameter count, written independently of the module code; checked by the tests.
    param_formula: Callable[..., int] | None = None
    # Parameter names (fnmatch patterns) that may get no gradient from one training step on a
    # batch, with the reason in a comment where they are declared; the registry-wide test
    # checks every other trainable parameter.
    no_grad_ok: tuple[str, ...] = ()
    # (model, x) -> None, for models whose path depends on the input through a threshold: set it
    # so that the batch x takes more than one path (the registry-wide tests compare batched and
    # batch-1 evaluation on a batch that really splits).
    spread_paths: Callable[[nn.Module, torch.Tensor], None] | None = None
    # True: built at its paper's widths at every profile (max_channels is accepted and ignored);
    # for CIFAR-width models whose widths are already below any profile's cost. The tests check
    # that its parameter count does not depend on max_channels.
    fixed_width: bool = False


_REGISTRY: dict[str, ModelInfo] = {}
_discovered = False


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want one clean line
        return str(self.args[0])


def register_model(
    name: str,
    *,
    family: str,
    paper_name: str | None = None,
    description: str = "",
    tags: tuple[str, ...] = (),
    param_formula: Callable[..., int] | None = None,
    no_grad_ok: tuple[str, ...] = (),
    spread_paths: Callable[[nn.Module, torch.Tensor], None] | None = None,
    fixed_width: bool = False,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``builder`` under ``name``; its docstring is the default description."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY and _REGISTRY[name].builder is not builder:
            raise ValueError(
                f"model {name!r} is registered twice ({_REGISTRY[name].builder.__module__} and {builder.__module__})"
            )
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelInfo(
            name=name,
            builder=builder,
            family=family,
            paper_name=paper_name or name,
            description=description or (doc[0] if doc else ""),
            tags=tuple(tags),
            param_formula=param_formula,
            no_grad_ok=tuple(no_grad_ok),
            spread_paths=spread_paths,
            fixed_width=fixed_width,
        )
        return builder

    return decorator


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for package_name in _MODEL_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError:
            continue
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{package_name}.{module.name}")


def did_you_mean(name: object, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` (difflib), or ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def list_models(family: str | None = None) -> list[str]:
    """Sorted names of registered models, optionally of one family."""
    _discover()
    return sorted(n for n, info in _REGISTRY.items() if family is None or info.family == family)


def model_info(name: str) -> ModelInfo:
    _discover()
    if name not in _REGISTRY:
        hint = did_you_mean(name, list_models())
        raise UnknownModelError(f"unknown model {name!r}{hint}; registered models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kwargs) -> nn.Module:
    """Build a registered model. Unknown names raise with the list of valid ones."""
    info = model_info(name)
    model = info.builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    model.registry_name = name  # type: ignore[attr-defined]
    return model
