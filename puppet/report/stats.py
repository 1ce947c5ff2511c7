"""Statistics over seeds: a mean with its Student-t interval, paired differences, the verdict rule.

Seeds are few (three in the claims profile), so intervals use Student's t with n - 1 degrees of
freedom (``scipy.stats.t``), never a normal approximation. A comparison is paired by seed: seed s of
the model against seed s of its baseline (same data split, same data order where the models draw the
same batches), which removes the between-seed variation both share.

The verdict rule, for an effect oriented so that a positive value is in the claim's favour and a
threshold (0 for "beats", minus a margin for "matches"):

* ``supported``: the whole interval lies above the threshold;
* ``contradicted``: the whole interval lies below it;
* ``inconclusive``: the interval contains it, touches it, or there is no interval (fewer than two
  seeds). A verdict is never stronger than its interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
from scipy import stats

LEVEL = 0.95
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values with the two-sided ``level`` t-interval (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 2, unit: str = "") -> str:
        """``mean ± half-width`` (``mean (one seed)`` without an interval, ``—`` without a value)."""
        if self.n == 0 or math.isnan(self.mean):
            return "—"
        if math.isnan(self.low):
            return f"{self.mean:.{digits}f}{unit} (one seed)" if self.n == 1 else f"{self.mean:.{digits}f}{unit}"
        return f"{self.mean:.{digits}f} ± {(self.high - self.low) / 2:.{digits}f}{unit}"


def t_interval(values: Iterable[float], level: float = LEVEL) -> Interval:
    """Mean and two-sided t-interval of the non-NaN ``values``: mean ± t_{(1+level)/2, n-1} s / sqrt(n)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_differences(model: Mapping[int, float], baseline: Mapping[int, float]) -> dict[int, float]:
    """model[s] - baseline[s] for each seed s both have a value for, in seed order."""
    seeds = sorted(s for s in set(model) & set(baseline) if not (_nan(model[s]) or _nan(baseline[s])))
    return {s: float(model[s]) - float(baseline[s]) for s in seeds}


def _nan(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def verdict(interval: Interval, threshold: float = 0.0) -> str:
    """The rule in the module docstring: strict inequalities, no interval -> inconclusive."""
    if interval.n < 2 or math.isnan(interval.low) or math.isnan(interval.high):
        return INCONCLUSIVE
    if interval.low > threshold:
        return SUPPORTED
    if interval.high < threshold:
        return CONTRADICTED
    return INCONCLUSIVE
