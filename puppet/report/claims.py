"""The papers' claims put to the test: per-model means over seeds and one verdict per claim.

A profile lists its claims under ``claims`` (config/claims.yaml); each names the sentence it tests, its
source, the models compared and how (``kind``):

* ``paired``: a metric of ``model`` against ``baseline``, paired by seed. ``relation: beats`` tests
  effect > 0; ``relation: matches`` tests effect > -``margin`` (a non-inferiority margin in the metric's
  unit, required). The effect is oriented so that positive favours the claim (``HIGHER_IS_BETTER``).
  Against a list of baselines the claim is tested against each one on its own: supported when
  supported against all, contradicted when contradicted against any, the row showing the least
  favourable comparison (a per-seed best of noisy baselines would bias the comparator upwards).
* ``confusion``: the same on the count of test images confused, both ways, between two classes: the
  ``pair`` the claim names before the runs, or else the most-confused pair of the compared runs (said so
  in the row: chosen on the same predictions it scores).
* ``ratio``: a count (parameters, MACs) of one ``baseline`` over the same count of ``model``: exact, no
  interval. "About N times" reads as at least N x (1 - ``tolerance``), tolerance 0.2 by default.
* ``mor_balance``: the MOR study of the Neural ODE ``model``. Per seed, each named reduction method's
  best end-to-end speed-up among its reductions (plain or fine-tuned) whose top-1 stays within
  ``max_drop`` points of the full model's (the full model itself, 1x, when none does); the effect is
  ``method``'s speed-up (default ``pod_deim``) minus the best of the ``baseline`` methods'. A seed
  without the full model's top-1 or without one of the named methods is left out, and the row says so.

Effects, intervals and verdicts follow ``puppet.report.stats``; the interval covers the variation
between seeds on one split and one test set, not the sampling of the test set. A claim with no seed
to compare says ``not run``; a claim with fewer seeds than the profile's has a wider interval (its
``seeds`` column).
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
# Whether more is better, for every metric a claim may name (a claim naming another is refused).
HIGHER_IS_BETTER = {
    "top1": True, "top5": True, "throughput_img_per_s": True, "speedup_total": True,
    "stored_params": False, "total_params": False, "param_size_mb": False, "macs": False, "macs_g": False,
    "latency_s_per_img": False, "train_time_s": False, "test_loss": False, "confusions": False,
}  # fmt: skip
COUNTS = ("stored_params", "total_params", "param_size_mb", "macs")  # exact: what a ratio claim may compare
REDUCTIONS = ("pod_deim", "prune", "svd")  # puppet.compress.reduce.METHODS (not imported: it needs torch)
NOT_RUN = "not run"
# What each kind compares when the claim names no metric
DEFAULT_METRIC = {"paired": "top1", "confusion": "confusions", "ratio": "stored_params", "mor_balance": "speedup_total"}
# Columns of seed_summary.csv: every metric a reader compares models by, mean over seeds with its interval.
SUMMARY_METRICS = ("top1", "top5", "stored_params", "macs", "train_time_s", "latency_s_per_img")
CLAIM_COLUMNS = [
    "id", "claim", "source", "setting", "kind", "dataset", "model", "baseline", "metric", "seeds",
    "model_mean", "baseline_mean", "effect", "ci_low", "ci_high", "threshold", "verdict", "rule",
]  # fmt: skip


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
        kind, relation = c["kind"], c.get("relation", "beats")
        if kind not in KINDS:
            raise ClaimError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if relation not in RELATIONS:
            raise ClaimError(f"{where}: relation {relation!r} is not one of {', '.join(RELATIONS)}")
        if relation == "matches" and "margin" not in c:
            raise ClaimError(f"{where}: a 'matches' claim needs 'margin' (the non-inferiority margin, e.g. 1.0)")
        if relation == "beats" and "margin" in c:
            raise ClaimError(f"{where}: 'margin' applies to relation: matches only; drop it or set relation: matches")
        metric = c.get("metric", DEFAULT_METRIC[kind])
        if metric not in HIGHER_IS_BETTER:
            raise ClaimError(f"{where}: metric {metric!r} is not one of {', '.join(HIGHER_IS_BETTER)}")
        if kind == "ratio" and (not c.get("factor") or metric not in COUNTS or len(_baselines(c)) != 1):
            raise ClaimError(
                f"{where}: a ratio claim needs 'factor' (the N of 'N times fewer'), one baseline and a count "
                f"metric ({', '.join(COUNTS)})"
            )
        if kind == "mor_balance":
            unknown = [m for m in [c.get("method", "pod_deim"), *_baselines(c)] if m not in REDUCTIONS]
            if unknown:
                raise ClaimError(f"{where}: {', '.join(unknown)} is not a reduction method ({', '.join(REDUCTIONS)})")
        if c["id"] in seen:
            raise ClaimError(f"{where}: id {c['id']!r} is used twice")
        seen.add(c["id"])


# ---------------------------------------------------------------------------------------------
# Values per seed


def _baselines(claim: dict) -> list[str]:
    b = claim["baseline"]
    return [b] if isinstance(b, str) else list(b)


def _ok(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[(metrics["deployment"] == "default") & (metrics["status"] == "ok")]


def _datasets(claim: dict, ok: pd.DataFrame) -> list[str]:
    """The datasets every compared model has finished runs on (the claim's ``dataset`` where it names one)."""
    names = [claim["model"]] + ([] if claim["kind"] == "mor_balance" else _baselines(claim))
    shared = sorted(d for d, g in ok.groupby("dataset") if set(names) <= set(g["model"]))
    return [d for d in shared if d == claim["dataset"]] if claim.get("dataset") else shared


def per_seed(ok: pd.DataFrame, dataset: str, model: str, metric: str) -> dict[int, float]:
    rows = ok[(ok["dataset"] == dataset) & (ok["model"] == model)]
    if metric not in rows:
        return {}
    return {int(s): float(v) for s, v in zip(rows["seed"], rows[metric]) if not pd.isna(v)}


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


def _fixed_width(model: str) -> bool:
    """Whether the model is built at its paper's widths whatever max_channels says (False for unknown names)."""
    from puppet.core.registry import list_models, model_info  # imports torch: only when a setting is written

    return model in list_models() and model_info(model).fixed_width


def _setting(ok: pd.DataFrame, dataset: str, models: list[str], seeds: int) -> str:
    rows = ok[(ok["dataset"] == dataset) & ok["model"].isin(models)]

    def one(col: str) -> str:
        vals = sorted({str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in rows[col].dropna()})
        return "/".join(vals) if vals else "?"

    fixed = [m for m in models if _fixed_width(m)]
    width = "their papers' widths" if len(fixed) == len(models) else f"width {one('max_channels')}"
    if fixed and len(fixed) < len(models):
        width += f" ({', '.join(fixed)} at its paper's)"
    return (
        f"{dataset}, {one('train_size')} train / {one('test_size')} test images, {width}, "
        f"{one('epochs')} epochs, {seeds} seed{'s' if seeds != 1 else ''} paired"
    )


def _compared(claim, dataset, ok, model_vals, base_vals, higher, rule, names=None) -> dict:
    """A paired comparison: the effect's interval and the verdict against the claim's threshold."""
    diffs = paired_differences(model_vals, base_vals)
    effect = t_interval((d if higher else -d) for d in diffs.values())
    margin = float(claim["margin"]) if claim.get("relation", "beats") == "matches" else 0.0
    threshold = -margin if margin else 0.0
    if not effect.n:
        return _not_run(claim, dataset, f"no seed with a value for both sides ({rule})")
    return _row(
        claim,
        dataset,
        setting=claim.get("setting") or _setting(ok, dataset, names or [claim["model"], *_baselines(claim)], effect.n),
        seeds=effect.n,
        model_mean=t_interval(model_vals[s] for s in diffs).mean,
        baseline_mean=t_interval(base_vals[s] for s in diffs).mean,
        effect=effect.mean,
        ci_low=effect.low,
        ci_high=effect.high,
        threshold=threshold,
        verdict=verdict(effect, threshold),
        rule=rule + (f"; supported when the 95% interval's lower bound is above -{margin:g}" if margin else ""),
    )


def _against_each(claim: dict, dataset: str, ok: pd.DataFrame, model_vals, base_vals: dict, higher: bool, rule: str):
    """The claim against each baseline on its own (never against a per-seed best of them, which favours the
    baselines): supported when supported against every one, contradicted when contradicted against any;
    the row shows the least favourable comparison."""
    rows = {b: _compared({**claim, "baseline": b}, dataset, ok, model_vals, v, higher, rule.format(b=b))
            for b, v in base_vals.items()}  # fmt: skip
    verdicts = [r["verdict"] for r in rows.values()]

    def favour(b: str) -> tuple[bool, float]:  # not run first, then the lowest bound (or effect, one seed)
        r = rows[b]
        value = r.get("ci_low", math.nan)
        value = r.get("effect", math.nan) if pd.isna(value) else value
        return (r["verdict"] != NOT_RUN, math.inf if pd.isna(value) else value)

    worst = min(rows, key=favour)
    row = {**rows[worst], "baseline": " / ".join(_baselines(claim))}
    if len(rows) > 1:
        row["verdict"] = (
            NOT_RUN if NOT_RUN in verdicts
            else "contradicted" if "contradicted" in verdicts
            else "supported" if set(verdicts) == {"supported"}
            else "inconclusive"
        )  # fmt: skip
        row["rule"] = f"against each baseline separately, shown against the least favourable ({worst}): {row['rule']}"
    return row


def _not_run(claim: dict, dataset: str | None, why: str) -> dict:
    return _row(claim, dataset, setting=claim.get("setting", ""), seeds=0, verdict=NOT_RUN, rule=why)


def evaluate_claim(claim: dict, metrics: pd.DataFrame, mor: pd.DataFrame | None, records: list[dict]) -> dict:
    ok = _ok(metrics)
    datasets = _datasets(claim, ok)
    names = [claim["model"]] + ([] if claim["kind"] == "mor_balance" else _baselines(claim))
    if len(datasets) != 1:
        if datasets:
            return _not_run(claim, None, f"the models ran on {', '.join(datasets)}: name the claim's 'dataset'")
        missing = [n for n in names if n not in set(ok["model"])]
        return _not_run(claim, None, f"no finished runs of {', '.join(missing) or ' and '.join(names)} on one dataset")
    dataset, kind, metric = datasets[0], claim["kind"], claim.get("metric", DEFAULT_METRIC[claim["kind"]])
    if kind == "ratio":
        return _ratio(claim, dataset, ok)
    if kind == "mor_balance":
        return _mor_balance(claim, dataset, ok, mor)
    if kind == "confusion":
        return _confusion(claim, dataset, ok, records)
    higher = HIGHER_IS_BETTER[metric]
    model_vals = per_seed(ok, dataset, claim["model"], metric)
    base_vals = {b: per_seed(ok, dataset, b, metric) for b in _baselines(claim)}
    rule = f"{metric} of {claim['model']} minus {{b}}'s, paired by seed" + ("" if higher else " (lower is better)")
    return _against_each(claim, dataset, ok, model_vals, base_vals, higher, rule)


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
        setting=claim.get("setting") or f"{dataset}, the models as built for the runs (a count, the same every seed)",
        seeds=int(ok[(ok["dataset"] == dataset) & (ok["model"] == claim["model"])]["seed"].nunique()),
        model_mean=model,
        baseline_mean=base,
        effect=ratio,
        threshold=floor,
        verdict="supported" if ratio >= floor else "contradicted",
        rule=f"{metric} ratio baseline / model, an exact count (no interval); claimed {factor:g}x, read as "
        f">= {floor:g}x (tolerance {tolerance:g})",
    )


