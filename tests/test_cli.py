"""The command line a person types: single runs by name, evaluate, validate --config, typos, pipes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from puppet.cli import main
from puppet.core.config import ConfigError, deep_merge, load_config, parse_sets, run_spec
from puppet.core.runs import run_dir

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "config" / "smoke.yaml")


def test_sets_are_dotted_yaml_and_merge_into_blocks():
    sets = parse_sets(["train.lr=0.01", "epochs=2", "data.augment=crop_flip", "seeds=[0, 1]"])
    assert sets == {"train": {"lr": 0.01}, "epochs": 2, "data": {"augment": "crop_flip"}, "seeds": [0, 1]}
    merged = deep_merge({"train": {"lr": 1.0, "batch_size": 64}, "epochs": 1}, sets)
    assert merged["train"] == {"lr": 0.01, "batch_size": 64} and merged["epochs"] == 2
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_sets(["train.lr"])
    cfg = load_config(SMOKE, sets=["train.lr=0.01"])
    assert cfg["train"]["lr"] == 0.01 and cfg["train"]["batch_size"] == 64  # smoke.yaml's, kept


@pytest.mark.parametrize(
    "argv,suggestion",
    [
        (["train", "--model", "resent", "--dataset", "synthetic"], "did you mean 'resnet'?"),
        (["train", "--model", "resnet", "--dataset", "cifar-10"], "did you mean 'cifar10'?"),
        (["train", "--model", "resnet", "--dataset", "synthetic", "--set", "trian.lr=1"], "did you mean 'train'?"),
        (["validate", "--configfile", SMOKE, "--config", "train.optimizer=adamm"], "did you mean 'adam'?"),
    ],
)
def test_a_typo_gets_one_line_with_the_right_name(argv, suggestion, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert suggestion in err and "\n" not in err


def test_train_by_name_then_evaluate(tmp_path, capsys):
    """One run without JSON, in the folder the workflow would use; evaluate reads its model.pt back."""
    argv = ["train", "--model", "alexnet", "--dataset", "synthetic", "--configfile", SMOKE, "--set", "epochs=1"]
    assert main([*argv, "--set", "train.lr=0.002", "--results", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    # progress a person can follow: per-epoch line with the run's ETA, evaluation announced and reported
    assert "epoch 1/1:" in err and "run ETA" in err and "evaluating on 128 test images" in err
    assert "done: synthetic/alexnet/seed0: top-1" in out  # the headline on the console
    spec = run_spec(load_config(SMOKE, sets=["epochs=1", "train.lr=0.002"]), "synthetic", "alexnet", 0)
    folder = run_dir(tmp_path, "smoke", "synthetic", "alexnet", 0, spec.hash)
    record = json.loads((folder / "train.json").read_text())
    assert record["status"] == "ok" and record["lr"] == 0.002 and record["epochs"] == 1
    assert f"top-1 {record['top1']:.2f}%" in out
    assert main(["evaluate", "--run-dir", str(folder)]) == 0
    assert f"top-1 {record['top1']:.2f}%" in capsys.readouterr().out  # the same model, the same images


def test_train_needs_a_name_or_a_spec():
    with pytest.raises(SystemExit, match="--model and --dataset"):
        main(["train", "--model", "alexnet"])
    with pytest.raises(SystemExit, match="no run folder at /nonexistent"):
        main(["evaluate", "--run-dir", "/nonexistent"])


def test_evaluate_tells_a_failed_run_from_an_unfinished_one(tmp_path):
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "train.json").write_text(json.dumps({"status": "error", "error": "DataError: no data"}))
    with pytest.raises(SystemExit, match="does not exist: its training failed: DataError: no data"):
        main(["evaluate", "--run-dir", str(failed)])
    started = tmp_path / "started"
    started.mkdir()
    with pytest.raises(SystemExit, match="does not exist: the run is not started"):
        main(["evaluate", "--run-dir", str(started)])


def test_a_closed_pipe_ends_quietly():
    """`python -m puppet models | head -0`: exit status 141 (as a shell reports SIGPIPE), no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "puppet", "models"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # the reader is gone before the writer starts
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err


def test_help_names_the_command_it_was_called_by_and_version_says_the_release(capsys, monkeypatch):
    from puppet.cli import build_parser

    monkeypatch.setattr(sys, "argv", ["/venv/bin/puppet-bench"])
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("puppet-bench ") and out.split()[1][0].isdigit(), out
    monkeypatch.setattr(sys, "argv", ["/repo/puppet/__main__.py"])
    help_text = build_parser().format_help()
    assert help_text.startswith("usage: python -m puppet") and "``" not in help_text
    assert build_parser().parse_args(["validate"]).configfile is None  # the default profile, as train


def test_models_filters_by_glob_and_family_with_a_header_sizes_and_json(capsys):
    from puppet.core.measure import stored_param_count
    from puppet.core.registry import create_model, list_models

    assert main(["models", "*resnet*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "family", "description"]
    assert [line.split()[0] for line in lines[1:]] == [n for n in list_models() if "resnet" in n]
    assert main(["models", "--family", "puppet", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_models("puppet") and all(r["family"] == "puppet" for r in rows)
    assert main(["models", "alexnet", "--sizes", "--max-channels", "32", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["stored_params"] == stored_param_count(create_model("alexnet", max_channels=32))
    with pytest.raises(SystemExit, match=r"no model matches 'nothing\*' \(families: "):
        main(["models", "nothing*"])
