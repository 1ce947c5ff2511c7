"""Benchmark (not a test): does an early-exited / skipped / halted sample really take less time?

For each adaptive-depth baseline at a small width on CPU, the thresholds are forced so that
every sample takes the short path (leave at the first exit, skip every gated block, one loop per
stage) or the full path, and we time batch-1 forward passes on real (synthetic-set) test images,
plus batched throughput. Measured MACs (ptflops, aten backend) of each path are recorded beside.

    OMP_NUM_THREADS=1 python bench/adaptive_depth_speed.py  # -> results/bench/adaptive_depth_speed.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
from pathlib import Path

import torch

from puppet import create_model
from puppet.core import timing
from puppet.core.data import Batches
from puppet.core.datasets import load_dataset
from puppet.core.measure import count_macs

MODELS = ("branchynet", "skipnet", "drnn")
REPO = Path(__file__).resolve().parents[1]


def force_path(model: torch.nn.Module, path: str) -> None:
    short = path == "short"
    if hasattr(model, "thresholds"):  # BranchyNet: entropy < +inf leaves at exit 1; < -inf never leaves
        model.thresholds.fill_(math.inf if short else -math.inf)
    elif hasattr(model, "gate_threshold"):  # SkipNet: p(execute) > 1.1 never holds
        model.gate_threshold.fill_(1.1 if short else -1.0)
    else:  # DRNN: p(continue) > 1.1 never holds
        model.halt_threshold.fill_(1.1 if short else -1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-channels", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10, help="timing rounds (each: one batch-1 forward per image)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64, help="throughput batch size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "adaptive_depth_speed.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_dataset("synthetic")
    test = Batches(data.x_test, data.y_test, args.batch, (0.5,) * 3, (0.25,) * 3)
    images = test.normalise(test.x[: args.batch])  # (B, C, H, W)
    rows = []
    for name in MODELS:
        torch.manual_seed(0)
        model = create_model(name, max_channels=args.max_channels).eval()  # untrained: paths are forced
        for path in ("full", "short"):
            force_path(model, path)
            with torch.inference_mode():
                model(images[:1])
            depth = int(model.last_stats["depth"][0])
            macs = count_macs(model, images[:1])
            with torch.inference_mode():
                singles = [images[i][None] for i in range(len(images))]  # (1, C, H, W) each
                calls = timing.time_calls(model, singles, rounds=args.rounds, warmup=args.warmup)
                latency = timing.per_round(calls)
                batched = timing.timed(lambda _, m=model: m(images), [0] * 5, rounds=args.rounds, warmup=1)
                thr = batched.scaled_inverse(len(images))
            rows.append(
                {
                    "model": name,
                    "max_channels": args.max_channels,
                    "path": path,
                    "depth_conv_layers": depth,
                    "macs": macs,
                    **latency.record("latency", "s_per_img"),
                    "latency_p90_s_per_img": timing.p90(calls),
                    **thr.record("throughput", "img_per_s"),
                    "throughput_batch": args.batch,
                    "rounds": args.rounds,
                    "threads": torch.get_num_threads(),
                    "device": f"cpu ({platform.processor() or platform.machine()})",
                    "torch_version": torch.__version__,
                }
            )
            r = rows[-1]
            print(
                f"{name:10s} {path:5s} depth {depth:3d}  {macs / 1e6:8.2f} MMACs  "
                f"{latency.median * 1e3:7.3f} ms/img [{latency.low * 1e3:.3f}, {latency.high * 1e3:.3f}]  "
                f"{r['throughput_img_per_s']:9.0f} img/s"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