def _confusion(claim: dict, dataset: str, ok: pd.DataFrame, records: list[dict]) -> dict:
    names = [claim["model"], *_baselines(claim)]
    runs = [
        r
        for r in records
        if r.get("dataset") == dataset and r.get("model") in names and r.get("status") == "ok" and r.get("confusion")
    ]
    label = {int(k): v for k, v in (claim.get("class_names") or {}).items()}
    if claim.get("pair"):
        (i, j), chosen = sorted(int(c) for c in claim["pair"]), "named by the claim before the runs"
    else:
        pair = hardest_pair(r["confusion"] for r in runs)
        if pair is None:
            return _not_run(
                claim, dataset, "no confusion matrix in the runs' train.json (runs made before it was kept)"
            )
        (i, j), chosen = pair, "the most-confused pair of the compared runs' own test predictions"
    counts: dict[str, dict[int, float]] = {n: {} for n in names}
    for r in runs:
        counts[r["model"]][int(r["seed"])] = float(r["confusion"][i][j] + r["confusion"][j][i])
    rule = (
        f"test images confused between {label.get(i, i)} and {label.get(j, j)}, both ways ({chosen}): "
        f"{{b}}'s minus {claim['model']}'s, paired by seed"
    )
    claim = {**claim, "metric": "confusions"}
    return _against_each(
        claim, dataset, ok, counts[claim["model"]], {b: counts[b] for b in _baselines(claim)}, False, rule
    )


