"""The paper's tables, from ``results/metrics.csv``, with the paper's numbers beside ours.

What the tables quote of the model code (sizes at the paper's width, Table 5, the PDE depths, the
SkipNet backbones) comes from ``results/models.csv`` (``puppet.report.models``), a declared input
of the workflow's ``paper_tables`` rule: nothing here builds a model.

Every table CSV has one row per paper row: our mean over seeds (``top1``), its
standard deviation (``top1_std``), the paper's number (``paper_top1``) and the
difference (``top1_diff`` = ours - paper). A row whose model has not run, or
whose runs failed, keeps the paper's numbers, leaves ours empty and says why in
``note``. ``tables.md`` renders every table for reading.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from puppet.core.io import atomic_write_csv, atomic_write_text
from puppet.core.protocols import DEFAULT_DEPLOYMENT
from puppet.report.collate import default_rows, load_metrics
from puppet.report.models import PAPER_WIDTH, load_models
from puppet.report.paper import RUN_TABLES, PaperTable
from puppet.report.pde import pde_table
from puppet.report.pde import render as render_pde
from puppet.report.skipnet import render as render_skipnet
from puppet.report.skipnet import skipnet_table

UNITS = {
    "top1": "Top-1 (%)",
    "top5": "Top-5 (%)",
    "param_size_mb": "Params Size (MB)",
    "latency_s_per_img": "Speed (ms/img)",
    "macs_g": "Mult-Adds (G)",
    "macs_without_generation_g": "Mult-Adds w/o kernel generation (G)",
    "total_params_m": "Total Params (M)",
    "kernels_mb": "Kernels held (MB)",
}


def deployments_of(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(deployment, description) of the rows of one model, ``default`` first, then by name."""
    names = sorted(runs["deployment"].dropna().astype(str).unique(), key=lambda d: (d != DEFAULT_DEPLOYMENT, d))
    out = []
    for name in names or [DEFAULT_DEPLOYMENT]:
        labels = runs.loc[runs["deployment"] == name, "deployment_label"] if "deployment_label" in runs else []
        described = [str(d) for d in pd.Series(labels, dtype=object).dropna() if str(d)]
        out.append((name, described[0] if described else name))
    return out


def _at_paper_width(ok: pd.DataFrame) -> bool:
    """Every run of the row was made at the paper's width (an older metrics.csv without the column: no)."""
    return "max_channels" in ok and not ok.empty and bool((ok["max_channels"] == PAPER_WIDTH).all())


def _fixed_width(models: pd.DataFrame, model: str) -> bool:
    """Whether ``model`` is built at its own paper's widths whatever max_channels (its row in the model
    descriptions ``models``; a model not described there: no)."""
    rows = models[models["model"] == model]
    return bool(rows["fixed_width"].iloc[0]) if len(rows) else False


def _chance(dataset: str) -> float:
    from puppet.core.data import DATASETS

    info = DATASETS.get(dataset)
    return 100.0 / info.num_classes if info else math.nan


