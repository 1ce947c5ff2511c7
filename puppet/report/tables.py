"""The paper's tables, from ``results/metrics.csv``, with the paper's numbers beside ours.

Every table of the report is a declaration of ``puppet.report.engine`` (one builder, one renderer);
this module declares the paper's Tables 1-4 and 6 (``run_table``: the rows of
``puppet.report.paper``, a row per deployment, Δ only at the paper's width) and the model sizes,
gathers them with Table 5, the PDE poster and the SkipNet configurations in ``TABLES``, and writes
them all (``write_tables``). What a table quotes of the model code (sizes at the paper's width,
Table 5, the PDE depths, the SkipNet backbones) comes from ``results/models.csv``
(``puppet.report.models``), a declared input of the workflow's ``paper_tables`` rule: nothing here
builds a model.

Every table CSV has one row per paper row: our mean over seeds (``top1``), its standard deviation
(``top1_std``), the paper's number (``paper_top1``) and the difference (``top1_diff`` = ours -
paper). A row whose model has not run, or whose runs failed, keeps the paper's numbers, leaves ours
empty and says why in ``note``. ``tables.md`` renders every table for reading, ``tables.tex`` the
same cells for a paper.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import pandas as pd

from puppet.core.io import atomic_write_csv, atomic_write_text
from puppet.report import engine, mor, pde, skipnet
from puppet.report.collate import default_rows, load_metrics
from puppet.report.engine import Metric, Row, Table, always
from puppet.report.models import PAPER_WIDTH, load_models
from puppet.report.paper import PAPER_MULT_ADDS_BATCH, RUN_TABLES, PaperTable
from puppet.report.table5 import TABLE5

UNITS = {
    "top1": "Top-1 (%)",
    "top5": "Top-5 (%)",
    "param_size_mb": "Params Size (MB)",
    "latency_s_per_img": "Speed (ms/img)",
    "macs_paper_batch_g": f"Mult-Adds, batch of {PAPER_MULT_ADDS_BATCH} (G)",
    "macs_g": "Mult-Adds per image (G)",
    "macs_without_generation_g": "Mult-Adds per image w/o kernel generation (G)",
    "total_params_m": "Total Params (M)",
    "kernels_mb": "Kernels held (MB)",
}


def at_paper_width(ok: pd.DataFrame) -> bool:
    """Every run of the row was made at the paper's width (an older metrics.csv without the column: no)."""
    return "max_channels" in ok and not ok.empty and bool((ok["max_channels"] == PAPER_WIDTH).all())


def on_paper_device(ok: pd.DataFrame) -> bool:
    """At the paper's width, timed on a GPU as the paper's speeds were (a CPU timing beside a GPU
    number is no comparison, whatever the width), and on the model's own routing: an untrained
    adaptive model's dearest path (``cost_basis``) is a bound, not the paper's kind of number."""
    timed = ok["device_type"].astype(str) if "device_type" in ok else pd.Series(dtype=str)
    bound = "cost_basis" in ok and ok["cost_basis"].astype(str).str.startswith("dearest").any()
    return at_paper_width(ok) and len(timed) == len(ok) and bool((timed == "cuda").all()) and not bound


def paper_batch_macs(ok: pd.DataFrame, row: Row) -> pd.Series:
    """Table 4's Mult-Adds as the paper counted them, by the reading of ``PAPER_MULT_ADDS_BATCH``:
    that many images' MACs without kernel generation plus one image's kernel generation (G)."""
    generation = ok["macs_generation"].fillna(0) if "macs_generation" in ok else 0
    return (PAPER_MULT_ADDS_BATCH * ok["macs_without_generation"] + generation) / 1e9


# Metrics computed from a run's columns (engine.Metric.values); the others are columns of metrics.csv.
DERIVED = {"macs_paper_batch_g": paper_batch_macs}
# When ours - paper is a comparison, per metric: timings only on the paper's kind of device.
DELTA = {"latency_s_per_img": on_paper_device}


def _fixed_width(models: pd.DataFrame, model: str) -> bool:
    """Whether ``model`` is built at its own paper's widths whatever max_channels (its row in the model
    descriptions ``models``; a model not described there: no)."""
    rows = models[models["model"] == model]
    return bool(rows["fixed_width"].iloc[0]) if len(rows) else False


