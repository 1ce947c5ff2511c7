"""Pilot (not a test): the learning rate of the MOR study's fine-tune, chosen on the validation split.

For each Neural ODE of a finished quick-profile run, a few reductions and one full-rank reduction
(the full model in another parameterisation) are fine-tuned with the study's budget
(``mor.finetune_steps`` x ``mor.finetune_batch`` images) at several constant Adam learning rates,
and scored on the run's validation split (never the test split):

    OMP_NUM_THREADS=2 python bench/mor_finetune_lr.py --data-root ../shared/data
    # -> results/bench/mor_finetune_lr.csv

It reads the runs under ``results/runs/quick/fashion_mnist/<model>/seed0/`` (train them first with
the quick profile) and builds every deployment through the model's own ``deploy``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from puppet.core.assemble import materialise
from puppet.core.config import deploy_options, load_config, run_spec
from puppet.core.data import Batches
from puppet.core.evaluate import evaluate
from puppet.core.io import atomic_write_csv
from puppet.core.measure import deploy_context

REPO = Path(__file__).resolve().parents[1]
PROBES = {
    "node_conv": ("pod_deim@8", "pod_deim@32", "prune@4", "svd@2", "svd@16"),  # svd@16: full rank
    "node_rnn": ("pod_deim@16", "pod_deim@64", "prune@32", "svd@16", "svd@128"),  # svd@128: full rank
}
RATES = (1e-4, 3e-4, 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "mor_finetune_lr.csv")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(REPO / "config" / "config.yaml", overrides={"data_root": args.data_root})
    rows = []
    for name, probes in PROBES.items():
        spec = run_spec(cfg, "fashion_mnist", name, 0)
        run_dir = REPO / "results" / "runs" / spec.profile / "fashion_mnist" / name / "seed0" / spec.hash
        _, splits, model = materialise(spec, device="cpu")
        model.load_state_dict(torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)["model"])
        model.eval()
        val = Batches(splits.x_val, splits.y_val, 250, splits.mean, splits.std)
        full = evaluate(model, val).top1
        for lr in RATES:
            context = deploy_context(splits, "cpu", {**deploy_options(cfg, name), "finetune_lr": lr})
            for deployment in probes:
                start = time.perf_counter()
                reduced = evaluate(model.deploy(deployment, context), val).top1
                tuned = evaluate(model.deploy(f"{deployment}+ft", context), val).top1
                row = {
                    "model": name,
                    "finetune_lr": lr,
                    "deployment": deployment,
                    "val_images": len(splits.y_val),
                    "val_top1_full": full,
                    "val_top1_reduced": reduced,
                    "val_top1_finetuned": tuned,
                    "seconds": round(time.perf_counter() - start, 1),
                }
                print(row, flush=True)
                rows.append(row)
    atomic_write_csv(pd.DataFrame(rows), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
