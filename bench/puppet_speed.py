"""Puppet-CNN speed benchmark (not a test): writes results/bench/puppet_speed.csv.

For each device (the CPU, and CUDA when available) and each width, on real test images:

* **batch-1 latency**, three ways, timed interleaved in this process (``puppet.core.timing``):
  Puppet-CNN with kernels generated on the fly, with kernels precomputed per complexity level,
  and the **same-plan fixed CNN**: for each image, the plain ``torch.nn`` CNN that Puppet-CNN runs
  for that image's level (the same depth, the level's kernels as stored conv weights, the same
  BNs and head; ``PrecomputedPuppet.fixed_cnn``). Precomputed / fixed is the overhead of the method
  itself: the complexity measure (FFT + histograms) and the dispatch on its level;
* **throughput** at ``--batch``: precomputed against the same-plan fixed CNN (the batch split by
  depth, one stored kernel set per depth), interleaved; on the fly separately;
* the **complexity measure** alone, and the share of on-the-fly time spent generating kernels;
* **dense per-level convs vs one grouped conv vs a per-sample loop** for the generated convs
  (continuous complexity, every sample its own kernels: the worst case for per-level convs).

Every time is a median over ``--rounds`` rounds with its 95 % interval; every ratio is the median
of per-round ratios with its interval. One row per (device, width, variant); every row records
the device, threads and torch version.

    OMP_NUM_THREADS=2 python bench/puppet_speed.py                       # CPU, widths 32 and 128
    python bench/puppet_speed.py --widths 32,128,512 --devices cuda       # on a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import pandas as pd
import torch

from puppet import create_model
from puppet.core import timing
from puppet.core.data import Batches, make_splits
from puppet.core.datasets import load_dataset
from puppet.core.io import atomic_write_csv
from puppet.core.protocols import DeployContext
from puppet.models.complexity import image_complexity
from puppet.models.puppet import PuppetCNN

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10_subset.npz"


def _images(source: str, n_train: int, n_test: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Normalised (train, test) images: CIFAR-10 from ``source`` if it exists, else the synthetic set."""
    if source and Path(source).is_file():
        data, label = load_dataset("cifar10", source=source, download=False), f"cifar10 ({source})"
    else:
        data, label = load_dataset("synthetic"), "synthetic"
    splits = make_splits(data, train_size=n_train, test_size=n_test)
    norm = Batches(splits.x_test, splits.y_test, 1, splits.mean, splits.std)
    return norm.normalise(splits.x_train), norm.normalise(splits.x_test), label


def _row(variant: str, est: timing.Estimate | None = None, **extra) -> dict:
    row = {"variant": variant}
    if est is not None:
        row.update(est.record("latency", "s_per_img"))
    row.update(extra)
    return row


def _ratio(prefix: str, ratio: timing.Estimate) -> dict:
    return {f"{prefix}": ratio.median, f"{prefix}_ci_low": ratio.low, f"{prefix}_ci_high": ratio.high}


def _generation_seconds(model: PuppetCNN, x: torch.Tensor, args, device) -> timing.Estimate:
    """Complexity + generating the batch's kernels: what an on-the-fly forward does before its convs."""

    def generate(_):
        h = model.normalised_complexity(image_complexity(x, model.cfg.bins))
        levels = torch.unique(h)
        dl, fill = model.step_and_fill(levels)
        model.generate_kernels(fill, dl, model.depth_per_stage(dl))

    return timing.timed(generate, [0], rounds=args.rounds, warmup=1, device=device)