def width_note(row: Row, ok: pd.DataFrame, built: dict) -> str:
    """Why a row has no Δ: its runs are not at the paper's width (or its model never is)."""
    if ok.empty or at_paper_width(ok):
        return ""
    if row.known.get("fixed_width"):  # its size is its own paper's at every profile; the protocol is not
        return (
            "built at its own paper's widths (16-32-64 for the CIFAR ResNets) whatever max_channels; "
            f"trained with the profile's protocol, paper {PAPER_WIDTH} channels: no Δ"
        )
    widths = sorted(ok["max_channels"].dropna().astype(int).unique()) if "max_channels" in ok else []
    width = f"width {','.join(map(str, widths))}" if widths else "width not recorded (an older metrics.csv)"
    return f"{width}, paper {PAPER_WIDTH}: no Δ (paper-scale sizes: the Model sizes section)"


def below_chance(row: Row, ok: pd.DataFrame, built: dict) -> str:
    """A note when a run of the row is at chance level (``at_chance``, puppet.report.collate): its
    top-1 is one that guessing reaches; for a metrics.csv written before the flag, below 1/classes."""
    from puppet.core.datasets import DATASETS

    flags = ok["at_chance"] if "at_chance" in ok else pd.Series(dtype=object)
    flagged = flags.astype(str).str.lower().eq("true")
    if flagged.any():
        bound = pd.to_numeric(ok.loc[flagged, "chance_bound"], errors="coerce").max()
        seeds = f"{int(flagged.sum())} of {len(ok)} runs" if len(ok) > 1 else "its run"
        return f"at chance level: {seeds} at or below {bound:.1f}% top-1, what guessing reaches 1 time in 200"
    info = DATASETS.get(row.dataset)
    chance = 100.0 / info.num_classes if info else math.nan
    return f"top-1 below chance ({chance:.0f}%)" if built.get("top1", math.nan) < chance else ""


def run_table(paper: PaperTable) -> Table:
    """One of the paper's Tables 1-4 and 6 as a declaration: its rows beside our runs, a row per
    deployment of a model measured in several, Δ only at the paper's width."""

    def rows(metrics: pd.DataFrame, models: pd.DataFrame) -> tuple[Row, ...]:
        return tuple(
            Row(
                p.label, p.model, p.dataset, p.values, p.group, known={"fixed_width": _fixed_width(models, p.model)},
                **_as_published(models, p.model),
            )
            for p in paper.rows
        )  # fmt: skip

    metrics = tuple(
        Metric(key, UNITS.get(key, key), DERIVED.get(key), delta=DELTA.get(key, at_paper_width))
        for key in paper.metrics
    )
    notes = (width_note, below_chance, cost_only_note, speed_device_note)
    caption = TABLE4_CAPTION if paper.name == "table4" else ""
    return Table(paper.name, paper.title, metrics, rows, caption=caption, per_deployment=True, notes=notes)


TABLE4_CAPTION = (
    f"The paper's Mult-Adds count a batch whose size it does not state; we read it as {PAPER_MULT_ADDS_BATCH} "
    f"images with kernels generated once per batch (the ResNet row fixes that batch: it cannot test the reading, "
    f'the Puppet rows can). "Mult-Adds, batch of {PAPER_MULT_ADDS_BATCH}" is {PAPER_MULT_ADDS_BATCH} x our MACs '
    "per image without kernel generation + one image's kernel generation, beside the paper's column; the "
    "per-image columns are ptflops at batch 1 (docs: Choices the paper leaves open)."
)


def _not_trained(ok: pd.DataFrame) -> bool:
    return "trained" in ok and not ok.empty and bool((ok["trained"].astype(str) == "False").all())


def cost_only_note(row: Row, ok: pd.DataFrame, built: dict) -> str:
    """A cost-only row: not trained, timed on which device, and for a model that routes each input
    by what it learned, that its MACs and speed are its dearest path's (cheapest path beside)."""
    if not _not_trained(ok):
        return ""
    device = ",".join(sorted(ok["device"].dropna().astype(str).unique())) if "device" in ok else "?"
    note = f"not trained (cost-only profile): size, MACs and speed only, timed on {device}"
    if "cost_basis" in ok and ok["cost_basis"].astype(str).str.startswith("dearest").any():
        cheapest = ok["macs_cheapest_path"].astype(float).mean() / 1e9
        note += (
            f"; MACs and speed of the dearest path (every gate runs, no early exit), an upper bound with no "
            f"speed Δ: its routing needs training; cheapest path {cheapest:.3g} G MACs per image"
        )
    return note


def speed_device_note(row: Row, ok: pd.DataFrame, built: dict) -> str:
    """Why a paper-width speed has no Δ: it was not timed on a GPU, as the paper's."""
    if "latency_s_per_img" not in built or not at_paper_width(ok) or on_paper_device(ok):
        return ""
    timed = ok["device_type"].astype(str) if "device_type" in ok else pd.Series(dtype=str)
    if len(timed) and (timed == "cuda").all():
        return ""  # a GPU timing of a dearest path: cost_only_note says why there is no Δ
    return "speed timed on a CPU, the paper's on a GPU: no speed Δ"