def build_table(table: PaperTable, metrics: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """One row per paper row. Δ (``*_diff``) only where our runs are at the paper's width
    (``max_channels`` 512): a width-32 run beside a 512-channel number is no comparison; the
    paper-scale sizes from the model code are in ``sizes.csv``. ``models``: the model descriptions,
    for which models are built at fixed widths (their rows say so)."""
    rows = []
    for prow in table.rows:
        model_runs = metrics[(metrics["model"] == prow.model) & (metrics["dataset"] == prow.dataset)]
        deployments = deployments_of(model_runs)
        for deployment, described in deployments:
            runs = model_runs[model_runs["deployment"] == deployment]
            label = prow.label if len(deployments) == 1 else f"{prow.label} ({described})"
            rows.append(_table_row(table, prow, runs, deployment, label, _fixed_width(models, prow.model)))
    return pd.DataFrame(rows)


def _table_row(table: PaperTable, prow, runs: pd.DataFrame, deployment: str, label: str, fixed_width: bool) -> dict:
    """One row of a paper table: the runs of one model in one deployment beside the paper's row."""
    ok = runs[runs["status"] == "ok"]
    row = {
        "table": table.name,
        "dataset": prow.dataset,
        "group": prow.group,
        "label": label,
        "model": prow.model,
        "deployment": deployment,
        "n_seeds": len(ok),
    }
    if runs.empty:
        row["note"] = "not run"
    elif ok.empty:
        error = runs["error"].iloc[0]
        row["note"] = "failed: " + (str(error)[:160] if isinstance(error, str) and error else "no message recorded")
    else:
        row["note"] = ""
    for m in table.metrics:
        values = ok[m].astype(float) if (m in ok and not ok.empty) else pd.Series(dtype=float)
        mean = values.mean() if len(values) else math.nan
        row[m] = mean
        row[f"{m}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        paper = prow.values.get(m, math.nan)
        row[f"paper_{m}"] = paper
        row[f"{m}_diff"] = mean - paper if _at_paper_width(ok) else math.nan
    if not ok.empty and not _at_paper_width(ok):
        widths = sorted(ok["max_channels"].dropna().astype(int).unique()) if "max_channels" in ok else []
        width = f"width {','.join(map(str, widths))}" if widths else "width not recorded (an older metrics.csv)"
        row["note"] = f"{width}, paper {PAPER_WIDTH}: no Δ (paper-scale sizes: the Model sizes section)"
        if fixed_width:  # its size is its own paper's at every profile; the protocol is not
            row["note"] = (
                "built at its own paper's widths (16-32-64 for the CIFAR ResNets) whatever max_channels; "
                f"trained with the profile's protocol, paper {PAPER_WIDTH} channels: no Δ"
            )
    chance = _chance(prow.dataset)
    if "top1" in table.metrics and row.get("top1", math.nan) < chance:
        row["note"] = "; ".join(filter(None, [row["note"], f"top-1 below chance ({chance:.0f}%)"]))
    if not ok.empty:
        row["profile"] = ",".join(sorted(ok["profile"].astype(str).unique()))
        row["data_source"] = ",".join(sorted(ok["data_source"].astype(str).unique()))
        row["device"] = ",".join(sorted(ok["device"].astype(str).unique()))
    return row


def _fmt(v: float, metric: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if metric.startswith("latency"):
        return f"{v * 1e3:.2f}"  # seconds in the CSV, milliseconds to read
    if metric.startswith(("top1", "top5")):
        return f"{v:.2f}"
    if metric.endswith("_g") or metric.endswith("_mb") or metric.endswith("_m"):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.2f}"
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"  # 10,000, not 1e+04


def render_markdown(
    title: str, frame: pd.DataFrame, metrics: tuple[str, ...], caption: str = "", units: dict[str, str] | None = None
) -> str:
    header = ["Row"]
    for m in metrics:
        header += [f"{(units or UNITS).get(m, m)} ours", "paper", "Δ"]
    lines = [f"## {title}", ""]
    if caption:
        lines += [caption, ""]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]  # numbers right-aligned
    notes: list[str] = []  # one footnote per distinct note, marked on every row that has it
    for _, r in frame.iterrows():
        label = r["label"] if not r.get("group") else f"{r['group']}: {r['label']}"
        for part in str(r.get("note") or "").split("; "):
            if part:
                if part not in notes:
                    notes.append(part)
                label += f" [{notes.index(part) + 1}]"
        cells = [label]
        for m in metrics:
            ours = _fmt(r[m], m)
            std = r.get(f"{m}_std")
            if ours != "–" and std is not None and not math.isnan(std):
                ours += f" ± {_fmt(std, m)}"
            cells += [ours, _fmt(r[f"paper_{m}"], m), _fmt(r[f"{m}_diff"], m)]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def provenance(metrics: pd.DataFrame) -> str:
    ok = metrics[metrics["status"] == "ok"]
    if ok.empty:
        return "No finished runs."
    parts = []
    for (profile, dataset), g in ok.groupby(["profile", "dataset"]):
        parts.append(
            f"- profile `{profile}`, {dataset} from `{g['data_source'].iloc[0]}`: "
            f"{int(g['train_size'].iloc[0])} train / {int(g['test_size'].iloc[0])} test images, "
            f"{int(g['epochs'].iloc[0])} epochs, seeds {sorted(g['seed'].unique().tolist())}; "
            f"timed on {g['device'].iloc[0]} with {int(g['threads'].iloc[0])} threads, torch "
            f"{g['torch_version'].iloc[0]}"
        )
    return "\n".join(parts)


def runs_markdown(metrics: pd.DataFrame) -> str:
    cols = [
        "dataset",
        "model",
        "seed",
        "deployment",
        "status",
        "top1",
        "top5",
        "stored_params",
        "param_size_mb",
        "macs",
        "latency_s_per_img",
        "throughput_img_per_s",
        "train_time_s",
    ]
    cols += [c for c in metrics.columns if c.startswith("mean_")]
    lines = ["## All runs (results/metrics.csv)", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in metrics.iterrows():
        cells = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, float):
                cells.append("–" if math.isnan(v) else (f"{v:.4g}" if c not in ("top1", "top5") else f"{v:.2f}"))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paper_sizes() -> dict[str, float]:
    """The paper's Params Size (MB, 10 classes) for each of our models that a run table names."""
    sizes: dict[str, float] = {}
    for table in RUN_TABLES:
        for row in table.rows:
            if row.dataset == "cifar10" and "param_size_mb" in row.values:
                sizes.setdefault(row.model, row.values["param_size_mb"])
    return sizes


def model_sizes(models: pd.DataFrame) -> pd.DataFrame:
    """Every registered model's stored size at the paper's width (its row in the model descriptions
    ``models`` at 512 channels and its default depth), beside the paper's Params Size: ``sizes.csv``."""
    paper = paper_sizes()
    at_paper_width = models[(models["max_channels"] == PAPER_WIDTH) & models["depth"].isna()]
    rows = []
    for _, info in at_paper_width.sort_values("model").iterrows():
        name, configuration, stored = info["model"], info["configuration"], int(info["stored_params"])
        rows.append(
            {
                "label": f"{info['paper_name']} ({configuration}): {name}" if configuration else info["paper_name"],
                "model": name,
                "family": info["family"],
                "configuration": configuration,
                "stored_params": stored,
                "total_params": int(info["total_params"]),
                "param_size_mb": info["param_size_mb"],
                "paper_param_size_mb": paper.get(name, math.nan),
                "param_size_mb_diff": info["param_size_mb"] - paper.get(name, math.nan),
                "note": "paper counts the puppeteer only (Table 5)" if info["family"] == "puppet" else "",
            }
        )
    return pd.DataFrame(rows)


def extra_tables(models: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame, tuple[str, ...]]]:
    """Tables of the model code rather than runs, from its descriptions ``models``: Table 5 and the
    paper-scale sizes. Called by ``write_tables``."""
    from puppet.report.table5 import table5

    return [
        (
            "table5",
            "Table 5: Puppet-CNN size vs maximum output channel (from the model code)",
            table5(models),
            ("total_params_m", "param_size_mb"),
        ),
        (
            "sizes",
            "Model sizes at the paper's width (max_channels 512, 10 classes), from the model code",
            model_sizes(models),
            ("param_size_mb",),
        ),
    ]


