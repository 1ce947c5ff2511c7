"""Workflow configuration: load, fill defaults from the JSON schema, validate.

The schema (``workflow/schemas/config.schema.json``) is the single source of the
config's structure and defaults; model and dataset names are checked against
the registry, so a typo fails at parse time, not after hours of training.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml

from puppet.core.datasets import DATASETS, DataError, check_npz, default_source_problem
from puppet.core.registry import did_you_mean, list_models, model_info
from puppet.core.specs import RUN_CONTROL_KEYS, DataSpec, MeasureSpec, RunSpec, TrainSpec, as_phases

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.json"


class ConfigError(ValueError):
    """A malformed configuration; the message is one line naming the key and the fix."""


def _without_defaults(block: dict, drop: tuple[str, ...] = ()) -> dict:
    """An object schema's copy whose properties have no defaults (an overlay names only what it changes)."""
    block = copy.deepcopy(block)
    block.pop("default", None)
    block["properties"] = {k: v for k, v in block["properties"].items() if k not in drop}
    for sub in block["properties"].values():
        sub.pop("default", None)
    return block


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    schema = json.loads(Path(path).read_text())
    schema["$defs"]["model_name"]["enum"] = list_models()
    schema["$defs"]["dataset_name"]["enum"] = list(DATASETS)
    props = schema["properties"]
    recipe = props["recipes"]["additionalProperties"]["properties"]
    recipe["data"] = _without_defaults(props["data"])
    recipe["train"] = _without_defaults(props["train"], drop=RUN_CONTROL_KEYS)
    return schema


def _fill_defaults(schema: dict, value: Any) -> Any:
    if not isinstance(value, dict) or schema.get("type") != "object":
        return value
    for key, sub in schema.get("properties", {}).items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            value[key] = _fill_defaults(sub, value[key])
    return value


_SCALAR_TYPES = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None)}


def _float_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity") else None


def _coerce(schema: dict, value: Any, root: dict) -> Any:
    """Undo Snakemake's ``--config`` parsing, which leaves nested scalars as strings
    (``seeds='[0,1]'`` arrives as ``['0', '1']``): parse a string as YAML where the schema
    wants a number, boolean or null, and in free-form objects (``model_kwargs``)."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(value, str):
        free_form = not types and "enum" not in schema
        if (free_form or (types and "string" not in types)) and value.strip():
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            if free_form and not isinstance(parsed, (int, float, bool, type(None))):
                return value
            if isinstance(parsed, str) and ("number" in types or free_form):
                parsed = _float_or_none(parsed)  # YAML 1.1 reads 1e-4 (no dot) as a string
                if parsed is None:
                    return value
            if free_form or any(isinstance(parsed, _SCALAR_TYPES[t]) for t in types if t in _SCALAR_TYPES):
                return parsed
        return value
    if isinstance(value, list):
        return [_coerce(schema.get("items", {}), v, root) for v in value]
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", {})
        return {k: _coerce(props.get(k, extra if isinstance(extra, dict) else {}), v, root) for k, v in value.items()}
    return value


def _describe(error) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "enum":
        choices = ", ".join(map(str, error.validator_value))
        hint = did_you_mean(error.instance, list(error.validator_value))
        return f"config {where}: {error.instance!r} is not valid{hint}; choose one of: {choices}"
    if error.validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in known] if isinstance(error.instance, dict) else []
        hint = did_you_mean(extra[0], known) if extra else ""
        return f"config {where}: {error.message}{hint}; allowed keys: {', '.join(known)}"
    if error.validator == "maximum" and "guard" in error.schema.get("description", ""):  # say how to go past it
        return (
            f"config {where}: {error.instance!r} is above its bound {error.validator_value}, a guard against typos; "
            f"raise the bound in {SCHEMA_PATH.relative_to(SCHEMA_PATH.parents[2])} to go further"
        )
    return f"config {where}: {error.message}"


def _refuse_glued(value: object, where: str = "") -> None:
    """``data_sources={cifar10:/x.npz}`` is one key ``cifar10:/x.npz`` to YAML, which needs a space
    after a flow mapping's colon: say so, rather than "not a dataset name"."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and re.search(r"^[A-Za-z_]\w*:\S", key):
                name, rest = key.split(":", 1)
                raise ConfigError(
                    f"config {where or '(top level)'}: {key!r} reads as one name: YAML needs a space after the "
                    f"colon, e.g. {where or 'KEY'}={{{name}: {rest}}}"
                )
            _refuse_glued(item, f"{where}.{key}" if where else str(key))


def validate_config(config: dict, schema_path: Path = SCHEMA_PATH) -> dict:
    """Return a validated copy of ``config`` with every default filled in."""
    import jsonschema

    schema = load_schema(schema_path)
    _refuse_glued(config)
    config = _coerce(schema, copy.deepcopy(dict(config)), schema)
    config = _fill_defaults(schema, config)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_describe(best))
    _check_recipes(config)
    _check_epochs(config)
    return config


