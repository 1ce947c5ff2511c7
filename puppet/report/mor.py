"""The MOR study's view of the results: ``results/mor.csv`` and, per Neural ODE run, a figure with
three pairs of curves: test accuracy against the wall-clock speed-up of the whole network (95 %
interval bars) and against the MAC reduction of the ODE layer, for POD-DEIM, pruning and SVD
truncation, each as reduced (solid) and after the same short fine-tune (dashed, hollow markers),
the full model marked.

Nothing is measured here: every number is a row of ``results/metrics.csv``, where each reduction
of a trained run is a deployment ``<method>@<level>`` (``+ft``: fine-tuned) measured by the one measure path
(``puppet.compress.deploy``), the full model being the run's ``default`` row. The view renames
the columns the MOR study has always had: ``speedup_total`` is the throughput ratio at the measure
job's batch (full / reduced, interleaved), ``speedup_batch1`` the batch-1 latency ratio.

The paper (Lehtimäki et al., TNNLS) reports curves, not numbers we could retrieve: nothing here is
compared with a paper number; the qualitative claims are discussed in the docs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from puppet.compress.deploy import CURVES, LEVEL_NAME, parse_deployment  # noqa: E402
from puppet.core.io import atomic_write_csv  # noqa: E402
from puppet.core.protocols import DEFAULT_DEPLOYMENT  # noqa: E402
from puppet.report.collate import RUN_KEY, load_metrics  # noqa: E402
from puppet.report.engine import Metric, Row, Table  # noqa: E402
from puppet.report.figures import placeholder, save  # noqa: E402

# mor.csv column <- metrics.csv column
RENAMED = {
    "total_params": "params_total",
    "macs": "macs_total",
    "throughput_speedup_vs_default": "speedup_total",
    "throughput_speedup_vs_default_ci_low": "speedup_total_ci_low",
    "throughput_speedup_vs_default_ci_high": "speedup_total_ci_high",
    "throughput_speedup_vs_default_noisy": "speedup_total_noisy",
    "speedup_vs_default": "speedup_batch1",
    "speedup_vs_default_ci_low": "speedup_batch1_ci_low",
    "speedup_vs_default_ci_high": "speedup_batch1_ci_high",
    "speedup_vs_default_noisy": "speedup_batch1_noisy",
    "throughput_batch": "timing_batch",
    "latency_rounds": "rounds",
}
COLUMNS = [
    *RUN_KEY,
    "method",
    "level",
    "finetuned",
    "deployment",
    "status",
    "error",
    "state_dim",
    "nonlinearities",
    "top1",
    "top1_full",
    "params_ode",
    "params_total",
    "macs_ode",
    "macs_ode_formula",
    "macs_total",
    "macs_reduction_ode",
    "macs_reduction_total",
    "speedup_total",
    "speedup_total_ci_low",
    "speedup_total_ci_high",
    "speedup_total_noisy",
    "speedup_batch1",
    "speedup_batch1_ci_low",
    "speedup_batch1_ci_high",
    "speedup_batch1_noisy",
    "time_full_s_per_img",
    "time_s_per_img",
    "energy_state",
    "energy_nonlinear",
    "deim_condition",
    "snapshots",
    "finetune_steps",
    "finetune_images",
    "finetune_lr",
    "finetune_loss_first",
    "finetune_loss_last",
    "timing_batch",
    "rounds",
    "device",
    "threads",
    "torch_version",
    "git_commit",
    "measure_git_commit",
    "config_hash",
]


def _reduced_runs(metrics: pd.DataFrame, models: pd.DataFrame) -> tuple[Row, ...]:
    """A row per (dataset, model) with reduced deployments; the engine makes one per deployment."""
    reduced = metrics[metrics["deployment"].map(parse_deployment).notna()] if "deployment" in metrics else metrics
    pairs = sorted(set(zip(reduced["dataset"].astype(str), reduced["model"].astype(str))))
    return tuple(Row(model, model, dataset) for dataset, model in pairs)


def _per_run(column: str, scale: float = 1.0):
    return lambda ok, row: ok[column].astype(float) / scale


# The MOR study in tables.md (and table_mor.csv): every reduction of each Neural ODE run beside its
# full model, read from the same rows as mor.csv; no paper column (the paper gives curves).
TABLE = Table(
    "table_mor",
    "MOR study: Neural ODEs reduced after training (Lehtimäki et al.), as reduced and fine-tuned",
    (
        Metric("top1", "Top-1 (%)"),
        Metric("macs_ode_m", "ODE layer MACs (M)", _per_run("macs_ode", 1e6)),
        Metric("macs_m", "MACs (M)", _per_run("macs", 1e6)),
        Metric("throughput_speedup_vs_default", "Speed-up, batched (x)"),
        Metric("speedup_vs_default", "Speed-up, batch 1 (x)"),
    ),
    _reduced_runs,
    caption=(
        "Each Neural ODE run in its full form (`default`) and reduced by POD-DEIM, L1 pruning and SVD "
        "truncation at every level (a deployment each, `metrics.csv`), each as reduced and after the same "
        "short fine-tune (`+ft`: the steps, images and learning rate in `mor.csv`); speed-ups are full / "
        "reduced, timed interleaved with the full model on the device in `mor.csv` (batched: throughput at "
        "the measure job's batch; batch 1: latency), their 95% intervals in `mor.csv` and the figures "
        "`figures/mor_*.png`. One row per run and seed; the claims profile's `mor_seeds.csv` has them over seeds."
    ),
    compared=False,
    per_deployment=True,
)


def mor_view(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per reduction of every run that has reduced deployments, and the run's full model
    (``method`` "full", its ``default`` row); the speed-ups and MAC reductions against that row."""
    parsed = metrics["deployment"].map(parse_deployment)
    reduced = metrics[parsed.notna()]
    frames = []
    for key, _ in reduced.groupby(RUN_KEY):
        run = metrics[(metrics[RUN_KEY] == pd.Series(dict(zip(RUN_KEY, key)))).all(axis=1)]
        run = run[(run["deployment"] == DEFAULT_DEPLOYMENT) | run["deployment"].map(parse_deployment).notna()]
        frame = run.rename(columns=RENAMED).copy()
        parsed_run = frame["deployment"].map(lambda d: parse_deployment(d) or ("full", None, False))
        frame.insert(len(RUN_KEY), "method", parsed_run.map(lambda p: p[0]))
        frame["finetuned"] = parsed_run.map(lambda p: bool(p[2]))
        full = frame[frame["method"] == "full"]
        full_row = full.iloc[0] if len(full) else pd.Series(dtype=object)
        for col in ("speedup_total", "speedup_batch1"):
            if col in frame:
                frame.loc[frame["method"] == "full", col] = 1.0
        thr = frame.get("throughput_img_per_s")
        if thr is not None:
            frame["time_s_per_img"] = 1.0 / thr
            frame["time_full_s_per_img"] = 1.0 / full_row.get("throughput_img_per_s", float("nan"))
        frame["top1_full"] = full_row.get("top1", float("nan"))
        for mine, col in (("macs_reduction_ode", "macs_ode"), ("macs_reduction_total", "macs_total")):
            if col in frame:
                frame[mine] = full_row.get(col, float("nan")) / frame[col]
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    order = {"full": 0, **{m: i + 1 for i, m in enumerate(CURVES)}}
    out = out.assign(_order=out["method"].map(order))
    out = out.sort_values([*RUN_KEY, "_order", "finetuned", "level"], kind="stable")
    return out.reindex(columns=COLUMNS).reset_index(drop=True)


