"""What a person watching a training run sees, apart from the loop that feeds it.

Separate from ``puppet.core.train`` so the loop reads as the steps it takes, with one call to
``Progress`` per step and per epoch.
"""

from __future__ import annotations

import os
import sys


class Progress:
    """What a person watching a run sees (stderr: the run's log under Snakemake, ``tail -f`` it).

    On a terminal (and not under CI) each epoch is a tqdm bar with its ETA, loss, accuracy and
    images/s; elsewhere nothing per step. After every epoch one line: its loss, accuracy, speed and
    the run's ETA (the mean epoch so far times the epochs left); calibration and test evaluation
    say when they start and what they found."""

    def __init__(self, total_epochs: int, label: str):
        self.live = sys.stderr.isatty() and not os.environ.get("CI")
        self.total, self.label = total_epochs, label
        self.epoch_seconds: list[float] = []
        self._bar = None

    def start_epoch(self, epoch: int, n: int) -> None:
        if self.live:
            from tqdm import tqdm

            self._bar = tqdm(total=n, desc=f"{self.label} ep {epoch + 1}/{self.total}", leave=False, file=sys.stderr)

    def step(self, loss: float, acc: float, img_s: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {loss:.3f} acc {acc:.3f} {img_s:,.0f} img/s", refresh=False)
            self._bar.update(1)

    def epoch(
        self, epoch: int, loss: float, acc: float, img_s: float, seconds: float, val_top1: float | None = None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.epoch_seconds.append(seconds)
        left = (self.total - epoch - 1) * sum(self.epoch_seconds) / len(self.epoch_seconds)
        self.say(
            f"epoch {epoch + 1}/{self.total}: loss {loss:.4f} train_acc {acc:.4f} "
            + ("" if val_top1 is None else f"val_top1 {val_top1:.2f}% ")
            + f"{img_s:,.0f} img/s "
            f"{seconds:.1f}s; run ETA {duration(left)}"
        )

    def say(self, text: str) -> None:
        print(f"{self.label} {text}", file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """A span as a person reads it: ``"42 s"``, ``"3.5 min"``, ``"2.1 h"``."""
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.1f} min"
        if seconds < 7200
        else f"{seconds / 3600:.1f} h"
    )
