"""The one timing helper of the harness: medians with intervals, and interleaved comparisons.

Used by ``puppet.core.measure`` (every latency and throughput in ``metrics.csv``) and by the
benchmarks in ``bench/``. The protocol:

* **warm-up**: ``warmup`` untimed calls over the inputs (allocator, cuDNN autotuning, caches);
* **rounds**: the timed work is repeated ``rounds`` times; one round calls ``fn`` once per
  input (each call synchronised on CUDA and timed on its own), and the round's value is the
  mean seconds per call. Rounds are the independent repetitions: the median over rounds is the
  estimate, and its interval says how much the machine's noise moves it. The spread between
  inputs (an adaptive model's depth differs per image) stays inside a round and never widens
  the interval;
* **interval**: a distribution-free confidence interval for the median (order statistics of
  the rounds: the k-th smallest and k-th largest, k from the Binomial(n, 1/2) distribution).
  It assumes nothing about the shape of the noise, and timing noise is skewed (a descheduled
  thread costs milliseconds, never saves them). Written here because it is one binomial
  CDF (``math.comb``): not worth a SciPy dependency;
* **noisy**: an estimate whose interval is wider than ``noise_threshold`` of its median (10 %
  by default) is flagged; a flagged number should not carry a claim;
* **comparisons** (``compare``) time two callables interleaved in one process: in each round
  both run on the same inputs, back to back, in alternating order (A B, then B A), and the
  round's ratio A/B is taken. Load that changes over seconds then hits both sides of a ratio,
  and the ratio's interval is the median ratio's, over rounds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

DEFAULT_LEVEL = 0.95
DEFAULT_NOISE_THRESHOLD = 0.10


@dataclass(frozen=True)
class Estimate:
    """A median over ``n`` rounds with its ``level`` confidence interval [low, high]."""

    median: float
    low: float
    high: float
    n: int
    level: float = DEFAULT_LEVEL

    @property
    def relative_width(self) -> float:
        return (self.high - self.low) / abs(self.median) if self.median else math.inf

    def noisy(self, threshold: float = DEFAULT_NOISE_THRESHOLD) -> bool:
        return self.relative_width > threshold

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def record(self, name: str, unit: str = "", threshold: float = DEFAULT_NOISE_THRESHOLD) -> dict[str, float | bool]:
        """Columns ``<name>[_unit]``, ``<name>_ci_low[_unit]``, ``<name>_ci_high[_unit]``, ``<name>_noisy``."""
        suffix = f"_{unit}" if unit else ""
        return {
            f"{name}{suffix}": self.median,
            f"{name}_ci_low{suffix}": self.low,
            f"{name}_ci_high{suffix}": self.high,
            f"{name}_noisy": self.noisy(threshold),
        }

    def scaled_inverse(self, scale: float) -> "Estimate":
        """``scale / self`` (e.g. images per batch / seconds per batch = images per second)."""
        return Estimate(scale / self.median, scale / self.high, scale / self.low, self.n, self.level)

    def __str__(self) -> str:
        return f"{self.median:.4g} [{self.low:.4g}, {self.high:.4g}]"


def _binom_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_interval(values: Sequence[float], level: float = DEFAULT_LEVEL) -> Estimate:
    """Median of ``values`` with a distribution-free ``level`` interval (order statistics).

    The interval [x_(k), x_(n+1-k)] (1-based, sorted) covers the true median with probability
    1 - 2 P(X <= k - 1), X ~ Binomial(n, 1/2); k is the largest index keeping that >= level.
    With too few values for the level (n < 6 at 95 %) the interval is [min, max], which then
    covers less than ``level``: the estimate is flagged noisy by its width anyway, or should be.
    """
    if not values:
        raise ValueError("median_interval needs at least one value")
    xs = sorted(float(v) for v in values)
    n = len(xs)
    median = xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])
    k = 1
    while k + 1 <= (n + 1) // 2 and 1 - 2 * _binom_cdf(k, n) >= level:
        k += 1
    return Estimate(median, xs[k - 1], xs[n - k], n, level)


def sync(device: torch.device | str | None) -> None:
    """Wait for queued CUDA work, so a timer measures the work and not its launch."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed_round(fn: Callable, inputs: Sequence, device) -> list[float]:
    """Seconds of each call ``fn(item)``, one per input."""
    times = []
    for item in inputs:
        sync(device)
        t0 = time.perf_counter()
        fn(item)
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _warm_up(fns: Iterable[Callable], inputs: Sequence, warmup: int, device) -> None:
    for fn in fns:
        for i in range(warmup):
            fn(inputs[i % len(inputs)])
    sync(device)