@torch.no_grad()
def bench_width(device: torch.device, width: int, args, x_train: torch.Tensor, x_test: torch.Tensor) -> list[dict]:
    torch.manual_seed(0)
    model = create_model("puppet_cnn", max_channels=width)
    model.prepare([x_train])  # the complexity range of the training images: realistic depths
    model = model.to(device).eval()
    deployed = model.deploy("precomputed", DeployContext())  # every level's kernels generated once
    x_test = x_test.to(device)
    images = [x_test[i : i + 1] for i in range(args.latency_images)]
    idx = list(range(len(images)))
    levels = deployed.level_index(x_test[: len(images)]).tolist()
    fixed = {q: deployed.fixed_cnn(q) for q in set(levels)}
    depth_of = {q: deployed.level_depth[q] for q in fixed}

    rows = []
    rounds, warmup = args.rounds, 2
    # batch 1: precomputed against the same-plan fixed CNN, and on the fly against precomputed
    same = timing.compare(
        lambda i: deployed(images[i]),
        lambda i: fixed[levels[i]](images[i]),
        idx,
        rounds=rounds,
        warmup=warmup,
        device=device,
    )
    fly = timing.compare(
        lambda i: model(images[i]),
        lambda i: deployed(images[i]),
        idx,
        rounds=args.fly_rounds,
        warmup=1,
        device=device,
    )
    complexity = timing.timed(lambda i: image_complexity(images[i]), idx, rounds=rounds, warmup=warmup, device=device)
    gen = _generation_seconds(model, images[0], args, device)
    depth_mean = sum(4 * depth_of[q] for q in levels) / len(levels)
    kernels_mb = deployed.deployment_metrics()["kernels_mb"]
    common = {"batch": 1, "depth_mean": depth_mean, "levels_seen": len(fixed)}
    rows.append(_row("on the fly", fly.a, **common, generation_share=gen.median / fly.a.median, rounds=args.fly_rounds))
    rows.append(
        _row(
            "precomputed",
            same.a,
            **common,
            **_ratio("ratio_vs_fixed", same.ratio),
            **_ratio("speedup_vs_on_the_fly", fly.ratio),
            kernels_mb=kernels_mb,
            complexity_share=complexity.median / same.a.median,
            rounds=rounds,
        )
    )
    rows.append(_row("fixed CNN, same plan", same.b, **common, rounds=rounds))
    rows.append(_row("complexity measure alone", complexity, **common, rounds=rounds))
    if args.compile_complexity:  # experiment: the complexity measure fused by torch.compile
        deployed.complexity_fn = torch.compile(image_complexity, dynamic=False)
        if deployed.level_index(x_test[: len(images)]).tolist() != levels:
            print("  compiled complexity measure gives other levels: skipped", file=sys.stderr)
        else:
            comp = timing.compare(
                lambda i: deployed(images[i]),
                lambda i: fixed[levels[i]](images[i]),
                idx,
                rounds=rounds,
                warmup=warmup,
                device=device,
            )
            rows.append(
                _row(
                    "precomputed, compiled complexity measure",
                    comp.a,
                    **common,
                    **_ratio("ratio_vs_fixed", comp.ratio),
                    rounds=rounds,
                )
            )
        deployed.complexity_fn = image_complexity

    # throughput at --batch: precomputed against the same-plan fixed CNN split by depth
    xb = x_test[: args.batch]
    qb = deployed.level_index(xb).tolist()
    groups = []
    for d in sorted({deployed.level_depth[q] for q in qb}):
        members = [i for i, q in enumerate(qb) if deployed.level_depth[q] == d]
        groups.append((deployed.fixed_cnn(qb[members[0]]), xb[members]))
    thr = timing.compare(
        lambda _: deployed(xb),
        lambda _: [f(x) for f, x in groups],
        [0] * args.iters,
        rounds=rounds,
        warmup=warmup,
        device=device,
    )
    b = len(xb)
    rows.append(
        _row(
            "precomputed",
            None,
            batch=b,
            **_ratio("ratio_vs_fixed", thr.ratio),
            rounds=rounds,
            **thr.a.scaled_inverse(b).record("throughput", "img_per_s"),
        )
    )
    rows.append(
        _row(
            "fixed CNN, same plan",
            None,
            batch=b,
            rounds=rounds,
            **thr.b.scaled_inverse(b).record("throughput", "img_per_s"),
        )
    )
    if not args.skip_on_the_fly_throughput:
        est = timing.timed(lambda _: model(xb), [0], rounds=args.fly_rounds, warmup=1, device=device)
        gen_b = _generation_seconds(model, xb, args, device)
        rows.append(
            _row(
                "on the fly",
                None,
                batch=b,
                rounds=args.fly_rounds,
                generation_share=gen_b.median / est.median,
                **est.scaled_inverse(b).record("throughput", "img_per_s"),
            )
        )
    for r in rows:
        shown = (
            f"{r['latency_s_per_img'] * 1e3:8.3f} ms/img"
            if "latency_s_per_img" in r
            else f"{r['throughput_img_per_s']:9.1f} img/s"
        )
        ratio = (
            f"  x{r['ratio_vs_fixed']:.3f} [{r['ratio_vs_fixed_ci_low']:.3f}, {r['ratio_vs_fixed_ci_high']:.3f}] vs "
            "fixed"
            if "ratio_vs_fixed" in r
            else ""
        )
        print(f"  width {width:4d} batch {r['batch']:4d} {r['variant']:<26} {shown}{ratio}", file=sys.stderr)
    return [{"max_channels": width, **r} for r in rows]


