"""SkipNet's configurations side by side: how each was trained and what it traded (``table_skipnet.csv``).

One row per run of a SkipNet model (``skipnet`` and every configuration registered from it): its
backbone, its training (SkipNet's SP then HRL, or the ConvNet-AIG-style Gumbel alternative), the skip
reward ``alpha`` (HRL) or target rate (Gumbel), the phases the run really trained in, and what it
bought: top-1, mean MACs per image (ptflops, batch 1), the fraction of gated blocks executed on the
test split and the batch-1 latency. The SkipNet-38 runs at several ``alpha`` and the Gumbel-trained runs at
several target rates are the trade-off curves
(``skipnet_tradeoff.png``): a larger skip reward should buy fewer MACs with some accuracy.
"""

from __future__ import annotations

import math

import pandas as pd


def skipnet_models(models: pd.DataFrame) -> list[str]:
    """``skipnet`` and every model registered as one of its configurations, from the model descriptions."""
    from puppet.report.models import SKIPNET

    is_skipnet = (models["model"] == SKIPNET) | (models["base"] == SKIPNET)
    return sorted(set(models.loc[is_skipnet, "model"]))


def _describe(models: pd.DataFrame, model: str) -> dict:
    """Backbone, training and reward of a SkipNet model as built at 512 channels: its row in the model
    descriptions ``models`` (``results/models.csv``), put into words."""
    from puppet.report.models import PAPER_WIDTH, described

    net = described(models, model)
    gumbel = net["gate_training"] == "gumbel"
    return {
        "configuration": net["configuration"],
        "backbone": f"{1 + 2 * int(net['residual_blocks']) + 1}-layer ResNet, widths {net['block_widths']}"
        + (f" (at {PAPER_WIDTH} channels)" if not net["fixed_width"] else ""),
        "training": "ConvNet-AIG-style (Gumbel, target rate)" if gumbel else "SkipNet (SP then HRL)",
        "reward": f"target rate {net['target_rate']:g}" if gumbel else f"alpha {net['hrl_alpha']:g}",
        "gated_blocks": int(net["residual_blocks"]) - 1,
    }