def _check_epochs(config: dict) -> None:
    """The profile's and every recipe's epochs within ``max_epochs``: a typo is refused before work."""
    bound = config["max_epochs"]
    for where, epochs in [("epochs", config["epochs"])] + [
        (f"recipes.{name}.epochs", r["epochs"]) for name, r in config["recipes"].items() if "epochs" in r
    ]:
        if epochs > bound:
            raise ConfigError(
                f"config {where}: {epochs} epochs is above max_epochs ({bound}), a guard against typos; "
                f"set max_epochs={epochs} (or more) to train that long"
            )


def _check_recipes(config: dict) -> None:
    """What the schema cannot say: recipe names resolve, every model's effective schedule
    (the profile's ``train`` overlaid by its recipe) has milestones exactly when it needs them,
    and its ``phases`` (if any) have distinct names and ends that increase to 1.0."""
    recipes = config["recipes"]
    for model, name in config["model_recipes"].items():
        if name not in recipes:
            known = ", ".join(recipes) or "none defined"
            raise ConfigError(f"config model_recipes.{model}: no recipe {name!r} in 'recipes' (recipes: {known})")
    for where, train, epochs in [("train", config["train"], config["epochs"])] + [
        (f"recipes.{name}.train", {**config["train"], **r.get("train", {})}, r.get("epochs", config["epochs"]))
        for name, r in recipes.items()
    ]:
        milestones = train.get("milestones")
        if train["schedule"] == "multistep" and not milestones:
            raise ConfigError(
                f"config {where}: schedule multistep needs milestones (epochs of the x0.1 steps), e.g. [150, 225]"
            )
        if train["schedule"] != "multistep" and milestones:
            raise ConfigError(
                f"config {where}: milestones are used by schedule multistep only (schedule is {train['schedule']})"
            )
        if milestones and max(milestones) >= epochs:
            raise ConfigError(
                f"config {where}: milestone {max(milestones)} is never reached in {epochs} epochs; "
                f"use milestones below the epochs"
            )
        _check_phases(f"{where}.phases", train.get("phases"))


def _check_phases(where: str, phases: list[dict] | None) -> None:
    """``train.phases`` beyond the schema (which checks each phase's keys and ranges)."""
    seen: set[str] = set()
    last_end = 0.0
    for i, phase in enumerate(phases or []):
        name, end, is_last = phase["name"], phase.get("end"), i == len(phases) - 1
        if name in seen:
            raise ConfigError(f"config {where}: phase name {name!r} is used twice; give each phase its own name")
        seen.add(name)
        if "lr" in phase and "lr_mult" in phase:
            raise ConfigError(f"config {where}: phase {name!r} gives both lr and lr_mult; keep one")
        if end is None and not is_last:
            raise ConfigError(
                f"config {where}: phase {name!r} has no end; every phase but the last needs one "
                f"(the fraction of the run's steps at which it ends, e.g. end: 0.5)"
            )
        end = 1.0 if end is None else end
        if end <= last_end:
            raise ConfigError(
                f"config {where}: phase {name!r} ends at {end:g}, not after the phase before it ({last_end:g}); "
                f"ends must increase"
            )
        if is_last and end != 1.0:
            raise ConfigError(
                f"config {where}: the last phase {name!r} ends at {end:g}; the last phase ends at 1.0 (omit its end)"
            )
        last_end = end


DEFAULT_PROFILE = SCHEMA_PATH.parents[2] / "config" / "config.yaml"


