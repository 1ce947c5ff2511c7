"""Puppet-CNN's BatchNorm at evaluation (not a test): running statistics against batch statistics.

For each trained run directory (``model.pt`` as written by ``python -m puppet train``) it
evaluates the test split twice, with the batch size the run was evaluated with:

* ``top1_eval``: eval mode, BN normalises with its running statistics (what the harness reports);
* ``top1_batch_stats``: BN normalises each depth group of each test batch with that group's own
  statistics (train-mode BN on a copy of the model; nothing is updated in the run).

If BN's running statistics fitted what each depth sees, the two would be close. It also
reports how far the variance a BN slot sees at test time is from the running variance it
normalises with: per BN call (one depth group of one test batch, groups of >= 32 samples),
the mean over channels of batch variance / running variance, summarised by its 5%, 50% and
95% quantiles. Works with checkpoints of both BN layouts (one statistic per slot, or one per
depth and slot), so a run made before the per-depth change can be compared with one after.

With ``--reestimate`` each run is also evaluated after its BN statistics are gathered anew from
its training split (cumulative average, train-mode passes, no weight changes) by this code's
BatchNorm: for a run trained before the per-depth change, that isolates what per-depth
statistics alone do to the same weights.

    OMP_NUM_THREADS=2 python bench/puppet_bn_eval.py RUN_DIR [RUN_DIR ...] --label before --label after \
        --reestimate --out results/bench/puppet_bn_eval.csv
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from puppet.core.assemble import build_model, load_splits
from puppet.core.data import Batches
from puppet.core.evaluate import evaluate
from puppet.core.specs import RunSpec


def _variance_ratios(model: nn.Module, batches: Batches, min_group: int = 32) -> list[float]:
    """Per BN call in eval mode: mean_c(var of the call's input / running var it is normalised with)."""
    ratios: list[float] = []

    def hook(module, args, _out):
        x = args[0].float()
        if x.shape[0] < min_group:
            return
        running = module.running_var
        if running.dim() == 2:  # one row per depth (DepthBatchNorm2d): the row this call used
            running = running[module.depths.index(args[1])]
        ratios.append(float((x.var(dim=(0, 2, 3)) / running.float()).mean()))

    handles = [m.register_forward_hook(hook) for name, m in model.named_modules() if name.startswith("bns.")]
    with torch.inference_mode():
        model.eval()
        for x, _ in batches:
            model(x)
    for h in handles:
        h.remove()
    return ratios


@torch.inference_mode()
def _batch_stats_accuracy(model: nn.Module, batches: Batches) -> tuple[float, float]:
    """Top-1 / top-5 (%) with BN in train mode: each depth group normalised by its own statistics."""
    model.train()  # a copy: the running statistics it updates are thrown away
    top1 = top5 = seen = 0
    for x, y in batches:
        topk = model(x).topk(min(5, model.head.out_features), dim=1).indices
        top1 += (topk[:, 0] == y).sum().item()
        top5 += (topk == y[:, None]).any(dim=1).sum().item()
        seen += len(y)
    return 100.0 * top1 / seen, 100.0 * top5 / seen


@torch.inference_mode()
def _reestimate_statistics(model: nn.Module, batches: Batches) -> None:
    """Recompute every BN's running statistics as a cumulative average over ``batches`` (train mode)."""
    bns = [m for name, m in model.named_modules() if name.startswith("bns.")]
    for bn in bns:
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.num_batches_tracked.zero_()
        bn.momentum = None
    model.train()
    for x, _ in batches:
        model(x)
    model.eval()


def bn_eval(run_dir: Path, label: str, reestimate: bool = False) -> dict:
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)
    spec = RunSpec.from_dict(state["spec"])
    splits = load_splits(spec)
    model = build_model(spec, splits)
    model.load_state_dict(state["model"])  # a checkpoint with one statistic per slot loads too
    test = Batches(splits.x_test, splits.y_test, spec.train.eval_batch_size, splits.mean, splits.std)
    if reestimate:  # same weights, statistics gathered anew from the training split by this code's BN
        _reestimate_statistics(
            model, Batches(splits.x_train, splits.y_train, spec.train.eval_batch_size, splits.mean, splits.std)
        )
    eval_mode = evaluate(model, test)
    batch_stats = _batch_stats_accuracy(copy.deepcopy(model), test)
    ratios = torch.tensor(_variance_ratios(model, test))
    q = torch.quantile(ratios, torch.tensor([0.05, 0.5, 0.95])).tolist() if len(ratios) else [float("nan")] * 3
    train = json.loads((run_dir / "train.json").read_text()) if (run_dir / "train.json").exists() else {}
    return {
        "label": label,
        "statistics": "re-estimated on the training split" if reestimate else "from training",
        "model": spec.model,
        "dataset": spec.dataset,
        "profile": spec.profile,
        "eval_batch_size": spec.train.eval_batch_size,
        "top1_eval": eval_mode.top1,
        "top5_eval": eval_mode.top5,
        "top1_batch_stats": batch_stats[0],
        "top5_batch_stats": batch_stats[1],
        "var_ratio_q05": q[0],
        "var_ratio_median": q[1],
        "var_ratio_q95": q[2],
        "bn_calls": len(ratios),
        "git_commit": train.get("git_commit", ""),
        "run_dir": str(run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--label", action="append", default=[], help="one per run dir (default: the dir name)")
    parser.add_argument(
        "--reestimate",
        action="store_true",
        help="also re-estimate the BN statistics of each run on its training split with this code's BN "
        "(per depth since DepthBatchNorm2d): the same weights with the new statistics",
    )
    parser.add_argument("--out", type=Path, default=Path("results/bench/puppet_bn_eval.csv"))
    args = parser.parse_args()
    labels = args.label + [d.name for d in args.run_dirs[len(args.label) :]]
    rows = [bn_eval(d, label) for d, label in zip(args.run_dirs, labels)]
    if args.reestimate:
        rows += [bn_eval(d, label, reestimate=True) for d, label in zip(args.run_dirs, labels)]
    frame = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(frame.drop(columns=["run_dir"]).to_string(index=False))


if __name__ == "__main__":
    main()
