"""Fault injection: what a GPU-day of results survives.

Each case breaks something the way it breaks in practice (a killed process, Ctrl-C, a truncated
file, a changed spec, bad data) and checks the promise: the failure is loud, a rerun redoes
exactly what is missing, a finished result is never lost or overwritten, bad data is refused
before training with one line naming the file and the fix.

The workflow cases run Snakemake on the smoke profile (synthetic data, tiny models) from the
repository root, as the README does. ``PUPPET_FAILPOINT`` (puppet/core/job.py) kills or fails one
chosen training job; everything else is the real thing.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch

from puppet.core.config import ConfigError, load_config, preflight, run_grid, validate_config
from puppet.core.data import make_splits
from puppet.core.datasets import DataError, check_npz, load_dataset
from puppet.core.runs import attempts, inspect_run, record_failure, set_aside
from puppet.core.specs import RunSpec
from puppet.core.train import train_main

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
SMOKE = str(REPO / "config" / "smoke.yaml")
# Three runs of a two-epoch grid: enough to kill one mid-run while the others finish.
GRID = ("--config", "models=[alexnet]", "seeds=[0,1,2]", "epochs=2")


def snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    full_env.pop("PUPPET_FAILPOINT", None)
    full_env.update(env or {})
    return subprocess.run(
        [SNAKEMAKE, "tables", "-p", "--cores", "2", "--directory", str(workdir), "--configfile", SMOKE, *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def run_dirs(workdir: Path) -> dict[int, Path]:
    """seed -> run folder of the grid's alexnet runs."""
    return {int(p.parent.name[4:]): p for p in (workdir / "results/runs/smoke/synthetic/alexnet").glob("seed*/*")}