def latex_table(title: str, frame: pd.DataFrame, metrics: tuple[str, ...]) -> str:
    """One table as LaTeX (booktabs rules), rendered by pandas' Styler: ours, the paper's, Δ."""
    columns: dict[str, list] = {
        "Row": [r["label"] if not r.get("group") else f"{r['group']}: {r['label']}" for _, r in frame.iterrows()]
    }
    for m in metrics:
        unit = UNITS.get(m, m)
        columns[f"{unit} ours"] = [_fmt(r[m], m) for _, r in frame.iterrows()]
        columns[f"{unit} paper"] = [_fmt(r[f"paper_{m}"], m) for _, r in frame.iterrows()]
        columns[f"{unit} Δ"] = [_fmt(r[f"{m}_diff"], m) for _, r in frame.iterrows()]
    table = pd.DataFrame(columns)
    styler = table.style.hide(axis="index")
    return (
        styler.to_latex(
            caption=title.replace("_", r"\_"),
            hrules=True,  # \toprule, \midrule, \bottomrule: needs \usepackage{booktabs}
            column_format="l" + "r" * (len(table.columns) - 1),
            position_float="centering",
        )
        .replace("%", r"\%")
        .replace("Δ", r"$\Delta$")
        .replace("–", "--")
        .replace("±", r"$\pm$")
    )


