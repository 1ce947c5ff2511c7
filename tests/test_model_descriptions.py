"""The model-description table (``results/models.csv``, ``puppet.report.models``): what the report
quotes of the model code, computed by one rule whose inputs are that code."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from puppet.core.measure import stored_param_count, total_param_count
from puppet.core.registry import create_model, list_models
from puppet.report.models import COLUMNS, PAPER_WIDTH, described, load_models


def test_every_registered_model_has_one_row_at_the_papers_width(model_descriptions):
    at_paper_width = model_descriptions[
        (model_descriptions["max_channels"] == PAPER_WIDTH) & model_descriptions["depth"].isna()
    ]
    assert sorted(at_paper_width["model"]) == list_models()
    assert list(model_descriptions.columns) == list(COLUMNS)
    assert not model_descriptions.duplicated(["model", "max_channels", "depth"]).any()  # one row per build
    assert (model_descriptions["num_classes"] == 10).all()


@pytest.mark.parametrize(
    "name,depth", [("alexnet", None), ("puppet_cnn", None), ("skipnet38", None), ("resnet_global", None), ("vgg", 11)]
)
def test_a_row_counts_the_model_built_at_width_512(model_descriptions, name, depth, one_thread):
    """The meta-device counts are those of the model really built (on the CPU) at 512 channels, 10 classes."""
    kwargs = {} if depth is None else {"depth": depth}
    model = create_model(name, num_classes=10, max_channels=PAPER_WIDTH, **kwargs)
    row = described(model_descriptions, name, depth=depth)
    assert row["stored_params"] == stored_param_count(model)
    assert row["total_params"] == total_param_count(model)
    assert row["param_size_mb"] == stored_param_count(model) * 4 / 1e6
    if hasattr(model, "block_depth"):
        assert row["block_depth"] == model.block_depth()
    else:
        assert pd.isna(row["block_depth"])


def test_skipnet_and_puppet_columns_are_the_models(model_descriptions):
    with torch.device("meta"):
        net = create_model("skipnet38", max_channels=PAPER_WIDTH)
        puppet = create_model("puppet_cnn", max_channels=64)
    row = described(model_descriptions, "skipnet38")
    assert row["residual_blocks"] == len(net.blocks) and row["block_widths"] == "16-32-64"
    assert (row["gate_training"], row["hrl_alpha"]) == (net.gate_training, net.hrl_alpha)
    small = described(model_descriptions, "puppet_cnn", max_channels=64)
    assert small["template_params"] == puppet.template.numel() == 9 * 64 * 64
    assert pd.isna(described(model_descriptions, "alexnet")["residual_blocks"])
    assert described(model_descriptions, "alexnet")["gate_training"] == ""  # text columns: "" where a model has none


def test_the_cli_writes_what_load_models_reads_back(model_descriptions, tmp_path):
    from puppet.cli import main

    assert main(["describe-models", "--out", str(tmp_path / "models.csv")]) == 0
    pd.testing.assert_frame_equal(load_models(tmp_path / "models.csv"), model_descriptions)


def test_a_missing_row_or_column_says_to_describe_the_models_again(model_descriptions, tmp_path):
    without = model_descriptions[model_descriptions["model"] != "resnet32"]
    with pytest.raises(LookupError, match="0 rows for resnet32 at max_channels 512.*describe-models"):
        described(without, "resnet32")
    model_descriptions.drop(columns="block_depth").to_csv(tmp_path / "old.csv", index=False)
    with pytest.raises(ValueError, match="lacks the column.*block_depth.*describe-models"):
        load_models(tmp_path / "old.csv")
