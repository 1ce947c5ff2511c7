"""The one table engine: a table is a declaration, built from the results by one builder and rendered
by one renderer to CSV, Markdown and LaTeX.

A ``Table`` says which rows it has (each a model on a dataset, beside a paper's numbers, or numbers
from the model code), which metrics it shows (a ``metrics.csv`` column or a function of the runs),
when ours minus the paper's is a comparison (``Metric.delta``) and which notes apply. ``build``
turns it into a frame, one row per table row (per deployment where the table asks for it):

* ``<metric>``: our mean over the finished seeds, ``<metric>_std`` their sample standard deviation
  (more than one seed), ``paper_<metric>`` the paper's number, ``<metric>_diff`` = ours - paper only
  where ``Metric.delta`` says the two are of the same scale;
* ``note``: why ours is missing (``run_note``: not run, failed with its message, paper only) and the
  table's own notes (a width that is not the paper's, accuracy below chance); ``n_seeds`` and
  ``provenance`` (``provenance``: profile, recipe, epochs, training images, device) say where ours
  came from.

``markdown`` and ``latex`` render any built table the same way (a row label, the table's text
columns, then per metric ours ± std, the paper's and Δ; notes as footnotes). The run tables
(``puppet.report.tables``), the PDE poster (``puppet.report.pde``), the SkipNet configurations
(``puppet.report.skipnet``), Table 5 and the model sizes are declarations of this module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pandas as pd

from puppet.core.protocols import DEFAULT_DEPLOYMENT

Runs = pd.DataFrame  # rows of metrics.csv
Predicate = Callable[[Runs], bool]
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "mini_imagenet": "mini-ImageNet"}


def always(ok: Runs) -> bool:
    """A difference that holds whatever the runs: a property of the architecture (size, MACs)."""
    return True


def never(ok: Runs) -> bool:
    """No difference: the paper's protocol for this number is unknown (its timings)."""
    return False


@dataclass(frozen=True)
class Metric:
    key: str  # the column in the table's CSV
    header: str  # what a reader sees
    values: Callable[[Runs, "Row"], pd.Series] | None = None  # per-run values of the ok runs; None: column ``key``
    dataset: str = ""  # read from this dataset's runs instead of the row's (a row over two datasets)
    delta: Predicate = never  # whether ours - paper is a comparison, given the ok runs of the row


@dataclass(frozen=True)
class Row:
    label: str
    model: str = ""  # the registered model that stands for the row; "" = paper only, not built here
    dataset: str = ""
    paper: Mapping[str, float] = field(default_factory=dict)  # metric key -> the paper's number
    group: str = ""
    known: Mapping[str, object] = field(default_factory=dict)  # values from the model code, not from runs
    note: str = ""  # a note of the row itself (what the paper's number counts, ...)
    # metrics whose paper number is shown but no Δ: the number belongs to another configuration of the method
    # (an "as published" row's Params Size, which the size-matched configuration was built to reach)
    no_delta: tuple[str, ...] = ()


Note = Callable[[Row, Runs, dict], str]  # (row, its ok runs, the built row so far) -> a note or ""


@dataclass(frozen=True)
class Table:
    name: str  # the CSV's stem: results/<name>.csv
    title: str
    metrics: tuple[Metric, ...]
    rows: tuple[Row, ...] | Callable[[Runs, pd.DataFrame], tuple[Row, ...]]  # or of (metrics, model descriptions)
    caption: str | Callable[[pd.DataFrame], str] = ""  # or a function of the built frame
    section: str = ""  # a part of a table written with others into one CSV
    text: tuple[tuple[str, str], ...] = ()  # (key, header) of descriptive columns, from Row.known
    compared: bool = True  # paper and Δ beside every metric (False: ours only)
    per_deployment: bool = False  # a row per deployment of the model, labelled by it
    notes: tuple[Note, ...] = ()
    comparable: Predicate | None = None  # a column saying whether every run was trained the paper's way
    runs: bool = True  # False: every number comes from the model code (Row.known), none from runs


def run_note(runs: Runs, model: str = "built") -> str:
    """Why a row has none of our numbers: "paper only: not built here", "not run", "failed: <the
    first run's error>"; "" when at least one run finished."""
    if not model:
        return "paper only: not built here"
    if runs.empty:
        return "not run"
    if (runs["status"] == "ok").any():
        return ""
    error = runs["error"].iloc[0] if "error" in runs else None
    return "failed: " + (str(error)[:160] if isinstance(error, str) and error else "no message recorded")


def _count(value: object) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):  # a column an older metrics.csv lacks
        return "?"


def provenance(ok: Runs) -> str:
    """Where a row's numbers come from, in one line: the first finished run's profile, recipe,
    epochs, training images and device (the seeds of a row share them)."""
    if ok.empty:
        return ""
    first = ok.iloc[0]
    return (
        f"`{first['model']}` on {first['dataset']}: profile `{first.get('profile', '?')}`, recipe "
        f"`{first.get('recipe', '?')}`, {_count(first.get('epochs'))} epochs, {_count(first.get('train_size'))} "
        f"training images, timed on {first.get('device', '?')} at batch {_count(first.get('throughput_batch'))}"
    )


