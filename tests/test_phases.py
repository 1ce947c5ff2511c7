"""Training phases (``train.phases``): named stages at fractions of the run's optimizer steps, each
with its own learning-rate rule, and a model that trains in phases told which one it is in."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from puppet.core import assemble, train
from puppet.core.config import ConfigError, run_spec, validate_config
from puppet.core.optim import describe_phases
from puppet.core.protocols import TrainsInPhases
from puppet.core.registry import create_model
from puppet.core.specs import Phase, RunSpec, SpecError

# 192 training images in batches of 32: 6 optimizer steps per epoch, 18 in 3 epochs.
STEPS_PER_EPOCH, EPOCHS = 6, 3
TOTAL = STEPS_PER_EPOCH * EPOCHS
SWITCH = [{"name": "sp", "end": 0.5}, {"name": "hrl", "lr_mult": 0.1}]  # hrl from step 9, in epoch 2


def make_spec(model="alexnet", phases=None, **train):
    cfg = validate_config(
        {
            "profile": "test",
            "models": [model],
            "datasets": ["synthetic"],
            "epochs": EPOCHS,
            "max_channels": 16,
            "device": "cpu",
            "data": {"train_size": 192, "val_size": 32, "test_size": 64},
            "train": {"batch_size": 32, "lr": 0.003, "schedule": "cosine", "phases": phases, **train},
        }
    )
    return run_spec(cfg, "synthetic", model, 0)


class PhasedNet(nn.Module):
    """A tiny model that trains in phases: "hrl" adds a logit penalty to its loss, so a run that
    trained a step in the wrong phase ends with other weights. Records what the trainer did."""

    def __init__(self, num_classes: int, in_channels: int, log: Log, phase_names=("sp", "hrl")):
        super().__init__()
        self.phase_names = tuple(phase_names)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(in_channels * 16, num_classes)
        self.phase = "sp"
        self.log = log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))

    def set_phase(self, name: str) -> None:
        self.log.set_phase.append((len(self.log.steps), name))
        self.phase = name

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.log.steps.append(self.phase)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        if self.phase == "hrl":
            loss = loss + 0.5 * logits.pow(2).mean()
        return loss, logits


class Log:
    """One sitting's record: the phase of each training step (the model's view), the model's
    set_phase calls as (steps taken in this sitting, name), and the lr the optimizer stepped with."""

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.steps: list[str] = []
        self.set_phase: list[tuple[int, str]] = []
        self.lrs: list[float] = []


@pytest.fixture
def log(monkeypatch) -> Log:
    """Every run of the test trains a PhasedNet (phase_names from ``log.phase_names``) and
    records the lr each optimizer step really uses (a step pre-hook: after the trainer set it)."""
    log = Log()
    log.phase_names = ("sp", "hrl")
    real_make_optimizer = train.make_optimizer

    def build_model(spec, splits):
        return PhasedNet(splits.num_classes, splits.in_channels, log, log.phase_names)

    def make_optimizer(model, train_spec):
        opt = real_make_optimizer(model, train_spec)
        opt.register_step_pre_hook(lambda o, args, kwargs: log.lrs.append(o.param_groups[0]["lr"]))
        return opt

    monkeypatch.setattr(assemble, "build_model", build_model)
    monkeypatch.setattr(train, "make_optimizer", make_optimizer)
    return log


def _checkpoint(path):
    return torch.load(path / "checkpoint.pt", map_location="cpu", weights_only=False)


def _plain_run(log, tmp_path) -> tuple[dict, list[float]]:
    """The same run without phases (a PhasedNet that needs none right now): its lr per step."""
    log.phase_names = ()
    record = train.main(make_spec(), tmp_path / "plain")
    lrs = list(log.lrs)
    log.phase_names = ("sp", "hrl")
    log.clear()
    return record, lrs


def test_the_phase_switches_at_its_step_with_its_lr_and_the_schedule_is_untouched(tmp_path, log):
    plain, plain_lrs = _plain_run(log, tmp_path)
    assert len(set(plain_lrs)) == EPOCHS, "the cosine schedule changes the lr every epoch"
    record = train.main(make_spec(phases=SWITCH), tmp_path / "phased")

    assert log.set_phase == [(0, "sp"), (9, "hrl")]  # told before step 0 and before step 9, nothing else
    assert log.steps == ["sp"] * 9 + ["hrl"] * 9
    assert log.lrs[:9] == plain_lrs[:9]  # x1: the schedule's lr
    assert log.lrs[9:] == [lr * 0.1 for lr in plain_lrs[9:]]
    # the phase's lr lives for one opt.step(): the schedule, the optimizer's lr and its checkpoint
    # are those of the run without phases
    phased_ckpt, plain_ckpt = _checkpoint(tmp_path / "phased"), _checkpoint(tmp_path / "plain")
    assert phased_ckpt["schedule"] == plain_ckpt["schedule"]
    assert phased_ckpt["optimizer"]["param_groups"] == plain_ckpt["optimizer"]["param_groups"]

    assert record["phases"] == "sp[0,9) x1; hrl[9,18) x0.1" and plain["phases"] == ""
    assert record["phase_steps"] == [
        {"name": "sp", "first_step": 0, "last_step": 8, "lr": None, "lr_mult": 1.0},
        {"name": "hrl", "first_step": 9, "last_step": 17, "lr": None, "lr_mult": 0.1},
    ]
    assert plain["phase_steps"] == []
    assert [h["phases"] for h in record["history"]] == [["sp"], ["sp", "hrl"], ["hrl"]]
    assert all("phases" not in h for h in plain["history"])  # a run without phases records as before


def test_a_constant_lr_phase(tmp_path, log):
    phases = [{"name": "sp", "end": 0.5}, {"name": "hrl", "lr": 1e-4}]
    record = train.main(make_spec(phases=phases), tmp_path)
    assert log.lrs[9:] == [1e-4] * 9 and log.lrs[0] == 0.003
    assert record["phases"] == "sp[0,9) x1; hrl[9,18) lr=0.0001"
    assert record["phase_steps"][1] == {"name": "hrl", "first_step": 9, "last_step": 17, "lr": 1e-4, "lr_mult": None}


@pytest.mark.parametrize("stop_after_epoch,resumes_in", [(1, "sp"), (2, "hrl")])
def test_resume_across_the_switch_is_bit_identical(tmp_path, log, stop_after_epoch, resumes_in):
    """Interrupted before the switch (epoch 1) or after it (epoch 2, the switch being at step 9):
    the resumed sitting is told its phase before its first step and ends with the same weights."""
    spec = make_spec(phases=SWITCH)
    straight = train.main(spec, tmp_path / "straight")
    log.clear()
    assert train.main(spec, tmp_path / "resumed", stop_after_epoch=stop_after_epoch)["status"] == "interrupted"
    log.clear()
    resumed = train.main(spec, tmp_path / "resumed")
    assert log.set_phase[0] == (0, resumes_in)
    assert log.steps == (["sp"] * 9 + ["hrl"] * 9)[stop_after_epoch * STEPS_PER_EPOCH :]
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    assert resumed["test_loss"] == straight["test_loss"] and resumed["phase_steps"] == straight["phase_steps"]


def test_a_run_resumed_after_its_last_epoch_evaluates_in_the_last_phase(tmp_path, log):
    spec = make_spec(phases=SWITCH)
    first = train.main(spec, tmp_path)
    log.clear()
    again = train.main(spec, tmp_path)  # checkpoint at the last epoch: no step left, straight to the evaluation
    assert log.steps == [] and log.set_phase == [(0, "hrl")]
    assert again["test_loss"] == first["test_loss"] and again["history"] == first["history"]


@pytest.mark.parametrize(
    "phase_names,phases,message",
    [
        (
            ("sp", "hrl"),
            [{"name": "sp", "end": 0.5}, {"name": "rl"}],
            "alexnet has no phase 'rl' (its phases: sp, hrl); use those names in train.phases of its recipe",
        ),
        ((), SWITCH, "alexnet trains in no phases as built (model_kwargs {}); remove train.phases from its recipe"),
        (
            ("sp", "hrl"),
            None,
            "alexnet trains in phases (sp, hrl): give train.phases in its recipe, "
            "e.g. train: {phases: [{name: sp, end: 0.5}, {name: hrl}]}",
        ),
        (
            ("sp", "hrl"),
            [{"name": "sp", "end": 0.02}, {"name": "hrl"}],
            "train.phases: phase 'sp' gets no optimizer step of the run's 18 (3 epochs x 6 batches); "
            "move its end or train longer",
        ),
    ],
)
def test_a_model_and_phases_that_do_not_fit_are_refused_before_training(tmp_path, log, phase_names, phases, message):
    log.phase_names = phase_names
    with pytest.raises(ValueError) as err:
        train.main(make_spec(phases=phases), tmp_path)
    assert str(err.value) == message
    assert log.steps == [] and not (tmp_path / "checkpoint.pt").exists()


def test_the_suggested_phases_are_a_valid_config():
    suggested = "train: {phases: [{name: sp, end: 0.5}, {name: hrl}]}"
    phases = yaml.safe_load(suggested)["train"]["phases"]
    assert make_spec(phases=phases).train.phases == (Phase("sp", 0.5, None, 1.0), Phase("hrl", 1.0, None, 1.0))


def test_a_model_that_does_not_train_in_phases_refuses_them(tmp_path):
    assert not isinstance(create_model("alexnet", max_channels=16), TrainsInPhases)
    assert isinstance(PhasedNet(10, 3, Log()), TrainsInPhases)
    with pytest.raises(ValueError) as err:
        train.main(make_spec(phases=SWITCH), tmp_path)
    assert str(err.value) == "alexnet does not train in phases; remove train.phases from its recipe"
    assert not (tmp_path / "checkpoint.pt").exists()


# --------------------------------------------------------------------------- config and spec


@pytest.mark.parametrize(
    "phases,match",
    [
        (
            [{"name": "sp", "end": 0.5}, {"name": "hrl", "lr": 1e-4, "lr_mult": 0.1}],
            r"train\.phases: phase 'hrl' gives both lr and lr_mult; keep one$",
        ),
        ([{"name": "sp", "end": 0.5}, {"name": "sp"}], r"train\.phases: phase name 'sp' is used twice"),
        (
            [{"name": "sp"}, {"name": "hrl"}],
            r"train\.phases: phase 'sp' has no end; every phase but the last needs one",
        ),
        (
            [{"name": "sp", "end": 0.5}, {"name": "rl", "end": 0.5}, {"name": "hrl"}],
            r"train\.phases: phase 'rl' ends at 0\.5, not after the phase before it \(0\.5\); ends must increase",
        ),
        (
            [{"name": "sp", "end": 0.5}, {"name": "hrl", "end": 0.9}],
            r"train\.phases: the last phase 'hrl' ends at 0\.9; the last phase ends at 1\.0",
        ),
        ([{"name": "sp", "end": 0}, {"name": "hrl"}], r"train\.phases\.0\.end"),
        ([{"name": "sp", "end": 1.5}], r"train\.phases\.0\.end"),
        ([{"name": "sp", "end": 0.5}, {"name": "hrl", "lr": 0}], r"train\.phases\.1\.lr"),
        ([{"name": "sp", "end": 0.5}, {"name": "hrl", "lr_mult": -1}], r"train\.phases\.1\.lr_mult"),
        ([{"end": 1.0}], r"train\.phases\.0: 'name' is a required property"),
        ([{"name": "s p"}], r"train\.phases\.0\.name"),
        ([{"name": "sp", "lr_scale": 2}], r"train\.phases\.0: .*'lr_scale'.*allowed keys: name, end, lr, lr_mult"),
        ([], r"train\.phases"),
    ],
)
def test_bad_phases_are_refused_in_one_line_at_load(phases, match):
    with pytest.raises(ConfigError, match=match) as err:
        make_spec(phases=phases)
    assert "\n" not in str(err.value)


def test_phases_in_a_recipe_apply_to_its_model_only():
    raw = {
        "profile": "t",
        "models": ["alexnet", "resnet"],
        "datasets": ["synthetic"],
        "recipes": {"staged": {"train": {"phases": SWITCH}}},
        "model_recipes": {"resnet": "staged"},
    }
    cfg = validate_config(raw)
    assert run_spec(cfg, "synthetic", "alexnet", 0).train.phases is None
    assert run_spec(cfg, "synthetic", "resnet", 0).train.phases == (
        Phase("sp", 0.5, None, 1.0),
        Phase("hrl", 1.0, None, 0.1),
    )
    bad = {**raw, "recipes": {"staged": {"train": {"phases": [{"name": "hrl", "lr": 1e-4, "lr_mult": 1}]}}}}
    with pytest.raises(ConfigError, match=r"^config recipes\.staged\.train\.phases: phase 'hrl' gives both"):
        validate_config(bad)
    # a recipe may drop the profile's phases
    profile_wide = {**raw, "train": {"phases": SWITCH}, "recipes": {"staged": {"train": {"phases": None}}}}
    cfg = validate_config(profile_wide)
    assert run_spec(cfg, "synthetic", "resnet", 0).train.phases is None
    assert run_spec(cfg, "synthetic", "alexnet", 0).train.phases is not None


def test_snakemake_cli_phases_are_coerced():
    from snakemake.cli import parse_config

    overrides = parse_config(["train={phases: [{name: sp, end: 0.5}, {name: hrl, lr: 1e-4}]}"])
    spec = make_spec(**overrides["train"])
    assert spec.train.phases == (Phase("sp", 0.5, None, 1.0), Phase("hrl", 1.0, 1e-4, None))


def test_phases_round_trip_through_the_stored_spec_and_change_the_hash():
    spec = make_spec(phases=[{"name": "sp", "end": 0.85}, {"name": "hrl", "lr": 1e-4}])
    assert spec.train.phases == (Phase("sp", 0.85, None, 1.0), Phase("hrl", 1.0, 1e-4, None))
    stored = json.loads(json.dumps(spec.to_dict()))
    assert RunSpec.from_dict(stored) == spec and RunSpec.from_dict(stored).hash == spec.hash
    hash(spec.train)  # frozen all the way down
    assert spec.hash != make_spec().hash
    assert spec.hash != make_spec(phases=[{"name": "sp", "end": 0.8}, {"name": "hrl", "lr": 1e-4}]).hash
    # the same phases written with their defaults are the same run
    explicit = [{"name": "sp", "end": 0.85, "lr_mult": 1.0}, {"name": "hrl", "end": 1.0, "lr": 1e-4}]
    assert make_spec(phases=explicit).hash == spec.hash
    assert make_spec().replace(train={"phases": explicit}) == spec
    bad = json.loads(json.dumps(spec.to_dict()))
    bad["train"]["phases"][0]["lr_scale"] = 2
    with pytest.raises(SpecError, match=r"train\.phases\[0\]"):
        RunSpec.from_dict(bad)


def test_phases_keep_every_existing_run_hash_and_params():
    """``train.phases`` arrived after runs existed: without phases a spec hashes as before the key
    (literal hashes computed before it was added), its JSON (the train rule's params, which
    Snakemake's params trigger compares) is the same text as before, and a stored spec without
    the key still reads."""
    plain = validate_config(
        {"profile": "quick", "models": ["resnet"], "datasets": ["cifar10"], "epochs": 6, "max_channels": 64}
    )
    spec = run_spec(plain, "cifar10", "resnet", 0)
    assert spec.train.phases is None and spec.hash == "973759868b10"
    params = json.dumps(spec.to_dict(), sort_keys=True)
    assert hashlib.sha256(params.encode()).hexdigest()[:16] == "cec6d7a8cde9ede7"
    recipe = validate_config(
        {
            "profile": "quick",
            "models": ["resnet"],
            "datasets": ["cifar10"],
            "epochs": 8,
            "recipes": {"r": {"train": {"optimizer": "sgd", "lr": 0.1, "schedule": "multistep", "milestones": [4, 6]}}},
            "model_recipes": {"resnet": "r"},
        }
    )
    assert run_spec(recipe, "cifar10", "resnet", 0).hash == "1327f0113597"
    stored = spec.to_dict()
    assert "phases" not in stored["train"]
    assert RunSpec.from_dict(stored) == spec
    assert RunSpec.from_dict({**stored, "train": {**stored["train"], "phases": None}}) == spec
    without = {k: v for k, v in stored.items() if k not in ("measure", "recipe")}
    del without["train"]["milestones"]  # the other neutral key
    assert spec.hash == hashlib.sha256(json.dumps(without, sort_keys=True).encode()).hexdigest()[:12]
    assert "phases" in make_spec(phases=SWITCH).to_dict()["train"]


def test_describe_phases():
    phases = (Phase("sp", 0.85, None, 1.0), Phase("hrl", 1.0, 1e-4, None))
    assert describe_phases(phases, 375) == "sp[0,319) x1; hrl[319,375) lr=0.0001"
    assert describe_phases(phases) == "sp[0,0.85) x1; hrl[0.85,1) lr=0.0001"
    assert describe_phases(None, 375) == ""


def test_skipnet_trains_sp_then_hrl_at_its_own_lr_as_the_profiles_say(tmp_path, monkeypatch):
    """The real SkipNet through the trainer: supervised pre-training, then hybrid RL from the switch
    step at the recipe's constant lr; and the quick and paper profiles give every SkipNet trained the
    SkipNet way that recipe (SP until 0.865 of the steps, HRL at lr 1e-4)."""
    from pathlib import Path

    from baselines.skipnet import SkipNet
    from puppet.core.config import load_config

    seen: list[tuple[str, float]] = []  # (phase of each compute_loss, lr of the step that follows)
    modes: list[str] = []
    original_loss, original_optimizer = SkipNet.compute_loss, train.make_optimizer

    def compute_loss(self, x, y):
        modes.append(self._mode())
        return original_loss(self, x, y)

    def make_optimizer(model, train_spec):
        opt = original_optimizer(model, train_spec)
        opt.register_step_pre_hook(lambda o, *_: seen.append((modes[-1], o.param_groups[0]["lr"])))
        return opt

    monkeypatch.setattr(SkipNet, "compute_loss", compute_loss)
    monkeypatch.setattr(train, "make_optimizer", make_optimizer)
    phases = [{"name": "sp", "end": 0.5}, {"name": "hrl", "lr": 1e-4}]
    record = train.main(make_spec("skipnet", phases=phases), tmp_path / "skipnet")
    assert [m for m, _ in seen] == ["sp"] * 9 + ["hrl"] * 9
    assert all(lr > 1e-3 for _, lr in seen[:9]) and all(lr == 1e-4 for _, lr in seen[9:])
    assert record["phases"] == "sp[0,9) x1; hrl[9,18) lr=0.0001"

    repo = Path(__file__).resolve().parents[1]
    for profile in ("config.yaml", "paper.yaml"):
        config = load_config(repo / "config" / profile)
        trained_as_skipnet = [m for m in config["models"] if m.startswith("skipnet") and "gumbel" not in m]
        assert "skipnet" in trained_as_skipnet and "skipnet38" in trained_as_skipnet
        for model in trained_as_skipnet:
            spec = run_spec(config, config["datasets"][0], model, 0)
            assert [(p.name, p.end, p.lr) for p in spec.train.phases] == [("sp", 0.865, None), ("hrl", 1.0, 1e-4)]
        assert run_spec(config, config["datasets"][0], "skipnet_gumbel", 0).train.phases is None
