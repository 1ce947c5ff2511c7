"""SIGTERM (SLURM's time limit, preemption) and SIGINT (Ctrl-C) inside a training job: the step in
progress finishes, a checkpoint of the epoch so far is written, the job says where it stopped and
exits 128 + the signal, and the rerun resumes at that step to the result of an uninterrupted run.

The signal is the real one, sent by the process to itself at a chosen step
(``PUPPET_FAILPOINT=term-at-step:E:S``, puppet/core/job.py) or from outside (``os.kill``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from puppet.core.config import load_config, run_spec
from puppet.core.runs import inspect_run
from puppet.core.stopping import STOPPED, GracefulStop
from puppet.core.train import train_main

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "config" / "smoke.yaml")
RESULT_KEYS = ("top1", "top5", "test_loss", "final_train_loss", "final_train_acc", "history")


def _spec(**over):
    # crop_flip: the skipped batches of a resumed epoch must still draw their augmentation
    spec = run_spec(load_config(SMOKE), "synthetic", "alexnet", 0)
    return spec.replace(**{"epochs": 3, "data": {"augment": "crop_flip"}, **over})


def _result(record: dict) -> dict:
    out = {k: record[k] for k in RESULT_KEYS}
    out["history"] = [{k: v for k, v in h.items() if k not in ("seconds", "img_per_s")} for h in out["history"]]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    return train_main(_spec(), tmp_path_factory.mktemp("uninterrupted") / "run")


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_the_step_and_the_rerun_ends_identical(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setenv("PUPPET_FAILPOINT", "term-at-step:2:2")  # SIGTERM after step 2 of epoch 2 (of 4 steps)
    stopped = train_main(_spec(), out)
    assert stopped["status"] == "stopped" and stopped["exit_code"] == 128 + signal.SIGTERM
    assert stopped["message"] == "stopped by SIGTERM at epoch 2/3, step 2; rerun resumes"
    assert "stopped by SIGTERM at epoch 2/3, step 2; rerun resumes" in capsys.readouterr().out  # the console
    assert not (out / "train.json").exists() and not (out / "failures.jsonl").exists()  # not a failure
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["partial"]["step"] == 2 and ckpt["partial"]["seen"] == 128
    state = inspect_run(out)
    assert state.train == "stopped" and state.describe() == f"{stopped['message']} (checkpoint kept)"

    monkeypatch.delenv("PUPPET_FAILPOINT")
    resumed = train_main(_spec(), out)
    assert resumed["status"] == "ok" and not (out / STOPPED).exists()
    assert _result(resumed) == _result(reference)  # bit for bit: losses, accuracies, every epoch's sums
    assert inspect_run(out).train == "ok"


def test_a_second_signal_stops_at_once():
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM" and stop.exit_code == 143
        with pytest.raises(SystemExit) as exc:
            os.kill(os.getpid(), signal.SIGTERM)
        assert exc.value.code == 143
    with GracefulStop() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.exit_code == 130
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers put back


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_train_command_stopped_by_a_signal_exits_128_plus_n_and_says_so(sig, tmp_path):
    """From outside, as SLURM or a terminal sends it, once the first epoch's checkpoint is on disk."""
    spec = _spec(epochs=40, data={"augment": "crop_flip", "train_size": 1900})
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("PUPPET_FAILPOINT", None)
    cmd = [sys.executable, "-m", "puppet", "train", "--spec", json.dumps(spec.to_dict()), "--out-dir", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be stopped"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr[-2000:]
    name = signal.Signals(sig).name
    assert f"stopped by {name} at epoch" in stdout and "rerun resumes" in stdout and "Traceback" not in stderr
    assert json.loads((out / STOPPED).read_text())["signal"] == name
    assert not (out / "train.json").exists() and inspect_run(out).train == "stopped"
