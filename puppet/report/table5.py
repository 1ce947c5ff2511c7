"""Table 5 of the paper (model size vs maximum output channel), computed from our model code.

The paper's columns are torchinfo's summary lines:
"Params size (MB)" sums the parameters of leaf modules only, "Total params" also counts
parameters registered directly on a non-leaf module. For Puppet-CNN that reads:

* Param Size   = the puppeteer G (DW 3x3 + bias, BN, PW 1x1 + bias, BN) = C^2 + 15C floats;
* Total Params = G + the C x C x 3 x 3 kernel template held by the model itself = 10C^2 + 15C.

``puppet.report.models.describe_models`` builds ``puppet_cnn`` at each C_max on ``torch.device("meta")``
(no memory is allocated, even for the 4096-channel state) and counts those parameters into
``results/models.csv``; this module reads them from there. The puppet's BatchNorms and
our GAP -> FC head are not in the paper's numbers (they would not fit its rows); the
``note`` column gives our full stored count beside them.
"""

from __future__ import annotations

import pandas as pd

from puppet.core.measure import param_size_mb
from puppet.report.engine import Metric, Row, Table, always, build
from puppet.report.models import NUM_CLASSES, TABLE5_MODEL, described
from puppet.report.paper import TABLE5_PAPER


def table5_rows(metrics: pd.DataFrame, models: pd.DataFrame) -> tuple[Row, ...]:
    """Table 5's rows, ours beside the paper's, from the model descriptions ``models``
    (``results/models.csv``); the paper prints two decimals, so ours are rounded to them."""
    rows = []
    for c_max, (paper_total_m, paper_size_mb) in sorted(TABLE5_PAPER.items()):
        model = described(models, TABLE5_MODEL, max_channels=c_max)
        param_count = int(model["puppeteer_params"])  # leaf modules of G
        template = int(model["template_params"])
        total = param_count + template  # + the template on the model itself
        stored = int(model["stored_params"])
        known = {
            "c_max": c_max,
            "total_params_m": round(total / 1e6, 2),
            "param_size_mb": round(param_size_mb(param_count), 2),
            "total_params": total,
            "param_count": param_count,
        }
        note = (
            f"puppeteer C^2+15C = {param_count:,}, template 9C^2 = {template:,}, "
            f"our stored model with puppet BNs + head ({NUM_CLASSES} classes): {stored:,} "
            f"({param_size_mb(stored):.2f} MB), not in the paper's count"
        )
        paper = {"total_params_m": paper_total_m, "param_size_mb": paper_size_mb}
        rows.append(Row(f"C_max = {c_max}", TABLE5_MODEL, "cifar10", paper, known=known, note=note))
    return tuple(rows)


TABLE5 = Table(
    "table5",
    "Table 5: Puppet-CNN size vs maximum output channel (from the model code)",
    (
        Metric("total_params_m", "Total Params (M)", delta=always),
        Metric("param_size_mb", "Params Size (MB)", delta=always),
    ),
    table5_rows,
    runs=False,
)


def table5(models: pd.DataFrame) -> pd.DataFrame:
    """Table 5 built from the model descriptions alone (``TABLE5``; ``write_tables`` writes it)."""
    return build(TABLE5, pd.DataFrame(), models)
