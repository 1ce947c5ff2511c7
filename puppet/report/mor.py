"""The MOR study's outputs: ``results/mor.csv`` (every run's ``mor.csv``, stacked) and, per task,
a figure with three curves: test accuracy against wall-clock speed-up of the whole network (95 %
interval bars) and against the MAC reduction of the ODE layer, for POD-DEIM, pruning and SVD
truncation, the full model marked.

The paper (Lehtimäki et al., TNNLS) reports curves, not numbers we could retrieve: nothing here is
compared with a paper number; the qualitative claims are discussed in the docs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from puppet.core.io import atomic_write_csv  # noqa: E402
from puppet.report.figures import placeholder, save  # noqa: E402

STYLE = {
    "pod_deim": ("POD-DEIM (k = m)", "tab:red", "o-"),
    "prune": ("pruning (L1)", "tab:blue", "s-"),
    "svd": ("SVD truncation", "tab:green", "^-"),
}
LEVEL_NAME = {"pod_deim": "k", "prune": "kept", "svd": "rank"}


def collect(paths: list[Path]) -> pd.DataFrame:
    frames = []
    for path in paths:
        try:
            frame = pd.read_csv(path, dtype={"config_hash": str})
        except (OSError, ValueError) as exc:  # a damaged file costs its rows, not the report
            frame = pd.DataFrame([{"status": "error", "error": f"unreadable {path} ({exc}); delete it and rerun"}])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_task(rows: pd.DataFrame, out_stem: Path) -> list[Path]:
    """Accuracy vs speed-up (whole network) and vs MAC reduction (ODE layer) for one run."""
    first = rows.iloc[0]
    full = rows[rows["method"] == "full"]
    fig, (ax_speed, ax_macs) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for method, (label, colour, style) in STYLE.items():
        g = rows[rows["method"] == method].sort_values("level")  # a curve over the levels, not the x order
        if g.empty:
            continue
        err = [g["speedup_total"] - g["speedup_total_ci_low"], g["speedup_total_ci_high"] - g["speedup_total"]]
        ax_speed.errorbar(g["speedup_total"], g["top1"], xerr=err, fmt=style, color=colour, capsize=2, label=label)
        ax_macs.plot(g["macs_reduction_ode"], g["top1"], style, color=colour, label=label)
        for _, r in g.iterrows():  # the level beside each point
            ax_macs.annotate(
                f"{LEVEL_NAME[method]}={int(r['level'])}",
                (r["macs_reduction_ode"], r["top1"]),
                fontsize=6,
                color=colour,
                xytext=(3, 3),
                textcoords="offset points",
            )
    if not full.empty:
        for ax in (ax_speed, ax_macs):
            ax.axhline(float(full["top1"].iloc[0]), color="black", linestyle=":", linewidth=1, label="full model")
            ax.axvline(1.0, color="grey", linewidth=0.6)
    ax_speed.set_xlabel("wall-clock speed-up of the whole network (full / reduced, 95% interval)")
    ax_macs.set_xlabel("MAC reduction of the ODE layer (full / reduced)")
    ax_macs.set_xscale("log")
    ax_speed.set_ylabel("test top-1 (%)")
    for ax in (ax_speed, ax_macs):
        ax.grid(alpha=0.3, which="both")
    ax_speed.legend(fontsize=8, loc="lower left")
    fig.suptitle(
        f"{first['model']} on {first['dataset']} ({first['profile']}): post-training compression, no fine-tuning; "
        f"timed on {first['device']}, {int(first['threads'])} threads, batch {int(first['timing_batch'])}",
        fontsize=10,
    )
    fig.tight_layout()
    return save(fig, out_stem)


def write_mor(paths: list[Path], out: Path, figures_dir: Path) -> pd.DataFrame:
    frame = collect(paths)
    atomic_write_csv(frame, Path(out))
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    needed = {"status", "profile", "dataset", "model", "seed", "method"}
    ok = frame[frame["status"] == "ok"] if needed <= set(frame.columns) else frame.iloc[0:0]
    drawn = set()
    for (_, dataset, model, seed), rows in ok.groupby(["profile", "dataset", "model", "seed"]):
        stem = figures_dir / f"mor_{dataset}_{model}_seed{int(seed)}"
        plot_task(rows, stem)
        drawn.add(stem.name)
    for path in map(Path, paths):  # a run folder's study that failed: its declared figure says so
        if len(path.parts) >= 5 and path.parts[-3].startswith("seed"):
            dataset, model, seed = path.parts[-5:-2]
            stem = figures_dir / f"mor_{dataset}_{model}_{seed}"
            if stem.name not in drawn:
                placeholder(stem, f"{model} on {dataset} ({seed}): no finished MOR study to plot (see {path})")
    return frame