def parse_sets(items: list[str]) -> dict:
    """``["train.lr=0.01", "epochs=2"]`` -> ``{"train": {"lr": 0.01}, "epochs": 2}``: dotted keys name
    nested blocks, values are YAML (as Snakemake's ``--config``)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{item!r}: write KEY=VALUE, e.g. train.lr=0.01 or epochs=2")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{item!r}: {part} is set to a value and used as a block")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError:
            node[leaf] = value
    return out


def deep_merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied key by key, nested mappings merged, not replaced."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (plain YAML keeps the last one
    silently, so an edited profile could lose a setting without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"key {key!r} appears twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    """One config file as a mapping: refused in one line, naming the file, if it cannot be read, is
    not YAML, is not a mapping, or names a key twice at any level."""
    try:
        data = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader) or {}
    except IsADirectoryError:
        raise ConfigError(f"config '{path}' is a folder; name a YAML file, e.g. config/config.yaml") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config '{path}': {exc}".replace("\n", " ")) from None
    except ConfigError as exc:
        raise ConfigError(f"config '{path}': {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config '{path}' must be a mapping of keys to values")
    return data


def load_config(*paths: str | Path, overrides: dict | None = None, sets: list[str] | None = None) -> dict:
    """Merge YAML files left to right (top-level keys replace), then ``overrides`` (top-level keys
    replace), then ``sets`` (``KEY.SUB=VALUE``, merged into nested blocks), then validate."""
    merged: dict = {}
    for path in paths:
        merged.update(read_yaml(path))
    merged.update(overrides or {})
    return validate_config(deep_merge(merged, parse_sets(sets or [])))


def run_grid(config: dict) -> list[tuple[str, str, int]]:
    """Every (dataset, model, seed) the config asks for: the datasets x models product
    plus each ``extra_grid`` block, without duplicates, in a stable order.

    ``models`` is the list of models the grid runs: an ``extra_grid`` block adds datasets for
    those of its models that are also in ``models``, so ``--config models=[resnet]`` runs
    resnet alone (on every dataset the profile gives it), never another block's models.
    ``model_datasets`` gives a model its own datasets instead of ``datasets``."""
    pairs: list[tuple[str, str]] = []
    per_model = config.get("model_datasets", {})
    main_datasets = list(dict.fromkeys([*config["datasets"], *(d for ds in per_model.values() for d in ds)]))
    main = [
        {"datasets": [d], "models": [m for m in config["models"] if d in per_model.get(m, config["datasets"])]}
        for d in main_datasets
    ]
    for block in main + list(config.get("extra_grid", [])):
        for dataset in block["datasets"]:
            for model in block["models"]:
                if model in config["models"] and (dataset, model) not in pairs:
                    pairs.append((dataset, model))
    return [(d, m, s) for d, m in pairs for s in config["seeds"]]


def run_spec(config: dict, dataset: str, model: str, seed: int) -> RunSpec:
    """Everything that determines one run's results, and nothing else (so editing
    one model's kwargs reruns only that model, and a new time limit reruns nothing).

    A model with a recipe (``model_recipes``) takes the recipe's epochs, data and train keys over
    the profile's; the dataset's ``data_overrides`` still win (they describe the data at hand)."""
    recipe_name = config["model_recipes"].get(model, "default")
    recipe = config["recipes"].get(recipe_name, {})
    train = {**config["train"], **recipe.get("train", {})}
    milestones = train.get("milestones")
    return RunSpec(
        profile=config["profile"],
        dataset=dataset,
        model=model,
        seed=int(seed),
        epochs=recipe.get("epochs", config["epochs"]),
        max_channels=config["max_channels"],
        device=config["device"],
        data_root=config["data_root"],
        download=config["download"],
        data_source=config["data_sources"].get(dataset),
        data=DataSpec(**{**config["data"], **recipe.get("data", {}), **config["data_overrides"].get(dataset, {})}),
        train=TrainSpec(
            **{k: v for k, v in train.items() if k not in RUN_CONTROL_KEYS and k not in ("milestones", "phases")},
            milestones=None if milestones is None else tuple(int(m) for m in milestones),
            phases=as_phases(train.get("phases")),
        ),
        measure=MeasureSpec(**config["measure"]),
        model_kwargs=dict(config["model_kwargs"].get(model, {})),
        recipe=recipe_name,
        model_revision=model_info(model).revision,
        cost_only=config["cost_only"],
    )


def preflight(config: dict, datasets: set[str] | None = None) -> list[str]:
    """Check the data of every dataset the grid uses (or of ``datasets``: the workflow passes
    those with runs left to train, so a finished grid tabulates without its data) before any
    job starts: each configured ``data_sources`` path must be a readable .npz in the expected
    layout (``DataError``, one line naming the file and the fix, on the first that is not).
    Returns warnings: datasets whose default source is absent and cannot be downloaded."""
    warnings = []
    for dataset in dict.fromkeys(d for d, _, _ in run_grid(config)):
        if datasets is not None and dataset not in datasets:
            continue
        image_size = {**config["data"], **config.get("data_overrides", {}).get(dataset, {})}.get("image_size")
        source = config["data_sources"].get(dataset)
        if source:
            check_npz(source, dataset, image_size=image_size)
            continue
        problem, fatal = default_source_problem(dataset, config["data_root"], config["download"])
        if fatal:
            raise DataError(problem)
        if problem:
            warnings.append(problem)
    return warnings


def deploy_options(config: dict, model: str) -> dict[str, Any]:
    """The measure job's deployment options for ``model`` (``DeployContext.options``): the MOR
    study's levels, snapshot count, fine-tuning budget and timing device for a model the config's
    ``mor.levels`` names (its reduced
    deployments, ``puppet.compress.deploy``), none for any other model. Not part of a run's
    identity: changing them measures the run again, never retrains it."""
    levels = (config.get("mor") or {}).get("levels", {}).get(model)
    if not levels:
        return {}
    mor = config["mor"]
    keys = ("snapshot_images", "finetune_steps", "finetune_batch", "finetune_lr")
    pinned = {} if mor["device"] == "run" else {"device": mor["device"]}  # "run": the run's own device
    return {"levels": levels, **{k: mor[k] for k in keys}, **pinned}
