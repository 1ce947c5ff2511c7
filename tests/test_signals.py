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
from puppet.core.stopping import REPEAT_WINDOW_S, STOPPED, GracefulStop
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


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_second_signal_stops_at_once():
    clock = Clock()
    with GracefulStop(clock) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM" and stop.exit_code == 143
        clock.now += REPEAT_WINDOW_S + 0.1
        with pytest.raises(SystemExit) as exc:
            os.kill(os.getpid(), signal.SIGTERM)
        assert exc.value.code == 143
    with GracefulStop(clock) as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.exit_code == 130
        clock.now += REPEAT_WINDOW_S + 0.1
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers put back


def test_one_ctrl_c_delivered_twice_is_one_graceful_request():
    """The terminal signals the whole process group and a launcher may pass the signal on too: the same
    signal again within the window is the same request; another signal, or the same one later, is a second."""
    clock = Clock()
    with GracefulStop(clock) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        clock.now += 0.2
        os.kill(os.getpid(), signal.SIGINT)  # a duplicate: no KeyboardInterrupt
        assert stop.requested and stop.name == "SIGINT"
        with pytest.raises(SystemExit) as exc:
            os.kill(os.getpid(), signal.SIGTERM)  # another signal inside the window still stops at once
        assert exc.value.code == 143
    with GracefulStop(clock), pytest.raises(KeyboardInterrupt):  # a quick double Ctrl-C: four SIGINTs arrive
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # its duplicate, absorbed
        os.kill(os.getpid(), signal.SIGINT)  # the second press: only one duplicate is absorbed


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


class FakeJob:
    count = 0

    def __init__(self):
        self.signals = []
        FakeJob.count += 1
        self.pid = 10_000_000 + FakeJob.count  # no real process has it

    def send_signal(self, signum):
        self.signals.append(signum)


def test_the_relay_passes_each_signal_to_the_jobs_and_stops_scheduling_once(monkeypatch):
    from puppet.core import relay

    jobs = [FakeJob(), FakeJob()]
    monkeypatch.setattr(relay, "job_processes", lambda: jobs)
    monkeypatch.setattr(relay, "RESCAN_S", 0.05)
    said, stops = [], []
    r = relay.SignalRelay(lambda: stops.append(1), said.append).install()
    try:
        r.relay(signal.SIGINT)
        assert [j.signals for j in jobs] == [[signal.SIGINT], [signal.SIGINT]] and stops == [1]  # once each
        assert "passed to 2 running jobs" in said[0]
        r.relay(signal.SIGINT)  # the second: the jobs stop at once, the scheduler was told already
        assert [len(j.signals) for j in jobs] == [2, 2] and stops == [1] and "again" in said[1]
    finally:
        r.uninstall()


def test_real_signals_go_through_the_relay_and_the_third_gives_the_default_back(monkeypatch):
    """Through the handler and the thread, as in a run: the first two are relayed, the third restores the
    previous handler (pytest's: KeyboardInterrupt) from the main thread."""
    from puppet.core import relay

    jobs = [FakeJob()]
    monkeypatch.setattr(relay, "job_processes", lambda: jobs)
    monkeypatch.setattr(relay, "RESCAN_S", 0.05)
    previous = signal.getsignal(signal.SIGINT)
    stops = []
    r = relay.SignalRelay(lambda: stops.append(1), lambda text: None).install()
    try:
        for count in (1, 2):
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 10
            while len(jobs[0].signals) < count and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(jobs[0].signals) == count and stops == [1]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
        assert signal.getsignal(signal.SIGINT) == previous
    finally:
        r.uninstall()


def test_the_relay_finds_harness_jobs_among_its_children():
    import subprocess
    import sys

    from puppet.core import relay

    repo = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, "-m", "puppet", "models"], stdout=subprocess.DEVNULL, cwd=repo)  # a job
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10  # until the child has exec'd (its command line is python's)
        while child.pid not in (pids := {p.pid for p in relay.job_processes()}) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.pid in pids and other.pid not in pids
    finally:
        other.kill()
        child.wait(timeout=60)
        other.wait()


def test_the_relay_stays_out_of_cluster_runs():
    from types import SimpleNamespace

    from puppet.core.relay import relay_signals

    cluster = SimpleNamespace(scheduler=SimpleNamespace(exit_gracefully=lambda: None), local_exec=False)
    assert relay_signals(cluster) is None
    assert relay_signals(SimpleNamespace(scheduler=None, local_exec=True)) is None
