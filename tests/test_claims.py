"""Statistics over seeds and the claims table, against values computed by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from puppet.report.claims import ClaimError, check_claims, evaluate_claim, hardest_pair, seed_summary, write_claims
from puppet.report.stats import Interval, paired_differences, t_interval, verdict

T_975_2 = 4.302652729911275  # Student t, 97.5th percentile, 2 degrees of freedom (tables)
T_975_3 = 3.182446305284263  # 3 degrees of freedom


def test_t_interval_by_hand():
    ci = t_interval([1.0, 2.0, 3.0])  # mean 2, s = 1
    assert ci.n == 3 and ci.mean == pytest.approx(2.0)
    assert ci.low == pytest.approx(2 - T_975_2 / math.sqrt(3))
    assert ci.high == pytest.approx(2 + T_975_2 / math.sqrt(3))
    ci4 = t_interval([10.0, 12.0, 14.0, 16.0])  # mean 13, s = sqrt(20/3)
    assert (ci4.high - ci4.low) / 2 == pytest.approx(T_975_3 * math.sqrt(20 / 3) / 2)


def test_t_interval_without_spread_or_seeds():
    one = t_interval([5.0])
    assert one.mean == 5.0 and math.isnan(one.low) and one.n == 1
    assert t_interval([]).n == 0
    assert t_interval([2.0, float("nan"), 4.0]).n == 2  # a missing seed is left out, not counted as 0
    flat = t_interval([3.0, 3.0, 3.0])
    assert flat.low == flat.high == 3.0


def test_paired_differences_pair_by_seed():
    model = {0: 80.0, 1: 82.0, 2: 81.0, 3: 90.0}
    base = {2: 80.0, 1: 80.0, 0: 79.0}  # seed 3 has no baseline: left out
    assert paired_differences(model, base) == {0: 1.0, 1: 2.0, 2: 1.0}
    ci = t_interval(paired_differences(model, base).values())
    half = T_975_2 * math.sqrt(1 / 3) / math.sqrt(3)  # s of (1, 2, 1) = sqrt(1/3)
    assert ci.mean == pytest.approx(4 / 3) and ci.low == pytest.approx(4 / 3 - half)


@pytest.mark.parametrize(
    "interval, threshold, expected",
    [
        (Interval(1.0, 0.5, 1.5, 3), 0.0, "supported"),
        (Interval(0.5, 0.0, 1.0, 3), 0.0, "inconclusive"),  # touching the threshold is not above it
        (Interval(-0.5, -1.0, 0.0, 3), 0.0, "inconclusive"),
        (Interval(-0.5, -1.0, -1e-9, 3), 0.0, "contradicted"),
        (Interval(-0.3, -0.45, -0.15, 3), -0.5, "supported"),  # "matches" within a 0.5 margin
        (Interval(-0.7, -0.9, -0.51, 3), -0.5, "contradicted"),
        (Interval(3.0, math.nan, math.nan, 1), 0.0, "inconclusive"),  # one seed: no interval, no verdict
    ],
)
def test_verdict_rule_at_its_boundaries(interval, threshold, expected):
    assert verdict(interval, threshold) == expected


def _metrics(values: dict[str, list[float]], **cols) -> pd.DataFrame:
    rows = []
    for model, tops in values.items():
        for seed, top1 in enumerate(tops):
            rows.append(
                dict(
                    profile="t",
                    dataset="fashion_mnist",
                    model=model,
                    seed=seed,
                    deployment="default",
                    status="ok",
                    top1=top1,
                    stored_params=cols.get(model, 100),
                    train_size=55000,
                    test_size=10000,
                    max_channels=32,
                    epochs=5,
                )
            )
    return pd.DataFrame(rows)


def test_a_claim_against_two_baselines_is_tested_against_each():
    metrics = _metrics({"g": [95.0, 94.0, 96.0], "c": [92.0, 93.0, 92.5], "r": [93.0, 92.0, 94.0]})
    claim = dict(id="x", claim="g beats c and r", source="s", kind="paired", model="g", baseline=["c", "r"])
    row = evaluate_claim(claim, metrics, None, [])
    # against r: 2, 2, 2 (supported, no spread); against c: 3, 1, 3.5, mean 2.5, s = 1.3229: inconclusive
    s_c = math.sqrt(((3 - 2.5) ** 2 + (1 - 2.5) ** 2 + (3.5 - 2.5) ** 2) / 2)
    assert row["effect"] == pytest.approx(2.5) and row["seeds"] == 3
    assert row["ci_low"] == pytest.approx(2.5 - T_975_2 * s_c / math.sqrt(3))
    assert row["verdict"] == "inconclusive" and "least favourable (c)" in row["rule"] and row["baseline"] == "c / r"
    only_r = evaluate_claim({**claim, "baseline": ["r"]}, metrics, None, [])
    assert only_r["verdict"] == "supported" and only_r["effect"] == pytest.approx(2.0)
    assert "3 seeds" in row["setting"] and "55000 train" in row["setting"]


def test_matches_claim_uses_its_margin_and_missing_runs_say_not_run():
    metrics = _metrics({"p": [80.0, 80.5, 79.5], "f": [80.2, 80.4, 80.0]})
    claim = dict(
        id="m", claim="p matches f", source="s", kind="paired", model="p", baseline="f", relation="matches", margin=1.0
    )
    row = evaluate_claim(claim, metrics, None, [])
    assert row["threshold"] == -1.0 and row["verdict"] == "supported"  # -0.2 ± 0.745: above -1
    row = evaluate_claim({**claim, "baseline": "absent"}, metrics, None, [])
    assert row["verdict"] == "not run" and "absent" in row["rule"]


def test_ratio_claim_reads_about_with_its_tolerance():
    metrics = _metrics({"small": [1.0, 1.0], "big": [1.0, 1.0]}, small=100, big=260)
    claim = dict(id="r", claim="3x fewer", source="s", kind="ratio", model="small", baseline="big", factor=3)
    row = evaluate_claim(claim, metrics, None, [])
    assert row["effect"] == pytest.approx(2.6) and row["threshold"] == pytest.approx(2.4)
    assert row["verdict"] == "supported"
    assert evaluate_claim({**claim, "factor": 3.5}, metrics, None, [])["verdict"] == "contradicted"


def test_hardest_pair_sums_both_directions():
    a = [[50, 3, 0], [9, 40, 1], [0, 0, 45]]
    b = [[50, 1, 4], [2, 40, 0], [5, 0, 45]]
    # (0,1): 3+9+1+2 = 15, (0,2): 0+0+4+5 = 9, (1,2): 1+0 = 1
    assert hardest_pair([a, b]) == (0, 1)


def test_confusion_claim_counts_the_hardest_pair_per_seed():
    metrics = _metrics({"g": [90.0] * 3, "c": [90.0] * 3})

    def record(model, seed, n):  # n confusions of class 0 as 1, 2 of 1 as 0
        return dict(
            dataset="fashion_mnist",
            model=model,
            seed=seed,
            status="ok",
            confusion=[[100 - n, n, 0], [2, 98, 0], [0, 1, 99]],
        )

    records = [record("g", s, n) for s, n in enumerate((5, 6, 7))] + [
        record("c", s, n) for s, n in enumerate((20, 25, 21))
    ]
    claim = dict(
        id="c",
        claim="fewer confusions",
        source="s",
        kind="confusion",
        model="g",
        baseline="c",
        class_names={0: "T-shirt", 1: "Trouser"},
    )
    row = evaluate_claim(claim, metrics, None, records)
    assert row["metric"] == "confusions" and row["model_mean"] == pytest.approx(8.0)  # 5+2, 6+2, 7+2
    assert row["effect"] == pytest.approx((15 + 19 + 14) / 3)  # baseline minus model: fewer is better
    assert row["verdict"] == "supported" and "T-shirt and Trouser" in row["rule"]
    assert "own test predictions" in row["rule"]  # the row says the pair was chosen on what it scores
    named = evaluate_claim({**claim, "pair": [1, 2]}, metrics, None, records)  # (1, 2): 0 + 1 in every run
    assert named["model_mean"] == pytest.approx(1.0) and named["verdict"] == "inconclusive"  # a difference of 0
    assert "named by the claim" in named["rule"]


def _mor(seed, pod, prune):
    rows = [
        dict(
            dataset="fashion_mnist",
            model="node_conv",
            seed=seed,
            status="ok",
            method="full",
            level=784,
            finetuned=False,
            top1=85.0,
            speedup_total=1.0,
        )
    ]
    for method, points in (("pod_deim", pod), ("prune", prune)):
        for level, (top1, speedup) in enumerate(points):
            rows.append(
                dict(
                    dataset="fashion_mnist",
                    model="node_conv",
                    seed=seed,
                    status="ok",
                    method=method,
                    level=level,
                    finetuned=False,
                    top1=top1,
                    speedup_total=speedup,
                )
            )
    return rows


def test_mor_balance_compares_speedups_at_the_accuracy_floor():
    mor = pd.DataFrame(
        _mor(0, pod=[(84.5, 2.5), (80.0, 3.0)], prune=[(84.2, 1.6)])  # within 1 pt: pod 2.5x, prune 1.6x
        + _mor(1, pod=[(83.0, 2.8)], prune=[(84.9, 1.2)])  # pod loses 2 pts: falls back to the full model, 1x
        + _mor(2, pod=[(84.1, 2.0)], prune=[(84.0, 1.5)])
    )
    metrics = _metrics({"node_conv": [85.0] * 3})
    claim = dict(id="mor", claim="POD-DEIM best", source="s", kind="mor_balance", model="node_conv", baseline="prune")
    row = evaluate_claim(claim, metrics, mor, [])
    assert row["effect"] == pytest.approx((0.9 - 0.2 + 0.5) / 3)  # 2.5-1.6, 1.0-1.2, 2.0-1.5
    assert row["verdict"] == "inconclusive" and row["baseline"] == "prune"
    # a seed without one of the named methods says nothing (never a tie), and the row says which
    gap = mor[~((mor["seed"] == 2) & (mor["method"] == "prune"))]
    row = evaluate_claim(claim, metrics, gap, [])
    assert row["seeds"] == 2 and row["effect"] == pytest.approx((0.9 - 0.2) / 2) and "seed 2: no prune" in row["rule"]
    # an unmeasured speed-up is unknown, not 1x: its seed is left out
    unmeasured = mor.copy()
    unmeasured.loc[(unmeasured["seed"] == 0) & (unmeasured["method"] == "prune"), "speedup_total"] = float("nan")
    row = evaluate_claim(claim, metrics, unmeasured, [])
    assert row["seeds"] == 2 and row["effect"] == pytest.approx((-0.2 + 0.5) / 2)
    assert "seed 0: prune has an unmeasured speed-up" in row["rule"]


def test_malformed_claims_are_refused_in_one_line(tmp_path):
    with pytest.raises(ClaimError, match=r"claims\[0\] \(a\): kind 'best' is not one of"):
        check_claims([dict(id="a", claim="c", source="s", kind="best", model="m", baseline="b")])
    with pytest.raises(ClaimError, match="needs 'factor'"):
        check_claims([dict(id="a", claim="c", source="s", kind="ratio", model="m", baseline="b")])
    base = dict(id="a", claim="c", source="s", kind="paired", model="m", baseline="b")
    with pytest.raises(ClaimError, match="a 'matches' claim needs 'margin'"):
        check_claims([{**base, "relation": "matches"}])
    with pytest.raises(ClaimError, match="'margin' applies to relation: matches only"):
        check_claims([{**base, "margin": 1.0}])
    with pytest.raises(ClaimError, match="metric 'top_1' is not one of"):
        check_claims([{**base, "metric": "top_1"}])
    with pytest.raises(ClaimError, match="svd_trunc is not a reduction method"):
        check_claims([{**base, "kind": "mor_balance", "baseline": ["prune", "svd_trunc"]}])


def test_write_claims_and_seed_summary(tmp_path):
    metrics = _metrics({"a": [80.0, 81.0, 82.0], "b": [70.0, 71.0, 72.0]})
    claims = [dict(id="ab", claim="a beats b", source="s", kind="paired", model="a", baseline="b")]
    out = write_claims(metrics, None, [], claims, tmp_path)
    table = pd.read_csv(tmp_path / "claims.csv")
    assert table.loc[0, "verdict"] == "supported" and table.loc[0, "effect"] == pytest.approx(10.0)
    summary = seed_summary(metrics)
    top1 = summary[(summary["model"] == "a") & (summary["metric"] == "top1")].iloc[0]
    assert top1["n_seeds"] == 3 and top1["seeds"] == "0 1 2" and top1["mean"] == pytest.approx(81.0)
    md = (tmp_path / "claims.md").read_text()
    assert "| a beats b |" in md and "**supported**" in md and "81.00 ± 2.48" in md
    assert list(out) == ["claims", "seed_summary", "mor_seeds"]
