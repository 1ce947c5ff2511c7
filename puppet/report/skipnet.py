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

import pandas as pd

from puppet.core.protocols import DEFAULT_DEPLOYMENT
from puppet.report.engine import Metric, Row, Table, build, markdown, sections


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


def _rows(metrics: pd.DataFrame, models: pd.DataFrame) -> tuple[Row, ...]:
    """A row per (dataset, SkipNet model) that ran, described from ``models``; the phases its
    finished runs really trained in."""
    names = set(skipnet_models(models))
    runs = metrics[metrics["model"].isin(names)] if "model" in metrics else metrics.iloc[:0]
    rows = []
    for (dataset, model), group in runs.groupby(["dataset", "model"], sort=True):
        ok = group[group["status"] == "ok"]
        phases = ",".join(sorted(ok["phases"].fillna("").astype(str).unique())) if "phases" in ok else ""
        rows.append(
            Row(str(model), str(model), str(dataset), known={**_describe(models, str(model)), "phases": phases})
        )
    return tuple(rows)


def _blocks_executed(ok: pd.DataFrame, row: Row) -> pd.Series:
    """The share of gated blocks run: depth = 1 + 2 x executed blocks (stem + two convs per block),
    the first block always runs."""
    gated = row.known["gated_blocks"]
    if "mean_depth" not in ok:  # no per-sample depth recorded (a cost-only run takes no test pass)
        return pd.Series(float("nan"), index=ok.index)
    executed = (ok["mean_depth"].astype(float) - 1) / 2 - 1
    return 100.0 * executed / gated if gated else executed * float("nan")


TABLE = Table(
    "table_skipnet",
    "SkipNet: configurations and trade-off",
    (
        Metric("top1", "Top-1 (%)"),
        Metric("top5", "Top-5 (%)"),
        Metric("macs_m", "Mult-Adds (M)", lambda ok, row: ok["macs"].astype(float) / 1e6),
        Metric("blocks_executed", "Gated blocks run (%)", _blocks_executed),
        Metric("latency_s_per_img", "Speed (ms/img)"),
        Metric("mean_depth", "Mean depth (layers)"),
    ),
    _rows,
    caption=(
        "Every SkipNet configuration that ran: size-matched (ResNet-18 widths, chosen for the Puppet-CNN paper's "
        "size) and as published (SkipNet-38/74/110, widths 16-32-64), trained SkipNet's way (supervised "
        "pre-training, then hybrid RL at its own learning rate; *phases* gives the steps of each) or "
        "ConvNet-AIG-style (Gumbel gates, target rate). The SkipNet-38 rows at alpha 0.1, 0.01 and 0.001 and the "
        "Gumbel-trained rows at target rates 0.3, 0.5 and 0.7 are the trade-off curves "
        "(`figures/skipnet_tradeoff.png`); alpha acts through HRL, so its curve needs the paper's 10k HRL "
        "iterations: with a short HRL phase its points can coincide. Each run is measured twice: with the gate "
        "threshold calibrated on validation data (this harness' rule for every adaptive model) and with SkipNet's "
        "own rule, a block runs when p(execute) > 0.5. *Gated blocks run*: the test split's mean "
        "share of the blocks a gate decides; Mult-Adds per image by ptflops at batch 1. No paper column: the "
        "Puppet-CNN paper reports one SkipNet row, in Table 1."
    ),
    text=(
        ("configuration", "Configuration"),
        ("backbone", "Backbone"),
        ("training", "Training"),
        ("reward", "Reward"),
        ("phases", "Phases"),
    ),
    compared=False,
    per_deployment=True,
)


def skipnet_table(metrics: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, SkipNet model) that ran; means over seeds. ``models``: the model
    descriptions, for how each configuration is built and trained. Called by ``write_tables`` and
    by ``write_figures`` (the trade-off figure)."""
    return build(TABLE, metrics, models)


def render(frame: pd.DataFrame) -> str:
    """The Markdown section(s), one per dataset."""
    return "\n".join(markdown(TABLE, part, title) for title, part in sections(TABLE, frame))


# The smallest top-1 range a panel shows (pp): a spread of 0.1 pp drawn over the full height looked
# like a trade-off.
MIN_TOP1_SPAN = 4.0


def _knob(reward: str) -> float:
    """The number of a reward's label ("alpha 0.01", "target rate 0.5")."""
    return float(str(reward).rsplit(" ", 1)[-1])


