"""Costs without training (cost_only) and the plan of a profile (puppet.core.jobplan)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from puppet.core import jobplan, train
from puppet.core.config import run_spec, validate_config
from puppet.core.measure import count_macs, measure_main
from puppet.core.protocols import RoutesPerInput
from puppet.core.registry import create_model
from tests.test_train import make_spec as train_spec

MEASURE = {"threads": 1, "warmup": 1, "latency_images": 2, "rounds": 3, "throughput_batch": 8}


def make_spec(model="alexnet", dataset="synthetic", **over):
    """The training tests' small spec, with a quick measure block."""
    return train_spec(model, dataset, **{"measure": MEASURE, **over})


# --------------------------------------------------------------------------- cost_only


def test_cost_only_is_part_of_the_run_identity_and_leaves_other_runs_alone():
    trained, costs = make_spec(), make_spec(cost_only=True)
    assert trained.hash != costs.hash
    assert "cost_only" not in trained.to_dict()  # every earlier run keeps its folder name
    assert type(trained).from_dict(costs.to_dict()) == costs


def test_a_cost_only_run_never_takes_an_optimizer_step(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a cost-only run built an optimizer or took a step")

    monkeypatch.setattr(train, "make_optimizer", refuse)
    monkeypatch.setattr(train, "train_one_epoch", refuse)
    for optimizer in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):  # each defines its own step
        monkeypatch.setattr(optimizer, "step", refuse)
    spec = make_spec("resnet", cost_only=True)
    record = train.main(spec, tmp_path)
    assert record["status"] == "ok" and record["trained"] is False
    assert record["top1"] is None and record["epochs"] == 0 and record["history"] == []
    torch.manual_seed(spec.seed)  # the weights saved are the seed's initial weights, untouched
    fresh = create_model("resnet", num_classes=10, in_channels=3, image_size=32, max_channels=16)
    saved = torch.load(tmp_path / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())


def test_a_cost_only_puppet_fits_its_complexity_range_on_training_images(tmp_path):
    """Puppet-CNN's depth follows the input's complexity through a range fitted on training images,
    not through training: the cost-only run fits it, so its MACs are the trained model's."""
    spec = make_spec("puppet_cnn", cost_only=True)
    train.main(spec, tmp_path)
    saved = torch.load(tmp_path / "model.pt", weights_only=False)["model"]
    assert bool(saved["complexity_fitted"]) and float(saved["complexity_range"][1]) > 0


def test_cost_only_measures_an_adaptive_model_on_its_dearest_path(tmp_path):
    spec = make_spec("skipnet", cost_only=True, train={"phases": [{"name": "sp", "end": 0.5}, {"name": "hrl"}]})
    assert train.train_main(spec, tmp_path)["status"] == "ok"
    record = measure_main(spec, tmp_path)
    assert record["status"] == "ok", record["error"]
    rows = {r["deployment"]: r for r in record["deployments"]}
    default = rows["default"]
    assert default["cost_basis"].startswith("dearest path")
    model = create_model("skipnet", num_classes=10, in_channels=3, image_size=32, max_channels=16).eval()
    x = torch.zeros(1, 3, 32, 32)
    model.force_path("dearest")
    assert default["macs"] == count_macs(model, x)  # every block run, whatever the untrained gates say
    assert default["macs_cheapest_path"] < default["macs"]
    assert list(rows) == ["default"]  # fixed_0.5 differs by routing alone: the same dearest path here
    assert "top1" not in default  # no accuracy of an untrained model


@pytest.mark.parametrize("name", ["skipnet", "drnn", "branchynet", "branchynet_resnet110"])
def test_force_path_orders_the_paths_and_gives_the_decisions_back(name):
    model = create_model(name, num_classes=10, in_channels=3, image_size=32, max_channels=16).eval()
    assert isinstance(model, RoutesPerInput)
    x = torch.randn(1, 3, 32, 32)
    own = count_macs(model, x)
    model.force_path("cheapest")
    cheapest = count_macs(model, x)
    model.force_path("dearest")
    dearest = count_macs(model, x)
    model.force_path(None)
    assert cheapest < dearest and cheapest <= own <= dearest
    assert count_macs(model, x) == own
    with pytest.raises(ValueError, match="choose one of cheapest, dearest"):
        model.force_path("fastest")


def test_models_whose_depth_follows_the_input_alone_are_not_routed():
    for name in ("puppet_cnn", "resnet", "alexnet"):
        model = create_model(name, num_classes=10, in_channels=3, image_size=32, max_channels=16)
        assert not isinstance(model, RoutesPerInput), name