def paper_sizes() -> dict[str, float]:
    """The paper's Params Size (MB, 10 classes) for each of our models that a run table names."""
    sizes: dict[str, float] = {}
    for table in RUN_TABLES:
        for row in table.rows:
            if row.dataset == "cifar10" and "param_size_mb" in row.values:
                sizes.setdefault(row.model, row.values["param_size_mb"])
    return sizes


AS_PUBLISHED_SIZE = (
    "no Δ of size: the paper's Params Size is the one the size-matched configuration is built to reach; "
    "this row is the method as its own paper publishes it"
)


def _as_published(models: pd.DataFrame, model: str) -> dict:
    """Row keywords for an "as published" configuration: its size is shown beside the paper's, without a Δ."""
    rows = models[models["model"] == model] if "configuration" in models else models.iloc[0:0]
    configuration = str(rows["configuration"].iloc[0]) if len(rows) else ""
    if not configuration.startswith("as published"):
        return {}
    return {"no_delta": ("param_size_mb",), "note": AS_PUBLISHED_SIZE}


def _size_rows(metrics: pd.DataFrame, models: pd.DataFrame) -> tuple[Row, ...]:
    """Every registered model at the paper's width (its description at 512 channels and its default
    depth) beside the paper's Params Size."""
    paper = paper_sizes()
    builds = models[(models["max_channels"] == PAPER_WIDTH) & models["depth"].isna()]
    rows = []
    for _, info in builds.sort_values("model").iterrows():
        name, configuration = info["model"], info["configuration"]
        label = f"{info['paper_name']} ({configuration}): {name}" if configuration else info["paper_name"]
        known = {
            "family": info["family"],
            "configuration": configuration,
            "stored_params": int(info["stored_params"]),
            "total_params": int(info["total_params"]),
            "param_size_mb": info["param_size_mb"],
        }
        note = "paper counts the puppeteer only (Table 5)" if info["family"] == "puppet" else ""
        published = _as_published(models, name) if name in paper else {}
        rows.append(
            Row(
                label, name, "cifar10", {"param_size_mb": paper[name]} if name in paper else {}, known=known,
                note=published.pop("note", note), **published,
            )
        )  # fmt: skip
    return tuple(rows)


SIZES = Table(
    "sizes",
    "Model sizes at the paper's width (max_channels 512, 10 classes), from the model code",
    (Metric("param_size_mb", UNITS["param_size_mb"], delta=always),),
    _size_rows,
    runs=False,
)


def model_sizes(models: pd.DataFrame) -> pd.DataFrame:
    """Every registered model's stored size at the paper's width, beside the paper's Params Size:
    ``sizes.csv``."""
    return engine.build(SIZES, pd.DataFrame(), models)


# Every table, in the order tables.md shows them (the paper's: Table 5 between Tables 4 and 6, then
# the model sizes, the PDE poster, the SkipNet configurations and the MOR study). Tables of one CSV stem share it.
TABLES: tuple[Table, ...] = (
    *(run_table(t) for t in RUN_TABLES[:4]),
    TABLE5,
    run_table(RUN_TABLES[4]),
    SIZES,
    *pde.TABLES,
    skipnet.TABLE,
    mor.TABLE,
)


INTRODUCTION = (
    "Generated by `snakemake tables` from `results/metrics.csv` and `results/models.csv`; do not edit by hand. "
    "`ours` is the mean over seeds (± sample std where more than one seed ran); "
    "`paper` is the number printed in the Puppet-CNN paper (v1), or in the paper a table names; "
    "Δ = ours − paper, given only where the two are of the same scale: for runs, where they are at the paper's "
    "width (`max_channels` 512), since a width-32 run beside a 512-channel number is no comparison (the footnote "
    "says so), and for speed only where ours was also timed on a GPU, as the paper's. Speed in ms per image. "
    "Accuracy is on the test split named below, which may be a subset: compare with care. "
    "Sizes, MACs and speed in Tables 1-4 and 6 are those of the models as run, at the profile's "
    '`max_channels` (the paper: 512); Table 5 and "Model sizes" give the paper-scale sizes from the model code. '
    "A model measured in more than one deployment (a way to run the trained model: `metrics.csv`'s "
    "`deployment` key) has one row per deployment, labelled by it: Puppet-CNN's kernels generated on the fly "
    "for every batch, as the paper describes, and precomputed once per complexity level after training "
    '("Kernels held (MB)" is the memory they take, beside the stored size). The paper does not say '
    "which its speed is, so its numbers stand beside each. Latency is the median over timing rounds; "
    "`metrics.csv` has its 95% interval (`latency_ci_low/high_s_per_img`) and a `latency_noisy` flag."
)


