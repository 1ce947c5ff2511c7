"""Puppet-CNN speed benchmark (not a test): writes results/bench/puppet_speed.csv.

Measures, on the CPU (and on CUDA when available), with normalised synthetic images:

* dense per-level convs vs one grouped conv vs a per-sample loop: Puppet-CNN with continuous
  complexity (every sample its own kernels, the worst case for per-level convs), for the whole
  forward and for the puppet's convs alone (kernels generated beforehand);
* Puppet-CNN latency (batch 1) and throughput (batch ``--batch``) with 16 complexity levels
  (the default), continuous levels, and a warm kernel cache, against a plain fixed CNN of the
  same realised depth (the puppet's layer plan with ordinary stored 3x3 weights);
* the share of forward time spent generating kernels (Euler steps of the puppeteer + pooling).

    OMP_NUM_THREADS=2 python bench/puppet_speed.py --max-channels 32 --batch 64 --reps 10

One row per (device, variant); every row records device, threads and torch version.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from puppet import create_model
from puppet.data import Batches, load_dataset, make_splits
from puppet.models.complexity import image_complexity
from puppet.models.puppet import ConvSpec, GlobalPool, Pool, PuppetCNN, plan_convs

REPO = Path(__file__).resolve().parents[1]


class PlainCNN(nn.Module):
    """A fixed CNN of a Puppet-CNN layer plan: stored 3x3 weights, BN, ReLU, pools, GAP -> FC."""

    def __init__(self, plan, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        for op in plan:
            if isinstance(op, Pool):
                layers.append(nn.MaxPool2d(op.kernel, op.stride))
            elif isinstance(op, GlobalPool):
                layers.append(nn.AdaptiveAvgPool2d(1))
            elif isinstance(op, ConvSpec):
                layers += [nn.Conv2d(op.c_in, op.c_out, op.kernel, op.stride, op.kernel // 2, bias=False),
                           nn.BatchNorm2d(op.c_out), nn.ReLU(inplace=True)]
            else:
                raise ValueError("PlainCNN supports stage plans (puppet_cnn), not residual blocks")
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(plan_convs(plan)[-1].c_out, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(-2, -1)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, reps: int) -> list[float]:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _generation_time(model: PuppetCNN, x: torch.Tensor, device: torch.device, reps: int) -> float:
    """Median time of complexity + generating the batch's kernels (what forward does before the convs)."""

    def generate():
        h = model.normalised_complexity(image_complexity(x, model.cfg.bins))
        levels = torch.unique(h)
        dl, fill = model.step_and_fill(levels)
        model.kernels_for_levels(levels, fill, dl, model.depth_per_stage(dl))

    return statistics.median(_time(generate, device, reps))