def skipnet_table(metrics: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, SkipNet model) that ran; means over seeds. ``models``: the model
    descriptions, for how each configuration is built and trained. Called by ``write_tables`` and
    by ``write_figures`` (the trade-off figure)."""
    names = set(skipnet_models(models))
    if "macs" in metrics and "macs_g" not in metrics:  # metrics.csv as written; the tables add the G column
        metrics = metrics.assign(macs_g=metrics["macs"] / 1e9)
    rows = []
    runs = metrics[metrics["model"].isin(names)] if "model" in metrics else metrics.iloc[:0]
    for (dataset, model), group in runs.groupby(["dataset", "model"], sort=True):
        ok = group[group["status"] == "ok"]
        about = _describe(models, str(model))
        row = {"dataset": dataset, "model": model, "label": model, "group": "", **about, "n_seeds": len(ok)}
        if ok.empty:
            row["note"] = "failed: " + (str(group["error"].iloc[0])[:160] if "error" in group else "no message")
            rows.append(row)
            continue
        row["note"] = ""
        row["phases"] = ",".join(sorted(ok["phases"].fillna("").astype(str).unique())) if "phases" in ok else ""
        for m in ("top1", "top5", "macs_g", "latency_s_per_img", "mean_depth"):
            row[m] = ok[m].astype(float).mean() if m in ok else math.nan
        # depth = 1 + 2 x executed blocks (stem + two convs per block); the first block always runs
        executed = (row["mean_depth"] - 1) / 2 - 1
        row["blocks_executed"] = 100.0 * executed / about["gated_blocks"] if about["gated_blocks"] else math.nan
        rows.append(row)
    columns = ["dataset", "model", "label", "group", "configuration", "backbone", "training", "reward", "phases"]
    return pd.DataFrame(
        rows,
        columns=[
            *columns,
            "n_seeds",
            "top1",
            "top5",
            "macs_g",
            "blocks_executed",
            "latency_s_per_img",
            "mean_depth",
            "note",
            "gated_blocks",
        ],
    )


def _cell(value: float, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def render(frame: pd.DataFrame) -> str:
    """The markdown section: one table per dataset, a row per SkipNet model that ran (no paper column:
    the Puppet-CNN paper reports one SkipNet row, in Table 1)."""
    head = "## SkipNet: configurations and trade-off"
    if frame.empty:
        return f"{head}\n\nNo SkipNet model ran in this profile.\n"
    lines = [
        head,
        "",
        "Every SkipNet configuration that ran: size-matched (ResNet-18 widths, chosen for the Puppet-CNN paper's "
        "size) and as published (SkipNet-38/74/110, widths 16-32-64), trained SkipNet's way (supervised "
        "pre-training, then hybrid RL at its own learning rate; *phases* gives the steps of each) or "
        "ConvNet-AIG-style (Gumbel gates, target rate). The SkipNet-38 rows at alpha 0.1, 0.01 and 0.001 and the "
        "Gumbel-trained rows at target rates 0.3, 0.5 and 0.7 are the trade-off curves "
        "(`figures/skipnet_tradeoff.png`); alpha acts through HRL, so its curve needs the paper's 10k HRL "
        "iterations: with a short HRL phase its points can coincide. *Gated blocks run*: the test split's mean "
        "share of the blocks a gate decides; Mult-Adds per image by ptflops at batch 1.",
    ]
    for dataset, sub in frame.groupby("dataset", sort=False):
        lines += [
            "",
            f"**{dataset}**",
            "",
            "| Model | Configuration | Backbone | Training | Reward | Top-1 (%) | Mult-Adds (M) | Gated blocks run (%) "
            "| Speed (ms/img) | Phases |",
            "|---|---|---|---|---|---:|---:|---:|---:|---|",
        ]
        for _, r in sub.iterrows():
            cells = [
                r["model"],
                r["configuration"],
                r["backbone"],
                r["training"],
                r["reward"],
                _cell(r.get("top1"), 2),
                _cell(r.get("macs_g", math.nan) * 1e3, 2),
                _cell(r.get("blocks_executed"), 1),
                _cell(r.get("latency_s_per_img", math.nan) * 1e3, 2),
                str(r.get("phases") or "") + (f" {r['note']}" if r.get("note") else ""),
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


# The trade-off curves: (model-name prefix, the reward's label prefix, colour, legend)
CURVES = (
    ("skipnet38", "alpha ", "tab:blue", "SkipNet-38 (SP then HRL), skip reward alpha"),
    ("skipnet_gumbel", "target rate ", "tab:orange", "size-matched, Gumbel-trained, target rate"),
)


def _panel(ax, sub: pd.DataFrame, title: str) -> None:
    """One panel: the runs of one configuration kind, their curves joined, points at the same place
    labelled together (SkipNet-38's alpha runs can coincide)."""
    joined = 0
    for prefix, knob, colour, label in CURVES:
        curve = sub[sub["model"].str.startswith(prefix)].copy()
        if len(curve) > 1:
            curve["knob"] = curve["reward"].str.removeprefix(knob).astype(float)
            curve = curve.sort_values("knob")
            values = ", ".join(f"{k:g}" for k in curve["knob"])
            ax.plot(
                curve["macs_g"] * 1e3, curve["top1"], "-", color=colour, alpha=0.5, zorder=1, label=f"{label} {values}"
            )
            joined += 1
    for _, r in sub.iterrows():
        gumbel = r["training"].startswith("ConvNet")
        colour = "tab:orange" if gumbel else "tab:blue"
        ax.scatter(r["macs_g"] * 1e3, r["top1"], marker="s" if gumbel else "o", color=colour, zorder=2)
    places = sub.assign(x=(sub["macs_g"] * 1e3).round(3), y=sub["top1"].round(2))
    for (x, y), group in places.groupby(["x", "y"], sort=False):
        text = "\n".join(f"{m} ({w})" for m, w in zip(group["model"], group["reward"]))
        ax.annotate(text, (x, y), fontsize=7, xytext=(5, -4), textcoords="offset points", va="top")
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel("mean Mult-Adds per image (M, ptflops, batch 1)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if joined:
        ax.legend(fontsize=7, loc="upper left")


def plot_tradeoff(frame: pd.DataFrame):
    """Top-1 against mean MACs for every SkipNet run: a row per dataset, the size-matched and the
    as-published runs in panels of their own (their costs differ by an order of magnitude); circles
    trained SkipNet's way, squares ConvNet-AIG-style; each trade-off curve joined. Returns the figure
    (``puppet.report.figures.save`` writes it)."""
    import matplotlib.pyplot as plt

    ran = frame.dropna(subset=["top1", "macs_g"]) if not frame.empty else frame
    datasets = list(dict.fromkeys(ran["dataset"])) if not ran.empty else []
    kinds = ("size-matched", "as published")
    fig, axes = plt.subplots(max(1, len(datasets)), 2, figsize=(12.8, 4.8 * max(1, len(datasets))), squeeze=False)
    if not datasets:
        for ax in axes[0]:
            ax.set_axis_off()
        axes[0][0].text(0.5, 0.5, "no SkipNet run finished in this profile", ha="center", va="center")
    for row, dataset in zip(axes, datasets):
        for ax, kind in zip(row, kinds):
            sub = ran[(ran["dataset"] == dataset) & (ran["configuration"] == kind)]
            if sub.empty:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"{dataset}: no {kind} SkipNet run", ha="center", va="center")
                continue
            backbone = sub["backbone"].iloc[0] if sub["backbone"].nunique() == 1 else "several backbones"
            _panel(ax, sub, f"{dataset}, {kind}: {backbone}")
    fig.tight_layout()
    return fig
