"""Faults around a run's files, unit by unit: the content check of derived tables, the writer lock
of a run folder. (The workflow-level cases are in test_faults.py, signals in test_signals.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from puppet.core import derived
from puppet.core.config import load_config, run_spec
from puppet.core.runs import BUSY_EXIT_CODE, LOCK, inspect_run, lock_holder
from puppet.core.train import train_main

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "config" / "smoke.yaml")


# --------------------------------------------------------------------------- derived tables


def _table(path: Path, rows: int) -> Path:
    path.write_text("model,top1\n" + "".join(f"m{i},{i}.5\n" for i in range(rows)))
    derived.write_checks([path], made_by="test")
    return path


def test_an_intact_table_and_a_missing_one_pass_the_check(tmp_path):
    assert derived.problem(_table(tmp_path / "metrics.csv", 3)) == ""
    assert derived.problem(tmp_path / "absent.csv") == ""  # not written yet: the rule makes it
    check = json.loads(derived.check_path(tmp_path / "metrics.csv").read_text())
    assert check["rows"] == 3 and check["bytes"] == (tmp_path / "metrics.csv").stat().st_size


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda p: p.write_text("".join(p.read_text().splitlines(True)[:-1])), "2 data rows where 3 were written"),
        (lambda p: p.write_text("mod"), "0 data rows where 3 were written"),
        (lambda p: p.write_text(p.read_text().replace("1.5", "9.5")), "bytes where"),  # same rows, other values
        (lambda p: derived.check_path(p).unlink(), "there is none"),
        (lambda p: derived.check_path(p).write_text("{"), "is unreadable"),
    ],
    ids=["row cut", "header cut", "value edited", "no check", "check damaged"],
)
def test_a_damaged_table_is_named_with_what_differs(tmp_path, damage, why):
    path = _table(tmp_path / "metrics.csv", 3)
    damage(path)
    assert why in derived.problem(path)


# --------------------------------------------------------------------------- one writer per run folder


def _spec(**over):
    return run_spec(load_config(SMOKE), "synthetic", "alexnet", 0).replace(**over)


def _hold(folder: Path) -> subprocess.Popen:
    """Another process that holds the folder's writer lock (an orphaned job) until killed."""
    code = (
        "import sys, time; from puppet.core.runs import writer_lock\n"
        f"with writer_lock({str(folder)!r}, 'train'):\n    print('held', flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_at_once_naming_the_holder_and_proceeds_once_it_dies(tmp_path):
    out = tmp_path / "run"
    holder = _hold(out)
    try:
        assert lock_holder(out) == holder.pid
        assert f"being trained by PID {holder.pid}" in inspect_run(out).describe()
        started = time.monotonic()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("PUPPET_FAILPOINT", None)
        cmd = [sys.executable, "-m", "puppet", "train", "--spec", json.dumps(_spec().to_dict()), "--out-dir", str(out)]
        refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert refused.returncode == BUSY_EXIT_CODE, refused.stderr[-2000:]
        assert f"is being written by PID {holder.pid}" in refused.stdout and f"kill {holder.pid}" in refused.stdout
        assert time.monotonic() - started < 60  # refused before any data or model work (imports only)
        assert not (out / "train.json").exists() and not (out / "failures.jsonl").exists()
        assert not (out / "checkpoint.pt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel releases the lock of a killed process
        holder.wait()
    assert lock_holder(out) is None and (out / LOCK).exists()  # a stale lock file means nothing
    assert train_main(_spec(), out)["status"] == "ok"


# --------------------------------------------------------------------------- a disk that cannot be written


def test_a_read_only_results_folder_is_refused_in_one_line_and_a_read_only_run_is_left_out(tmp_path, monkeypatch):
    from puppet.core import invocation
    from puppet.core.runs import RunState

    monkeypatch.setattr(invocation, "read_only", lambda path: Path(path).name in ("results", "seed1"))
    with pytest.raises(ValueError, match=r"^results/ is on a read-only file system; remount it writable"):
        invocation.unwritable_runs([], "results")
    states = [RunState(tmp_path / "seed0"), RunState(tmp_path / "seed1")]
    left_out = invocation.unwritable_runs(states, tmp_path)
    assert list(left_out) == [str(tmp_path / "seed1")]
    lines, failed = invocation.end_summary(states, crashed_ok=True, left_out=left_out)
    assert failed and "1 failed of 2 run(s):" in lines[0]
    assert any("read-only file system" in line and "left out of this invocation" in line for line in lines)


def test_a_failure_its_folder_cannot_take_goes_to_the_fallback_ledger_and_the_summary(tmp_path, monkeypatch, capsys):
    from puppet.core import invocation, runs

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".snakemake" / "log").mkdir(parents=True)
    folder = tmp_path / "results" / "runs" / "p" / "d" / "m" / "seed0" / "h"
    folder.parent.mkdir(parents=True)
    folder.write_text("")  # a file where the folder should be: nothing can be written into it
    since = time.time()
    ledger = runs.record_failure(folder, "train", "CheckpointWriteError: cannot write ...")
    assert ledger == Path(".snakemake/log/puppet-failures.jsonl")
    printed = capsys.readouterr().out
    assert printed.startswith("PUPPET-FAILURE {") and json.loads(printed.split(" ", 1)[1])["stage"] == "train"
    found = runs.fallback_failures(since)
    assert found[str(folder)]["error"] == "CheckpointWriteError: cannot write ..."
    lines, failed = invocation.end_summary([runs.RunState(folder)], crashed_ok=False, fallback=found)
    assert failed and "FAILED p/d/m/seed0: CheckpointWriteError" in lines[1] and "puppet-failures.jsonl" in lines[1]
    assert not any("UNFINISHED" in line for line in lines)
    assert runs.fallback_failures(time.time() + 5) == {}  # an earlier invocation's failures are not this one's


def test_written_files_get_the_permissions_open_gives_them(tmp_path):
    """mkstemp makes 0600 files: a run's model.pt and train.json were private while its logs were not."""
    from puppet.core.io import atomic_write_json

    atomic_write_json({"a": 1}, tmp_path / "train.json")
    (tmp_path / "plain.txt").write_text("x")
    assert (tmp_path / "train.json").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_a_log_that_cannot_be_written_does_not_kill_the_job(tmp_path):
    """The rules send a job's stderr to its log through tee: on a full disk tee dies, and the job's
    first message used to raise BrokenPipeError before it could record anything."""
    read, write = os.pipe()
    os.close(read)  # the log's reader is gone
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PUPPET_FAILPOINT", None)
    cmd = [sys.executable, "-m", "puppet", "train", "--spec", json.dumps(_spec(epochs=1).to_dict())]
    proc = subprocess.run(
        [*cmd, "--out-dir", str(tmp_path / "run")],
        stderr=write,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
        timeout=300,
    )
    os.close(write)
    assert proc.returncode == 0
    assert "warning: the job's log cannot be written (Broken pipe)" in proc.stdout and "done: " in proc.stdout
    assert json.loads((tmp_path / "run" / "train.json").read_text())["status"] == "ok"


# --------------------------------------------------------------------------- a quiet machine for timing


def test_busy_cores_sees_another_process_spinning():
    from puppet.core import timing

    quiet = timing.busy_cores()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = timing.busy_cores()
    finally:
        spinner.kill()
        spinner.wait()
    if quiet is None:
        pytest.skip("the system does not report CPU time (/proc/stat)")
    assert busy >= 0.5 and busy > quiet  # one spinning process: about one core


def test_a_timing_started_on_a_busy_machine_is_flagged_in_its_rows(tmp_path, monkeypatch, capsys):
    from puppet.core import measure

    spec = _spec(epochs=1)
    assert train_main(spec, tmp_path)["status"] == "ok"
    monkeypatch.setattr(measure.timing, "wait_for_quiet", lambda: 1.7)
    record = measure.measure_main(spec, tmp_path)
    assert record["status"] == "ok"
    assert all(r["timing_contended"] and r["machine_busy_cores"] == 1.7 for r in record["deployments"])
    out = capsys.readouterr().out
    assert "1.7 of" in out and "cores were busy with other processes" in out and "timing_contended" in out
    monkeypatch.setattr(measure.timing, "wait_for_quiet", lambda: 0.1)
    assert not any(r["timing_contended"] for r in measure.measure_main(spec, tmp_path)["deployments"])
