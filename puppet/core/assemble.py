"""From a run's spec to what it runs on: the device, the data splits and the model as built.

``materialise(spec)`` is the one way the train job, the measure job and ``python -m puppet
evaluate`` turn a spec into these, so all three see the same splits and the same architecture.
Separate from ``puppet.core.train`` because measuring and evaluating need it without training.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from puppet.core.data import Splits, make_splits
from puppet.core.datasets import load_dataset
from puppet.core.registry import create_model
from puppet.core.specs import RunSpec


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but no CUDA device is visible; set device: auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def configure_backend(device: torch.device) -> None:
    """Numerics flags for a training or measuring process on ``device``."""
    if device.type == "cpu":
        # Same config and seed -> same metrics on CPU. With several threads the backward of
        # indexing with repeated indices (a per-sample kernel picked from shared trajectories)
        # accumulates in a run-dependent order; the deterministic path is exact and changes
        # nothing for models that were deterministic already.
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def load_splits(spec: RunSpec) -> Splits:
    d = spec.data
    data = load_dataset(
        spec.dataset,
        data_root=spec.data_root,
        source=spec.data_source,
        download=spec.download,
        image_size=d.image_size,
        split_seed=d.split_seed,
    )
    return make_splits(data, d.train_size, d.val_size, d.test_size, d.split_seed)


def build_model(spec: RunSpec, splits: Splits) -> nn.Module:
    return create_model(
        spec.model,
        num_classes=splits.num_classes,
        in_channels=splits.in_channels,
        image_size=splits.image_size,
        max_channels=spec.max_channels,
        **spec.model_kwargs,
    )


class Materials(NamedTuple):
    device: torch.device
    splits: Splits
    model: nn.Module  # as built (initial weights), on ``device``


def materialise(spec: RunSpec, *, for_training: bool = False, device: str | None = None) -> Materials:
    """The run's device (``device``, else ``spec.device``), its data splits and its model, built
    from the registry and moved to the device. ``for_training``: torch's global RNG is seeded with
    ``spec.seed`` first (the initial weights are the seed's) and the numerics flags are set
    (``configure_backend``); the measure job and ``evaluate`` load trained weights into the model
    and leave both alone."""
    device = pick_device(device or spec.device)
    if for_training:
        torch.manual_seed(spec.seed)
        configure_backend(device)
    splits = load_splits(spec)
    return Materials(device, splits, build_model(spec, splits).to(device))