def latex_tables(sections: list[tuple[str, str, pd.DataFrame, tuple[str, ...]]]) -> str:
    header = (
        "% Generated by `python -m puppet tables` from results/metrics.csv; do not edit by hand.\n"
        "% Needs \\usepackage{booktabs}. Same numbers as tables.md (Delta blank where our width is not the paper's).\n"
    )
    return header + "\n".join(latex_table(title, frame, cols) for _, title, frame, cols in sections)


def write_tables(metrics_path: str | Path, out_dir: str | Path, models_path: str | Path) -> dict[str, pd.DataFrame]:
    """Every table into ``out_dir``: the run tables from ``metrics_path`` (``results/metrics.csv``), the
    numbers of the model code from ``models_path`` (``results/models.csv``), both declared inputs of
    the workflow's ``paper_tables`` rule (``python -m puppet tables``); ``publish --merge`` too."""
    out_dir = Path(out_dir)
    metrics = load_metrics(metrics_path)
    models = load_models(models_path)
    frames: dict[str, pd.DataFrame] = {}
    md = [
        "# puppet-bench tables",
        "",
        "Generated by `snakemake tables` from `results/metrics.csv`; do not edit by hand. "
        "`ours` is the mean over seeds (± sample std where more than one seed ran); "
        "`paper` is the number printed in the Puppet-CNN paper (v1), or in the paper a table names; "
        "Δ = ours − paper, given only where our runs are at the paper's width (`max_channels` 512): a "
        "width-32 run beside a 512-channel number is no comparison (the footnote says so). Speed in ms per image. "
        "Accuracy is on the test split named below, which may be a subset: compare with care. "
        "Sizes, MACs and speed in Tables 1-4 and 6 are those of the models as run, at the profile's "
        '`max_channels` (the paper: 512); Table 5 and "Model sizes" give the paper-scale sizes from the model code. '
        "A model measured in more than one deployment (a way to run the trained model: `metrics.csv`'s "
        "`deployment` key) has one row per deployment, labelled by it: Puppet-CNN's kernels generated on the fly "
        "for every batch, as the paper describes, and precomputed once per complexity level after training "
        '("Kernels held (MB)" is the memory they take, beside the stored size). The paper does not say '
        "which its speed is, so its numbers stand beside each. Latency is the median over timing rounds; "
        "`metrics.csv` has its 95% interval (`latency_ci_low/high_s_per_img`) and a `latency_noisy` flag.",
        "",
        provenance(default_rows(metrics)),
        "",
    ]
    sections: list[tuple[str, str, pd.DataFrame, tuple[str, ...]]] = []  # (name, title, frame, metrics)
    for table in RUN_TABLES:
        frame = build_table(table, metrics, models)
        frames[table.name] = frame
        atomic_write_csv(frame, out_dir / f"{table.name}.csv")
        for dataset, sub in frame.groupby("dataset", sort=False):
            title = table.title if frame["dataset"].nunique() == 1 else f"{table.title} — {dataset}"
            sections.append((table.name, title, sub, table.metrics))
    for name, title, frame, cols in extra_tables(models):
        frames[name] = frame
        atomic_write_csv(frame, out_dir / f"{name}.csv")
        sections.append((name, title, frame.assign(note=""), cols))
    # the paper's order: Table 5 between Tables 4 and 6, the model sizes after the paper's tables
    order = ["table1", "table2", "table3", "table4", "table5", "table6", "sizes"]
    sections.sort(key=lambda sec: order.index(sec[0]) if sec[0] in order else len(order))
    for _, title, frame, cols in sections:
        md.append(render_markdown(title, frame, cols))
    frames["table_pde"] = pde_table(default_rows(metrics), models)
    atomic_write_csv(frames["table_pde"], out_dir / "table_pde.csv")
    md.append(render_pde(frames["table_pde"]))
    frames["table_skipnet"] = skipnet_table(default_rows(metrics), models)
    atomic_write_csv(frames["table_skipnet"], out_dir / "table_skipnet.csv")
    md.append(render_skipnet(frames["table_skipnet"]))
    atomic_write_text(latex_tables(sections), out_dir / "tables.tex")
    md.append(runs_markdown(metrics))
    atomic_write_text("\n".join(md), out_dir / "tables.md")
    return frames
