"""Seeded splits of a data set and the in-memory batch iterator a run trains and evaluates on.

``make_splits`` draws disjoint, class-balanced train / validation / test subsets of what
``puppet.core.datasets`` read; ``Batches`` iterates over one of them, normalising each batch
on the training device, in an order that depends only on the seed and the epoch (so a resumed
run sees the batches an uninterrupted one would have).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from puppet.core.datasets import ArrayData, DataError, ImageShape, balanced_order

# --------------------------------------------------------------------------- splits


@dataclass
class Splits(ImageShape):
    """Seeded, disjoint train / validation / test subsets of one data set."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, from the training subset, in [0, 1] units
    std: tuple[float, ...]
    source: str
    train_index: torch.Tensor  # indices into the source's training pool (for tests and provenance)
    val_index: torch.Tensor


def make_splits(
    data: ArrayData,
    train_size: int | None = None,
    val_size: int = 0,
    test_size: int | None = None,
    split_seed: int = 0,
) -> Splits:
    """Seeded, class-balanced, disjoint subsets: validation and train are drawn from
    the training pool (validation first), test from the test split.

    ``train_size=None`` takes every training image left after validation;
    ``test_size=None`` takes the whole test split.
    """
    pool = len(data.y_train)
    if val_size < 0 or (train_size is not None and train_size <= 0):
        raise DataError(
            f"{data.name}: train_size must be positive and val_size non-negative (got {train_size}, {val_size})"
        )
    if val_size + (train_size or 1) > pool:
        raise DataError(
            f"{data.name}: train_size {train_size} + val_size {val_size} exceed the {pool} training images of "
            f"{data.source}; lower them in config"
        )
    order = balanced_order(data.y_train, data.num_classes, split_seed)
    val_index = order[:val_size].sort().values
    rest = order[val_size:]
    train_index = (rest if train_size is None else rest[:train_size]).sort().values
    n_test = len(data.y_test)
    if test_size is not None and test_size < n_test:
        test_index = balanced_order(data.y_test, data.num_classes, split_seed + 1)[:test_size].sort().values
    else:
        test_index = torch.arange(n_test)
    if len(test_index) == 0 or len(train_index) == 0:
        empty = "test" if len(test_index) == 0 else "train"
        raise DataError(
            f"{data.name}: the {empty} split of {data.source} is empty; give it images or change data.{empty}_size"
        )
    x_train = data.x_train[train_index]
    xf = x_train.float() / 255.0
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return Splits(
        name=data.name,
        x_train=x_train,
        y_train=data.y_train[train_index],
        x_val=data.x_train[val_index],
        y_val=data.y_train[val_index],
        x_test=data.x_test[test_index],
        y_test=data.y_test[test_index],
        num_classes=data.num_classes,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        source=data.source,
        train_index=train_index,
        val_index=val_index,
    )


# --------------------------------------------------------------------------- batches


class Batches:
    """Iterates over an in-memory split in (normalised image, label) batches.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a run resumed from a
    checkpoint sees exactly the batches an uninterrupted run would have seen.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: str = "none",
        device: torch.device | str = "cpu",
        drop_last: bool = False,
    ):
        if augment not in ("none", "crop_flip"):
            raise ValueError(f"unknown augment {augment!r}; use 'none' or 'crop_flip'")
        self.device = torch.device(device)
        self.x = x.to(self.device)  # uint8 (N, C, H, W)
        self.y = y.to(self.device)
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.shuffle, self.seed, self.augment, self.drop_last = shuffle, seed, augment, drop_last

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def normalise(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float() / 255.0 - self.mean) / self.std

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch ``epoch``'s batches from batch ``start`` on (a run resumed mid-epoch): the skipped
        batches still draw their augmentation, so the rest are those of an uninterrupted epoch."""
        n = len(self.y)
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            if i < start and self.augment == "none":
                continue
            x = self.x[idx]
            if self.augment == "crop_flip":
                x = _crop_flip(x, g)
            if i >= start:
                yield self.normalise(x), self.y[idx]

    __iter__ = epoch


def _crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad`` zero padding and random horizontal flip (the CIFAR standard)."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g).tolist()
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g).tolist()
    flip = torch.rand(b, generator=g) < 0.5
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    out[flip] = out[flip].flip(-1)
    return out
