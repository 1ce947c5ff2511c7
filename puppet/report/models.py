"""The model-description table (``results/models.csv``): what the model code builds, computed once, read by the report.

The report's tables and figures quote numbers that come from the model code, not from runs: every
model's size at the paper's width (``sizes.csv``), Puppet-CNN's size at each maximum width (Table 5),
the depth of the PDE models (``table_pde.csv``), the SkipNet configurations' backbones and rewards
(``table_skipnet.csv``) and Fig. 4's size against depth. They used to build the models while
tabulating, so a change to a model's code remade none of them. Now the workflow's ``describe_models``
rule (``python -m puppet describe-models``), whose inputs are the model code, writes this table, and
the tables and figures read it as a declared input.

One row per model as built (``model``, ``max_channels``, ``depth``; all at ``num_classes`` 10):

* every registered model at the paper's width, 512 channels, with its builder's default depth
  (``depth`` empty);
* Puppet-CNN also at every other maximum width of Table 5;
* the fixed VGG/ResNet and their puppets also at each depth of Fig. 4 (``FIG4_FAMILIES``).

Every model is built on ``torch.device("meta")``: nothing is allocated, however large the model.
Columns a model does not have are empty: ``block_depth`` (models with a ``block_depth()``, the PDE
table's depth), ``puppeteer_params``/``template_params`` (models with a puppeteer and a kernel
template: Table 5's counts) and the SkipNet columns (``skipnet`` and its configurations).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from puppet.core.io import atomic_write_csv
from puppet.report.paper import TABLE5_PAPER

PAPER_WIDTH = 512  # the Puppet-CNN paper's max_channels: its sizes, MACs, speed and accuracy are at this width
NUM_CLASSES = 10  # the paper's Params Size is at 10 classes (CIFAR-10)
TABLE5_MODEL = "puppet_cnn"  # Table 5: Puppet-CNN's size against its maximum width (TABLE5_PAPER's keys)
# Depth variants shown in Fig. 4: (fixed model, its puppet, the depths both builders accept)
FIG4_FAMILIES = (("vgg", "puppet_vgg", (11, 13, 16, 19)), ("resnet", "puppet_resnet", (18, 34)))
SKIPNET = "skipnet"  # the SkipNet base model: it and every configuration registered from it get the SkipNet columns

# Counts that a model may lack (pandas' nullable integers: "18", not "18.0", in the file), columns read back
# as text (an empty cell is "", not NaN), and the order of the file's columns.
INTEGER_COLUMNS = ("depth", "puppeteer_params", "template_params", "residual_blocks")
TEXT_COLUMNS = ("model", "family", "paper_name", "configuration", "base", "block_widths", "gate_training")
COLUMNS = (
    "model",
    "family",
    "paper_name",
    "configuration",
    "base",
    "fixed_width",
    "num_classes",
    "max_channels",
    "depth",
    "stored_params",
    "total_params",
    "param_size_mb",
    "block_depth",
    "puppeteer_params",
    "template_params",
    "residual_blocks",
    "block_widths",
    "gate_training",
    "target_rate",
    "hrl_alpha",
)


def planned_builds() -> list[tuple[str, int, int | None]]:
    """(model, max_channels, depth or None for the builder's default) of every row of the table, in
    its order: the registry at the paper's width, Table 5's other widths, Fig. 4's depths. Called by
    ``describe_models``; a build two of them need (Puppet-CNN at 512) is one row."""
    from puppet.core.registry import list_models

    builds = [(name, PAPER_WIDTH, None) for name in list_models()]
    builds += [(TABLE5_MODEL, c_max, None) for c_max in sorted(TABLE5_PAPER)]
    for fixed, puppet, depths in FIG4_FAMILIES:
        builds += [(name, PAPER_WIDTH, depth) for depth in depths for name in (fixed, puppet)]
    return list(dict.fromkeys(builds))


def describe_model(name: str, max_channels: int = PAPER_WIDTH, depth: int | None = None) -> dict:
    """One row: the registered model ``name`` built on the meta device at ``max_channels`` (and
    ``depth``, where given) with ``NUM_CLASSES`` classes, its registry entry and what the report
    counts of it. Called by ``describe_models`` for every planned build."""
    import torch

    from puppet.core.measure import param_size_mb, stored_param_count, total_param_count
    from puppet.core.registry import create_model, model_info

    info = model_info(name)
    kwargs = {} if depth is None else {"depth": depth}
    with torch.device("meta"):
        model = create_model(name, num_classes=NUM_CLASSES, max_channels=max_channels, **kwargs)
    stored = stored_param_count(model)
    row = {
        "model": name,
        "family": info.family,
        "paper_name": info.paper_name,
        "configuration": info.configuration,
        "base": info.base,
        "fixed_width": info.fixed_width,
        "num_classes": NUM_CLASSES,
        "max_channels": max_channels,
        "depth": depth,
        "stored_params": stored,
        "total_params": total_param_count(model),
        "param_size_mb": param_size_mb(stored),
        "block_depth": float(model.block_depth()) if hasattr(model, "block_depth") else math.nan,
    }
    if hasattr(model, "puppeteer") and hasattr(model, "template"):  # Table 5: the generator G and the template
        row["puppeteer_params"] = sum(p.numel() for p in model.puppeteer.parameters())  # leaf modules of G
        row["template_params"] = model.template.numel()  # held by the model itself, not by a leaf module
    if name == SKIPNET or info.base == SKIPNET:
        row["residual_blocks"] = len(model.blocks)
        row["block_widths"] = "-".join(map(str, sorted({b.conv1.out_channels for b in model.blocks})))
        row["gate_training"] = model.gate_training
        row["target_rate"] = model.target_rate
        row["hrl_alpha"] = model.hrl_alpha
    return row


def describe_models() -> pd.DataFrame:
    """Every planned build (``planned_builds``) described, one row each, in ``COLUMNS`` order.
    Called by ``write_models`` (the workflow's ``describe_models`` rule) and by the tests."""
    rows = [describe_model(name, max_channels, depth) for name, max_channels, depth in planned_builds()]
    return _typed(pd.DataFrame(rows, columns=list(COLUMNS)))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Empty text cells as "", counts a model may lack as nullable integers: the same frame whether
    ``describe_models`` just made it or ``load_models`` read it back."""
    return frame.fillna({c: "" for c in TEXT_COLUMNS}).astype({c: "Int64" for c in INTEGER_COLUMNS})


def write_models(out: str | Path) -> pd.DataFrame:
    """``python -m puppet describe-models --out results/models.csv``: the table, written atomically."""
    frame = describe_models()
    atomic_write_csv(frame, out)
    return frame


def load_models(path: str | Path) -> pd.DataFrame:
    """``results/models.csv`` as ``describe_models`` returned it (text columns "" where empty, counts
    that a model may lack nullable integers). Called by ``write_tables`` and ``write_figures``."""
    frame = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})
    missing = [c for c in COLUMNS if c not in frame]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}: write it again with describe-models")
    return _typed(frame)


def described(models: pd.DataFrame, name: str, max_channels: int = PAPER_WIDTH, depth: int | None = None) -> pd.Series:
    """The row of ``models`` for ``name`` built at ``max_channels`` (and ``depth``; None: the builder's
    default). The tables and figures look their models up here; a row that is not there means the
    table is older than the code that reads it: the error says to write it again."""
    depths = models["depth"]
    at = (models["model"] == name) & (models["max_channels"] == max_channels)
    at &= depths.isna() if depth is None else (depths == depth).fillna(False)
    rows = models[at]
    if len(rows) != 1:
        what = f"{name} at max_channels {max_channels}" + ("" if depth is None else f", depth {depth}")
        raise LookupError(
            f"the model descriptions have {len(rows)} rows for {what}; write them again "
            "(python -m puppet describe-models, or let snakemake remake results/models.csv)"
        )
    return rows.iloc[0]