@torch.no_grad()  # not inference_mode: models built inside it lack the version counters the kernel cache reads
def bench_device(device: torch.device, args, x_all: torch.Tensor, prepare_x: torch.Tensor) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    xb = x_all[: args.batch].to(device)
    x1 = [x_all[i : i + 1].to(device) for i in range(args.latency_images)]

    def build(name: str = "puppet_cnn", **kw) -> PuppetCNN:
        torch.manual_seed(0)
        model = create_model(name, max_channels=args.max_channels, **kw)
        model.prepare([prepare_x])
        return model.to(device).eval()

    def measure(name: str, model: nn.Module, extra: dict) -> dict:
        lat = []
        for xi in x1:  # batch 1 over different images: adaptive depth differs per image
            lat += _time(lambda: model(xi), device, 1)
        thr = _time(lambda: model(xb), device, args.reps)
        row = {"variant": name, "latency_s_per_img": statistics.median(lat),
               "latency_p90_s_per_img": sorted(lat)[int(0.9 * (len(lat) - 1))],
               "batch_time_s": statistics.median(thr),
               "throughput_img_per_s": args.batch / statistics.median(thr)}
        stats = getattr(model, "last_stats", {}) or {}
        if "depth" in stats:
            row["depth_mean"] = float(stats["depth"].float().mean())
            row["generation_macs_per_img"] = float(stats["generation_macs"].float().mean())
        row.update(extra)
        print(f"  {name:<38} latency {row['latency_s_per_img'] * 1e3:8.2f} ms/img   throughput {row['throughput_img_per_s']:9.1f} img/s", file=sys.stderr)
        return row

    # 1. dense per-level convs / one grouped conv / per-sample loop, every sample its own kernels
    # (continuous complexity: the worst case for the per-level convs, one conv per sample)
    impls = ("level", "grouped", "loop")
    models = {impl: build(complexity_levels=0, conv_impl=impl) for impl in impls}
    whole = {impl: statistics.median(_time(lambda m=m: m(xb), device, args.reps)) for impl, m in models.items()}
    t_gen = _generation_time(models["level"], xb, device, args.reps)
    models["level"](xb)
    depth_mean = float(models["level"].last_stats["depth"].float().mean())
    for impl in impls:
        rows.append({"variant": f"puppet_cnn continuous: {impl} conv", "batch_time_s": whole[impl],
                     "throughput_img_per_s": args.batch / whole[impl], "speedup_vs_loop": whole["loop"] / whole[impl],
                     "generation_time_share": t_gen / whole[impl], "depth_mean": depth_mean})
    print("  vs loop, whole forward: " + ", ".join(f"{i} {whole['loop'] / whole[i]:.2f}x" for i in impls), file=sys.stderr)
    # the puppet's convs alone (kernels generated once beforehand), one depth for every sample
    param = build("puppet_cnn_param", complexity_levels=0, fixed_depth=args.conv_depth)
    h = param.normalised_complexity(image_complexity(xb, param.cfg.bins))
    levels, traj = torch.unique(h, return_inverse=True)
    dl, fill = param.step_and_fill(levels)
    kernels = param.generate_kernels(fill, dl, param.depth_per_stage(dl))[args.conv_depth]
    x_sorted = xb[torch.argsort(traj, stable=True)]  # run_puppet takes samples sorted by level
    counts = torch.bincount(traj, minlength=len(levels)).tolist()
    times = {}
    for impl in impls:
        param.cfg = dataclasses.replace(param.cfg, conv_impl=impl)
        times[impl] = statistics.median(_time(lambda: param.run_puppet(x_sorted, args.conv_depth, kernels, counts), device, args.reps))
    for impl in impls:
        rows.append({"variant": f"puppet convs only ({4 * args.conv_depth} layers, {len(levels)} kernel sets): {impl}",
                     "batch_time_s": times[impl], "throughput_img_per_s": args.batch / times[impl],
                     "speedup_vs_loop": times["loop"] / times[impl], "depth_mean": 4 * args.conv_depth})
    print("  vs loop, puppet convs only: " + ", ".join(f"{i} {times['loop'] / times[i]:.2f}x" for i in impls), file=sys.stderr)

    # 2. latency / throughput of the variants, with the generation share of batch time
    default = build()
    default(xb)
    depth = int(round(default.last_stats["depth"].float().median().item() / 4))  # layers per stage
    for name, model in [("puppet_cnn (16 levels, default)", default),
                        ("puppet_cnn continuous levels", models["level"]),
                        ("puppet_cnn 16 levels + kernel cache (warm)", build(kernel_cache=True)),
                        ("puppet_cnn_static (one trajectory)", create_model("puppet_cnn_static", max_channels=args.max_channels).to(device).eval())]:
        row = measure(name, model, {})
        if isinstance(model, PuppetCNN) and not model.cfg.kernel_cache:
            row["generation_time_share"] = _generation_time(model, xb, device, args.reps) / row["batch_time_s"]
        rows.append(row)
    plain = PlainCNN(default.plan_for_depth(depth), 10).to(device).eval()
    rows.append(measure(f"plain fixed CNN, same depth ({4 * depth} convs)", plain, {"depth_mean": 4 * depth}))
    return rows


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-channels", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per batch measurement")
    parser.add_argument("--conv-depth", type=int, default=4, help="layers per stage in the convs-only comparison")
    parser.add_argument("--latency-images", type=int, default=20, help="batch-1 images timed per variant")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--devices", default="auto", help="'auto' (cpu, + cuda if available) or a comma list")
    parser.add_argument("--out", default=str(REPO / "results" / "bench" / "puppet_speed.csv"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    splits = make_splits(load_dataset("synthetic"), train_size=256, test_size=max(args.batch, args.latency_images))
    norm = Batches(splits.x_test, splits.y_test, args.batch, splits.mean, splits.std)
    x_all = norm.normalise(splits.x_test)
    prepare_x = norm.normalise(splits.x_train)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" else args.devices.split(",")

    rows = []
    for name in devices:
        device = torch.device(name)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})"
        print(f"{label}, {args.threads} threads, max_channels {args.max_channels}, batch {args.batch}", file=sys.stderr)
        for row in bench_device(device, args, x_all, prepare_x):
            rows.append({"device": label, "device_type": device.type, "threads": torch.get_num_threads(),
                         "torch_version": torch.__version__, "max_channels": args.max_channels, "batch": args.batch,
                         "reps": args.reps, **row})
    frame = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(out)  # atomic: a crash never leaves a half-written CSV
    print(f"wrote {out}", file=sys.stderr)
    return frame


if __name__ == "__main__":
    main()
