"""PDE Global layer speed benchmark (not a test): writes results/bench/pde_speed.csv and .png.

The poster claims ResNet-Global infers 2.4x faster than ResNet-32 (1.9 s vs 4.5 s, no protocol
given) from a fifth of the MACs. MACs leave out the Global layer's elementwise update, which is
memory-bound, so this measures instead of inferring. For each device (the CPU, and CUDA when
available) and each batch size, on real CIFAR-10 test images (cycled to fill a batch), eval mode,
``torch.inference_mode``:

* ResNet-Global against ResNet-32, timed interleaved (``puppet.core.timing.compare``): seconds per
  image of each, the ratio Global / ResNet-32 per round (median and 95 % interval), and the time
  for 10,000 images (the CIFAR-10 test set) at that batch;
* ResNet-Global with its three Global layers replaced by identities ("no PDE"), interleaved with the
  full model: the share of its time spent in the Global layers;
* ResNet-Global with the fused ``update="addcmul"`` step against the reference step, and against
  ResNet-32 (``--train`` adds the same comparisons for one training step: forward, backward and an
  SGD update, train mode).

Every number is a median over ``--rounds`` rounds with its 95 % interval, and every row records
the device, threads and torch version. ResNet-32 and ResNet-Global are untrained here: speed does
not depend on the weights.

    OMP_NUM_THREADS=2 python bench/pde_speed.py                          # CPU
    python bench/pde_speed.py --devices cuda --batches 1,32,128,512,1024  # on a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from baselines.pde_global import GlobalLayer
from puppet import create_model
from puppet.core import timing
from puppet.core.data import Batches, make_splits
from puppet.core.datasets import load_dataset
from puppet.core.io import atomic_write, atomic_write_csv
from puppet.core.repro import cpu_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10_subset.npz"


def _test_images(source: str, n: int) -> tuple[torch.Tensor, str]:
    if source and Path(source).is_file():
        data, label = load_dataset("cifar10", source=source, download=False), f"cifar10 test ({source})"
    else:
        data, label = load_dataset("synthetic"), "synthetic"
    splits = make_splits(data, train_size=None, test_size=n)
    return Batches(splits.x_test, splits.y_test, 1, splits.mean, splits.std).normalise(splits.x_test), label


def _without_pde(model: nn.Module) -> nn.Module:
    """The same network with every Global layer replaced by an identity (the backbone alone)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, GlobalLayer):
                setattr(module, child_name, nn.Identity())
    return model