def _best_speedup(rows: pd.DataFrame, full_top1: float, max_drop: float) -> float:
    """The best speed-up among ``rows`` within ``max_drop`` of the full model (1x when none is); NaN when
    one of those has no measured speed-up (unknown, not 1x)."""
    kept = rows[rows["top1"] >= full_top1 - max_drop]
    if kept["speedup_total"].isna().any():
        return math.nan
    return max(1.0, float(kept["speedup_total"].max())) if len(kept) else 1.0


def _mor_balance(claim: dict, dataset: str, ok: pd.DataFrame, mor: pd.DataFrame | None) -> dict:
    if mor is None or mor.empty:
        return _not_run(claim, dataset, "no MOR study (results/mor.csv) in this profile")
    method, max_drop = claim.get("method", "pod_deim"), float(claim.get("max_drop", 1.0))
    wanted = [method, *_baselines(claim)]
    rows = mor[(mor["dataset"] == dataset) & (mor["model"] == claim["model"]) & (mor["status"] == "ok")]
    ours, best_other, skipped = {}, {}, []
    for seed, g in rows.groupby("seed"):
        full = g[g["method"] == "full"]["top1"].dropna()
        present = set(g["method"])
        if full.empty or not set(wanted) <= present:  # every named method measured, or the seed says nothing
            skipped.append(
                f"seed {seed}: "
                + ("no full-model top-1" if full.empty else f"no {', '.join(sorted(set(wanted) - present))}")
            )
            continue
        speed = {m: _best_speedup(g[g["method"] == m], float(full.iloc[0]), max_drop) for m in wanted}
        unmeasured = sorted(m for m, v in speed.items() if math.isnan(v))
        if unmeasured:
            skipped.append(f"seed {seed}: {', '.join(unmeasured)} has an unmeasured speed-up")
            continue
        ours[int(seed)] = speed.pop(method)
        best_other[int(seed)] = max(speed.values())
    rule = (
        f"per seed, each method's best end-to-end speed-up with top-1 within {max_drop:g} points of the full model "
        f"(plain or fine-tuned; 1x when none is): {method} minus the best of {', '.join(_baselines(claim))}"
        + (f"; left out: {'; '.join(skipped)}" if skipped else "")
    )
    return _compared({**claim, "metric": "speedup_total"}, dataset, ok, ours, best_other, True, rule, [claim["model"]])


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
                seeds = " ".join(str(int(s)) for s in sorted(g.loc[g[metric].notna(), "seed"]))
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
