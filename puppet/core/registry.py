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

import dataclasses
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
    # Which configuration of its method the model is, where the method has more than one here:
    # "size-matched" (chosen to reach the Puppet-CNN paper's Params Size) or "as published" (the
    # method's own paper / official code); "" for models with one configuration. The tables label rows by it.
    configuration: str = ""
    # A configuration registered with ``register_variant``: the model it is built from and the builder
    # kwargs it fixes (a run's ``model_kwargs`` may still override them).
    base: str = ""
    variant_kwargs: dict = field(default_factory=dict, hash=False, compare=False)
    # Module names (fnmatch patterns) whose convolutions do not start from ``puppet.layers.torchvision_init``,
    # with the reason where they are declared; the registry-wide init test checks every other conv.
    init_exempt: tuple[str, ...] = ()
    # True: widths scale with max_channels / 512 but are not capped at max_channels (an "as published"
    # configuration wider than the Puppet-CNN paper's 512 cap, e.g. torchvision's MobileNet-v2 head).
    uncapped: bool = False
    # Bumped when a change to the model's code alters what a run of an unchanged spec produces (its
    # initialisation, its calibration rule, ...): a non-zero revision enters the run's hash, so the
    # new code trains into a new run folder instead of passing for the old results. Variants inherit it.
    revision: int = 0


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
    configuration: str = "",
    init_exempt: tuple[str, ...] = (),
    revision: int = 0,
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
            configuration=configuration,
            init_exempt=tuple(init_exempt),
            revision=int(revision),
        )
        return builder

    return decorator


def register_variant(
    name: str,
    of: str,
    *,
    kwargs: dict,
    description: str,
    configuration: str = "as published",
    paper_name: str | None = None,
    fixed_width: bool | None = None,
    uncapped: bool = False,
) -> None:
    """Register another configuration of the registered model ``of``: the same builder with ``kwargs``
    fixed (e.g. ``ddfn_sw_published`` = ``ddfn_sw`` with the official generator ratio). The variant
    shares the base's family, parameter formula (with the same kwargs), hooks and exemptions; it is a
    model of its own everywhere else (run folders, tables, figures). Call it after the base is registered."""
    base = _REGISTRY[of]
    if name in _REGISTRY and _REGISTRY[name].base != of:
        raise ValueError(f"model {name!r} is registered twice")
    fixed = dict(kwargs)

    def builder(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kw):
        kw = {**fixed, **kw}
        return base.builder(
            num_classes=num_classes, in_channels=in_channels, image_size=image_size, max_channels=max_channels, **kw
        )

    formula = None
    if base.param_formula is not None:
        base_formula = base.param_formula

        def formula(*args, **kw):
            return base_formula(*args, **{**fixed, **kw})

    builder.__doc__ = description
    _REGISTRY[name] = dataclasses.replace(
        base,
        name=name,
        builder=builder,
        paper_name=paper_name or base.paper_name,
        description=description,
        param_formula=formula,
        fixed_width=base.fixed_width if fixed_width is None else fixed_width,
        uncapped=uncapped,
        configuration=configuration,
        base=of,
        variant_kwargs=dict(fixed),
    )


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
