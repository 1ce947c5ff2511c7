"""The papers' claims put to the test: per-model means over seeds and one verdict per claim.

A profile lists its claims under ``claims`` (config/claims.yaml); each names the sentence it tests, its
source, the models compared and how (``kind``):

* ``paired``: a metric of ``model`` against ``baseline`` (or the best of a list of baselines), paired
  by seed. ``relation: beats`` tests effect > 0; ``relation: matches`` tests effect > -``margin``
  (a non-inferiority margin, in the metric's unit). Higher is better for every metric but those in
  ``LOWER_IS_BETTER``; the effect is oriented so that positive favours the claim.
* ``confusion``: the same on the count of test images confused between the most-confused pair of
  classes (chosen once from the compared runs' summed confusion matrices), lower is better.
* ``ratio``: a cost of ``baseline`` over the same cost of ``model`` (parameters, MACs): exact counts,
  no interval. "About N times" reads as at least N x (1 - ``tolerance``), tolerance 0.2 by default.
* ``mor_balance``: the MOR study of the Neural ODE ``model``. Per seed, each reduction method's best
  end-to-end speed-up among its reductions whose top-1 stays within ``max_drop`` points of the full
  model's (the full model itself, 1x, when none does); the effect is ``method``'s speed-up (default
  ``pod_deim``) minus the best of the ``baseline`` methods'.

Effects, intervals and verdicts follow ``puppet.report.stats``. Claims whose runs are missing or
failed say so (verdict ``not run``), never a number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from puppet.core.io import atomic_write_csv, atomic_write_text
from puppet.report.stats import Interval, paired_differences, t_interval, verdict

KINDS = ("paired", "confusion", "ratio", "mor_balance")
RELATIONS = ("beats", "matches")
LOWER_IS_BETTER = ("confusions", "latency_s_per_img", "macs", "stored_params", "train_time_s")
NOT_RUN = "not run"
# What each kind compares when the claim names no metric
DEFAULT_METRIC = {"paired": "top1", "confusion": "confusions", "ratio": "stored_params", "mor_balance": "speedup_total"}
# Columns of seed_summary.csv: every metric a reader compares models by, mean over seeds with its interval.
SUMMARY_METRICS = ("top1", "top5", "stored_params", "macs", "train_time_s", "latency_s_per_img")
CLAIM_COLUMNS = [
    "id",
    "claim",
    "source",
    "setting",
    "kind",
    "dataset",
    "model",
    "baseline",
    "metric",
    "seeds",
    "model_mean",
    "baseline_mean",
    "effect",
    "ci_low",
    "ci_high",
    "threshold",
    "verdict",
    "rule",
]


class ClaimError(ValueError):
    """A claim the profile states in a form this code cannot test; one line naming the fix."""


def check_claims(claims: list[dict]) -> None:
    """Refuse a malformed claims list before any work, naming the claim and the fix."""
    seen = set()
    for i, c in enumerate(claims):
        where = f"claims[{i}] ({c.get('id', 'no id')})"
        for key in ("id", "claim", "source", "kind", "model", "baseline"):
            if key not in c:
                raise ClaimError(f"{where}: missing '{key}'")
        if c["kind"] not in KINDS:
            raise ClaimError(f"{where}: kind {c['kind']!r} is not one of {', '.join(KINDS)}")
        if c.get("relation", "beats") not in RELATIONS:
            raise ClaimError(f"{where}: relation {c['relation']!r} is not one of {', '.join(RELATIONS)}")
        if c["kind"] == "ratio" and not c.get("factor"):
            raise ClaimError(f"{where}: a ratio claim needs 'factor' (the claimed N in 'N times fewer')")
        if c["id"] in seen:
            raise ClaimError(f"{where}: id {c['id']!r} is used twice")
        seen.add(c["id"])


# ---------------------------------------------------------------------------------------------
# Values per seed


def _baselines(claim: dict) -> list[str]:
    b = claim["baseline"]
    return [b] if isinstance(b, str) else list(b)


def _ok(metrics: pd.DataFrame) -> pd.DataFrame:
    rows = metrics[(metrics["deployment"] == "default") & (metrics["status"] == "ok")]
    return rows


def _dataset(claim: dict, ok: pd.DataFrame) -> str | None:
    if claim.get("dataset"):
        return claim["dataset"]
    names = [claim["model"]] + ([] if claim["kind"] == "mor_balance" else _baselines(claim))
    shared = [d for d, g in ok.groupby("dataset") if set(names) <= set(g["model"])]
    return sorted(shared)[0] if shared else None


def per_seed(ok: pd.DataFrame, dataset: str, model: str, metric: str) -> dict[int, float]:
    rows = ok[(ok["dataset"] == dataset) & (ok["model"] == model)]
    if metric not in rows:
        return {}
    return {int(s): float(v) for s, v in zip(rows["seed"], rows[metric]) if not pd.isna(v)}


def _best_baseline(values: list[dict[int, float]], lower: bool) -> dict[int, float]:
    """Per seed, the best of several baselines (each seed needs all of them)."""
    seeds = set.intersection(*(set(v) for v in values)) if values else set()
    pick = min if lower else max
    return {s: pick(v[s] for v in values) for s in sorted(seeds)}


def hardest_pair(matrices: Iterable[list[list[int]]]) -> tuple[int, int] | None:
    """The unordered class pair (i < j) with the most confusions, both ways, summed over ``matrices``."""
    total = None
    for m in matrices:
        frame = pd.DataFrame(m, dtype=float)
        total = frame if total is None else total.add(frame, fill_value=0)
    if total is None or total.shape[0] < 2:
        return None
    k = total.shape[0]
    pairs = {(i, j): total.iat[i, j] + total.iat[j, i] for i in range(k) for j in range(i + 1, k)}
    return max(pairs, key=lambda p: (pairs[p], -p[0], -p[1]))


# ---------------------------------------------------------------------------------------------
# One claim


def _row(claim: dict, dataset: str | None, **values: Any) -> dict:
    return {
        "id": claim["id"],
        "claim": claim["claim"],
        "source": claim["source"],
        "kind": claim["kind"],
        "dataset": dataset or "",
        "model": claim["model"],
        "baseline": " / ".join(_baselines(claim)),
        "metric": claim.get("metric", DEFAULT_METRIC[claim["kind"]]),
        **values,
    }


def _setting(ok: pd.DataFrame, dataset: str, models: list[str], seeds: int) -> str:
    rows = ok[(ok["dataset"] == dataset) & ok["model"].isin(models)]

    def one(col: str) -> str:
        vals = sorted({str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in rows[col].dropna()})
        return "/".join(vals) if vals else "?"

    return (
        f"{dataset}, {one('train_size')} train / {one('test_size')} test images, width {one('max_channels')}, "
        f"{one('epochs')} epochs, {seeds} seed{'s' if seeds != 1 else ''}"
    )


def _compared(claim, dataset, ok, model_vals, base_vals, lower, rule) -> dict:
    """A paired comparison: the effect's interval and the verdict against the claim's threshold."""
    diffs = paired_differences(model_vals, base_vals)
    sign = -1.0 if lower else 1.0
    effect = t_interval(sign * d for d in diffs.values())
    margin = float(claim.get("margin", 0.0)) if claim.get("relation", "beats") == "matches" else 0.0
    threshold = -margin if margin else 0.0
    names = [claim["model"], *_baselines(claim)]
    return _row(
        claim,
        dataset,
        setting=claim.get("setting") or _setting(ok, dataset, names, effect.n),
        seeds=effect.n,
        model_mean=t_interval(model_vals[s] for s in diffs).mean,
        baseline_mean=t_interval(base_vals[s] for s in diffs).mean,
        effect=effect.mean,
        ci_low=effect.low,
        ci_high=effect.high,
        threshold=threshold,
        verdict=verdict(effect, threshold) if effect.n else NOT_RUN,
        rule=rule + (f"; supported when the 95% interval lies above -{margin:g}" if margin else ""),
    )


def _not_run(claim: dict, dataset: str | None, why: str) -> dict:
    return _row(claim, dataset, setting=claim.get("setting", ""), seeds=0, verdict=NOT_RUN, rule=why)


def evaluate_claim(claim: dict, metrics: pd.DataFrame, mor: pd.DataFrame | None, records: list[dict]) -> dict:
    ok = _ok(metrics)
    dataset = _dataset(claim, ok)
    names = [claim["model"]] + ([] if claim["kind"] == "mor_balance" else _baselines(claim))
    if dataset is None:
        missing = [n for n in names if n not in set(ok["model"])]
        return _not_run(claim, None, f"no finished runs of {', '.join(missing) or ' and '.join(names)} on one dataset")
    kind, metric = claim["kind"], claim.get("metric", "top1")
    if kind == "ratio":
        return _ratio(claim, dataset, ok)
    if kind == "mor_balance":
        return _mor_balance(claim, dataset, ok, mor)
    if kind == "confusion":
        return _confusion(claim, dataset, ok, records)
    lower = metric in LOWER_IS_BETTER
    model_vals = per_seed(ok, dataset, claim["model"], metric)
    base_vals = _best_baseline([per_seed(ok, dataset, b, metric) for b in _baselines(claim)], lower)
    best = "the best of the baselines" if len(_baselines(claim)) > 1 else "the baseline"
    rule = f"{metric} of {claim['model']} minus {best}, paired by seed" + (" (sign flipped: lower is better)" * lower)
    return _compared(claim, dataset, ok, model_vals, base_vals, lower, rule)


def _ratio(claim: dict, dataset: str, ok: pd.DataFrame) -> dict:
    metric = claim.get("metric", DEFAULT_METRIC["ratio"])
    model = t_interval(per_seed(ok, dataset, claim["model"], metric).values()).mean
    base = t_interval(per_seed(ok, dataset, _baselines(claim)[0], metric).values()).mean
    factor, tolerance = float(claim["factor"]), float(claim.get("tolerance", 0.2))
    if not (model > 0 and base > 0):
        return _not_run(claim, dataset, f"no {metric} for both models")
    ratio, floor = base / model, factor * (1 - tolerance)
    return _row(
        {**claim, "metric": metric},
        dataset,
        setting=claim.get("setting") or f"{dataset}, as built for the runs (counts do not depend on the seed)",
        seeds=int(ok[(ok["dataset"] == dataset) & (ok["model"] == claim["model"])]["seed"].nunique()),
        model_mean=model,
        baseline_mean=base,
        effect=ratio,
        threshold=floor,
        verdict="supported" if ratio >= floor else "contradicted",
        rule=f"{metric} ratio baseline / model, an exact count (no interval); claimed about {factor:g}x, read as "
        f">= {floor:g}x (tolerance {tolerance:g})",
    )


def _confusion(claim: dict, dataset: str, ok: pd.DataFrame, records: list[dict]) -> dict:
    names = [claim["model"], *_baselines(claim)]
    runs = [
        r
        for r in records
        if r.get("dataset") == dataset and r.get("model") in names and r.get("status") == "ok" and r.get("confusion")
    ]
    pair = hardest_pair(r["confusion"] for r in runs)
    if pair is None:
        return _not_run(claim, dataset, "no confusion matrix in the runs' train.json (runs made before it was kept)")
    i, j = pair
    counts: dict[str, dict[int, float]] = {n: {} for n in names}
    for r in runs:
        counts[r["model"]][int(r["seed"])] = float(r["confusion"][i][j] + r["confusion"][j][i])
    base = _best_baseline([counts[b] for b in _baselines(claim)], lower=True)
    label = {int(k): v for k, v in (claim.get("class_names") or {}).items()}
    rule = (
        f"test images confused between classes {label.get(i, i)} and {label.get(j, j)} (both ways; the most-confused "
        f"pair over the compared runs): the fewest of the baselines minus {claim['model']}'s, paired by seed"
    )
    row = _compared({**claim, "metric": "confusions"}, dataset, ok, counts[claim["model"]], base, True, rule)
    return {**row, "metric": "confusions"}


def _best_speedup(rows: pd.DataFrame, full_top1: float, max_drop: float) -> float:
    kept = rows[rows["top1"] >= full_top1 - max_drop]
    return max(1.0, float(kept["speedup_total"].max())) if len(kept) else 1.0


def _mor_balance(claim: dict, dataset: str, ok: pd.DataFrame, mor: pd.DataFrame | None) -> dict:
    if mor is None or mor.empty:
        return _not_run(claim, dataset, "no MOR study (results/mor.csv) in this profile")
    method, max_drop = claim.get("method", "pod_deim"), float(claim.get("max_drop", 1.0))
    rows = mor[(mor["dataset"] == dataset) & (mor["model"] == claim["model"]) & (mor["status"] == "ok")]
    ours, best_other = {}, {}
    for seed, g in rows.groupby("seed"):
        full = g[g["method"] == "full"]["top1"]
        if full.empty:
            continue
        compared = g[g["method"].isin([method, *_baselines(claim)])]
        speed = {m: _best_speedup(gm, float(full.iloc[0]), max_drop) for m, gm in compared.groupby("method")}
        if method in speed and len(speed) > 1:
            ours[int(seed)] = speed.pop(method)
            best_other[int(seed)] = max(speed.values())
    others = [m for m in _baselines(claim) if m in set(rows["method"])]
    rule = (
        f"per seed, each method's best end-to-end speed-up with top-1 within {max_drop:g} points of the full model "
        f"(1x when none is): {method} minus the best of {', '.join(others) or 'no other method'}"
    )
    out = _compared({**claim, "metric": "speedup_total"}, dataset, ok, ours, best_other, False, rule)
    return {**out, "metric": "speedup_total", "baseline": " / ".join(others)}


# ---------------------------------------------------------------------------------------------
# Summaries and output


def seed_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """Each model's metrics over its seeds: mean and 95% t-interval (the runs' own forward)."""
    rows = []
    ok = _ok(metrics)
    for (dataset, model), g in ok.groupby(["dataset", "model"], sort=True):
        for metric in SUMMARY_METRICS:
            if metric not in g:
                continue
            ci = t_interval(g[metric])
            if ci.n:
                seeds = " ".join(str(int(s)) for s in sorted(g["seed"]))
                rows.append(
                    dict(
                        dataset=dataset,
                        model=model,
                        metric=metric,
                        n_seeds=ci.n,
                        mean=ci.mean,
                        ci_low=ci.low,
                        ci_high=ci.high,
                        seeds=seeds,
                    )
                )
    return pd.DataFrame(rows, columns=["dataset", "model", "metric", "n_seeds", "mean", "ci_low", "ci_high", "seeds"])


def mor_seed_summary(mor: pd.DataFrame | None) -> pd.DataFrame:
    """The MOR curves over seeds: each (method, level, fine-tuned) point's top-1 and speed-up, mean and interval."""
    columns = ["dataset", "model", "method", "level", "finetuned", "n_seeds"]
    columns += [f"{m}_{s}" for m in ("top1", "speedup_total") for s in ("mean", "ci_low", "ci_high")]
    if mor is None or mor.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    ok = mor[mor["status"] == "ok"]
    for key, g in ok.groupby(["dataset", "model", "method", "level", "finetuned"], sort=True):
        row = dict(zip(columns[:5], key), n_seeds=int(g["seed"].nunique()))
        for m in ("top1", "speedup_total"):
            ci = t_interval(g[m])
            row.update({f"{m}_mean": ci.mean, f"{m}_ci_low": ci.low, f"{m}_ci_high": ci.high})
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _pipe_table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _num(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def markdown(claims: pd.DataFrame, summary: pd.DataFrame) -> str:
    """The claims section of tables.md: one row per claim, then top-1 per model over seeds."""
    lines = ["## Claims put to the test", ""]
    lines += [
        "Effect: the model's advantage over its baseline, oriented so that a positive value favours the claim, "
        "mean over seeds ± the half-width of its 95% Student-t interval (paired by seed). Supported: the "
        "interval lies above the claim's threshold; contradicted: below it; inconclusive: it straddles it, or one "
        "seed gives no interval. Cost ratios are exact counts.",
        "",
    ]
    rows = []
    for _, c in claims.iterrows():
        effect = Interval(c["effect"], c["ci_low"], c["ci_high"], int(c["seeds"]))
        shown = effect.text() if c["kind"] != "ratio" else "—" if pd.isna(c["effect"]) else f"{c['effect']:.2f}x"
        rows.append(
            [
                c["claim"],
                c["source"],
                c["setting"] or "—",
                f"{c['model']} vs {c['baseline']}",
                c["metric"],
                shown,
                _num(c["threshold"]),
                f"**{c['verdict']}**",
            ]
        )
    header = ["Claim", "Source", "Setting", "Compared", "Metric", "Effect (95% CI)", "Threshold", "Verdict"]
    lines += _pipe_table(header, rows, "llllllrl") if rows else ["(no claims in this profile)"]
    top1 = summary[summary["metric"] == "top1"]
    if not top1.empty:
        lines += ["", "### Top-1 (%) over seeds", ""]
        body = [
            [
                r["dataset"],
                r["model"],
                str(r["n_seeds"]),
                Interval(r["mean"], r["ci_low"], r["ci_high"], int(r["n_seeds"])).text(),
            ]
            for _, r in top1.iterrows()
        ]
        lines += _pipe_table(["Dataset", "Model", "Seeds", "Top-1 (%), mean ± 95% CI"], body, "llrr")
    return "\n".join(lines) + "\n"


def read_records(paths: Iterable[str | Path]) -> list[dict]:
    """The run records (``train.json``) the confusion claims and learning curves read; unreadable ones skipped."""
    out = []
    for p in paths:
        try:
            out.append(json.loads(Path(p).read_text()))
        except (OSError, ValueError):
            continue
    return out


def write_claims(
    metrics: pd.DataFrame, mor: pd.DataFrame | None, records: list[dict], claims: list[dict], out_dir: str | Path
) -> dict[str, pd.DataFrame]:
    """``claims.csv``, ``seed_summary.csv``, ``mor_seeds.csv`` and ``claims.md`` into ``out_dir``."""
    check_claims(claims)
    out_dir = Path(out_dir)
    table = pd.DataFrame([evaluate_claim(c, metrics, mor, records) for c in claims]).reindex(columns=CLAIM_COLUMNS)
    summary, mor_seeds = seed_summary(metrics), mor_seed_summary(mor)
    atomic_write_csv(table, out_dir / "claims.csv")
    atomic_write_csv(summary, out_dir / "seed_summary.csv")
    atomic_write_csv(mor_seeds, out_dir / "mor_seeds.csv")
    atomic_write_text(markdown(table, summary), out_dir / "claims.md")
    return {"claims": table, "seed_summary": summary, "mor_seeds": mor_seeds}
