"""Collect per-run JSON records into one tidy table: ``results/metrics.csv``.

One row per (profile, dataset, model, seed), with provenance columns. A failed
run is a row with ``status=error`` and its message, never a missing line.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from puppet.core.io import atomic_write_csv
from puppet.core.runs import read_record

KEY = ["profile", "dataset", "model", "seed"]

COLUMNS = KEY + [
    "status",
    "error",
    "top1",
    "top5",
    "stored_params",
    "total_params",
    "param_size_mb",
    "macs",
    "macs_generation",
    "macs_without_generation",
    "macs_min",
    "macs_max",
    "elementwise_ops",
    "latency_s_per_img",
    "latency_ci_low_s_per_img",
    "latency_ci_high_s_per_img",
    "latency_noisy",
    "latency_p90_s_per_img",
    "throughput_img_per_s",
    "throughput_ci_low_img_per_s",
    "throughput_ci_high_img_per_s",
    "throughput_noisy",
    "throughput_batch",
    "precomputed_top1",
    "precomputed_top5",
    "precomputed_kernels_mb",
    "precomputed_macs",
    "precomputed_latency_s_per_img",
    "precomputed_latency_ci_low_s_per_img",
    "precomputed_latency_ci_high_s_per_img",
    "precomputed_speedup",
    "precomputed_speedup_ci_low",
    "precomputed_speedup_ci_high",
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


def run_row(train_json: Path) -> dict:
    """One metrics row from a run folder's ``train.json`` and ``measure.json``."""
    train = _record(Path(train_json))
    measure_path = Path(train_json).with_name("measure.json")
    measure = _record(measure_path) if measure_path.exists() else {"status": "missing", "error": "not measured"}
    row = {k: v for k, v in train.items() if not isinstance(v, (dict, list))}
    if "max_channels" not in row and train.get("status") == "ok":  # a run recorded before the column existed
        row["max_channels"] = _spec_width(Path(train_json).with_name("model.pt"))
    for k, v in (train.get("stats") or {}).items():  # adaptive models: mean_depth, mean_exit, ...
        row[k] = v
    row.update({k: v for k, v in measure.items() if k not in ("status", "error") and not isinstance(v, (dict, list))})
    if train.get("status") != "ok":
        row["status"], row["error"] = "error", train.get("error", "")
    elif measure.get("status") != "ok":
        row["status"], row["error"] = "error", f"measure: {measure.get('error', '')}"
    else:
        row["status"], row["error"] = "ok", ""
    return row


def collate(train_jsons: list[Path], out: Path) -> pd.DataFrame:
    rows = [run_row(p) for p in train_jsons]
    df = pd.DataFrame(rows)
    extra = sorted(c for c in df.columns if c not in COLUMNS)  # e.g. mean_depth, latency_mean_s_per_img
    df = df.reindex(columns=COLUMNS + extra)
    df = df.sort_values(KEY, kind="stable").reset_index(drop=True)
    atomic_write_csv(df, out)
    return df
