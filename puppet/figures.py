"""Figures from ``results/metrics.csv``: accuracy against cost, one marker per model.

For each dataset: top-1 against stored parameters, against MACs and against
batch-1 latency (log x), error bars over seeds, the Pareto frontier drawn.
Written as PNG (for reading) and PDF (for papers). Models that add their own
figures (Puppet-CNN's depth figures) register a function with ``figure_writer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from puppet.io import _atomic  # noqa: E402
from puppet.registry import model_info  # noqa: E402

COST_AXES = {
    "stored_params": "stored parameters",
    "macs": "MACs per image (batch 1)",
    "latency_s_per_img": "latency (s/img, batch 1)",
}
FAMILY_COLOURS = {"fixed": "tab:blue", "puppet": "tab:red", "adaptive_params": "tab:green", "adaptive_depth": "tab:purple"}
MARKERS = "osD^v<>pP*Xhd"

_WRITERS: list[Callable[[pd.DataFrame, Path], list[Path]]] = []


def figure_writer(fn: Callable[[pd.DataFrame, Path], list[Path]]) -> Callable:
    """Register an extra figure function ``(metrics, out_dir) -> written paths``."""
    _WRITERS.append(fn)
    return fn


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points no other point beats on both lower cost ``x`` and higher accuracy ``y``."""
    front, best = [], -float("inf")
    for _, p in points.sort_values([x, y], ascending=[True, False]).iterrows():
        if p[y] > best:
            front.append(p)
            best = p[y]
    return pd.DataFrame(front)


def summarise(metrics: pd.DataFrame) -> pd.DataFrame:
    ok = metrics[metrics["status"] == "ok"]
    cols = [c for c in ["top1", *COST_AXES] if c in ok]
    g = ok.groupby(["dataset", "model"])[cols]
    out = g.mean().join(g.std().add_suffix("_std")).join(g.size().rename("n_seeds")).reset_index()
    return out


def save(fig, path_stem: Path) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        path = path_stem.with_suffix(f".{ext}")
        _atomic(path, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight"))
        paths.append(path)
    plt.close(fig)
    return paths


def _family(model: str) -> str:
    try:
        return model_info(model).family
    except KeyError:
        return "other"


def accuracy_vs_cost(summary: pd.DataFrame, dataset: str, out_dir: Path) -> list[Path]:
    data = summary[summary["dataset"] == dataset]
    written = []
    fig_all, axes = plt.subplots(1, len(COST_AXES), figsize=(5 * len(COST_AXES), 4), sharey=True)
    for ax_all, (x, xlabel) in zip(axes, COST_AXES.items()):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        pts = data.dropna(subset=[x, "top1"])
        pts = pts[pts[x] > 0]
        for target in (ax, ax_all):
            for i, (_, p) in enumerate(pts.iterrows()):
                target.errorbar(p[x], p["top1"], yerr=p.get("top1_std") if p["n_seeds"] > 1 else None,
                                marker=MARKERS[i % len(MARKERS)], color=FAMILY_COLOURS.get(_family(p["model"]), "grey"),
                                linestyle="none", capsize=3, markersize=7, label=p["model"])
            if len(pts) > 1:
                front = pareto_front(pts, x, "top1")
                target.step(front[x], front["top1"], where="post", color="black", alpha=0.4, linewidth=1, label="Pareto frontier")
            target.set_xscale("log")
            target.set_xlabel(xlabel)
            target.grid(alpha=0.3, which="both")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{dataset}: top-1 vs {xlabel}")
        ax.legend(fontsize=7, loc="best")
        written += save(fig, out_dir / f"{dataset}_top1_vs_{x}")
    axes[0].set_ylabel("top-1 accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig_all.legend(handles, labels, fontsize=7, loc="center right")
    fig_all.suptitle(f"{dataset}: accuracy against cost (colour = family; error bars over seeds)")
    written += save(fig_all, out_dir / f"{dataset}_top1_vs_cost")
    return written


def write_figures(metrics_path: str | Path, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = pd.read_csv(metrics_path)
    summary = summarise(metrics)
    written = []
    for dataset in sorted(summary["dataset"].unique()):
        written += accuracy_vs_cost(summary, dataset, out_dir)
    try:  # model-specific figures (e.g. Puppet-CNN depth vs complexity) register themselves on import
        import puppet.models.figures  # noqa: F401
    except ImportError:
        pass
    for writer in _WRITERS:
        written += writer(metrics, out_dir)
    return written
