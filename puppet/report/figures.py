"""Figures from ``results/metrics.csv``: accuracy against cost, and Puppet-CNN's depth figures.

* For each dataset: top-1 against stored parameters, against MACs and against
  batch-1 latency (log x), error bars over seeds, the Pareto frontier drawn; a model
  measured in more than one deployment (``metrics.csv``'s ``deployment`` key) has one
  point per deployment, its own forward filled and the others hollow.
* Fig. 3 of the paper: Puppet-CNN's realised depth against input complexity over
  the test set (from each run's ``test_stats.pt``).
* Fig. 4 of the paper: stored size against depth for VGG/ResNet and their puppets
  (at the paper's width, 512 channels, read from ``results/models.csv``: the model code's
  descriptions, ``puppet.report.models``; nothing here builds a model).

Written as PNG (for reading) and PDF (for papers).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402

from puppet.core.io import atomic_write, atomic_write_csv  # noqa: E402
from puppet.core.protocols import DEFAULT_DEPLOYMENT  # noqa: E402
from puppet.core.registry import model_info  # noqa: E402
from puppet.core.runs import archive_problem  # noqa: E402
from puppet.report.collate import default_rows, load_metrics  # noqa: E402
from puppet.report.models import FIG4_FAMILIES, PAPER_WIDTH, described, load_models  # noqa: E402

COST_AXES = {
    "stored_params": "stored parameters",
    "macs": "MACs per image (batch 1)",
    "latency_s_per_img": "latency per image (batch 1)",
}
FAMILY_COLOURS = {
    "fixed": "tab:blue",
    "puppet": "tab:red",
    "adaptive_params": "tab:green",
    "adaptive_depth": "tab:purple",
    "pde": "tab:orange",
    "node": "tab:brown",
}
FAMILY_NAMES = {
    "fixed": "fixed CNN",
    "puppet": "Puppet-CNN",
    "adaptive_params": "adaptive kernels",
    "adaptive_depth": "adaptive depth",
    "pde": "PDE Global",
    "node": "Neural ODE",
}
MARKERS = "osD^v<>pP*Xhd"


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points no other point beats on both lower cost ``x`` and higher accuracy ``y``."""
    front, best = [], -float("inf")
    for _, p in points.sort_values([x, y], ascending=[True, False]).iterrows():
        if p[y] > best:
            front.append(p)
            best = p[y]
    return pd.DataFrame(front)


