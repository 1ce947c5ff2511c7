"""The harness's training loop against a bare PyTorch loop (not a test): results/bench/train_loop_overhead.csv.

Issue 24 asks that the harness's loop (``puppet.core.train.train_one_epoch``: its data pipeline
``Batches``, the loss and accuracy it records every step, the progress line, the divergence and
non-finite checks, the AMP scaler and phase hooks it skips on CPU) train at no less than 0.95 of the
speed of the loop a researcher would write by hand on the same model, data, batch and optimizer:

    for idx in randperm(n).split(batch):
        loss = cross_entropy(model(x[idx]), y[idx]); zero_grad(); backward(); step()

The two are timed interleaved, one epoch each per round from the same initial weights, alternating
which runs first (``puppet.core.timing.median_interval``): the ratio is bare seconds / harness seconds
per round, so 1.0 means no overhead; its median and 95 % interval are written with the machine.

    OMP_NUM_THREADS=2 python bench/train_loop_overhead.py               # the quick profile's settings
    OMP_NUM_THREADS=2 python bench/train_loop_overhead.py --models resnet,puppet_cnn --rounds 8
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from puppet.core import timing
from puppet.core.assemble import materialise
from puppet.core.config import run_spec, validate_config
from puppet.core.data import Batches
from puppet.core.io import atomic_write_csv
from puppet.core.optim import make_optimizer
from puppet.core.progress import Progress
from puppet.core.repro import cpu_model
from puppet.core.train import compute_loss, train_one_epoch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10_subset.npz"


def _spec(model: str, data: str, train_size: int, batch: int, width: int):
    cfg = {"profile": "bench", "models": [model], "datasets": ["cifar10" if data else "synthetic"], "epochs": 1,
           "max_channels": width, "device": "cpu", "download": False,
           "data": {"train_size": train_size, "val_size": 0, "test_size": 64},
           "train": {"batch_size": batch, "optimizer": "adam", "lr": 0.002}}  # fmt: skip
    if data:
        cfg["data_sources"] = {"cifar10": data}
    return run_spec(validate_config(cfg), cfg["datasets"][0], model, 0)


def _bare_epoch(model, opt, x: torch.Tensor, y: torch.Tensor, batch: int, epoch: int) -> float:
    """One epoch as written by hand over pre-normalised images: seconds."""
    model.train()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
    start = time.perf_counter()
    for idx in order.split(batch):
        loss, _ = compute_loss(model, x[idx], y[idx])  # the model's own objective, as the harness
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def _harness_epoch(model, opt, batches: Batches, spec, epoch: int) -> float:
    progress = Progress(1, "bench")
    progress.live = False  # no bar on a terminal: workflow jobs write to a log and never draw one
    start = time.perf_counter()
    train_one_epoch(model, batches, epoch, opt, torch.device("cpu"), spec.train, progress)
    return time.perf_counter() - start


def bench(model_name: str, args) -> dict:
    spec = _spec(model_name, args.data, args.train_size, args.batch, args.width)
    _, splits, model = materialise(spec, for_training=True)
    batches = Batches(splits.x_train, splits.y_train, args.batch, splits.mean, splits.std, shuffle=True, seed=0)
    x_all, y_all = batches.normalise(splits.x_train), splits.y_train
    initial = copy.deepcopy(model.state_dict())
    bare_s, harness_s, ratios = [], [], []
    for r in range(args.warmup + args.rounds):
        times = {}
        for which in ("bare", "harness") if r % 2 == 0 else ("harness", "bare"):
            model.load_state_dict(initial)
            opt = make_optimizer(model, spec.train)
            if which == "bare":
                times[which] = _bare_epoch(model, opt, x_all, y_all, args.batch, r)
            else:
                times[which] = _harness_epoch(model, opt, batches, spec, r)
        if r >= args.warmup:
            bare_s.append(times["bare"])
            harness_s.append(times["harness"])
            ratios.append(times["bare"] / times["harness"])
    ratio = timing.median_interval(ratios)
    row = {
        "model": model_name,
        "images": len(y_all),
        "batch": args.batch,
        "max_channels": args.width,
        "rounds": args.rounds,
        "bare_s_per_epoch": timing.median_interval(bare_s).median,
        "harness_s_per_epoch": timing.median_interval(harness_s).median,
        **ratio.record("speed_ratio"),  # bare seconds / harness seconds: the harness's relative speed
        "cpu": f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()}",
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    print(
        f"{model_name}: harness at {ratio.median:.3f} [{ratio.low:.3f}, {ratio.high:.3f}] of the bare loop's speed "
        f"({row['harness_s_per_epoch']:.2f} s vs {row['bare_s_per_epoch']:.2f} s per epoch)",
        file=sys.stderr,
    )
    return row


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet", type=lambda s: s.split(","))
    parser.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.is_file() else "")
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8, help="even: each loop goes first as often")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "results" / "bench" / "train_loop_overhead.csv"))
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    frame = pd.DataFrame([bench(m, args) for m in args.models])
    atomic_write_csv(frame, Path(args.out))
    print(f"wrote {args.out}", file=sys.stderr)
    return frame


if __name__ == "__main__":
    main()
