"""What an invocation says and does around its jobs (puppet.core.invocation), without Snakemake.

The end-to-end behaviour (a real workflow redoing exactly the failed runs) is in test_faults.py;
these check the decisions themselves on run folders made by hand."""

from __future__ import annotations

import json
from pathlib import Path

from puppet.core import invocation
from puppet.core.runs import inspect_run, record_failure, run_dir


def _run(root: Path, model: str, *, train: str | None = "ok", measure: str | None = "ok") -> Path:
    path = run_dir(root / "results", "quick", "cifar10", model, 0, "0123456789ab")
    path.mkdir(parents=True)
    if train == "ok":
        (path / "train.json").write_text(json.dumps({"status": "ok", "top1": 1.0, "config_hash": "h", "epochs": 1}))
    elif train == "error":
        (path / "train.json").write_text(json.dumps({"status": "error", "error": "RuntimeError: boom"}))
        record_failure(path, "train", "RuntimeError: boom")
    elif train == "damaged":
        (path / "train.json").write_text('{"status": "o')
    if measure == "ok":
        (path / "measure.json").write_text(json.dumps({"status": "ok", "deployments": [{"deployment": "default"}]}))
    return path


def test_startup_names_damaged_retried_and_lost_runs(tmp_path):
    damaged = _run(tmp_path, "alexnet", train="damaged", measure=None)
    failed = _run(tmp_path, "vgg", train="error", measure=None)
    lost = _run(tmp_path, "resnet", measure=None)  # measured once: metrics.csv still lists it
    done = _run(tmp_path, "squeezenet")
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("profile,dataset,model,seed,config_hash\nquick,cifar10,resnet,0,0123456789ab\n")
    states = [inspect_run(p) for p in (damaged, failed, lost, done)]
    lines = invocation.startup_warnings(states, metrics, has_metadata=False)
    text = "\n".join(lines)
    assert f"warning: {damaged / 'train.json'} is damaged" in text
    assert "2 run(s) failed or were damaged before and are retried:" in text
    assert "quick/cifar10/vgg/seed0" in text and "RuntimeError: boom" in text
    assert "no record of earlier runs here" in text and f"--forcerun {damaged}/train.json {failed}/train.json" in text
    assert f"1 run(s) in {metrics} lost their train.json or measure.json" in text
    assert f"--forcerun {lost}/measure.json" in text
    assert "squeezenet" not in text
    assert "no record" not in "\n".join(invocation.startup_warnings(states, metrics, has_metadata=True))


def test_failed_attempts_count_failures_and_damage_not_yet_set_aside(tmp_path):
    failed = inspect_run(_run(tmp_path, "vgg", train="error", measure=None))
    damaged = inspect_run(_run(tmp_path, "alexnet", train="damaged", measure=None))
    assert invocation.failed_attempts(failed, "train") == 1 and invocation.failed_attempts(failed, "measure") == 0
    assert invocation.failed_attempts(damaged, "train") == 1  # pending: the dry run already shows the rerun
    lines = invocation.set_aside_damaged([damaged])
    assert len(lines) == 1 and lines[0].startswith(f"kept {damaged.path / 'train.json'} as train.json.corrupt-")
    assert damaged.damaged == [] and invocation.failed_attempts(damaged, "train") == 1  # the kept copy counts now


def test_end_summary_lists_failed_and_unfinished_runs(tmp_path):
    failed = inspect_run(_run(tmp_path, "vgg", train="error", measure=None))
    paused = inspect_run(_run(tmp_path, "resnet", train=None, measure=None))
    done = inspect_run(_run(tmp_path, "squeezenet"))
    lines, any_failed = invocation.end_summary([failed, paused, done], crashed_ok=False)
    assert any_failed and lines[0] == "\n1 failed, 1 unfinished of 3 run(s):"
    assert any("FAILED quick/cifar10/vgg/seed0" in line for line in lines)
    assert any(line.startswith("  UNFINISHED quick/cifar10/resnet/seed0: not started") for line in lines)
    assert lines[-1] == "Fix the cause and rerun the same command: only these runs are redone."
    assert invocation.end_summary([done], crashed_ok=False) == ([], False)
    lines, any_failed = invocation.end_summary([paused, done], crashed_ok=True)  # succeeded: nothing crashed
    assert (lines, any_failed) == ([], False)


def test_a_run_interrupted_before_its_first_checkpoint_is_not_called_not_started(tmp_path):
    """Ctrl-C in the first epoch: the run's log exists, its checkpoint does not; only a run with a log
    points at it."""
    begun = _run(tmp_path, "resnet", train=None, measure=None)
    (begun / "train.log").write_text("==== attempt started ...\n")
    never = _run(tmp_path, "vgg", train=None, measure=None)
    lines, _ = invocation.end_summary([inspect_run(begun), inspect_run(never)], crashed_ok=False)
    assert any(
        "resnet/seed0: started, stopped before its first checkpoint (a rerun starts it over); see " in line
        for line in lines
    )
    assert any(line.endswith("vgg/seed0: not started") for line in lines)  # no log to point at