def summarise(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each (dataset, model, deployment)."""
    ok = metrics[metrics["status"] == "ok"]
    cols = [c for c in ["top1", *COST_AXES] if c in ok]
    by = ["dataset", "model", "deployment"]
    g = ok.groupby(by)[cols]
    out = g.mean().join(g.std().add_suffix("_std")).join(g.size().rename("n_seeds"))
    if "recipe" in ok:  # models trained with their own recipe say so in the legend
        out = out.join(ok.groupby(by)["recipe"].first())
    return out.reset_index()


def _is_default(p: pd.Series) -> bool:
    return p.get("deployment", DEFAULT_DEPLOYMENT) == DEFAULT_DEPLOYMENT


def _own_recipe(p: pd.Series) -> bool:
    recipe = p.get("recipe")
    return isinstance(recipe, str) and recipe not in ("", "default")


def _label(p: pd.Series) -> str:
    """The model's legend entry: its name, the deployment in brackets, * when it has its own recipe
    (the legend's title says so; metrics.csv names the recipe)."""
    name = p["model"] if _is_default(p) else f"{p['model']} [{p['deployment']}]"
    return f"{name} *" if _own_recipe(p) else name


def save(fig, path_stem: Path) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        path = path_stem.with_suffix(f".{ext}")
        atomic_write(path, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight"))
        paths.append(path)
    plt.close(fig)
    return paths


def placeholder(path_stem: Path, text: str) -> list[Path]:
    """A figure that says why there is nothing to plot: the workflow declares every figure, so a
    dataset whose runs all failed still gets its file (and the report says so instead of breaking)."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10)
    return save(fig, path_stem)


def _family(model: str) -> str:
    try:
        return model_info(model).family
    except KeyError:
        return "other"


def model_style(model: str) -> tuple[str, str]:
    """(colour, marker) of a model, the same in every figure and on every dataset: the colour is its
    family's, the marker its rank among the family's registered models (unique within a family)."""
    from puppet.core.registry import list_models

    name = model
    family = _family(name)
    members = list_models(family) if family != "other" else [name]
    return FAMILY_COLOURS.get(family, "grey"), MARKERS[members.index(name) % len(MARKERS)]


def describe_runs(metrics: pd.DataFrame, dataset: str) -> str:
    """What a figure shows, for its title: profile(s), width(s), epochs and seeds of the ok runs."""
    ok = metrics[(metrics["status"] == "ok") & (metrics["dataset"] == dataset)]
    if ok.empty:
        return ""

    def values(col: str) -> str:
        if col not in ok:
            return "?"
        vals = sorted({int(v) if isinstance(v, float) and v.is_integer() else v for v in ok[col].dropna()}, key=str)
        return "/".join(map(str, vals)) or "?"

    seeds = ok.groupby("model")["seed"].nunique().max()
    return (
        f"profile {values('profile')}, max_channels {values('max_channels')}, {values('epochs')} epochs, "
        f"{seeds} seed{'s' if seeds > 1 else ''}"
    )


def _engineering(ax, unit: str) -> None:
    """Readable log-axis ticks: 20 k, 500 µs (the unit on the ticks, not in the label); 1-2-5 steps on
    a short range, decades on a long one (1-2-5 over four decades collided: "50 k100 k200 k");
    minor ticks unlabelled. Call it after the data is drawn: the range decides."""
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    low, high = ax.get_xlim()
    decades = np.log10(high / low) if low > 0 and high > low else 0.0
    subs = (1.0, 2.0, 5.0) if decades <= 2.2 else (1.0, 3.0) if decades <= 3.5 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    ax.xaxis.set_major_formatter(EngFormatter(unit=unit, sep=" "))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _key_handles(families: list[str], deployments: bool) -> list:
    """The figure's key: one colour per family shown, filled/hollow, the frontier."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", linestyle="none", color=FAMILY_COLOURS.get(f, "grey"), label=FAMILY_NAMES.get(f, f))
        for f in families
    ]
    if deployments:
        handles.append(Line2D([], [], marker="o", linestyle="none", color="grey", label="default deployment"))
        handles.append(
            Line2D([], [], marker="o", linestyle="none", color="grey", markerfacecolor="none", label="other deployment")
        )
    handles.append(Line2D([], [], color="black", alpha=0.4, label="Pareto frontier"))
    return handles


def _legends(fig, handles, labels, families, deployments: bool, own_recipe: bool, columns: int) -> None:
    """The family key above the panels, the models below them in at most ``columns`` columns: never
    beside the data (47 entries in one column took 40% of the width)."""
    models = [(h, lab) for h, lab in zip(handles, labels) if lab != "Pareto frontier"]
    key = _key_handles(families, deployments)
    key_cols = len(key) if columns >= 5 else -(-len(key) // 2)
    fig.legend(handles=key, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=key_cols, fontsize=8, frameon=False)
    ncol = max(1, min(columns, -(-len(models) // 10)))
    title = "models (* trained with its own recipe)" if own_recipe else "models"
    fig.legend(
        [h for h, _ in models],
        [lab for _, lab in models],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=ncol,
        fontsize=7,
        title=title,
        title_fontsize=8,
        frameon=False,
    )


def dodge(ax, marks: list, size_pt: float = 9.0) -> int:
    """Set markers that would cover each other side by side: points closer than ``size_pt`` in both
    directions on the drawn axes form a group, spread horizontally by ``size_pt`` around their common
    position (in points, so the data and the axis stay as they are). Nine Puppet-CNN variants of almost
    the same size once drew as one marker. Returns the number of markers moved."""
    if len(marks) < 2:
        return 0
    ax.margins(x=0.12)  # room at both ends for a group set side by side there
    ax.figure.canvas.draw()  # fixes the limits the display positions depend on
    xy = [ax.transData.transform(mark.lines[0].get_xydata()[0]) for mark in marks]
    scale = ax.figure.dpi / 72  # points to pixels
    groups = list(range(len(marks)))  # union-find over the overlap graph

    def root(i: int) -> int:
        while groups[i] != i:
            groups[i] = groups[groups[i]]
            i = groups[i]
        return i

    for i in range(len(marks)):
        for j in range(i + 1, len(marks)):
            if abs(xy[i][0] - xy[j][0]) < size_pt * scale and abs(xy[i][1] - xy[j][1]) < size_pt * scale:
                groups[root(i)] = root(j)
    members: dict[int, list[int]] = {}
    for i in range(len(marks)):
        members.setdefault(root(i), []).append(i)
    moved = 0
    for group in members.values():
        if len(group) < 2:
            continue
        centre = sum(xy[i][0] for i in group) / len(group) / scale  # points
        for rank, i in enumerate(sorted(group, key=lambda k: (xy[k][0], xy[k][1]))):
            target = centre + (rank - (len(group) - 1) / 2) * size_pt  # points, a marker width apart
            offset = ScaledTranslation((target - xy[i][0] / scale) / 72, 0, ax.figure.dpi_scale_trans)
            for artist in marks[i].get_children():
                artist.set_transform(artist.get_transform() + offset)
            moved += 1
    return moved


def accuracy_vs_cost(summary: pd.DataFrame, dataset: str, out_dir: Path, about: str = "") -> list[Path]:
    data = summary[summary["dataset"] == dataset]
    written = []
    seeds = int(data["n_seeds"].max()) if len(data) else 1
    families = sorted(
        {_family(m) for m in data["model"]}, key=lambda f: list(FAMILY_COLOURS).index(f) if f in FAMILY_COLOURS else 99
    )
    deployments = bool(len(data)) and not data.apply(_is_default, axis=1).all()
    own_recipe = any(_own_recipe(p) for _, p in data.iterrows())
    bars = " · error bars: std over seeds" if seeds > 1 else ""
    fig_all, axes = plt.subplots(1, len(COST_AXES), figsize=(5 * len(COST_AXES), 4), sharey=True)
    combined_moved = 0
    for ax_all, (x, xlabel) in zip(axes, COST_AXES.items()):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        pts = data.dropna(subset=[x, "top1"])
        pts = pts[pts[x] > 0]
        moved = {}  # markers moved aside, in the figure of this axis alone (True) and in the combined one
        for target in (ax, ax_all):
            marks = []
            for _, p in pts.iterrows():
                colour, marker = model_style(p["model"])
                marks.append(target.errorbar(
                    p[x],
                    p["top1"],
                    yerr=p.get("top1_std") if p["n_seeds"] > 1 else None,
                    marker=marker,
                    color=colour,
                    linestyle="none",
                    capsize=3,
                    markersize=7,
                    markerfacecolor=colour if _is_default(p) else "none",
                    label=_label(p),
                ))  # fmt: skip
            if len(pts) > 1:
                front = pareto_front(pts, x, "top1")
                target.step(
                    front[x],
                    front["top1"],
                    where="post",
                    color="black",
                    alpha=0.4,
                    linewidth=1,
                    label="Pareto frontier",
                )
            target.set_xscale("log")
            _engineering(target, "s" if x == "latency_s_per_img" else "")
            target.set_xlabel(xlabel)
            target.grid(alpha=0.3, which="both")
            moved[target is ax] = dodge(target, marks)
        combined_moved += moved[False]
        ax.set_ylabel("top-1 accuracy (%)")
        side = " · markers that would cover each other set side by side" if moved[True] else ""
        ax.set_title(f"{dataset}: top-1 against {xlabel}" + (f"\n{about}{bars}" if about else bars) + side, fontsize=10)
        handles, labels = ax.get_legend_handles_labels()
        _legends(fig, handles, labels, families, deployments, own_recipe, columns=3)
        written += save(fig, out_dir / f"{dataset}_top1_vs_{x}")
    axes[0].set_ylabel("top-1 accuracy (%)")
    handles, labels = axes[-1].get_legend_handles_labels()
    _legends(fig_all, handles, labels, families, deployments, own_recipe, columns=5)
    side = " · overlapping markers set side by side" if combined_moved else ""
    title = f"{dataset}: accuracy against cost" + (f" ({about}){bars}" if about else bars) + side
    fig_all.suptitle(title, fontsize=10, y=1.1)
    written += save(fig_all, out_dir / f"{dataset}_top1_vs_cost")
    return written


def run_folders(records: list[str | Path]) -> dict[tuple[str, ...], Path]:
    """(profile, dataset, model, seedN, config_hash) -> run folder, of the records (``train.json``
    files or run folders) the caller declares: the only run files a figure reads."""
    folders = [Path(p).parent if Path(p).suffix == ".json" else Path(p) for p in records]
    return {tuple(folder.parts[-5:]): folder for folder in folders}


def depth_vs_complexity(metrics: pd.DataFrame, runs: dict[tuple[str, ...], Path], out_dir: Path) -> list[Path]:
    """Fig. 3: per test image, the puppet's realised depth against its complexity H (bits), from the
    ``test_stats.pt`` each train job leaves beside its ``train.json`` (``runs``: ``run_folders`` of
    the declared records; a run not among them draws no panel)."""
    import torch

    ok = default_rows(metrics[metrics["status"] == "ok"])  # the train job's test_stats.pt: its own forward
    panels = []
    for _, r in ok.iterrows():
        key = (
            str(r["profile"]),
            str(r["dataset"]),
            str(r["model"]),
            f"seed{int(r['seed'])}",
            str(r.get("config_hash")),
        )
        path = runs[key] / "test_stats.pt" if key in runs else None
        if path is not None and path.is_file():
            problem = archive_problem(path)
            if problem:  # a damaged per-sample record costs one panel, not the figures
                print(f"warning: skipping {path} in Fig. 3: {problem}", file=sys.stderr)
                continue
            stats = torch.load(path, weights_only=False)
            if "complexity" in stats and "depth" in stats and len(stats["depth"].unique()) > 1:  # depth-adaptive only
                panels.append((r, stats["complexity"].numpy(), stats["depth"].numpy()))
    written = []
    puppet_datasets = {str(r["dataset"]) for _, r in metrics.iterrows() if _family(str(r["model"])) == "puppet"}
    for dataset in sorted(puppet_datasets - {str(r["dataset"]) for r, _, _ in panels}):
        written += placeholder(
            out_dir / f"{dataset}_depth_vs_complexity", f"{dataset}: no finished depth-adaptive Puppet run to plot"
        )
    for dataset in sorted({str(r["dataset"]) for r, _, _ in panels}):
        mine = [p for p in panels if str(p[0]["dataset"]) == dataset]
        fig, axes = plt.subplots(1, len(mine), figsize=(5.5 * len(mine), 4.2), squeeze=False)
        for ax, (r, h, depth) in zip(axes[0], mine):
            jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(depth))  # depths are integers: spread the dots
            ax.scatter(h, depth + jitter, s=4, alpha=0.3)
            bins = pd.cut(pd.Series(h), 12)
            mean = pd.Series(depth).groupby(bins, observed=True).mean()
            ax.plot([b.mid for b in mean.index], mean.values, color="black", marker="o", label="mean depth per H bin")
            ax.set_xlabel("input complexity H (bits)")
            ax.set_ylabel("generated conv layers run")
            ax.set_title(
                f"{r['model']} (seed {int(r['seed'])})\n{dataset}, {len(h)} test images, profile {r['profile']}",
                fontsize=10,
            )
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        fig.suptitle("Realised depth vs input complexity (Fig. 3)", y=1.02)
        written += save(fig, out_dir / f"{dataset}_depth_vs_complexity")
    return written


def size_vs_depth(models: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Fig. 4 and its numbers (``size_vs_depth.csv``): stored size (MB) against depth at the paper's
    width, each model's row in the descriptions ``models`` (``FIG4_FAMILIES``' builds); the puppets'
    size stays flat. Called by ``write_figures``."""
    rows = []
    for fixed, puppet, depths in FIG4_FAMILIES:
        for depth in depths:
            for name in (fixed, puppet):
                built = described(models, name, depth=depth)
                rows.append(
                    {
                        "family": fixed,
                        "model": name,
                        "depth": depth,
                        "stored_params": int(built["stored_params"]),
                        "param_size_mb": built["param_size_mb"],
                    }
                )
    frame = pd.DataFrame(rows)
    atomic_write_csv(frame, out_dir / "size_vs_depth.csv")
    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, g), marker in zip(frame.groupby("model", sort=False), MARKERS):
        ax.plot(
            g["depth"],
            g["param_size_mb"],
            marker=marker,
            label=name,
            color=FAMILY_COLOURS[_family(name)],
            linestyle="--" if "resnet" in name else "-",
        )
    ax.set_yscale("log")
    ax.set_xlabel("depth (weight layers)")
    ax.set_ylabel(f"stored size (MB, {PAPER_WIDTH} channels max)")
    ax.set_title("Model size vs depth (Fig. 4): fixed CNNs grow, puppets stay flat")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save(fig, out_dir / "size_vs_depth") + [out_dir / "size_vs_depth.csv"]


def write_figures(
    metrics_path: str | Path, out_dir: str | Path, models_path: str | Path, records: list[str | Path] = ()
) -> list[Path]:
    """Every figure into ``out_dir``: from the runs (``metrics_path``, and Fig. 3's per-image files
    beside the ``train.json`` ``records`` given, the ``plot_figures`` rule's declared inputs) and from
    the model descriptions (``models_path``: Fig. 4, the SkipNet configurations). Called by
    ``python -m puppet figures`` and ``publish --merge``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = load_metrics(metrics_path)
    models = load_models(models_path)
    summary = summarise(metrics)
    written = []
    for dataset in sorted(metrics["dataset"].dropna().astype(str).unique()):
        if dataset in set(summary["dataset"]):
            written += accuracy_vs_cost(summary, dataset, out_dir, describe_runs(metrics, dataset))
        else:  # every run of the dataset failed: the failures are in metrics.csv and the console
            for axis in ("cost", *COST_AXES):
                written += placeholder(out_dir / f"{dataset}_top1_vs_{axis}", f"{dataset}: no finished run to plot")
    written += depth_vs_complexity(metrics, run_folders(list(records)), out_dir)
    written += size_vs_depth(models, out_dir)
    written += skipnet_tradeoff(metrics, models, out_dir)
    return written


def skipnet_tradeoff(metrics: pd.DataFrame, models: pd.DataFrame, out_dir: Path) -> list[Path]:
    """SkipNet's configurations: top-1 against mean MACs, the SkipNet-38 skip-reward curve joined."""
    from puppet.report.skipnet import plot_tradeoff, skipnet_table

    fig = plot_tradeoff(skipnet_table(metrics, models))  # every deployment: both threshold rules
    return save(fig, out_dir / "skipnet_tradeoff")