# --------------------------------------------------------------------------- tables


def _cost_rows(device_type: str, width: int = 512) -> pd.DataFrame:
    base = {"profile": "paper_costs", "dataset": "cifar10", "seed": 0, "status": "ok", "error": ""}
    base.update(trained=False, max_channels=width, device_type=device_type, top1=float("nan"), top5=float("nan"))
    base.update(device="cpu (AMD EPYC, x86_64)" if device_type == "cpu" else "NVIDIA H100", throughput_batch=32)
    rows = []
    for model, macs, gen in (("resnet", 0.5e9, 0.0), ("puppet_resnet", 1.5e9, 1.2e9), ("puppet_cnn", 1.0e9, 0.6e9)):
        rows.append({**base, "model": model, "deployment": "default", "macs": macs, "macs_generation": gen})
        rows[-1].update(macs_without_generation=macs - gen, latency_s_per_img=0.01, param_size_mb=1.0)
    frame = pd.DataFrame(rows)
    frame["macs_g"], frame["macs_without_generation_g"] = frame["macs"] / 1e9, frame["macs_without_generation"] / 1e9
    return frame


def test_table4_compares_mult_adds_by_the_papers_batch_reading_and_speed_only_on_a_gpu():
    from puppet.report import engine
    from puppet.report.paper import PAPER_MULT_ADDS_BATCH, TABLE4
    from puppet.report.tables import run_table

    table = run_table(TABLE4)
    cpu = engine.build(table, _cost_rows("cpu"), pd.DataFrame(columns=["model", "fixed_width"])).set_index("model")
    # ours = B x MACs without generation + one image's generation; Δ against the paper's column
    expected = (PAPER_MULT_ADDS_BATCH * 0.3e9 + 1.2e9) / 1e9
    assert cpu.loc["puppet_resnet", "macs_paper_batch_g"] == pytest.approx(expected)
    assert cpu.loc["puppet_resnet", "macs_paper_batch_g_diff"] == pytest.approx(expected - 23.44)
    assert math.isnan(cpu.loc["resnet", "latency_s_per_img_diff"])  # CPU against the paper's GPU: no Δ
    assert math.isnan(cpu.loc["resnet", "top1"])
    assert "not trained (cost-only profile)" in cpu.loc["resnet", "note"]
    assert "AMD EPYC" in cpu.loc["resnet", "note"] and "no speed Δ" in cpu.loc["resnet", "note"]
    gpu = engine.build(table, _cost_rows("cuda"), pd.DataFrame(columns=["model", "fixed_width"])).set_index("model")
    assert gpu.loc["resnet", "latency_s_per_img_diff"] == pytest.approx(0.01 - 0.0019)
    bounded = _cost_rows("cuda")
    bounded["cost_basis"], bounded["macs_cheapest_path"] = "dearest path: its routing needs training", 1e8
    dearest = engine.build(table, bounded, pd.DataFrame(columns=["model", "fixed_width"])).set_index("model")
    assert math.isnan(dearest.loc["resnet", "latency_s_per_img_diff"])  # a bound, even on a GPU
    assert "an upper bound with no speed Δ" in dearest.loc["resnet", "note"]
    narrow = engine.build(table, _cost_rows("cuda", 32), pd.DataFrame(columns=["model", "fixed_width"]))
    assert narrow["latency_s_per_img_diff"].isna().all() and narrow["macs_paper_batch_g_diff"].isna().all()


# --------------------------------------------------------------------------- plan

CALIBRATION = {
    "key": "x",
    "dataset": "synthetic",
    "model": "alexnet",
    "data": "real",
    "device": "cpu",
    "threads": 1,
    "max_channels": 16,
    "n_train": 192,
    "n_val": 32,
    "n_test": 64,
    "train_step_s": 0.5,
    "train_steps_timed": 3,
    "peak_mb": 900.0,
    "eval_s_per_img": 0.001,
    "deployments": [{"name": "default", "build_s": 0.0, "forward1_s": 0.01, "forward_batch_s": 0.05}],
}