def plot_task(rows: pd.DataFrame, out_stem: Path) -> list[Path]:
    """Accuracy vs speed-up (whole network) and vs MAC reduction (ODE layer) for one run."""
    first = rows.iloc[0]
    ok = rows[rows["status"] == "ok"]
    full = ok[ok["method"] == "full"]
    fig, (ax_speed, ax_macs) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    tuned = ok["finetuned"].fillna(False).astype(bool)
    steps = ok.loc[tuned, "finetune_steps"].dropna()
    labels = []  # the level annotations, thinned where they would overlap once the layout is fixed
    for (method, (label, colour, style)), finetuned in ((c, f) for c in CURVES.items() for f in (False, True)):
        g = ok[(ok["method"] == method) & (tuned == finetuned)].sort_values("level")  # a curve over the levels
        if g.empty:
            continue
        if finetuned:  # dashed, hollow markers: the same reductions after the fine-tune
            style, label = style.rstrip("-") + "--", f"{label}, fine-tuned"
        face = "none" if finetuned else colour
        err = [g["speedup_total"] - g["speedup_total_ci_low"], g["speedup_total_ci_high"] - g["speedup_total"]]
        ax_speed.errorbar(
            g["speedup_total"], g["top1"], xerr=err, fmt=style, color=colour, mfc=face, capsize=2, label=label
        )
        ax_macs.plot(g["macs_reduction_ode"], g["top1"], style, color=colour, mfc=face, label=label)
        if finetuned:  # the levels are labelled once, on the curve as reduced
            continue
        offset = LABEL_OFFSETS[list(CURVES).index(method) % len(LABEL_OFFSETS)]  # each method on its own side
        for _, r in g.iterrows():  # the level beside each point
            labels.append(
                ax_macs.annotate(
                    f"{LEVEL_NAME[method]}={int(r['level'])}",
                    (r["macs_reduction_ode"], r["top1"]),
                    fontsize=6,
                    color=colour,
                    xytext=offset,
                    textcoords="offset points",
                    ha="left" if offset[0] >= 0 else "right",
                    va="bottom" if offset[1] >= 0 else "top",
                )
            )
    if not full.empty:
        for ax in (ax_speed, ax_macs):
            ax.axhline(float(full["top1"].iloc[0]), color="black", linestyle=":", linewidth=1, label="full model")
            ax.axvline(1.0, color="grey", linewidth=0.6)
    batch = f"batch {int(first['timing_batch'])}" if pd.notna(first.get("timing_batch")) else "batch ?"
    ax_speed.set_xlabel(f"wall-clock speed-up of the whole network (full / reduced, {batch}, 95% interval)")
    ax_macs.set_xlabel("MAC reduction of the ODE layer (full / reduced)")
    ax_macs.set_xscale("log")
    ax_speed.set_ylabel("test top-1 (%)")
    for ax in (ax_speed, ax_macs):
        ax.grid(alpha=0.3, which="both")
    n = int(first["threads"]) if pd.notna(first.get("threads")) else None
    threads = "threads ?" if n is None else f"{n} thread{'s' if n != 1 else ''}"
    fig.suptitle(
        f"{first['model']} on {first['dataset']} ({first['profile']}): post-training compression"
        + (f" (dashed: after {int(steps.iloc[0])} fine-tuning steps)" if len(steps) else ", no fine-tuning")
        + f";\ntimed on {first['device']}, {threads}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.09, 1, 1))  # room below both panels for the legend, where it hides no point
    fig.legend(*ax_speed.get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8, frameon=False)
    if drop_overlapping(fig, labels):
        ax_macs.set_title("levels labelled where they do not overlap; every level in mor.csv", fontsize=7)
    return save(fig, out_stem)


# Where each method's level labels sit relative to their point (points), so that curves that run close
# together label on different sides
LABEL_OFFSETS = ((4, -4), (-4, 4), (4, 4))


def drop_overlapping(fig, texts: list) -> int:
    """Remove each text that would overlap one kept before it (in drawing order) or reach past its axes'
    frame; the number removed. Matplotlib places annotations where they are told, so a dense curve's
    labels pile up otherwise."""
    renderer = fig.canvas.get_renderer()
    kept, removed = [], 0
    for text in texts:
        box = text.get_window_extent(renderer).expanded(1.05, 1.15)
        frame = text.axes.get_window_extent(renderer)
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        if not inside or any(box.overlaps(k) for k in kept):
            text.remove()
            removed += 1
        else:
            kept.append(box)
    return removed


def figure_stem(figures_dir: Path, dataset: str, model: str, seed: int) -> Path:
    """``mor_<dataset>_<model>_seed<N>``: the name the workflow declares for a run's MOR figure."""
    return Path(figures_dir) / f"mor_{dataset}_{model}_seed{int(seed)}"


def write_mor(
    metrics_path: str | Path, out: str | Path, figures_dir: str | Path, expected: list[str] = ()
) -> pd.DataFrame:
    """``results/mor.csv`` and a figure per run with reductions; each of ``expected`` (figure file
    names the workflow declares) without rows to draw gets a figure saying so."""
    frame = mor_view(load_metrics(metrics_path))
    atomic_write_csv(frame, Path(out))
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    drawn = set()
    for (_, dataset, model, seed), rows in frame.groupby(RUN_KEY):
        stem = figure_stem(figures_dir, dataset, model, seed)
        plot_task(rows, stem)
        drawn.add(stem.name)
    for name in expected:
        stem = figures_dir / Path(name).stem
        if stem.name not in drawn:
            placeholder(stem, f"{stem.name}: no measured reduction to plot (see results/metrics.csv)")
    return frame