def time_calls(
    fn: Callable, inputs: Sequence, *, rounds: int, warmup: int = 1, device: torch.device | str | None = None
) -> list[list[float]]:
    """Seconds of every call ``fn(item)``: one list per round, one value per input."""
    if rounds < 1 or not inputs:
        raise ValueError("time_calls needs rounds >= 1 and at least one input")
    _warm_up([fn], inputs, warmup, device)
    return [_timed_round(fn, inputs, device) for _ in range(rounds)]


def per_round(calls: list[list[float]], level: float = DEFAULT_LEVEL) -> Estimate:
    """Median over rounds of the mean seconds per call, with its interval."""
    return median_interval([_mean(r) for r in calls], level)


def timed(
    fn: Callable, inputs: Sequence, *, rounds: int, warmup: int = 1, device=None, level: float = DEFAULT_LEVEL
) -> Estimate:
    """Median seconds per call over ``rounds`` rounds, with its interval."""
    return per_round(time_calls(fn, inputs, rounds=rounds, warmup=warmup, device=device), level)


@dataclass(frozen=True)
class Comparison:
    a: Estimate  # seconds per call of A
    b: Estimate  # seconds per call of B
    ratio: Estimate  # A / B, paired per round
    calls_a: list[list[float]]  # seconds of every call, per round
    calls_b: list[list[float]]


def compare(
    fn_a: Callable,
    fn_b: Callable,
    inputs: Sequence,
    *,
    rounds: int,
    warmup: int = 1,
    device=None,
    level: float = DEFAULT_LEVEL,
) -> Comparison:
    """Time A and B interleaved: each round times both over the same inputs, alternating which
    goes first; the ratio A/B is taken per round and summarised by its median and interval."""
    if rounds < 1 or not inputs:
        raise ValueError("compare needs rounds >= 1 and at least one input")
    _warm_up([fn_a, fn_b], inputs, warmup, device)
    calls_a, calls_b = [], []
    for r in range(rounds):
        if r % 2 == 0:
            calls_a.append(_timed_round(fn_a, inputs, device))
            calls_b.append(_timed_round(fn_b, inputs, device))
        else:
            calls_b.append(_timed_round(fn_b, inputs, device))
            calls_a.append(_timed_round(fn_a, inputs, device))
    ratios = [_mean(a) / _mean(b) for a, b in zip(calls_a, calls_b)]
    return Comparison(
        per_round(calls_a, level), per_round(calls_b, level), median_interval(ratios, level), calls_a, calls_b
    )


def p90(calls: list[list[float]]) -> float:
    """90th percentile of every timed call (numpy's linear interpolation): the harness' one p90."""
    return float(np.percentile([t for r in calls for t in r], 90))


# --------------------------------------------------------------------------- a quiet machine

# A timing job waits (up to QUIET_PATIENCE_S, or $PUPPET_QUIET_PATIENCE_S) for the rest of the
# machine to use less than QUIET_CORES cores, sampled over QUIET_WINDOW_S while it sleeps; if it never
# does, the job times all the same and its rows say so (timing_contended, machine_busy_cores).
QUIET_CORES = 0.5
QUIET_WINDOW_S = 0.5
QUIET_PATIENCE_S = 30.0


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot (Linux ``/proc/stat``), or None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(window_s: float = QUIET_WINDOW_S) -> float | None:
    """Cores kept busy by other processes over ``window_s`` seconds, while this one sleeps (None where
    the system does not say)."""
    import os

    before = _cpu_jiffies()
    time.sleep(window_s)
    after = _cpu_jiffies()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


def wait_for_quiet(patience_s: float | None = None, threshold: float = QUIET_CORES) -> float | None:
    """Wait until other processes use under ``threshold`` cores, at most ``patience_s`` seconds;
    return the last sample (cores busy; None where unknown)."""
    import os

    if patience_s is None:
        patience_s = float(os.environ.get("PUPPET_QUIET_PATIENCE_S", QUIET_PATIENCE_S))
    deadline = time.monotonic() + patience_s
    busy = busy_cores()
    while busy is not None and busy >= threshold and time.monotonic() < deadline:
        busy = busy_cores(1.0)
    return busy