def record(path: Path) -> dict:
    return json.loads(path.read_text())


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def planned_trains(proc: subprocess.CompletedProcess) -> list[str]:
    """The run folders of the train jobs an invocation ran (or planned, with -n)."""
    return [
        line.split("--out-dir ")[1].split()[0]
        for line in (proc.stdout + proc.stderr).splitlines()
        if "puppet train --spec" in line
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished three-run grid; tests damage copies of it."""
    workdir = tmp_path_factory.mktemp("finished")
    proc = snakemake(workdir, *GRID)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (workdir / "console.txt").write_text(output(proc))  # the job order, for the timing-isolation test
    return workdir


def copy_of(finished: Path, tmp_path: Path) -> Path:
    workdir = tmp_path / "copy"
    shutil.copytree(finished, workdir, symlinks=True)  # .snakemake/ too: the params record
    return workdir


RESULT_KEYS = ("top1", "top5", "test_loss", "final_train_loss", "config_hash")


# --------------------------------------------------------------------------- the workflow


def job_events(console: str) -> list[tuple[str, int, str]]:
    """("start" | "end", jobid, rule) in the order Snakemake's console reports them."""
    events, rule = [], None
    for line in console.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("jobid:") and rule:
            events.append(("start", int(line.split(":")[1]), rule))
            rule = None
        elif line.startswith("Finished jobid:"):
            events.append(("end", int(line.split()[2]), line.split("Rule: ")[1].rstrip(")")))
    return events


@pytest.mark.slow
def test_a_timing_job_never_runs_beside_another_job(finished):
    """The default profile's machine resource: a measure job starts only when nothing runs, and
    nothing starts until it ends (two cores, three runs: training could run beside it before)."""
    running: dict[int, str] = {}
    measured = 0
    for kind, job, rule in job_events((finished / "console.txt").read_text()):
        if kind == "start":
            assert not any(r == "measure" for r in running.values()), f"{rule} started beside a measure job"
            if rule == "measure":
                assert not running, f"a measure job started beside {sorted(running.values())}"
                measured += 1
            running[job] = rule
        else:
            running.pop(job, None)
    assert measured == 3


@pytest.mark.slow
def test_killed_training_leaves_the_others_and_resumes_to_identical_metrics(finished, tmp_path):
    killed = snakemake(tmp_path, *GRID, env={"PUPPET_FAILPOINT": "kill-after-epoch:1:alexnet/seed1"})
    assert killed.returncode != 0
    runs = run_dirs(tmp_path)
    assert record(runs[0] / "train.json")["status"] == "ok" and record(runs[2] / "train.json")["status"] == "ok"
    assert not (runs[1] / "train.json").exists() and (runs[1] / "checkpoint.pt").is_file()
    assert "UNFINISHED smoke/synthetic/alexnet/seed1" in output(killed)  # the end-of-run summary names it

    resumed = snakemake(tmp_path, *GRID)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [Path(p).parent.name for p in planned_trains(resumed)] == ["seed1"]  # only the killed run
    assert "resuming" in (runs[1] / "train.log").read_text()
    reference = run_dirs(finished)
    for seed in (0, 1, 2):
        got, want = record(runs[seed] / "train.json"), record(reference[seed] / "train.json")
        assert {k: got[k] for k in RESULT_KEYS} == {k: want[k] for k in RESULT_KEYS}, seed
        assert got["history"][-1]["loss"] == want["history"][-1]["loss"]


@pytest.mark.slow
def test_sigterm_mid_epoch_is_reported_as_stopped_and_the_rerun_resumes_to_identical_metrics(finished, tmp_path):
    """What SLURM sends at a time limit: the step is finished and kept, the summary says so truly."""
    stopped = snakemake(tmp_path, *GRID, env={"PUPPET_FAILPOINT": "term-at-step:2:2:alexnet/seed1"})
    assert stopped.returncode != 0
    runs = run_dirs(tmp_path)
    assert not (runs[1] / "train.json").exists() and not (runs[1] / "failures.jsonl").exists()
    assert "stopped by SIGTERM at epoch 2/2, step 2; rerun resumes" in (runs[1] / "train.log").read_text()
    summary = "UNFINISHED smoke/synthetic/alexnet/seed1: stopped by SIGTERM at epoch 2/2, step 2; rerun resumes"
    assert summary in output(stopped)

    resumed = snakemake(tmp_path, *GRID)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [Path(p).parent.name for p in planned_trains(resumed)] == ["seed1"]
    assert (
        "resuming" in (runs[1] / "train.log").read_text() and "epoch 2, step 2" in (runs[1] / "train.log").read_text()
    )
    got, want = record(runs[1] / "train.json"), record(run_dirs(finished)[1] / "train.json")
    assert {k: got[k] for k in RESULT_KEYS} == {k: want[k] for k in RESULT_KEYS}
    assert got["history"][-1]["loss"] == want["history"][-1]["loss"]


def _mount_unavailable(tmp_path: Path) -> str:
    """'' where this test may mount a file system in a mount namespace of its own, else why not."""
    if not shutil.which("unshare"):
        return "no unshare command here"
    probe = tmp_path / "mount-probe"
    probe.mkdir()
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"mount -t tmpfs -o size=16k tmpfs {probe}"], capture_output=True, text=True
    )
    return "" if done.returncode == 0 else f"cannot mount here (unshare --mount: {done.stderr.strip()[:120]})"