# The "All runs" section of tables.md: (metrics.csv column, heading, format of a value) per column.
RUN_COLUMNS = (
    ("dataset", "Dataset", str),
    ("model", "Model", str),
    ("seed", "Seed", lambda v: f"{v:.0f}"),
    ("deployment", "Deployment", str),
    ("status", "Status", str),
    ("top1", "Top-1 (%)", lambda v: f"{v:.2f}"),
    ("top5", "Top-5 (%)", lambda v: f"{v:.2f}"),
    ("stored_params", "Stored params", lambda v: f"{v:,.0f}"),
    ("param_size_mb", "Size (MB)", lambda v: f"{v:.3g}"),
    ("macs", "MACs (M)", lambda v: f"{v / 1e6:,.2f}"),
    ("latency_s_per_img", "Latency (ms/img)", lambda v: f"{v * 1e3:.3g}"),
    ("throughput_img_per_s", "Throughput (img/s)", lambda v: f"{v:,.0f}"),
    ("train_time_s", "Training (s)", lambda v: f"{v:,.1f}"),
)


def runs_markdown(metrics: pd.DataFrame) -> str:
    """Every row of metrics.csv for reading: headed columns with units, numbers as a person writes them,
    the adaptive models' per-image means (``mean_*``) only where some run has one."""
    cols = [c for c in RUN_COLUMNS if c[0] in metrics]
    means = [c for c in metrics.columns if c.startswith("mean_") and metrics[c].notna().any()]
    cols += [(c, c.replace("mean_", "mean ").replace("_", " "), lambda v: f"{v:.3g}") for c in means]
    lines = ["## All runs (results/metrics.csv)", "", "| " + " | ".join(h for _, h, _ in cols) + " |"]
    lines.append("|" + "".join("---|" if f is str else "---:|" for _, _, f in cols))
    for _, r in metrics.iterrows():
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            if v is None or pd.isna(v):
                cells.append("–")
            else:
                cells.append(fmt(v) if fmt is str or isinstance(v, numbers.Number) else str(v))
        if str(r.get("at_chance")).lower() == "true" and "status" in metrics:
            cells[[k for k, _, _ in cols].index("status")] += ", at chance"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(
    metrics_path: str | Path, out_dir: str | Path, models_path: str | Path, claims_path: str | Path | None = None
) -> dict[str, pd.DataFrame]:
    """Every table of ``TABLES`` into ``out_dir`` (a CSV per stem, ``tables.md``, ``tables.tex``): the
    runs from ``metrics_path`` (``results/metrics.csv``), the numbers of the model code from
    ``models_path`` (``results/models.csv``), both declared inputs of the workflow's ``paper_tables``
    rule (``python -m puppet tables``); ``publish --merge`` too. ``claims_path``: the claims section
    (``puppet.report.claims``), put first where a profile tests claims."""
    out_dir = Path(out_dir)
    metrics = load_metrics(metrics_path)
    models = load_models(models_path)
    md = ["# puppet-bench tables", "", INTRODUCTION, "", engine.summary(default_rows(metrics)), ""]
    if claims_path is not None:
        md += [Path(claims_path).read_text()]
    tex = [
        "% Generated by `python -m puppet tables` from results/metrics.csv; do not edit by hand.\n"
        "% Needs \\usepackage{booktabs}. Same numbers as tables.md (Delta blank where the scales differ).\n"
    ]
    built = [(table, engine.build(table, metrics, models)) for table in TABLES]
    out = {
        name: pd.concat([f for t, f in built if t.name == name], ignore_index=True) for name in {t.name for t in TABLES}
    }
    for table, frame in built:
        caption = table.caption(out[table.name]) if callable(table.caption) else table.caption  # of its whole CSV
        for i, (title, part) in enumerate(engine.sections(table, frame)):
            md.append(engine.markdown(table, part, title, caption if i == 0 else ""))
            tex.append(engine.latex(table, part, title))
    for name, frame in out.items():
        atomic_write_csv(frame, out_dir / f"{name}.csv")
    md.append(runs_markdown(metrics))
    atomic_write_text("\n".join(tex), out_dir / "tables.tex")
    atomic_write_text("\n".join(md), out_dir / "tables.md")
    return out
