"""The config schema rejects bad configs with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from puppet.core.config import ConfigError, load_config, run_grid, run_spec, validate_config
from puppet.core.registry import list_models
from puppet.core.specs import RunSpec

REPO = Path(__file__).resolve().parents[1]


def _base(**kw):
    cfg = {"profile": "t", "models": [list_models()[0]], "datasets": ["synthetic"]}
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.yaml")))
def test_shipped_profiles_validate(name):
    cfg = load_config(REPO / "config" / name)
    assert run_grid(cfg)


def test_paper_subset_profile_fits_the_offline_cifar10_subset(cifar10_npz):
    """Its train_size + val_size fit the 5,438 training images of ../shared/data/cifar10_subset.npz,
    which its data_sources names relative to the repository root (where snakemake runs)."""
    from puppet.core.assemble import load_splits

    cfg = load_config(REPO / "config" / "paper_subset.yaml")
    assert (REPO / cfg["data_sources"]["cifar10"]).resolve() == cifar10_npz.resolve()
    assert [m for _, m, _ in run_grid(cfg)] == [
        "resnet",
        "puppet_resnet",
        "puppet_cnn",  # Table 4 first
        "alexnet",
        "mobilenet_v1",
        "mobilenet_v2",
        "squeezenet",
    ]
    spec = run_spec(cfg, "cifar10", "resnet", 0).replace(data_source=str(cifar10_npz))
    splits = load_splits(spec)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (4400, 1000, 1017)
    assert cfg["max_channels"] == 512 and cfg["train"]["amp"] and cfg["train"]["time_limit_min"]
    assert f"{cfg['epochs']}ep" in cfg["profile"]  # not the paper's 100 epochs: the name says so


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
    cfg = validate_config(
        _base(models=m, seeds=[0, 1], extra_grid=[{"datasets": ["synthetic", "cifar100"], "models": m[:1]}])
    )
    runs = run_grid(cfg)
    assert len(runs) == len(set(runs)) == 2 * 2 + 1 * 2


def test_spec_hash_changes_with_what_matters_only():
    cfg = validate_config(_base())
    a = run_spec(cfg, "synthetic", cfg["models"][0], 0)
    b = a.replace(epochs=a.epochs + 1)
    c = a.replace(measure={"warmup": 99})
    assert a.hash != b.hash and a.hash == c.hash


def test_time_limit_is_not_part_of_a_run():
    """train.time_limit_min decides how long a sitting trains, not what the run computes: it stays
    out of the spec (Snakemake params) and the hash, so a run paused under one limit resumes under another."""
    plain = validate_config(_base())
    limited = validate_config(_base(train={"time_limit_min": 8}))
    assert plain["train"]["time_limit_min"] is None and limited["train"]["time_limit_min"] == 8
    model = plain["models"][0]
    assert run_spec(plain, "synthetic", model, 0) == run_spec(limited, "synthetic", model, 0)
    spec = run_spec(plain, "synthetic", model, 0)
    by_hand = spec.to_dict()
    by_hand["train"]["time_limit_min"] = 3
    assert RunSpec.from_dict(by_hand) == spec and RunSpec.from_dict(by_hand).hash == spec.hash


def test_time_limit_must_be_positive():
    with pytest.raises(ConfigError, match="time_limit_min"):
        validate_config(_base(train={"time_limit_min": 0}))


def test_data_overrides_apply_to_one_dataset_only():
    cfg = validate_config(
        _base(
            datasets=["synthetic", "cifar100"],
            data={"train_size": 4000},
            data_overrides={"cifar100": {"train_size": 900}},
        )
    )
    model = cfg["models"][0]
    assert run_spec(cfg, "cifar100", model, 0).data.train_size == 900
    assert run_spec(cfg, "synthetic", model, 0).data.train_size == 4000
    with pytest.raises(ConfigError):
        validate_config(_base(data_overrides={"cifar100": {"train_sise": 900}}))


def test_snakemake_cli_strings_are_coerced():
    """snakemake --config leaves nested scalars as strings; they must still validate as numbers."""
    from snakemake.cli import parse_config

    model = list_models()[0]
    overrides = parse_config(
        [
            "seeds=[0,1]",
            "epochs=3",
            f"model_kwargs={{{model}: {{dl_min: 0.25, impl: grouped}}}}",
            "data={train_size: 100, augment: none}",
        ]
    )
    cfg = validate_config(_base(**overrides))
    assert cfg["seeds"] == [0, 1] and cfg["epochs"] == 3 and cfg["data"]["train_size"] == 100
    assert cfg["model_kwargs"][model] == {"dl_min": 0.25, "impl": "grouped"}
    assert cfg["data"]["augment"] == "none"


def test_run_spec_fields_are_the_schema_keys():
    """The typed spec and the config schema name the same keys: a key added to one only fails here."""
    import dataclasses

    from puppet.core.config import SCHEMA_PATH
    from puppet.core.specs import RUN_CONTROL_KEYS, DataSpec, MeasureSpec, TrainSpec

    props = json.loads(SCHEMA_PATH.read_text())["properties"]
    for block, cls in (("data", DataSpec), ("train", TrainSpec), ("measure", MeasureSpec)):
        schema_keys = set(props[block]["properties"]) - set(RUN_CONTROL_KEYS)
        assert {f.name for f in dataclasses.fields(cls)} == schema_keys, block


def test_run_spec_round_trips_and_refuses_unknown_keys():
    from puppet.core.specs import SpecError

    spec = run_spec(validate_config(_base()), "synthetic", "alexnet", 0)
    assert RunSpec.from_dict(spec.to_dict()) == spec
    bad = spec.to_dict()
    bad["train"]["lr_typo"] = 0.1
    with pytest.raises(SpecError, match=r"train: unknown keys \['lr_typo'\]"):
        RunSpec.from_dict(bad)
    with pytest.raises(SpecError, match="missing keys"):
        RunSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "epochs"})


def test_cli_refuses_a_malformed_spec_in_one_line(tmp_path, capsys):
    from puppet.cli import main

    spec = run_spec(validate_config(_base()), "synthetic", "alexnet", 0).to_dict()
    spec["colour"] = "blue"
    assert main(["train", "--spec", json.dumps(spec), "--out-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: run spec (top level): unknown keys ['colour']") and "\n" not in err
    assert not (tmp_path / "run").exists()  # refused before any work


# --------------------------------------------------------------------------- per-model recipes

RECIPE = {
    "epochs": 4,
    "data": {"augment": "crop_flip", "train_size": 300},
    "train": {"optimizer": "sgd", "lr": 0.1, "batch_size": 32, "schedule": "multistep", "milestones": [2, 3]},
}


def _with_recipe(**extra):
    models = list_models()[:2]
    return _base(models=models, recipes={"official": RECIPE}, model_recipes={models[0]: "official"}, **extra), models


def test_a_recipe_applies_to_its_models_only():
    raw, (with_recipe, plain) = _with_recipe(data_overrides={"synthetic": {"train_size": 200}})
    cfg = validate_config(raw)
    a, b = run_spec(cfg, "synthetic", with_recipe, 0), run_spec(cfg, "synthetic", plain, 0)
    assert (a.recipe, a.epochs, a.train.optimizer, a.train.lr, a.train.milestones) == (
        "official",
        4,
        "sgd",
        0.1,
        (2, 3),
    )
    assert a.data.augment == "crop_flip" and a.data.train_size == 200  # the dataset's override still wins
    assert a.train.weight_decay == cfg["train"]["weight_decay"]  # what the recipe does not name: the profile's
    assert (b.recipe, b.epochs, b.train, b.data.augment) == (
        "default",
        cfg["epochs"],
        run_spec(validate_config(_base(models=raw["models"])), "synthetic", plain, 0).train,
        "none",
    )


@pytest.mark.parametrize(
    "change,match",
    [
        ({"model_recipes": {"alexnet": "offical"}}, "no recipe 'offical'"),
        ({"recipes": {"official": {**RECIPE, "train": {"schedule": "multistep"}}}}, "needs milestones"),
        ({"recipes": {"official": {**RECIPE, "epochs": 3}}}, "milestone 3 is never reached in 3 epochs"),
        ({"recipes": {"official": {**RECIPE, "train": {"milestones": [1]}}}}, "multistep only"),
        ({"recipes": {"official": {**RECIPE, "train": {"time_limit_min": 5}}}}, "time_limit_min"),
        ({"recipes": {"official": {**RECIPE, "train": {"lr": -1}}}}, "lr"),
        ({"recipes": {"default": RECIPE}}, "default"),
    ],
)
def test_bad_recipes_are_refused_in_one_line(change, match):
    raw, _ = _with_recipe()
    with pytest.raises(ConfigError, match=match) as err:
        validate_config({**raw, **change})
    assert "\n" not in str(err.value)


def test_keys_added_later_keep_old_run_hashes():
    """``train.milestones``, ``train.phases`` and ``recipe`` arrived after runs existed: at their
    neutral values the hash is the one the spec had without them (no finished run is renamed, so
    none reruns), and a stored spec without them (an older model.pt) still reads."""
    import hashlib

    spec = run_spec(validate_config(_base()), "synthetic", "alexnet", 0)
    old = spec.to_dict()
    del old["recipe"], old["train"]["milestones"]
    assert "phases" not in old["train"]  # left out at its neutral value (see test_phases.py)
    old_hash = hashlib.sha256(json.dumps({k: v for k, v in old.items() if k != "measure"}, sort_keys=True).encode())
    assert spec.hash == old_hash.hexdigest()[:12]
    assert RunSpec.from_dict(old) == spec
    assert spec.replace(recipe="renamed").hash == spec.hash  # a name, not a setting
    assert spec.replace(train={"schedule": "multistep", "milestones": (3,)}).hash != spec.hash


def test_multistep_schedule_steps_at_the_milestones():
    import torch

    from puppet.core.optim import make_schedule

    spec = run_spec(validate_config(_with_recipe()[0]), "synthetic", list_models()[0], 0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=spec.train.lr)
    sched = make_schedule(opt, spec.train, spec.epochs)
    lrs = []
    for _ in range(spec.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_model_datasets_give_a_model_its_own_datasets():
    cfg = validate_config(
        _base(
            models=["alexnet", "node_conv"],
            datasets=["synthetic"],
            model_datasets={"node_conv": ["fashion_mnist"]},
            extra_grid=[{"datasets": ["cifar100"], "models": ["alexnet", "node_conv"]}],
        )
    )
    runs = run_grid(cfg)
    assert [(d, m) for d, m, _ in runs] == [
        ("synthetic", "alexnet"),
        ("fashion_mnist", "node_conv"),
        ("cifar100", "alexnet"),
        ("cifar100", "node_conv"),
    ]
    with pytest.raises(ConfigError, match="model_datasets"):
        validate_config(_base(model_datasets={"alexnet": ["imagenet"]}))


def test_mor_settings_are_validated_and_not_part_of_a_run():
    with pytest.raises(
        ConfigError, match=r"mor.levels.node_conv: .*'pca' was unexpected.*allowed keys: pod_deim, prune, svd"
    ):
        validate_config(_base(mor={"levels": {"node_conv": {"pca": [4]}}}))
    with pytest.raises(ConfigError, match="mor.levels.node_conv.svd.0"):
        validate_config(_base(mor={"levels": {"node_conv": {"svd": [0]}}}))
    a = validate_config(_base(models=["node_conv"]))
    b = validate_config(_base(models=["node_conv"], mor={"snapshot_images": 3}))
    assert run_spec(a, "synthetic", "node_conv", 0).hash == run_spec(b, "synthetic", "node_conv", 0).hash


def test_a_model_revision_renames_only_its_own_runs(monkeypatch):
    """``register_model(revision=...)``: a model whose code changed what its runs produce gets new run
    folders (its revision enters the hash); revision 0 leaves the hash and the params JSON as before."""
    import dataclasses
    from pathlib import Path

    from puppet.core import registry
    from puppet.core.config import load_config, run_spec

    config = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    before = run_spec(config, "cifar10", "alexnet", 0)
    assert before.model_revision == 0 and "model_revision" not in before.to_dict()
    info = registry.model_info("alexnet")
    monkeypatch.setitem(registry._REGISTRY, "alexnet", dataclasses.replace(info, revision=1))
    after = run_spec(config, "cifar10", "alexnet", 0)
    assert after.model_revision == 1 and after.hash != before.hash
    assert after.to_dict()["model_revision"] == 1
    assert type(after).from_dict(after.to_dict()) == after
    assert type(before).from_dict(before.to_dict()) == before  # a stored spec without the key reads as 0
    assert run_spec(config, "cifar10", "resnet", 0).model_revision == 0  # another model's runs keep their folders
    assert registry.model_info("branchynet").revision == 1 and registry.model_info("branchynet_resnet110").revision == 2


@pytest.mark.parametrize("profile", ["config.yaml", "paper.yaml"])
def test_the_pde_recipes_train_in_fp32_as_the_official_code(profile):
    """The official PDE_GlobalLayer ``train.py`` trains in fp32: both PDE recipes resolve to amp off,
    whatever the profile's default (the paper profile trains everything else under bf16 autocast)."""
    from puppet.core.config import load_config, run_spec

    config = load_config(REPO / "config" / profile)
    for model in ("resnet_global", "resnet32"):
        spec = run_spec(config, "cifar10", model, 0)
        assert spec.recipe.startswith("pde_") and spec.train.amp is False, (model, spec.recipe, spec.train.amp)
    if profile == "paper.yaml":  # the recipe is what turns it off
        assert run_spec(config, "cifar10", "resnet", 0).train.amp is True


