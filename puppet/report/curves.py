"""Learning curves: validation top-1 and training loss per epoch, mean over seeds with the seeds' range.

Read from each run's history in ``train.json``; validation top-1 is there when the profile sets
``train.val_curve`` (the claims profile does, to show that its epochs reach a plateau).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from puppet.core.io import atomic_write  # noqa: E402


def history_frame(records: list[dict]) -> pd.DataFrame:
    """One row per (dataset, model, seed, epoch) of the finished runs: train loss and validation top-1."""
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        for epoch, h in enumerate(r.get("history") or [], start=1):
            rows.append(
                dict(
                    dataset=r["dataset"],
                    model=r["model"],
                    seed=r["seed"],
                    epoch=epoch,
                    loss=h.get("loss"),
                    val_top1=h.get("val_top1"),
                )
            )
    return pd.DataFrame(rows, columns=["dataset", "model", "seed", "epoch", "loss", "val_top1"])


def learning_curves(records: list[dict], dataset: str, out: str | Path) -> Path:
    """Two panels (validation top-1, training loss) for ``dataset``; a figure that says so when empty."""
    frame = history_frame(records)
    frame = frame[frame["dataset"] == dataset]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (("val_top1", "validation top-1 (%)"), ("loss", "training loss"))
    for ax, (col, label) in zip(axes, panels):
        data = frame.dropna(subset=[col])
        colours = plt.get_cmap("tab20").colors  # more models than tab10's ten colours
        for n, (model, g) in enumerate(data.groupby("model", sort=True)):
            per_epoch = g.groupby("epoch")[col]
            mean = per_epoch.mean()
            style = dict(color=colours[n % len(colours)], linestyle=("-", "--")[n // len(colours) % 2])
            (line,) = ax.plot(mean.index, mean.values, marker="o", markersize=3, label=model, **style)
            if g["seed"].nunique() > 1:
                ax.fill_between(mean.index, per_epoch.min(), per_epoch.max(), color=line.get_color(), alpha=0.15)
        if data.empty:
            why = "the profile does not set train.val_curve" if col == "val_top1" else "no finished run"
            ax.text(0.5, 0.5, f"no {label}: {why}", ha="center", va="center", transform=ax.transAxes)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    seeds = int(frame.groupby("model")["seed"].nunique().max()) if len(frame) else 0
    fig.suptitle(f"{dataset}: learning curves, mean over {seeds} seed(s), shaded: the seeds' range", fontsize=10)
    handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.02),
            ncol=min(5, len(labels)),
            fontsize=8,
            frameon=False,
        )
    fig.tight_layout()
    out = Path(out)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return out


def mor_seed_curves(mor_seeds: pd.DataFrame, dataset: str, model: str, out: str | Path) -> Path:
    """The MOR study over seeds (``mor_seeds.csv``): top-1 against end-to-end speed-up per method, plain and
    fine-tuned, each point's mean with its 95 % intervals on both axes; the full model as a line."""
    data = mor_seeds[(mor_seeds["dataset"] == dataset) & (mor_seeds["model"] == model)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    full = data[data["method"] == "full"]
    for ax, finetuned in zip(axes, (False, True)):
        arm = data[(data["method"] != "full") & (data["finetuned"].astype(str) == str(finetuned))]
        for method, g in arm.groupby("method", sort=True):
            g = g.sort_values("speedup_total_mean")
            xerr = [
                g["speedup_total_mean"] - g["speedup_total_ci_low"],
                g["speedup_total_ci_high"] - g["speedup_total_mean"],
            ]
            yerr = [g["top1_mean"] - g["top1_ci_low"], g["top1_ci_high"] - g["top1_mean"]]
            ax.errorbar(
                g["speedup_total_mean"],
                g["top1_mean"],
                xerr=xerr,
                yerr=yerr,
                marker="o",
                markersize=4,
                capsize=2,
                label=method,
            )
        if len(full):
            ax.axhline(float(full["top1_mean"].iloc[0]), color="grey", linestyle="--", linewidth=1, label="full model")
        if arm.empty:
            ax.text(0.5, 0.5, "no reductions measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("fine-tuned (100 Adam steps)" if finetuned else "reduced, not fine-tuned", fontsize=9)
        ax.set_xlabel("end-to-end speed-up (x)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test top-1 (%)")
    seeds = int(data["n_seeds"].max()) if len(data) else 0
    fig.suptitle(f"{dataset} / {model}: MOR over {seeds} seed(s), mean with 95% intervals", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=len(labels), fontsize=8, frameon=False
        )
    fig.tight_layout()
    out = Path(out)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return out
