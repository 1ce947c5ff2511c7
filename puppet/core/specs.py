"""Typed run specs: everything that determines one (dataset, model, seed) run.

A ``RunSpec`` is built from the validated workflow config by ``puppet.core.config.run_spec``,
travels to the train and measure jobs as JSON (``to_dict`` / ``from_dict``) and names the
run's folder through its ``hash``. Field names are the config's keys; the schema
(``workflow/schemas/config.schema.json``) holds their defaults and allowed values, and a
test checks that the two agree key for key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

# ``train`` keys that control how long one sitting of a job trains, not what the run
# computes: kept out of the run spec (so out of Snakemake's params and the config_hash),
# so a run paused under one limit resumes from its checkpoint under another.
RUN_CONTROL_KEYS = ("time_limit_min",)

# Keys added after runs were made, with the value every earlier run had: a spec with that value
# hashes as if the key did not exist (so adding a key never renames, hence reruns, a finished
# run), and a stored spec without the key (an older model.pt) reads it as that value.
# (block, key) -> neutral value; block None is the top level.
NEUTRAL_KEYS: dict[tuple[str | None, str], Any] = {
    ("train", "milestones"): None,
    ("train", "phases"): None,
    (None, "model_revision"): 0,
    (None, "cost_only"): False,
    ("train", "val_curve"): False,
}
# Neutral keys that ``to_dict`` also leaves out at their neutral value: keys added after finished runs
# had their spec's JSON recorded as the train rule's params, so Snakemake's params rerun trigger
# sees the same JSON as before and reruns nothing. (milestones and recipe predate this rule: runs
# made since carry them in their params, so they stay in.)
OMITTED_AT_NEUTRAL: tuple[tuple[str | None, str], ...] = (
    ("train", "phases"),
    (None, "model_revision"),
    (None, "cost_only"),
    ("train", "val_curve"),
)
# Top-level keys that name, not determine, a run: out of the hash (the recipe's content is in it).
LABEL_KEYS: dict[str, Any] = {"recipe": "default"}


class SpecError(ValueError):
    """A run spec with missing or unknown keys; the message is one line."""


def _from_mapping(cls: type, values: Mapping[str, Any], where: str):
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    missing = [n for n in names if n not in values]
    if unknown or missing:
        problems = [f"unknown keys {unknown} (allowed: {', '.join(names)})"] if unknown else []
        problems += [f"missing keys {missing}"] if missing else []
        raise SpecError(f"run spec {where}: {'; '.join(problems)}; build specs with puppet.core.config.run_spec")
    return cls(**{n: values[n] for n in names})


@dataclass(frozen=True)
class DataSpec:
    """The config's ``data`` block, with the dataset's ``data_overrides`` applied."""

    train_size: int | None  # None: the whole training split
    val_size: int  # held out of training, for calibration
    test_size: int | None
    split_seed: int
    augment: str  # "none" | "crop_flip"
    image_size: int | None  # None: the dataset's own


@dataclass(frozen=True)
class Phase:
    """One named stage of training (``train.phases``), in canonical form: ``end`` is explicit
    (the last phase's is 1.0) and exactly one of ``lr`` / ``lr_mult`` is set."""

    name: str
    end: float  # fraction of the run's optimizer steps (epochs x batches per epoch) where it ends
    lr: float | None  # a constant learning rate during the phase
    lr_mult: float | None  # the schedule's learning rate times this during the phase

    @property
    def rule(self) -> str:
        """The phase's learning-rate rule, e.g. ``lr=0.0001`` or ``x1``."""
        return f"lr={self.lr:g}" if self.lr is not None else f"x{self.lr_mult:g}"


def as_phases(value: Any) -> tuple[Phase, ...] | None:
    """``train.phases`` in canonical form from a config list, a stored spec's list of dicts or
    ``Phase`` objects; ``None`` (or an empty list) is no phases. The config checks the phases'
    order and ends (``puppet.core.config``); this only fills defaults and refuses unknown keys."""
    if not value:
        return None
    names = [f.name for f in dataclasses.fields(Phase)]
    phases = []
    for i, item in enumerate(value):
        item = dataclasses.asdict(item) if isinstance(item, Phase) else item
        if not isinstance(item, Mapping) or "name" not in item or set(item) - set(names):
            raise SpecError(
                f"run spec train.phases[{i}]: {item!r} is not a phase (keys: name, end, lr, lr_mult); "
                f"build specs with puppet.core.config.run_spec"
            )
        lr, mult = item.get("lr"), item.get("lr_mult")
        if lr is not None and mult is not None:
            raise SpecError(f"run spec train.phases[{i}]: phase {item['name']!r} gives both lr and lr_mult; keep one")
        end = item.get("end")
        phases.append(
            Phase(
                name=str(item["name"]),
                end=1.0 if end is None else float(end),
                lr=None if lr is None else float(lr),
                lr_mult=None if lr is not None else 1.0 if mult is None else float(mult),
            )
        )
    return tuple(phases)


@dataclass(frozen=True)
class TrainSpec:
    """The config's ``train`` block without run-control keys (``RUN_CONTROL_KEYS``)."""

    optimizer: str  # "sgd" | "adam" | "adamw"
    lr: float
    weight_decay: float
    momentum: float
    schedule: str  # "cosine" | "step" | "multistep" | "constant"
    step_every: int  # epochs between x0.1 steps of the "step" schedule
    batch_size: int
    eval_batch_size: int
    amp: bool  # mixed precision on CUDA (bf16 where supported, else fp16 with a scaler)
    max_grad_norm: float | None
    milestones: tuple[int, ...] | None = None  # epochs of the x0.1 steps of the "multistep" schedule
    phases: tuple[Phase, ...] | None = None  # named stages with their own learning-rate rule; None: one stage
    # top-1 and loss on the validation split after every epoch, in the history (learning curves); it
    # changes no weight, so the hash keeps it only when on (NEUTRAL_KEYS)
    val_curve: bool = False


@dataclass(frozen=True)
class MeasureSpec:
    """The config's ``measure`` block: how the measure job times and counts."""

    threads: int
    warmup: int
    latency_images: int  # batch-1 forwards per timing round
    rounds: int
    noise_threshold: float  # flag an estimate whose 95 % interval is wider than this fraction
    throughput_batch: int
    throughput_iters: int  # batched forwards per throughput round
    macs_images: int


@dataclass(frozen=True)
class RunSpec:
    """One run: identity (profile, dataset, model, seed) and every setting that shapes its result."""

    profile: str
    dataset: str
    model: str
    seed: int
    epochs: int
    max_channels: int
    device: str  # "auto" | "cpu" | "cuda"
    data_root: str
    download: bool
    data_source: str | None  # an .npz path, or None for the dataset's default source
    data: DataSpec
    train: TrainSpec
    measure: MeasureSpec
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    recipe: str = "default"  # the config's ``recipes`` entry this model trains with; "default": none
    # The registry's revision of the model's code (``register_model(revision=...)``): bumped when a
    # change to the model alters what a run of the same spec produces, so such a run gets a new folder.
    model_revision: int = 0
    # No training: the model as initialised (with what it fits on training images without training,
    # Puppet-CNN's complexity range), measured for size, MACs and speed only (``puppet.core.train``).
    cost_only: bool = False

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunSpec:
        """The inverse of ``to_dict``; unknown or missing keys raise ``SpecError``. A hand-written
        spec may carry run-control keys in ``train`` (they are dropped)."""
        values = {**LABEL_KEYS, **values}
        for (where, key), neutral in NEUTRAL_KEYS.items():
            if where is None:
                values.setdefault(key, neutral)
                continue
            target = values.get(where)
            if isinstance(target, Mapping) and key not in target:
                values[where] = {**target, key: neutral}
        nested = {"data": DataSpec, "train": TrainSpec, "measure": MeasureSpec}
        for key, sub in nested.items():
            if isinstance(values.get(key), Mapping):
                block = {k: v for k, v in values[key].items() if not (key == "train" and k in RUN_CONTROL_KEYS)}
                values[key] = _from_mapping(sub, block, key)
        spec = _from_mapping(cls, values, "(top level)")
        milestones = spec.train.milestones
        return dataclasses.replace(
            spec,
            seed=int(spec.seed),
            model_kwargs=dict(spec.model_kwargs),
            train=dataclasses.replace(
                spec.train,
                milestones=None if milestones is None else tuple(milestones),
                phases=as_phases(spec.train.phases),
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        for where, key in OMITTED_AT_NEUTRAL:
            block = values if where is None else values[where]
            if block[key] == NEUTRAL_KEYS[(where, key)]:
                del block[key]
        return values

    def replace(self, **changes: Any) -> RunSpec:
        """A copy with top-level fields changed; ``data``/``train``/``measure`` take a dict of
        the keys to change (``spec.replace(train={"lr": 0.1})``)."""
        for key in ("data", "train", "measure"):
            if isinstance(changes.get(key), Mapping):
                block = dict(changes[key])
                if key == "train" and "phases" in block:
                    block["phases"] = as_phases(block["phases"])
                changes[key] = dataclasses.replace(getattr(self, key), **block)
        return dataclasses.replace(self, **changes)

    @property
    def hash(self) -> str:
        """Short, stable hash of what determines the run's result (the ``config_hash`` column
        and the run folder's name). Measurement settings are not part of a run's identity."""
        keep = {k: v for k, v in self.to_dict().items() if k != "measure" and k not in LABEL_KEYS}
        for (where, key), neutral in NEUTRAL_KEYS.items():
            block = keep if where is None else keep[where]
            if key in block and block[key] == neutral:
                del block[key]
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.model}/seed{self.seed}"
