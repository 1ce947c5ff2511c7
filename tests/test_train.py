"""Training: resume equivalence, determinism, clear errors, and learning on real data."""

from __future__ import annotations

import json

import pytest
import torch

from puppet.cli import main as cli_main
from puppet.core import train
from puppet.core.config import run_spec, validate_config
from puppet.core.train import DIVERGENCE_FACTOR, PAUSED_EXIT_CODE, DivergedError, NonFiniteLossError, train_main


def make_spec(model="alexnet", dataset="synthetic", **over):
    cfg = {
        "profile": "test",
        "models": [model],
        "datasets": [dataset],
        "epochs": 2,
        "max_channels": 16,
        "device": "cpu",
        "data": {"train_size": 192, "val_size": 32, "test_size": 64},
        "train": {"batch_size": 32, "lr": 0.003},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    cfg = validate_config(cfg)
    return run_spec(cfg, dataset, model, 0)


def test_resume_gives_the_same_final_metrics(tmp_path):
    spec = make_spec(epochs=3)
    straight = train.main(spec, tmp_path / "straight")
    partial = train.main(spec, tmp_path / "resumed", stop_after_epoch=1)
    assert partial["status"] == "interrupted"
    assert (tmp_path / "resumed" / "checkpoint.pt").exists() and not (tmp_path / "resumed" / "model.pt").exists()
    resumed = train.main(spec, tmp_path / "resumed")
    assert resumed["top1"] == straight["top1"] and resumed["test_loss"] == straight["test_loss"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]


class EpochClock:
    """Fake time for train.main: each training epoch takes ``epoch_s`` seconds, nothing else does."""

    def __init__(self, monkeypatch, epoch_s: float):
        self.now = 0.0
        real = train.train_one_epoch

        def timed_epoch(*args, **kwargs):
            self.now += epoch_s
            return real(*args, **kwargs)

        monkeypatch.setattr(train, "train_one_epoch", timed_epoch)

    def __call__(self) -> float:
        return self.now


def test_time_limit_pauses_and_resumes_to_the_same_metrics(tmp_path, monkeypatch):
    """40 s epochs under a 1-minute limit: one epoch per sitting (the second would end at 80 s),
    three sittings for three epochs, and the same result as one uninterrupted run."""
    spec = make_spec(epochs=3)
    straight = train.main(spec, tmp_path / "straight")
    sittings = []
    for _ in range(3):
        record = train.main(spec, tmp_path / "paused", time_limit_min=1, clock=EpochClock(monkeypatch, 40.0))
        sittings.append(record)
        if record["status"] != "paused":
            break
    assert [r["status"] for r in sittings] == ["paused", "paused", "ok"]
    assert sittings[0]["message"] == (
        "alexnet/synthetic/seed0: paused at epoch 1/3 after 0.7 min "
        "(train.time_limit_min=1, last epoch 0.7 min); rerun the same command to resume"
    )
    assert "paused at epoch 2/3" in sittings[1]["message"]
    resumed = sittings[-1]
    assert resumed["top1"] == straight["top1"] and resumed["test_loss"] == straight["test_loss"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]


def test_time_limit_that_fits_changes_nothing(tmp_path, monkeypatch):
    record = train.main(make_spec(epochs=2), tmp_path, time_limit_min=1, clock=EpochClock(monkeypatch, 20.0))
    assert record["status"] == "ok" and record["epochs"] == 2


def test_paused_run_writes_no_record_and_exits_75(tmp_path, capsys):
    """A pause is neither an ok nor an error row: no train.json (so Snakemake reruns the job), exit 75."""
    spec = make_spec(epochs=2)
    argv = ["train", "--spec", json.dumps(spec.to_dict()), "--out-dir", str(tmp_path)]
    assert cli_main(argv + ["--time-limit-min", "1e-6"]) == PAUSED_EXIT_CODE == 75
    assert capsys.readouterr().out.strip().endswith("rerun the same command to resume")
    assert not (tmp_path / "train.json").exists() and (tmp_path / "checkpoint.pt").is_file()
    assert cli_main(argv) == 0
    assert json.loads((tmp_path / "train.json").read_text())["status"] == "ok"


def test_train_main_passes_the_limit_and_records_nothing_when_paused(tmp_path):
    record = train_main(make_spec(epochs=2), tmp_path, time_limit_min=1e-6)
    assert record["status"] == "paused" and record["epoch"] == 1 and not (tmp_path / "train.json").exists()


@pytest.mark.parametrize("model", ["alexnet", "puppet_cnn_param"])
def test_same_seed_same_metrics_on_cpu(tmp_path, model):
    """Bit-identical with several threads too (puppet_cnn_param's kernel indexing once was not)."""
    torch.set_num_threads(2)
    spec = make_spec(model=model, epochs=2, max_channels=16)
    a = train.main(spec, tmp_path / "a")
    b = train.main(spec, tmp_path / "b")
    assert a["top1"] == b["top1"] and a["test_loss"] == b["test_loss"]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_checkpoint_of_another_config_is_kept_aside(tmp_path):
    train.main(make_spec(epochs=1), tmp_path)
    record = train.main(make_spec(epochs=1, train={"lr": 0.001}), tmp_path)
    assert record["status"] == "ok"
    assert list(tmp_path.glob("checkpoint.*.pt")), "the other config's checkpoint must not be destroyed"


def test_nonfinite_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(NonFiniteLossError, match="lower train.lr"):
        train.main(make_spec(epochs=1, train={"lr": 1e30, "optimizer": "sgd"}), tmp_path)


def test_failed_run_becomes_an_error_record(tmp_path):
    spec = make_spec(epochs=1, train={"lr": 1e30, "optimizer": "sgd"})
    record = train_main(spec, tmp_path)
    saved = json.loads((tmp_path / "train.json").read_text())
    assert record["status"] == saved["status"] == "error"
    assert "NonFiniteLossError" in saved["error"] and saved["model"] == "alexnet"


def test_a_finite_exploded_loss_is_a_failed_run_not_a_result(tmp_path):
    """Adam at lr 1e8 drives resnet's loss to about 1e16 without a NaN: the run fails after its first
    epoch with one line naming the rule and the fix, writes no model and no checkpoint of that epoch,
    and a healthy run of the same model records the first step's loss the rule compares with."""
    spec = make_spec(model="resnet", epochs=2, train={"lr": 1e8, "optimizer": "adam"})
    record = train_main(spec, tmp_path / "exploded")
    assert record["status"] == "error" and "DivergedError" in record["error"]
    assert "training diverged: epoch 1 mean loss" in record["error"] and "lower train.lr" in record["error"]
    assert "\n" not in record["error"]
    assert not (tmp_path / "exploded" / "model.pt").exists() and not (tmp_path / "exploded" / "checkpoint.pt").exists()
    healthy = train.main(make_spec(model="resnet", epochs=2), tmp_path / "healthy")
    first = healthy["history"][0]["first_step_loss"]
    assert 1.0 < first < 5.0 and all(h["loss"] < DIVERGENCE_FACTOR * first for h in healthy["history"])
    assert "first_step_loss" not in healthy["history"][1]
    with pytest.raises(DivergedError, match="epoch 2 mean loss 400"):
        train.check_divergence([{"epoch": 1, "loss": 3.0, "first_step_loss": 2.0}, {"epoch": 2, "loss": 400.0}])
    train.check_divergence([{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 400.0}])  # recorded before the rule


def test_missing_data_becomes_an_error_record(tmp_path):
    spec = make_spec(dataset="cifar10").replace(data_source=str(tmp_path / "absent.npz"))
    record = train_main(spec, tmp_path / "run")
    assert record["status"] == "error" and "no file at" in record["error"]


@pytest.mark.slow
def test_learns_real_cifar10_clearly_above_chance(tmp_path, cifar10_npz):
    """A small ResNet on 2,000 real CIFAR-10 images beats chance (10%) clearly on 1,017 test images."""
    spec = make_spec(
        model="resnet",
        dataset="cifar10",
        epochs=4,
        max_channels=32,
        data={"train_size": 2000, "val_size": 0, "test_size": None},
        train={"batch_size": 64, "lr": 0.003},
    ).replace(data_source=str(cifar10_npz))
    torch.manual_seed(0)
    record = train.main(spec, tmp_path)
    assert record["test_size"] == 1017
    assert record["top1"] > 25.0, record["top1"]


@pytest.mark.parametrize("model", ["alexnet", "puppet_cnn"])
def test_val_curve_records_a_curve_and_changes_no_weight(tmp_path, model):
    """train.val_curve evaluates the validation split after each epoch (the learning curves) without
    touching a weight, a running statistic or the data order; off, the run keeps its earlier identity."""
    plain_spec, curve_spec = make_spec(model=model), make_spec(model=model, train={"val_curve": True})
    assert plain_spec.hash == make_spec(model=model, train={"val_curve": False}).hash != curve_spec.hash
    plain = train.main(plain_spec, tmp_path / "plain")
    curve = train.main(curve_spec, tmp_path / "curve")
    assert all("val_top1" not in h for h in plain["history"])
    assert [0 <= h["val_top1"] <= 100 for h in curve["history"]] == [True, True]
    weights = [torch.load(tmp_path / d / "model.pt", weights_only=False)["model"] for d in ("plain", "curve")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # the test split's confusion matrix: rows are true classes, its diagonal the correct predictions
    confusion = torch.tensor(curve["confusion"])
    assert confusion.sum() == 64 and confusion.diag().sum() / 64 * 100 == pytest.approx(curve["top1"])