@pytest.mark.slow
@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_a_run_on_a_full_or_read_only_disk_fails_with_its_cause_and_the_others_finish(finished, tmp_path, disk):
    why = _mount_unavailable(tmp_path)
    if why:
        pytest.skip(why)
    folder = tmp_path / run_dirs(finished)[1].relative_to(finished)  # seed 1's folder, on a disk of its own
    folder.mkdir(parents=True)
    if disk == "full":  # a tiny tmpfs, filled: not even the failure record fits
        mount = f"mount -t tmpfs -o size=64k tmpfs {folder} && dd if=/dev/zero of={folder}/fill bs=1k count=100"
    else:
        mount = f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder}"
    cmd = [SNAKEMAKE, "tables", "-p", "--cores", "2", "--directory", str(tmp_path), "--configfile", SMOKE, *GRID]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PUPPET_FAILPOINT", None)
    script = f"{mount} 2>/dev/null; exec {' '.join(map(shlex.quote, cmd))}"
    proc = subprocess.run(
        ["unshare", "--mount", "bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 1, output(proc)[-3000:]
    assert "Traceback" not in output(proc)
    (line,) = [line for line in output(proc).splitlines() if line.strip().startswith("FAILED")]
    assert "smoke/synthetic/alexnet/seed1: " in line
    if disk == "full":
        assert "disk full? 0.00 GB free there" in line and "recorded in .snakemake/log/puppet-failures.jsonl" in line
    else:
        assert "read-only file system; remount it writable" in line and "GB free" not in line
    reference = run_dirs(finished)
    for seed in (0, 2):  # the other runs finished
        got = record(run_dirs(tmp_path)[seed] / "train.json")
        assert {k: got[k] for k in RESULT_KEYS} == {k: record(reference[seed] / "train.json")[k] for k in RESULT_KEYS}

    again = snakemake(tmp_path, *GRID)  # the disk back: the plain rerun ends with the reference results
    assert again.returncode == 0, again.stderr[-3000:]
    assert [Path(p).parent.name for p in planned_trains(again)] == ["seed1"]
    got = record(run_dirs(tmp_path)[1] / "train.json")
    assert {k: got[k] for k in RESULT_KEYS} == {k: record(reference[1] / "train.json")[k] for k in RESULT_KEYS}
    assert (pd.read_csv(tmp_path / "results/metrics.csv")["status"] == "ok").sum() == 3


@pytest.mark.slow
def test_failed_run_is_loud_tables_complete_and_only_it_is_retried(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    before = {s: (p / "train.json").read_bytes() for s, p in run_dirs(workdir).items()}
    grid4 = ("--config", "models=[alexnet]", "seeds=[0,1,2,3]", "epochs=2")
    failed = snakemake(workdir, *grid4, env={"PUPPET_FAILPOINT": "raise:alexnet/seed3"})
    assert failed.returncode == 1
    summary = [line for line in output(failed).splitlines() if line.strip().startswith("FAILED")]
    assert len(summary) == 1 and "alexnet/seed3: RuntimeError: injected failure" in summary[0]
    metrics = pd.read_csv(workdir / "results/metrics.csv").set_index("seed")
    assert metrics.loc[3, "status"] == "error" and "injected failure" in metrics.loc[3, "error"]
    assert (metrics.loc[[0, 1, 2], "status"] == "ok").all() and (workdir / "results/tables.md").is_file()

    plan = snakemake(workdir, *grid4, "-n")  # after "fixing the cause": the failed run and nothing else
    assert [Path(p).parent.name for p in planned_trains(plan)] == ["seed3"]
    assert "failed or were damaged before and are retried" in output(plan)
    retried = snakemake(workdir, *grid4)
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert [Path(p).parent.name for p in planned_trains(retried)] == ["seed3"]
    runs = run_dirs(workdir)
    assert all((runs[s] / "train.json").read_bytes() == before[s] for s in (0, 1, 2))
    history = (runs[3] / "train.log.history").read_text()
    assert history.count("==== attempt started") == 2 and "injected failure" in history  # the failure's log is kept
    assert (pd.read_csv(workdir / "results/metrics.csv")["status"] == "ok").all()
    assert "Nothing to be done" in output(snakemake(workdir, *grid4, "-n"))


@pytest.mark.slow
def test_damaged_files_are_set_aside_and_the_runs_redone(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    runs = run_dirs(workdir)
    (runs[0] / "train.json").write_text((runs[0] / "train.json").read_text()[:60])  # truncated
    (runs[0] / "measure.json").write_text("garbage")  # and its measurement: both stages redone once
    (runs[1] / "measure.json").write_text("{}")  # emptied
    for name in ("model.pt", "checkpoint.pt"):  # a half-copied run folder, not measured yet
        with open(runs[2] / name, "r+b") as f:
            f.truncate(1000)
    (runs[2] / "measure.json").unlink()
    seed1_train = (runs[1] / "train.json").read_bytes()
    plan = snakemake(workdir, *GRID, "-n")  # a dry run shows the redo and changes nothing
    assert sorted(Path(p).parent.name for p in planned_trains(plan)) == ["seed0", "seed2"]
    assert not list(workdir.glob("results/runs/**/*.corrupt-*"))
    proc = snakemake(workdir, *GRID)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in (runs[0] / "train.json", runs[0] / "measure.json", runs[1] / "measure.json", runs[2] / "model.pt"):
        assert f"{path.relative_to(workdir)} is damaged" in output(proc)
        assert list(path.parent.glob(f"{path.name}.corrupt-*")), path  # kept, not deleted
    assert (runs[1] / "train.json").read_bytes() == seed1_train  # only measured again, not retrained
    assert "training starts over" in (runs[2] / "train.log").read_text()  # the damaged checkpoint
    assert "resuming" in (runs[0] / "train.log").read_text()  # a sound checkpoint is resumed
    reference = run_dirs(finished)
    for seed in (0, 1, 2):
        assert {k: record(runs[seed] / "train.json")[k] for k in RESULT_KEYS} == {
            k: record(reference[seed] / "train.json")[k] for k in RESULT_KEYS
        }
        assert record(runs[seed] / "measure.json")["status"] == "ok"
    assert (pd.read_csv(workdir / "results/metrics.csv")["status"] == "ok").all()
    assert "Nothing to be done" in output(snakemake(workdir, *GRID, "-n"))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["a row cut", "a truncated header", "a table's row cut"])
def test_a_damaged_derived_table_is_kept_aside_and_rebuilt_from_the_run_records(finished, tmp_path, damage):
    workdir = copy_of(finished, tmp_path)
    name = "table1.csv" if damage == "a table's row cut" else "metrics.csv"
    derived = workdir / "results" / name
    reference, records = derived.read_bytes(), {p: p.read_bytes() for p in workdir.glob("results/runs/**/*.json")}
    lines = reference.decode().splitlines(keepends=True)
    rows = len(lines) - 1
    if damage == "a truncated header":
        derived.write_text(lines[0][:20])  # what a full disk leaves: no row, half a header
        why = "0 data rows where"
    else:
        derived.write_text("".join(lines[:-1]))
        why = f"{rows - 1} data rows where {rows} were written"

    plan = snakemake(workdir, *GRID, "-n")  # the dry run shows the damage and the rebuild, and changes nothing
    assert f"results/{name} does not match its content check ({why}" in output(plan)
    assert ("rule collate" in output(plan)) == (name == "metrics.csv") and "rule paper_tables" in output(plan)
    assert planned_trains(plan) == [] and not list(workdir.glob("results/*.corrupt-*"))

    proc = snakemake(workdir, *GRID)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert derived.read_bytes() == reference  # rebuilt from the run records, which are untouched
    assert all(p.read_bytes() == data for p, data in records.items()) and planned_trains(proc) == []
    (kept,) = workdir.glob(f"results/{name}.corrupt-*")  # the damaged file, kept for the reader
    assert kept.read_bytes() != reference
    assert "No finished runs" not in (workdir / "results/tables.md").read_text()
    assert "Nothing to be done" in output(snakemake(workdir, *GRID, "-n"))


@pytest.mark.slow
def test_a_changed_spec_never_overwrites_a_finished_result(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    before = {p: p.read_bytes() for p in (workdir / "results/runs").rglob("*") if p.is_file()}
    # 1e-4 without a dot is a string to YAML 1.1: accepted as a number all the same
    changed = ("--config", "models=[alexnet]", "seeds=[0]", "epochs=2", "train={lr: 1e-4}")
    proc = snakemake(workdir, *changed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(p.read_bytes() == data for p, data in before.items())  # every finished file intact
    seed0 = sorted((workdir / "results/runs/smoke/synthetic/alexnet/seed0").iterdir())
    assert len(seed0) == 2  # the old spec's folder and the new one's, side by side
    (new,) = [p for p in seed0 if p.name != run_dirs(finished)[0].name]
    assert list(pd.read_csv(workdir / "results/metrics.csv")["config_hash"]) == [new.name]
    assert record(new / "train.json")["status"] == "ok"
    back = snakemake(workdir, *GRID, "-n")  # the old spec again: its results are found, nothing retrains
    assert planned_trains(back) == []


@pytest.mark.slow
def test_readme_recipe_redoes_one_finished_run_from_scratch(finished, tmp_path):
    """README "Retry exactly what failed": delete the run's folder, then --forcerun its train.json."""
    workdir = copy_of(finished, tmp_path)
    runs = run_dirs(workdir)
    others = {s: (runs[s] / "train.json").read_bytes() for s in (0, 2)}
    shutil.rmtree(runs[1])
    proc = snakemake(workdir, *GRID, "--forcerun", str(runs[1].relative_to(workdir) / "train.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [Path(p).parent.name for p in planned_trains(proc)] == ["seed1"]
    assert "resuming" not in (runs[1] / "train.log").read_text()  # from scratch
    assert {k: record(runs[1] / "train.json")[k] for k in RESULT_KEYS} == {
        k: record(run_dirs(finished)[1] / "train.json")[k] for k in RESULT_KEYS
    }
    assert all((runs[s] / "train.json").read_bytes() == others[s] for s in (0, 2))


def interruptible(tmp_path: Path, epochs: int) -> tuple[tuple[str, ...], subprocess.Popen]:
    """A one-run workflow long enough to interrupt, started in its own session, once its first checkpoint
    exists: the config overrides and the Snakemake process."""
    args = (
        "--config",
        "models=[alexnet]",
        "seeds=[0]",
        f"epochs={epochs}",
        "data={train_size: 1900, val_size: 64, test_size: 128}",
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PUPPET_FAILPOINT", None)
    proc = subprocess.Popen(
        [SNAKEMAKE, "tables", "--cores", "2", "--directory", str(tmp_path), "--configfile", SMOKE, *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while (
        not list(tmp_path.glob("results/runs/**/checkpoint.pt")) and time.monotonic() < deadline and proc.poll() is None
    ):
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    return args, proc


@pytest.mark.slow
def test_ctrl_c_then_rerun_completes(tmp_path):
    args, proc = interruptible(tmp_path, epochs=4)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground process group
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not list(tmp_path.glob("results/runs/**/train.json"))

    again = snakemake(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    (run,) = run_dirs(tmp_path).values()
    assert record(run / "train.json")["status"] == "ok" and len(record(run / "train.json")["history"]) == 4
    assert "resuming" in (run / "train.log").read_text()
    assert (run / "train.log.history").read_text().count("==== attempt started") == 2  # the interrupted log kept


@pytest.mark.slow
def test_sigint_to_snakemake_alone_stops_the_jobs_with_a_summary(tmp_path):
    """SIGINT to the snakemake process only (a launcher, kill; not the terminal's process group): Snakemake 9
    passes nothing on by itself and waited for the jobs, and a second SIGINT printed an event-loop traceback
    without the summary. Now the job stops after its step with a checkpoint, the summary says so, nothing is
    left running, and the plain rerun resumes."""
    args, proc = interruptible(tmp_path, epochs=6)
    jobs = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    os.kill(proc.pid, signal.SIGINT)  # the snakemake process alone
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out[-3000:]
    assert "event loop" not in out and "Traceback" not in out, out[-3000:]
    assert "passed to 1 running job" in out
    (run,) = run_dirs(tmp_path).values()
    assert record(run / "stopped.json")["signal"] == "SIGINT"  # a graceful stop: the step's checkpoint
    assert "stopped by SIGINT at epoch" in (run / "train.log").read_text()  # the log's tee survived
    assert "UNFINISHED" in out and "stopped by SIGINT" in out
    deadline = time.monotonic() + 10  # the log's tee ends at the end of its input, a moment after its job
    while [pid for pid in jobs if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in jobs if _alive(pid)], "a job was left running"
    assert not list((tmp_path / ".snakemake" / "locks").glob("*"))
    again = snakemake(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert record(run / "train.json")["status"] == "ok" and len(record(run / "train.json")["history"]) == 6


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.slow
def test_without_snakemakes_record_the_fix_is_named(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    (run_dirs(workdir)[0] / "measure.json").write_text("")
    shutil.rmtree(workdir / ".snakemake")
    plan = output(snakemake(workdir, *GRID, "-n"))
    assert "no record of earlier runs" in plan and "--forcerun results/runs/smoke/synthetic/alexnet/seed0/" in plan


@pytest.mark.slow
def test_a_deleted_record_of_a_tabulated_run_is_named(finished, tmp_path):
    """Snakemake does not remake a missing intermediate file of an up-to-date table: say so."""
    workdir = copy_of(finished, tmp_path)
    (run_dirs(workdir)[2] / "measure.json").unlink()
    plan = output(snakemake(workdir, *GRID, "-n"))
    assert "lost their train.json or measure.json" in plan
    assert f"--forcerun {run_dirs(workdir)[2].relative_to(workdir)}/measure.json" in plan


@pytest.mark.slow
def test_bad_data_source_fails_before_any_job(tmp_path):
    bad = tmp_path / "channels_first.npz"
    _npz(bad, channels_first=True)
    proc = snakemake(
        tmp_path, "-n", "--config", "datasets=[cifar10]", "models=[alexnet]", f"data_sources={{cifar10: {bad}}}"
    )
    assert proc.returncode != 0 and not planned_trains(proc)
    (line,) = [line for line in output(proc).splitlines() if "channels-first" in line]
    assert str(bad) in line and "transpose(0, 2, 3, 1)" in line


# --------------------------------------------------------------------------- data refused before training


def _npz(path: Path, n_train=40, n_test=20, size=32, channels=3, classes=10, channels_first=False, **override) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, size, size, channels), dtype=np.uint8),
        "y_train": np.arange(n_train) % classes,
        "x_test": rng.integers(0, 256, (n_test, size, size, channels), dtype=np.uint8),
        "y_test": np.arange(n_test) % classes,
    }
    if channels_first:
        arrays = {k: v.transpose(0, 3, 1, 2) if k.startswith("x") else v for k, v in arrays.items()}
    arrays.update(override)
    np.savez(path, **arrays)
    return path


BAD_DATA = {
    "channels-first": (dict(channels_first=True), "looks channels-first"),
    "test images of another size": (dict(x_test=np.zeros((20, 16, 16, 3), np.uint8)), "test images (16, 16, 3) differ"),
    "16x16 images named cifar10": (dict(size=16), "images are 16x16 but cifar10 is 32x32"),
    "grey images named cifar10": (dict(channels=1), "1 channel(s) but cifar10 has 3"),
    "labels out of range": (dict(y_test=np.arange(20) % 11), "labels 0..10 but cifar10 has 10 classes"),
    "negative labels": (dict(y_train=np.arange(40) % 10 - 1), "labels -1..8"),
    "float images": (dict(x_train=np.zeros((40, 32, 32, 3), np.float32)), "float32, not uint8"),
    "empty test split": (dict(n_test=0, y_test=np.zeros(0, np.int64)), "x_test is empty"),
    "one label per image": (dict(y_train=np.arange(39) % 10), "for 40 images"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_npz_is_refused_in_one_line_naming_file_and_fix(case, tmp_path):
    kwargs, expected = BAD_DATA[case]
    path = _npz(tmp_path / "d.npz", **kwargs)
    for check in (lambda: load_dataset("cifar10", source=path), lambda: check_npz(path, "cifar10")):
        with pytest.raises(DataError) as err:
            check()
        message = str(err.value)
        assert expected in message and str(path) in message and "\n" not in message


def test_good_npz_passes_both_checks(tmp_path):
    path = _npz(tmp_path / "d.npz")
    check_npz(path, "cifar10")
    data = load_dataset("cifar10", source=path)
    assert data.x_train.shape == (40, 3, 32, 32) and data.num_classes == 10


def test_empty_test_split_is_refused_before_training(tmp_path):
    data = load_dataset("synthetic")
    data.x_test, data.y_test = data.x_test[:0], data.y_test[:0]
    with pytest.raises(DataError, match="test split of .* is empty"):
        make_splits(data, 100, 10)


def test_data_root_that_is_a_file_names_it(tmp_path):
    root = tmp_path / "data"
    root.write_text("")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_dataset("cifar10", data_root=root, download=True)


def _config(**over) -> dict:
    return validate_config({"profile": "t", "datasets": ["cifar10"], "models": ["alexnet"], **over})


def test_preflight_checks_configured_sources_and_warns_on_absent_defaults(tmp_path):
    with pytest.raises(DataError, match="no file at"):
        preflight(_config(data_sources={"cifar10": str(tmp_path / "nope.npz")}))
    warnings = preflight(_config(data_root=str(tmp_path), download=False))
    assert len(warnings) == 1 and "cifar10: no data at" in warnings[0]
    assert preflight(_config(data_sources={"cifar10": str(_npz(tmp_path / "ok.npz"))})) == []
    # the workflow checks only datasets with runs left to train: a finished grid tabulates without its data
    assert preflight(_config(data_sources={"cifar10": str(tmp_path / "gone.npz")}), datasets=set()) == []


def test_validate_cli_runs_the_preflight_and_shows_run_states(tmp_path):
    bad = _npz(tmp_path / "bad.npz", size=16)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"profile: t\ndatasets: [cifar10]\nmodels: [alexnet]\ndata_sources: {{cifar10: {bad}}}\n")
    cmd = [sys.executable, "-m", "puppet", "validate", "--configfile", str(cfg), "--results", str(tmp_path / "results")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "16x16 but cifar10 is 32x32" in proc.stderr
    _npz(bad)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert (
        proc.returncode == 0 and "not started" in proc.stdout and "results/runs/t/cifar10/alexnet/seed0/" in proc.stdout
    )
    assert f"data cifar10: {bad} (checked: readable, expected layout)" in proc.stdout
    if not torch.cuda.is_available():
        cfg.write_text(cfg.read_text() + "device: cuda\n")
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0 and "device: cuda but no CUDA device is visible here" in proc.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "puppet", "validate", "--configfile", str(tmp_path / "nope.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.yaml" in missing.stderr


# --------------------------------------------------------------------------- run records


def _finished_run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "train.json").write_text(json.dumps({"status": "ok", "top1": 1.0, "config_hash": path.name, "epochs": 1}))
    (path / "measure.json").write_text(json.dumps({"status": "ok", "deployments": [{"deployment": "default"}]}))
    torch.save({"model": {}}, path / "model.pt")
    return path


def test_a_finished_run_without_model_pt_is_left_alone(tmp_path):
    run = _finished_run(tmp_path / "abc")
    (run / "model.pt").unlink()  # deleted to save space: every number is recorded
    state = inspect_run(run)
    assert state.describe() == "done" and not state.damaged and not state.failed
    (run / "measure.json").unlink()  # but a run still to be measured needs it
    assert [p.name for p, _ in inspect_run(run).damaged] == ["model.pt"]


def test_each_set_aside_is_one_attempt(tmp_path):
    """The workflow counts a damaged file as a pending attempt when it plans, then sets it aside
    once per invocation: every set-aside must add exactly one, or a finished run reruns again."""
    run = _finished_run(tmp_path / "abc")
    (run / "train.json").write_text("")
    state = inspect_run(run)
    assert state.train == "corrupt" and state.failed and state.pending("train") == 1 and attempts(run, "train") == 0
    set_aside(run / "train.json", "empty")
    assert attempts(run, "train") == 1 and (run / "train.json").exists()  # the original waits for the rerun
    kept = next(run.glob("train.json.corrupt-*"))
    shutil.copy2(kept, run / "train.json")  # damaged again: restored with its timestamp (cp -p)
    set_aside(run / "train.json", "empty")
    assert attempts(run, "train") == 2 and attempts(run, "measure") == 0
    (run / "measure.json").unlink()
    (run / "model.pt").unlink()
    for n in (3, 4):  # a missing model.pt of a run to be measured, twice
        set_aside(run / "model.pt", "missing")
        assert attempts(run, "train") == n


def test_a_torn_failure_line_does_not_swallow_the_next(tmp_path):
    (tmp_path / "failures.jsonl").write_text('{"stage": "train", "err')  # a writer killed mid-line
    record_failure(tmp_path, "measure", "boom")
    assert attempts(tmp_path, "train") == 1 and attempts(tmp_path, "measure") == 1


def test_a_checkpoint_that_does_not_fit_the_model_says_how_to_resume(tmp_path):
    spec = _spec(tmp_path)
    out = tmp_path / "run"
    assert train_main(spec, out)["status"] == "ok"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    ckpt["model"] = {"not": torch.zeros(1)}  # what a model changed by a code edit looks like
    ckpt["epoch"] = 0
    torch.save(ckpt, out / "checkpoint.pt")
    (out / "train.json").unlink()
    rec = train_main(spec, out)
    assert rec["status"] == "error" and "does not fit this code's alexnet" in rec["error"]
    assert "check out that commit" in rec["error"] and "\n" not in rec["error"]


# --------------------------------------------------------------------------- config friction


@pytest.mark.parametrize("text", ["1e-4", "1E-4", "2.5e-3", ".5"])
def test_yaml_numbers_without_a_dot_are_numbers(text, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"profile: t\ndatasets: [synthetic]\nmodels: [alexnet]\ntrain: {{lr: {text}}}\n")
    assert load_config(cfg)["train"]["lr"] == float(text)


def test_a_word_is_still_not_a_number():
    with pytest.raises(ConfigError, match="train.lr"):
        _config(train={"lr": "fast"})


def test_models_override_limits_the_extra_grid_too():
    cfg = _config(models=["resnet"], extra_grid=[{"datasets": ["cifar100"], "models": ["alexnet", "resnet"]}])
    assert run_grid(cfg) == [("cifar10", "resnet", 0), ("cifar100", "resnet", 0)]


@pytest.mark.parametrize("profile", sorted(p.name for p in (REPO / "config").glob("*.yaml")))
def test_shipped_profiles_list_every_extra_grid_model_in_models(profile):
    cfg = load_config(REPO / "config" / profile)
    for block in cfg["extra_grid"]:
        assert set(block["models"]) <= set(cfg["models"]), block


# --------------------------------------------------------------------------- one job


def _spec(tmp_path, **over) -> RunSpec:
    from puppet.core.config import run_spec

    return run_spec(load_config(SMOKE), "synthetic", "alexnet", 0).replace(**over)


def test_orphaned_temporary_files_are_removed(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    orphan = out / ".checkpoint.pt.k2j3h4.tmp"
    orphan.write_bytes(b"x" * 1000)  # what a SIGKILL during torch.save leaves
    assert train_main(_spec(tmp_path), out)["status"] == "ok"
    assert not orphan.exists()


def test_a_full_disk_names_the_file_and_the_free_space(tmp_path, monkeypatch):
    def full(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    rec = train_main(_spec(tmp_path), tmp_path / "run")
    assert rec["status"] == "error" and "cannot write" in rec["error"] and "checkpoint.pt" in rec["error"]
    assert "GB free there" in rec["error"] and "read-only" not in rec["error"]
    ledger = [json.loads(line) for line in (tmp_path / "run" / "failures.jsonl").read_text().splitlines()]
    assert len(ledger) == 1 and ledger[0]["stage"] == "train"


def test_calibrating_model_without_validation_fails_before_training(tmp_path):
    spec = _spec(tmp_path, model="branchynet", data={"val_size": 0})
    rec = train_main(spec, tmp_path / "run")
    assert rec["status"] == "error" and "data.val_size is 0" in rec["error"]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # refused before the first epoch
