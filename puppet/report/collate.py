"""Collect per-run JSON records into one tidy table: ``results/metrics.csv``.

One row per (profile, dataset, model, seed, deployment), with provenance columns: every run
has its ``default`` row (the model's own forward, the accuracy of the train job's test
evaluation and its per-sample statistics), and one more row per other way the run was deployed
and measured (``puppet.core.protocols.Deploys``), with that deployment's own accuracy and
costs. The run's provenance (recipe, data, training time, versions) is repeated on each of its
rows. A failed run is a ``default`` row with ``status=error`` and its message, a failed
deployment a row of its own, never a missing line.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from puppet.core.io import atomic_write_csv
from puppet.core.protocols import DEFAULT_DEPLOYMENT
from puppet.core.runs import read_record

KEY = ["profile", "dataset", "model", "seed", "deployment"]
RUN_KEY = KEY[:-1]

COLUMNS = KEY + [
    "deployment_label",
    "status",
    "error",
    "top1",
    "top5",
    "at_chance",
    "chance_bound",
    "stored_params",
    "total_params",
    "param_size_mb",
    "macs",
    "macs_generation",
    "macs_without_generation",
    "macs_min",
    "macs_max",
    "macs_cheapest_path",
    "cost_basis",
    "elementwise_ops",
    "latency_s_per_img",
    "latency_ci_low_s_per_img",
    "latency_ci_high_s_per_img",
    "latency_noisy",
    "timing_contended",
    "machine_busy_cores",
    "latency_p90_s_per_img",
    "throughput_img_per_s",
    "throughput_ci_low_img_per_s",
    "throughput_ci_high_img_per_s",
    "throughput_noisy",
    "throughput_batch",
    "speedup_vs_default",
    "speedup_vs_default_ci_low",
    "speedup_vs_default_ci_high",
    "throughput_speedup_vs_default",
    "throughput_speedup_vs_default_ci_low",
    "throughput_speedup_vs_default_ci_high",
    "trained",
    "train_time_s",
    "epochs",
    "max_channels",
    "recipe",
    "optimizer",
    "lr",
    "weight_decay",
    "batch_size",
    "schedule",
    "phases",
    "augment",
    "final_train_loss",
    "train_size",
    "val_size",
    "test_size",
    "data_source",
    "device",
    "threads",
    "torch_version",
    "cuda_version",
    "train_device",
    "train_cpu",
    "train_isa",
    "train_gpu",
    "train_torch_version",
    "slurm_job_id",
    "git_commit",
    "config_hash",
]


def _record(path: Path) -> dict:
    """A run's JSON record; a damaged one becomes an error record naming the file (the workflow
    sets such files aside and redoes the run; this keeps a hand-run collate from crashing)."""
    record, why = read_record(path)
    if record is None:
        return {"status": "error", "error": f"damaged {path} ({why}); rerun the workflow to redo the run"}
    return record


def _spec_width(model_pt: Path) -> float | None:
    """``max_channels`` from the run spec saved in ``model.pt`` (runs made before train.json had it)."""
    if not model_pt.is_file():
        return None
    import torch

    try:
        return torch.load(model_pt, map_location="cpu", weights_only=False)["spec"]["max_channels"]
    except Exception:  # a damaged model.pt: the width stays unknown, the row stands
        return None


# What the train job measured on the test split with the model's own forward: the default
# deployment's, never another deployment's (each of those measures its own accuracy).
TEST_COLUMNS = ("top1", "top5", "test_loss")


def run_rows(train_json: Path) -> list[dict]:
    """The metrics rows of one run folder: from its ``train.json`` and ``measure.json``, one per
    deployment measured (``default`` first), or one ``default`` row saying why there is none."""
    train = _record(Path(train_json))
    measure_path = Path(train_json).with_name("measure.json")
    measure = _record(measure_path) if measure_path.exists() else {"status": "missing", "error": "not measured"}
    run = {k: v for k, v in train.items() if not isinstance(v, (dict, list))}
    if "max_channels" not in run and train.get("status") == "ok":  # a run recorded before the column existed
        run["max_channels"] = _spec_width(Path(train_json).with_name("model.pt"))
    run.update({k: v for k, v in measure.items() if k not in ("status", "error") and not isinstance(v, (dict, list))})
    stats = train.get("stats") or {}  # adaptive models: mean_depth, mean_exit, ... (of the default forward)
    deployments = measure.get("deployments")
    if train.get("status") != "ok":
        status, error = "error", train.get("error", "")
    elif measure.get("status") == "ok" and not isinstance(deployments, list):
        status, error = "error", f"{measure_path} predates deployments; rerun the workflow to measure the run again"
    elif not isinstance(deployments, list):
        status, error = "error", f"measure: {measure.get('error', '')}"
    else:
        rows = []
        for deployment in deployments:
            row = (
                dict(run)
                if deployment["deployment"] == DEFAULT_DEPLOYMENT
                else {k: v for k, v in run.items() if k not in TEST_COLUMNS}
            )
            if deployment["deployment"] == DEFAULT_DEPLOYMENT:
                row.update(stats)
            row.update(deployment)
            if deployment.get("status") != "ok":
                row["error"] = f"measure ({deployment['deployment']}): {deployment.get('error', '')}"
            rows.append(row)
        return rows
    return [{**run, **stats, "deployment": DEFAULT_DEPLOYMENT, "status": status, "error": error}]


# A run "at chance level" has a top-1 that guessing reaches 1 time in 200 or more: at or below the
# one-sided 99.5% point of the accuracy of uniform guesses on its test images (normal approximation
# of the binomial, chance p = 1/classes, n = test images): 12.4% on 1,017 CIFAR-10 test images, 10.8%
# on 10,000. Such a run has learnt nothing its test can show (a diverged or stalled optimizer, a tiny
# budget); its row says so (at_chance) and the tables add a note. Documented in docs/measurement.md.
CHANCE_Z = 2.576


def chance_bound(num_classes: int, test_size: int) -> float:
    """The top-1 (%) at or below which a run counts as at chance level."""
    p = 1.0 / num_classes
    return 100.0 * (p + CHANCE_Z * math.sqrt(p * (1.0 - p) / max(test_size, 1)))


def _flag_chance(df: pd.DataFrame) -> pd.DataFrame:
    from puppet.core.datasets import DATASETS

    bounds = [
        chance_bound(DATASETS[d].num_classes, int(n)) if d in DATASETS and n == n and n else math.nan
        for d, n in zip(df.get("dataset", []), df.get("test_size", [math.nan] * len(df)))
    ]
    df["chance_bound"] = bounds
    top1 = pd.to_numeric(df.get("top1"), errors="coerce") if "top1" in df else pd.Series(math.nan, index=df.index)
    flagged = top1 <= df["chance_bound"]
    df["at_chance"] = flagged.where(top1.notna() & df["chance_bound"].notna())
    return df


def collate(train_jsons: list[Path], out: Path) -> pd.DataFrame:
    rows = [row for p in train_jsons for row in run_rows(p)]
    df = _flag_chance(pd.DataFrame(rows))
    extra = sorted(c for c in df.columns if c not in COLUMNS)  # e.g. mean_depth, latency_mean_s_per_img
    df = df.reindex(columns=COLUMNS + extra)
    df = df.sort_values(KEY, kind="stable").reset_index(drop=True)
    atomic_write_csv(df, out)
    return df


class MetricsFormatError(ValueError):
    """A metrics.csv this code cannot tabulate; one line naming the fix."""


def load_metrics(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"config_hash": str})
    if "deployment" not in df.columns:
        raise MetricsFormatError(
            f"{path} has no 'deployment' column (written before deployments were rows of their own); "
            f"collate the runs again (snakemake --cores all tables, or python -m puppet collate --out {path})"
        )
    for col in ("macs", "macs_without_generation"):  # the tables' unit
        if col in df:
            df[f"{col}_g"] = df[col] / 1e9
    return df


def default_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """Each run's row of its own forward (the ``default`` deployment): one row per run."""
    return metrics[metrics["deployment"] == DEFAULT_DEPLOYMENT]