@torch.no_grad()
def bench_conv_impls(device: torch.device, width: int, args, x_train, x_test) -> list[dict]:
    """Whole forward with continuous complexity (every sample its own kernels), per conv_impl."""
    xb = x_test[: args.batch].to(device)
    times = {}
    for impl in ("level", "grouped", "loop"):
        torch.manual_seed(0)
        model = create_model("puppet_cnn", max_channels=width, complexity_levels=0, conv_impl=impl)
        model.prepare([x_train])
        model = model.to(device).eval()
        times[impl] = timing.timed(lambda _: model(xb), [0], rounds=args.fly_rounds, warmup=1, device=device)  # noqa: B023 (called in this iteration)
    rows = [
        {
            "max_channels": width,
            "batch": len(xb),
            "variant": f"continuous complexity: {impl} conv",
            "rounds": args.fly_rounds,
            "speedup_vs_loop": times["loop"].median / est.median,
            **est.scaled_inverse(len(xb)).record("throughput", "img_per_s"),
        }
        for impl, est in times.items()
    ]
    print(
        "  continuous complexity, whole forward vs loop: "
        + ", ".join(f"{i} {times['loop'].median / t.median:.2f}x" for i, t in times.items()),
        file=sys.stderr,
    )
    return rows


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="32,128", help="comma list of max_channels")
    parser.add_argument("--batch", type=int, default=128, help="throughput batch")
    parser.add_argument("--rounds", type=int, default=15, help="timing rounds (precomputed, fixed, complexity)")
    parser.add_argument("--fly-rounds", type=int, default=7, help="timing rounds for on-the-fly generation (slow)")
    parser.add_argument("--iters", type=int, default=2, help="batched forwards per throughput round")
    parser.add_argument("--latency-images", type=int, default=20, help="batch-1 images per round")
    parser.add_argument("--skip-on-the-fly-throughput", action="store_true", help="(slow at width 512 on a CPU)")
    parser.add_argument(
        "--compile-complexity", action="store_true", help="also time the complexity measure under torch.compile"
    )
    parser.add_argument("--conv-impls-width", type=int, default=32, help="width of the conv_impl comparison (0: skip)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--devices", default="auto", help="'auto' (cpu, + cuda if available) or a comma list")
    parser.add_argument("--data-source", default=str(DEFAULT_DATA), help="CIFAR-10 .npz (synthetic images if absent)")
    parser.add_argument("--out", default=str(REPO / "results" / "bench" / "puppet_speed.csv"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    x_train, x_test, data_label = _images(args.data_source, 512, max(args.batch, args.latency_images))
    devices = (
        (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
        if args.devices == "auto"
        else args.devices.split(",")
    )
    rows = []
    for name in devices:
        device = torch.device(name)
        label = (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"cpu ({platform.processor() or platform.machine()})"
        )
        print(f"{label}, {torch.get_num_threads()} threads, {data_label}", file=sys.stderr)
        found = []
        for width in [int(w) for w in args.widths.split(",")]:
            found += bench_width(device, width, args, x_train, x_test)
        if args.conv_impls_width:
            found += bench_conv_impls(device, args.conv_impls_width, args, x_train, x_test)
        rows += [
            {
                "device": label,
                "device_type": device.type,
                "threads": torch.get_num_threads(),
                "torch_version": torch.__version__,
                "data": data_label,
                **r,
            }
            for r in found
        ]
    frame = pd.DataFrame(rows)
    out = Path(args.out)
    if out.is_file():  # keep the rows of other devices and widths (a GPU run is not lost to a CPU rerun)
        old = pd.read_csv(out)
        replaced = old.set_index(["device", "max_channels"]).index.isin(
            frame.set_index(["device", "max_channels"]).index
        )
        frame = pd.concat([old[~replaced], frame], ignore_index=True)
    atomic_write_csv(frame, out)  # a crash never leaves a half-written CSV
    plot(frame, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}", file=sys.stderr)
    return frame


def plot(frame: pd.DataFrame, path: Path) -> None:
    """Batch-1 latency per width: on the fly, precomputed, same-plan fixed CNN; one panel per device."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    lat = frame[(frame["batch"] == 1) & frame["variant"].isin(VARIANTS) & frame["latency_s_per_img"].notna()]
    devices = list(dict.fromkeys(lat["device"]))
    fig, axes = plt.subplots(1, len(devices), figsize=(5.2 * len(devices), 3.8), squeeze=False)
    for ax, device in zip(axes[0], devices):
        d = lat[lat["device"] == device]
        widths = sorted(d["max_channels"].unique())
        for k, (variant, colour) in enumerate(VARIANTS.items()):
            v = d[d["variant"] == variant].set_index("max_channels").reindex(widths)
            xs = [i + (k - 1) * 0.25 for i in range(len(widths))]
            ms = v["latency_s_per_img"] * 1e3
            err = [ms - v["latency_ci_low_s_per_img"] * 1e3, v["latency_ci_high_s_per_img"] * 1e3 - ms]
            ax.bar(xs, ms, width=0.25, color=colour, yerr=err, capsize=2, label=variant)
            if variant == "precomputed":
                for x, (_, r) in zip(xs, v.iterrows()):
                    ax.annotate(
                        f"{r['ratio_vs_fixed']:.2f}x",
                        (x, r["latency_s_per_img"] * 1e3),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        xytext=(0, 2),
                        textcoords="offset points",
                    )
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(range(len(widths)), [str(w) for w in widths])
        ax.set_xlabel("max_channels")
        ax.set_ylabel("batch-1 latency (ms/img, median, 95% CI)")
        threads = int(d["threads"].iloc[0])
        ax.set_title(f"{device}" + (f", {threads} threads" if d["device_type"].iloc[0] == "cpu" else ""), fontsize=9)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(
        "Puppet-CNN at batch 1: kernels on the fly, precomputed, and the same-plan fixed CNN\n"
        "(label: precomputed / fixed, median of interleaved per-round ratios)",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


VARIANTS = {"on the fly": "tab:red", "precomputed": "tab:blue", "fixed CNN, same plan": "tab:grey"}


if __name__ == "__main__":
    main()