def summary(metrics: Runs) -> str:
    """The provenance of a whole results table, a line per (profile, dataset): data source, split
    sizes, epochs, seeds, device, threads and torch."""
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


def deployments_of(runs: Runs) -> list[tuple[str, str]]:
    """(deployment, description) of the rows of one model, ``default`` first, then by name."""

    def order(name: str) -> tuple:  # default first, then by name, numbers as numbers (pod_deim@4 < pod_deim@16)
        return (name != DEFAULT_DEPLOYMENT, [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)])

    names = sorted(runs["deployment"].dropna().astype(str).unique(), key=order)
    out = []
    for name in names or [DEFAULT_DEPLOYMENT]:
        labels = runs.loc[runs["deployment"] == name, "deployment_label"] if "deployment_label" in runs else []
        described = [str(d) for d in pd.Series(labels, dtype=object).dropna() if str(d)]
        out.append((name, described[0] if described else name))
    return out


def _select(metrics: Runs, model: str, dataset: str, deployment: str) -> Runs:
    runs = metrics[(metrics["model"] == model) & (metrics["dataset"] == dataset)]
    return runs[runs["deployment"] == deployment] if "deployment" in runs else runs


def _build_row(table: Table, row: Row, metrics: Runs, deployment: str, label: str) -> dict:
    datasets = list(dict.fromkeys([row.dataset] + [m.dataset for m in table.metrics if m.dataset]))
    runs = {d: _select(metrics, row.model, d, deployment) for d in datasets}
    ok = {d: r[r["status"] == "ok"] for d, r in runs.items()}
    out: dict = {"table": table.name, "section": table.section, "dataset": row.dataset, "group": row.group}
    out.update(label=label, model=row.model, deployment=deployment)
    out.update({key: "" for key, _ in table.text})
    notes = [run_note(runs[d], row.model) for d in datasets] if table.runs else []
    if len(datasets) > 1 and row.model:  # say which dataset's runs are missing
        notes = [f"{DATASET_NAMES.get(d, d)} {n}" if n else "" for d, n in zip(datasets, notes)]
    out.update({k: v for k, v in row.known.items() if k not in {m.key for m in table.metrics}})
    out["note"] = "; ".join(dict.fromkeys(n for n in [*notes, row.note] if n))
    out["n_seeds"] = min(len(o) for o in ok.values())
    out["provenance"] = " | ".join(p for p in (provenance(o) for o in ok.values()) if p)
    first = ok[row.dataset]
    for col in ("profile", "recipe", "data_source", "device"):
        present = first[col].dropna().astype(str).unique() if col in first else []
        out[col] = ",".join(sorted(present))
    for col in ("epochs", "train_size", "throughput_batch", "max_channels"):
        out[col] = first[col].iloc[0] if col in first and not first.empty else math.nan
    if table.comparable is not None:
        out["comparable"] = bool(row.model) and all(not o.empty and table.comparable(o) for o in ok.values())
    for m in table.metrics:
        runs_of = ok[m.dataset or row.dataset]
        if m.key in row.known:
            values = pd.Series([row.known[m.key]], dtype=float)
        elif m.values is not None and not runs_of.empty:
            values = m.values(runs_of, row).astype(float)
        elif m.key in runs_of and not runs_of.empty:
            values = runs_of[m.key].astype(float)
        else:
            values = pd.Series(dtype=float)
        out[m.key] = float(values.mean()) if len(values) else math.nan
        out[f"{m.key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        if table.compared:
            paper = row.paper.get(m.key, math.nan)
            out[f"paper_{m.key}"] = paper
            same_scale = m.key in row.known or not runs_of.empty
            compared = same_scale and m.delta(runs_of) and m.key not in row.no_delta
            out[f"{m.key}_diff"] = out[m.key] - paper if compared else math.nan
    for note in table.notes:
        extra = note(row, ok[row.dataset], out)
        if extra:
            out["note"] = "; ".join(filter(None, [out["note"], extra]))
    return out


def build(table: Table, metrics: Runs, models: pd.DataFrame) -> pd.DataFrame:
    """The table's frame: a row per declared row (a row per deployment of its model where the table
    is ``per_deployment``), from ``metrics`` (``results/metrics.csv``) and the model descriptions
    ``models`` (``results/models.csv``, for tables whose rows come from the model code; a table of
    the model code alone, ``runs=False``, reads no runs)."""
    if not table.runs:
        metrics = pd.DataFrame(columns=["model", "dataset", "deployment", "status", "error"])
    rows = table.rows(metrics, models) if callable(table.rows) else table.rows
    built = []
    for row in rows:
        if table.per_deployment and row.model:
            model_runs = metrics[(metrics["model"] == row.model) & (metrics["dataset"] == row.dataset)]
            deployments = deployments_of(model_runs)
            for deployment, described in deployments:
                label = row.label if len(deployments) == 1 else f"{row.label} ({described})"
                built.append(_build_row(table, row, metrics, deployment, label))
        else:
            built.append(_build_row(table, row, metrics, DEFAULT_DEPLOYMENT, row.label))
    columns = ["table", "section", "dataset", "group", "label", "model", "deployment", *(k for k, _ in table.text)]
    columns += ["n_seeds", "note"]
    for m in table.metrics:
        columns += [m.key, f"{m.key}_std"] + ([f"paper_{m.key}", f"{m.key}_diff"] if table.compared else [])
    frame = pd.DataFrame(built)
    return frame.reindex(columns=columns + [c for c in frame.columns if c not in columns])


def sections(table: Table, frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) of the Markdown and LaTeX sections of one built table: one per dataset where
    its rows span several (Table 6, the SkipNet configurations)."""
    datasets = list(dict.fromkeys(frame["dataset"])) if not frame.empty else []
    if len(datasets) <= 1:
        return [(table.title, frame)]
    return [(f"{table.title} — {d}", frame[frame["dataset"] == d]) for d in datasets]


# --- rendering ---------------------------------------------------------------------------------


def fmt(value: object, key: str) -> str:
    """A number as a reader sees it: "–" when missing, latencies in milliseconds, accuracies to
    two decimals, sizes and MACs to three significant digits, counts with thousands separators."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "–"
    v = float(value)
    if key.startswith("latency"):
        return f"{v * 1e3:.2f}"  # seconds in the CSV, milliseconds to read
    if key.startswith(("top1", "top5", "blocks_executed")):
        return f"{v:.2f}"
    if key.endswith(("_g", "_mb", "_m")):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.2f}"
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"  # 10,000, not 1e+04