def _panel(ax, sub: pd.DataFrame, title: str) -> None:
    """One panel: the runs of one configuration kind, points at the same place labelled together
    (SkipNet-38's alpha runs can coincide). A curve joins the runs of one network (backbone) trained
    one way (SkipNet's, or Gumbel) at different rewards: what the model descriptions say, not names."""
    joined = 0
    sub = sub.assign(deployment=sub["deployment"].fillna(DEFAULT_DEPLOYMENT))  # build() gives every row one
    for (backbone, training, deployment), curve in sub.groupby(["backbone", "training", "deployment"], sort=True):
        if curve["reward"].nunique() < 2:
            continue
        curve = curve.assign(knob=curve["reward"].map(_knob)).sort_values("knob")
        colour = "tab:orange" if training.startswith("ConvNet") else "tab:blue"
        knob = str(curve["reward"].iloc[0]).rsplit(" ", 1)[0]
        values = ", ".join(f"{k:g}" for k in curve["knob"])
        rule = "calibrated threshold" if deployment == DEFAULT_DEPLOYMENT else f"threshold rule {deployment}"
        label = f"{backbone.split(',')[0]}, {training.split(' (')[0]}, {rule}, {knob} {values}"
        style = "-" if deployment == DEFAULT_DEPLOYMENT else "--"
        ax.plot(curve["macs_m"], curve["top1"], style, color=colour, alpha=0.5, zorder=1, label=label)
        joined += 1
    for _, r in sub.iterrows():
        gumbel = r["training"].startswith("ConvNet")
        colour = "tab:orange" if gumbel else "tab:blue"
        face = colour if r["deployment"] == DEFAULT_DEPLOYMENT else "none"  # hollow: SkipNet's fixed rule
        ax.scatter(r["macs_m"], r["top1"], marker="s" if gumbel else "o", edgecolors=colour, c=face, zorder=2)
    places = sub.assign(x=sub["macs_m"].round(3), y=sub["top1"].round(2))
    for (x, y), group in places.groupby(["x", "y"], sort=False):
        text = "\n".join(
            f"{m} ({w}{'' if d == DEFAULT_DEPLOYMENT else ', ' + d})"
            for m, w, d in zip(group["model"], group["reward"], group["deployment"])
        )
        ax.annotate(text, (x, y), fontsize=7, xytext=(5, -4), textcoords="offset points", va="top")
    ax.margins(x=0.25, y=0.15)
    low, high = ax.get_ylim()
    if high - low < MIN_TOP1_SPAN:  # 0.1 pp must not fill the panel's height
        middle = (low + high) / 2
        ax.set_ylim(middle - MIN_TOP1_SPAN / 2, middle + MIN_TOP1_SPAN / 2)
    ax.set_xlabel("mean Mult-Adds per image (M, ptflops, batch 1)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if joined:
        ax.legend(fontsize=7, loc="upper left")


def plot_tradeoff(frame: pd.DataFrame):
    """Top-1 against mean MACs for every SkipNet run: a row per dataset, the size-matched and the
    as-published runs in panels of their own (their costs differ by an order of magnitude); circles
    trained SkipNet's way, squares ConvNet-AIG-style; filled at the calibrated threshold, hollow at
    SkipNet's fixed 0.5 rule; each trade-off curve joined (dashed: the fixed rule). Returns the figure
    (``puppet.report.figures.save`` writes it)."""
    import matplotlib.pyplot as plt

    ran = frame.dropna(subset=["top1", "macs_m"]) if not frame.empty else frame
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
            widths = sorted({int(w) for w in sub.get("max_channels", pd.Series(dtype=float)).dropna()})
            runs = f"\nthese runs: max_channels {'/'.join(map(str, widths))}" if widths else ""
            _panel(ax, sub, f"{dataset}, {kind}: {backbone}{runs}")
    fig.tight_layout()
    return fig