def _environment(device: torch.device) -> dict:
    """The device by name: the GPU's, or the CPU's model and the instruction set torch dispatches to."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {platform.machine()})"
    return {"device": name, "threads": torch.get_num_threads(), "torch_version": torch.__version__}


# (A, B) timed interleaved; the ratio A / B per round
PAIRS = (
    ("resnet_global", "resnet32"),
    ("resnet_global", "resnet_global_no_pde"),
    ("resnet_global_addcmul", "resnet_global"),
    ("resnet_global_addcmul", "resnet32"),
)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, labels: torch.Tensor):
    def step(x: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), labels[: len(x)])
        loss.backward()
        optimizer.step()

    return step


def bench_device(device: torch.device, x_all: torch.Tensor, args) -> list[dict]:
    torch.manual_seed(0)
    models = {
        "resnet_global": create_model("resnet_global"),
        "resnet32": create_model("resnet32"),
        "resnet_global_no_pde": _without_pde(create_model("resnet_global")),
        "resnet_global_addcmul": create_model("resnet_global", update="addcmul"),
    }
    models["resnet_global_addcmul"].load_state_dict(models["resnet_global"].state_dict())  # an exact A/B
    models = {k: m.to(device).eval() for k, m in models.items()}
    x_all = x_all.to(device)
    env = _environment(device)
    rows = []
    for batch in args.batches:
        # enough batches per round for a stable round mean, never fewer than 3
        n_batches = max(3, args.images // batch)
        inputs = [x_all[(torch.arange(batch) + i * batch) % len(x_all)] for i in range(n_batches)]

        def run(name):
            return lambda x: models[name](x)

        modes = [("inference", run)]
        if args.train:
            labels = torch.arange(batch, device=device) % 10
            optimizers = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}
            modes.append(("train step", lambda name, o=optimizers, y=labels: _train_step(models[name], o[name], y)))
        for mode, fn in modes:
            for m in models.values():
                m.train(mode != "inference")
            context = torch.inference_mode() if mode == "inference" else torch.enable_grad()
            with context:
                for a, b in PAIRS:
                    c = timing.compare(fn(a), fn(b), inputs, rounds=args.rounds, warmup=args.warmup, device=device)
                    for name, est in ((a, c.a), (b, c.b)):
                        per_img = timing.Estimate(est.median / batch, est.low / batch, est.high / batch, est.n)
                        rows.append(
                            {
                                **env,
                                "mode": mode,
                                "batch": batch,
                                "comparison": f"{a} vs {b}",
                                "model": name,
                                **per_img.record("time", "s_per_img"),
                                "time_10k_images_s": 10_000 * per_img.median,
                                "throughput_img_per_s": batch / est.median,
                            }
                        )
                    rows.append(
                        {**env, "mode": mode, "batch": batch, "comparison": f"{a} vs {b}", "model": f"ratio {a} / {b}",
                         **c.ratio.record("ratio")}
                    )  # fmt: skip
                    print(
                        f"{env['device']} {mode} batch {batch}: {a} / {b} time {c.ratio.median:.2f} "
                        f"[{c.ratio.low:.2f}, {c.ratio.high:.2f}]",
                        file=sys.stderr,
                    )
    return rows


def plot(frame: pd.DataFrame, path: Path) -> None:
    """Per device: ms per image against batch size, and the time ratio Global / ResNet-32 with the
    poster's ratio (1.9 s / 4.5 s) for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter, NullLocator, ScalarFormatter

    if "mode" in frame:  # the figure shows inference; the training step is in the CSV
        frame = frame[frame["mode"].fillna("inference") == "inference"]
    devices = list(dict.fromkeys(frame["device"]))
    fig, axes = plt.subplots(len(devices), 2, figsize=(11, 4.2 * len(devices)), squeeze=False)
    for (ax, ax_ratio), device in zip(axes, devices):
        sub = frame[frame["device"] == device]
        vs32 = sub[sub["comparison"] == "resnet_global vs resnet32"]
        vs_no_pde = sub[sub["comparison"] == "resnet_global vs resnet_global_no_pde"]
        series = (
            ("ResNet-32", vs32[vs32["model"] == "resnet32"], "o-"),
            ("ResNet-Global", vs32[vs32["model"] == "resnet_global"], "s-"),
            ("ResNet-Global, Global layers removed", vs_no_pde[vs_no_pde["model"] == "resnet_global_no_pde"], "^--"),
        )
        for label, g, style in series:
            ms = g["time_s_per_img"] * 1e3
            err = [ms - g["time_ci_low_s_per_img"] * 1e3, g["time_ci_high_s_per_img"] * 1e3 - ms]
            ax.errorbar(g["batch"], ms, yerr=err, fmt=style, capsize=3, label=label)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("ms per image (median, 95% interval)")
        ax.set_title(f"{device}, {int(sub['threads'].iloc[0])} threads: time per image", fontsize=10)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # under the axes, off the data
        ratio = vs32[vs32["model"].str.startswith("ratio")]
        err = [ratio["ratio"] - ratio["ratio_ci_low"], ratio["ratio_ci_high"] - ratio["ratio"]]
        ax_ratio.errorbar(
            ratio["batch"], ratio["ratio"], yerr=err, fmt="s-", capsize=3, color="tab:orange", label="ours"
        )
        ax_ratio.axhline(1.0, color="black", linewidth=0.8)
        ax_ratio.axhline(1.9 / 4.5, color="tab:red", linestyle=":", label="poster: 1.9 s / 4.5 s (no protocol)")
        ax_ratio.set_ylim(0, max(2.0, float(ratio["ratio_ci_high"].max()) * 1.1))
        ax_ratio.set_ylabel("time ResNet-Global / time ResNet-32")
        ax_ratio.set_title("above 1: ResNet-Global is slower", fontsize=10)
        ax_ratio.legend(fontsize=8, loc="lower left")
        for a in (ax, ax_ratio):
            batches = sorted(sub["batch"].unique())
            a.set_xscale("log", base=2)
            a.xaxis.set_major_locator(FixedLocator(batches))
            a.xaxis.set_minor_locator(NullLocator())
            a.xaxis.set_major_formatter(ScalarFormatter())
            a.set_xlabel("batch size")
            a.grid(alpha=0.3, which="both")
    fig.suptitle("Inference time: ResNet-Global vs ResNet-32 (untrained weights, eval, real CIFAR-10 test images)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="cpu" + (",cuda" if torch.cuda.is_available() else ""))
    parser.add_argument("--batches", default="1,32,128,512", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--images", type=int, default=512, help="images per timing round (at least 3 batches)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--train", action="store_true", help="also time a training step (forward, backward, SGD)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(REPO / "results" / "bench" / "pde_speed.csv"))
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from --out, time nothing")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.plot_only:
        frame = pd.read_csv(out)
        plot(frame, out.with_suffix(".png"))
        return frame
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    x_all, label = _test_images(args.data, 1000)
    rows = []
    for name in args.devices.split(","):
        if name == "cuda" and not torch.cuda.is_available():
            raise SystemExit("error: --devices names cuda but no CUDA device is visible")
        if name == "cuda":
            torch.backends.cudnn.benchmark = True
        rows += bench_device(torch.device(name), x_all, args)
    frame = pd.DataFrame(rows).assign(images=label)
    atomic_write_csv(frame, out)
    plot(frame, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}", file=sys.stderr)
    return frame


if __name__ == "__main__":
    main()
