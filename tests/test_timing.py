"""The shared timing helper: order-statistic intervals, interleaved comparisons, a self-comparison."""

from __future__ import annotations

import time

import pytest
import torch

from puppet import create_model
from puppet.core import timing


def test_median_interval_uses_binomial_order_statistics():
    # n = 20 at 95 %: [x_(6), x_(15)] (the textbook table); n = 3 is too few: [min, max]
    est = timing.median_interval(list(range(20, 0, -1)))
    assert (est.median, est.low, est.high, est.n) == (10.5, 6, 15, 20)
    assert 1 - 2 * timing._binom_cdf(5, 20) >= 0.95 > 1 - 2 * timing._binom_cdf(6, 20)
    small = timing.median_interval([3.0, 1.0, 2.0])
    assert (small.median, small.low, small.high) == (2.0, 1.0, 3.0)
    with pytest.raises(ValueError):
        timing.median_interval([])


def test_noise_flag_and_record_columns():
    est = timing.Estimate(1.0, 0.97, 1.02, 10)
    assert not est.noisy() and est.noisy(threshold=0.01)
    assert est.record("latency", "s_per_img") == {
        "latency_s_per_img": 1.0,
        "latency_ci_low_s_per_img": 0.97,
        "latency_ci_high_s_per_img": 1.02,
        "latency_noisy": False,
    }
    inv = est.scaled_inverse(10.0)
    assert inv.low == pytest.approx(10 / 1.02) and inv.high == pytest.approx(10 / 0.97)


def test_a_model_timed_against_itself_has_a_ratio_interval_containing_one():
    torch.manual_seed(0)
    model = create_model("alexnet", max_channels=8).eval()
    images = [torch.randn(1, 3, 32, 32) for _ in range(4)]
    with torch.inference_mode():
        # a 99.9 % interval: a correct interval misses the true ratio 1 once in a thousand runs
        c = timing.compare(
            lambda i: model(images[i]), lambda i: model(images[i]), range(4), rounds=21, warmup=2, level=0.999
        )
    assert c.ratio.contains(1.0), c.ratio
    assert c.a.low <= c.a.median <= c.a.high and len(c.calls_a) == 21 and len(c.calls_a[0]) == 4


def test_comparison_detects_a_real_difference():
    c = timing.compare(lambda _: time.sleep(0.004), lambda _: time.sleep(0.002), [0, 1], rounds=9)
    assert 1.2 < c.ratio.low <= c.ratio.high < 2.5, c.ratio  # sleep overshoots under load: never by 2x


def test_p90_is_numpys():
    calls = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9], [1.0, 1.1, 1.2]]
    assert timing.p90(calls) == pytest.approx(1.09)
