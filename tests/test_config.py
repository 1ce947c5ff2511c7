"""The config schema rejects bad configs with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from puppet.config import ConfigError, load_config, run_grid, run_spec, spec_hash, validate_config
from puppet.registry import list_models

REPO = Path(__file__).resolve().parents[1]


def _base(**kw):
    cfg = {"profile": "t", "models": [list_models()[0]], "datasets": ["synthetic"]}
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml", "smoke.yaml"])
def test_shipped_profiles_validate(name):
    cfg = load_config(REPO / "config" / name)
    assert run_grid(cfg)


def test_defaults_are_filled():
    cfg = validate_config(_base())
    assert cfg["seeds"] == [0] and cfg["train"]["optimizer"] and cfg["measure"]["threads"] >= 1


def test_unknown_model_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        validate_config(_base(models=["resnet_9000"]))
    assert "resnet_9000" in str(err.value) and list_models()[0] in str(err.value)


def test_unknown_top_level_key_rejected():
    with pytest.raises(ConfigError, match="allowed keys"):
        validate_config(_base(epochz=3))


def test_unknown_nested_key_rejected():
    with pytest.raises(ConfigError, match="train"):
        validate_config(_base(train={"learning_rate": 0.1}))


def test_wrong_type_rejected():
    with pytest.raises(ConfigError, match="epochs"):
        validate_config(_base(epochs="ten"))


def test_unknown_dataset_in_data_sources_rejected():
    with pytest.raises(ConfigError, match="cifar10"):
        validate_config(_base(data_sources={"cifar11": "x.npz"}))


def test_malformed_yaml_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [alexnet\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "\n" not in str(err.value)


def test_extra_grid_adds_runs_without_duplicates():
    m = list_models()[:2]
    cfg = validate_config(_base(models=m, seeds=[0, 1], extra_grid=[{"datasets": ["synthetic", "cifar100"], "models": m[:1]}]))
    runs = run_grid(cfg)
    assert len(runs) == len(set(runs)) == 2 * 2 + 1 * 2


def test_spec_hash_changes_with_what_matters_only():
    cfg = validate_config(_base())
    a = run_spec(cfg, "synthetic", cfg["models"][0], 0)
    b = dict(a, epochs=a["epochs"] + 1)
    c = dict(a, measure={**a["measure"], "warmup": 99})
    assert spec_hash(a) != spec_hash(b) and spec_hash(a) == spec_hash(c)


def test_data_overrides_apply_to_one_dataset_only():
    cfg = validate_config(_base(datasets=["synthetic", "cifar100"], data={"train_size": 4000},
                                data_overrides={"cifar100": {"train_size": 900}}))
    model = cfg["models"][0]
    assert run_spec(cfg, "cifar100", model, 0)["data"]["train_size"] == 900
    assert run_spec(cfg, "synthetic", model, 0)["data"]["train_size"] == 4000
    with pytest.raises(ConfigError):
        validate_config(_base(data_overrides={"cifar100": {"train_sise": 900}}))


def test_snakemake_cli_strings_are_coerced():
    """snakemake --config leaves nested scalars as strings; they must still validate as numbers."""
    from snakemake.cli import parse_config

    model = list_models()[0]
    overrides = parse_config(["seeds=[0,1]", "epochs=3", f"model_kwargs={{{model}: {{dl_min: 0.25, impl: grouped}}}}",
                              "data={train_size: 100, augment: none}"])
    cfg = validate_config(_base(**overrides))
    assert cfg["seeds"] == [0, 1] and cfg["epochs"] == 3 and cfg["data"]["train_size"] == 100
    assert cfg["model_kwargs"][model] == {"dl_min": 0.25, "impl": "grouped"}
    assert cfg["data"]["augment"] == "none"