def test_plan_projection_is_a_pure_function_of_the_calibration(monkeypatch):
    spec = make_spec(epochs=3)

    def no_torch(*args, **kwargs):
        raise AssertionError("the projection ran a model")

    monkeypatch.setattr(torch.nn.Module, "__call__", no_torch)
    first = jobplan.project(spec, dict(CALIBRATION), startup_s=4.0)
    assert first == jobplan.project(spec, dict(CALIBRATION), startup_s=4.0)
    train_job = first[0]
    steps = 3 * math.ceil(192 / 32)  # epochs x optimizer steps per epoch
    assert train_job["projected_s"] == pytest.approx(4.0 + steps * 0.5 + 64 * 0.001)  # + the test pass
    calibrating = jobplan.project(spec, {**CALIBRATION, "calibrates": True}, startup_s=4.0)[0]
    passes = jobplan.CALIBRATION_PASSES  # a threshold calibrated on validation: a pass per candidate
    assert calibrating["projected_s"] - train_job["projected_s"] == pytest.approx(passes * 32 * 0.001)
    slower = jobplan.project(spec, {**CALIBRATION, "train_step_s": 1.0}, startup_s=4.0)[0]
    assert slower["projected_s"] - train_job["projected_s"] == pytest.approx(steps * 0.5)
    assert train_job["runtime_min"] == math.ceil(jobplan.RUNTIME_MARGIN * train_job["projected_s"] / 60) + 1


def test_plan_flags_a_job_that_will_not_fit_the_memory():
    spec = make_spec()
    fits = jobplan.project(spec, CALIBRATION, 4.0, memory_mb=1000)[0]
    too_big = jobplan.project(spec, CALIBRATION, 4.0, memory_mb=500)[0]
    assert fits["fits"] is True and too_big["fits"] is False
    lines = jobplan.summary(pd.DataFrame([too_big]), 500)
    assert "WILL NOT FIT" in lines[0] and "1 job(s) will not fit 500 MB" in lines[-1]


def test_plan_calibrates_each_distinct_run_once_and_writes_runtimes(tmp_path, monkeypatch):
    from puppet.core.invocation import planned_runtimes

    cfg = validate_config(
        {
            "profile": "p",
            "models": ["alexnet"],
            "datasets": ["synthetic"],
            "seeds": [0, 1],
            "epochs": 1,
            "max_channels": 8,
            "device": "cpu",
            "data": {"train_size": 96, "val_size": 0, "test_size": 32},
            "train": {"batch_size": 32},
            "measure": {**MEASURE, "rounds": 2},
        }
    )
    calls = []
    real = jobplan.calibrate
    monkeypatch.setattr(jobplan, "calibrate", lambda spec, steps: calls.append(spec) or real(spec, steps=1))
    frame = jobplan.plan(cfg, {}, memory_mb=None, say=lambda _: None, startup_s=1.0)
    assert len(calls) == 1  # the seed changes no cost
    assert list(frame["job"]) == ["train", "measure"] * 2 + list(jobplan.REPORT_JOBS)
    assert (frame["projected_s"] > 0).all()
    path = tmp_path / "plan.csv"
    frame.to_csv(path, index=False)
    runtimes = planned_runtimes(path, "p")
    spec = run_spec(cfg, "synthetic", "alexnet", 1)
    assert runtimes[("synthetic", "alexnet", 1, spec.hash, "train")] == int(frame.iloc[2]["runtime_min"])
    assert planned_runtimes(path, "another profile") == {} and planned_runtimes(tmp_path / "none.csv", "p") == {}


def test_plan_times_a_model_whose_data_is_not_at_hand_on_stand_in_images(tmp_path):
    data = {"train_size": 320, "test_size": None}  # the whole test split: its known size
    spec = make_spec("alexnet", "cifar10", data_root=str(tmp_path), download=False, data=data)
    record = jobplan.calibrate(spec, steps=1)
    assert record["data"].startswith("synthetic stand-in")
    assert record["n_train"] == 320 and record["n_test"] == 10_000 and record["train_step_s"] > 0
    json.dumps(record)  # the calibration cache is JSON


def test_plan_times_each_deployment_beside_the_default():
    """The measure job times every other deployment interleaved with the default (both in each
    round), counts MACs of each, and builds each: the projection adds exactly those."""
    spec = make_spec(cost_only=True)  # no accuracy pass: the timing arithmetic alone
    other = {"name": "precomputed", "build_s": 2.0, "forward1_s": 0.001, "forward_batch_s": 0.004}
    one = jobplan.project(spec, CALIBRATION, 0.0)[1]["projected_s"]
    two = jobplan.project(spec, {**CALIBRATION, "deployments": [*CALIBRATION["deployments"], other]}, 0.0)[1]
    m = spec.measure
    latency_calls = m.warmup + m.rounds * m.latency_images
    throughput_calls = min(2, m.warmup) + m.rounds * m.throughput_iters
    added = 2.0 + latency_calls * 0.001 + throughput_calls * 0.004 + 3 * m.macs_images * 0.001
    assert two["projected_s"] == pytest.approx(one + added)
