"""Training: resume equivalence, determinism, clear errors, and learning on real data."""

from __future__ import annotations

import json

import pytest
import torch

from puppet.config import run_spec, validate_config
from puppet.train import NonFiniteLossError, train_main, train_run


def make_spec(model="alexnet", dataset="synthetic", **over):
    cfg = {"profile": "test", "models": [model], "datasets": [dataset], "epochs": 2, "max_channels": 16,
           "device": "cpu", "data": {"train_size": 192, "val_size": 32, "test_size": 64},
           "train": {"batch_size": 32, "lr": 0.003}}
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    cfg = validate_config(cfg)
    return run_spec(cfg, dataset, model, 0)


def test_resume_gives_the_same_final_metrics(tmp_path):
    spec = make_spec(epochs=3)
    straight = train_run(spec, tmp_path / "straight")
    partial = train_run(spec, tmp_path / "resumed", stop_after_epoch=1)
    assert partial["status"] == "interrupted"
    assert (tmp_path / "resumed" / "checkpoint.pt").exists() and not (tmp_path / "resumed" / "model.pt").exists()
    resumed = train_run(spec, tmp_path / "resumed")
    assert resumed["top1"] == straight["top1"] and resumed["test_loss"] == straight["test_loss"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]


@pytest.mark.parametrize("model", ["alexnet", "puppet_cnn_param"])
def test_same_seed_same_metrics_on_cpu(tmp_path, model):
    """Bit-identical with several threads too (puppet_cnn_param's kernel indexing once was not)."""
    torch.set_num_threads(2)
    spec = make_spec(model=model, epochs=2, max_channels=16)
    a = train_run(spec, tmp_path / "a")
    b = train_run(spec, tmp_path / "b")
    assert a["top1"] == b["top1"] and a["test_loss"] == b["test_loss"]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_checkpoint_of_another_config_is_kept_aside(tmp_path):
    train_run(make_spec(epochs=1), tmp_path)
    record = train_run(make_spec(epochs=1, train={"lr": 0.001}), tmp_path)
    assert record["status"] == "ok"
    assert list(tmp_path.glob("checkpoint.*.pt")), "the other config's checkpoint must not be destroyed"


def test_nonfinite_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(NonFiniteLossError, match="lower train.lr"):
        train_run(make_spec(epochs=1, train={"lr": 1e30, "optimizer": "sgd"}), tmp_path)


def test_failed_run_becomes_an_error_record(tmp_path):
    spec = make_spec(epochs=1, train={"lr": 1e30, "optimizer": "sgd"})
    record = train_main(spec, tmp_path)
    saved = json.loads((tmp_path / "train.json").read_text())
    assert record["status"] == saved["status"] == "error"
    assert "NonFiniteLossError" in saved["error"] and saved["model"] == "alexnet"


def test_missing_data_becomes_an_error_record(tmp_path):
    spec = make_spec(dataset="cifar10")
    spec["data_source"] = str(tmp_path / "absent.npz")
    record = train_main(spec, tmp_path / "run")
    assert record["status"] == "error" and "no file at" in record["error"]


@pytest.mark.slow
def test_learns_real_cifar10_clearly_above_chance(tmp_path, cifar10_npz):
    """A small ResNet on 2,000 real CIFAR-10 images beats chance (10%) clearly on 1,017 test images."""
    spec = make_spec(model="resnet", dataset="cifar10", epochs=4, max_channels=32,
                     data={"train_size": 2000, "val_size": 0, "test_size": None},
                     train={"batch_size": 64, "lr": 0.003})
    spec["data_source"] = str(cifar10_npz)
    torch.manual_seed(0)
    record = train_run(spec, tmp_path)
    assert record["test_size"] == 1017
    assert record["top1"] > 25.0, record["top1"]