def _label(r: pd.Series) -> str:
    return str(r["label"]) if not r.get("group") else f"{r['group']}: {r['label']}"


def _columns(table: Table, frame: pd.DataFrame) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Headers, cells and each row's notes: the one layout both renderers share."""
    header = ["Row", *(h for _, h in table.text)]
    for m in table.metrics:  # each heading names its metric: a bare "paper" / "Δ" is lost in 19 columns
        header += [f"{m.header} ours", f"{m.header} paper", f"{m.header} Δ"] if table.compared else [m.header]
    cells, notes = [], []
    for _, r in frame.iterrows():
        line = [_label(r), *(str(r.get(k) or "") for k, _ in table.text)]
        for m in table.metrics:
            ours = fmt(r.get(m.key), m.key)
            std = r.get(f"{m.key}_std")
            if ours != "–" and isinstance(std, float) and not math.isnan(std):
                ours += f" ± {fmt(std, m.key)}"
            line += [ours, fmt(r.get(f"paper_{m.key}"), m.key), fmt(r.get(f"{m.key}_diff"), m.key)][
                : 3 if table.compared else 1
            ]
        cells.append(line)
        notes.append([part for part in str(r.get("note") or "").split("; ") if part])
    # a number column with no number in any row says nothing: left to the CSV
    keep = [i for i in range(len(header)) if i <= len(table.text) or any(line[i] != "–" for line in cells)]
    if cells and len(keep) < len(header):
        header = [header[i] for i in keep]
        cells = [[line[i] for i in keep] for line in cells]
    return header, cells, notes


def markdown(table: Table, frame: pd.DataFrame, title: str = "", caption: str | None = None) -> str:
    """One built table as a Markdown section: ``## title``, the caption, the table (numbers
    right-aligned), one footnote per distinct note, marked on every row that has it."""
    header, cells, row_notes = _columns(table, frame)
    text = len(table.text) + 1
    lines = [f"## {title or table.title}", ""]
    if caption is None:
        caption = table.caption(frame) if callable(table.caption) else table.caption
    if caption:
        lines += [caption, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * text + "---:|" * (len(header) - text)]
    notes: list[str] = []
    for line, mine in zip(cells, row_notes):
        for part in mine:
            if part not in notes:
                notes.append(part)
            line[0] += f" [{notes.index(part) + 1}]"
        lines.append("| " + " | ".join(line) + " |")
    if frame.empty:
        lines.append("| (no rows) |" + " |" * (len(header) - 1))
    if notes:
        lines += [""] + [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def latex(table: Table, frame: pd.DataFrame, title: str = "") -> str:
    """One built table as LaTeX (booktabs rules), rendered by pandas' Styler: the same cells as
    ``markdown``, notes left to the CSV and Markdown."""
    header, cells, _ = _columns(table, frame)  # distinct headings, as Styler needs: each names its metric
    styler = pd.DataFrame(cells, columns=header).style.hide(axis="index")
    styler = styler.format(escape="latex").format_index(escape="latex", axis=1)  # model_names, 100%
    caption = (title or table.title).replace("\\", "").replace("_", r"\_").replace("%", r"\%")
    return (
        styler.to_latex(
            caption=caption,
            hrules=True,  # \toprule, \midrule, \bottomrule: needs \usepackage{booktabs}
            column_format="l" * (len(table.text) + 1) + "r" * (len(header) - len(table.text) - 1),
            position_float="centering",
        )
        .replace("Δ", r"$\Delta$")
        .replace("–", "--")
        .replace("±", r"$\pm$")
    )