@pytest.mark.parametrize(
    "text,match",
    [
        ("epochs: 2\nseeds: [0]\nepochs: 3\n", r"key 'epochs' appears twice \(lines 1 and 3\); keep one"),
        ("train:\n  lr: 0.1\n  lr: 0.2\n", r"key 'lr' appears twice \(lines 2 and 3\)"),
    ],
)
def test_a_config_file_naming_a_key_twice_is_refused(tmp_path, text, match):
    """Plain YAML keeps the last of a duplicated key without a word; a profile that names one twice
    (at any level) is refused in one line naming the file, the key and both lines."""
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_folder_as_config_file_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; name a YAML file"):
        load_config(tmp_path)


def test_epochs_beyond_the_guard_are_refused_before_work():
    """``epochs=1000000000`` once planned a 350,000-hour run: the profile's and each recipe's epochs are
    bounded by ``max_epochs`` (1000 unless raised), refused in one line naming the bound and the fix."""
    with pytest.raises(ConfigError, match=r"config epochs: 1000000000 epochs is above max_epochs \(1000\)"):
        validate_config(_base(epochs=1_000_000_000))
    recipe = {"recipes": {"long": {"epochs": 5000}}, "model_recipes": {}}
    with pytest.raises(ConfigError, match=r"recipes.long.epochs: 5000 epochs .* set max_epochs=5000"):
        validate_config(_base(**recipe))
    assert validate_config(_base(max_epochs=5000, **recipe))["recipes"]["long"]["epochs"] == 5000


def test_a_width_beyond_the_guard_is_refused_naming_the_bound():
    bound = r"config max_channels: 5120 is above its bound 2048, a guard against typos; raise the bound in workflow/"
    with pytest.raises(ConfigError, match=bound):
        validate_config(_base(max_channels=5120))
    assert validate_config(_base(max_channels=2048))["max_channels"] == 2048


def test_a_flow_mapping_without_the_space_after_its_colon_is_named():
    """``data_sources={cifar10:/x.npz}`` is one key to YAML: say that, not "not a dataset name"."""
    with pytest.raises(
        ConfigError,
        match=r"'cifar10:/x.npz' reads as one name: YAML needs a space after the colon, "
        r"e.g. data_sources=\{cifar10: /x.npz\}",
    ):
        validate_config(_base(data_sources={"cifar10:/x.npz": None}))
