"""The Snakemake workflow: the grid is planned, bad configs fail early, the smoke profile runs end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))


def snakemake(*args, cwd=REPO, check=True):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def test_dry_run_plans_the_whole_grid(tmp_path):
    from puppet.config import load_config, run_grid

    n_runs = len(run_grid(load_config(REPO / "config" / "config.yaml")))
    out = snakemake("tables", "-n", "--cores", "1", "--directory", str(tmp_path), "--quiet", "rules").stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["train"] == n_runs and counts["measure"] == n_runs
    assert counts["collate"] == 1 and counts["paper_tables"] == 1


def test_profile_file_replaces_the_default(tmp_path):
    """--configfile config/paper.yaml must not inherit the quick profile's data_overrides or model_kwargs."""
    import json

    out = snakemake("tables", "-n", "-p", "--cores", "1", "--directory", str(tmp_path),
                    "--configfile", str(REPO / "config" / "paper.yaml")).stdout
    specs = [json.loads(line.split("--spec ", 1)[1].split(" --out-dir")[0].strip("'"))
             for line in out.splitlines() if "puppet train --spec" in line]
    assert specs and all(s["profile"] == "paper" and s["max_channels"] == 512 for s in specs)
    puppet = next(s for s in specs if s["model"] == "puppet_cnn" and s["dataset"] == "cifar10")
    assert puppet["model_kwargs"] == {}  # the quick profile's dl_min override must not leak in
    cifar100 = next(s for s in specs if s["dataset"] == "cifar100")
    assert cifar100["data"]["train_size"] == 8000  # not the quick profile's cifar100 override


def test_bad_config_fails_before_any_job(tmp_path):
    proc = snakemake("tables", "-n", "--cores", "1", "--directory", str(tmp_path), "--config", "models=[resnet_9000]", check=False)
    assert proc.returncode != 0
    assert "resnet_9000" in proc.stderr + proc.stdout and "choose one of" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_smoke_profile_end_to_end(tmp_path):
    snakemake("all", "--cores", "2", "--directory", str(tmp_path), "--configfile", str(REPO / "config" / "smoke.yaml"))
    df = pd.read_csv(tmp_path / "results" / "metrics.csv")
    assert set(df["model"]) == {"alexnet", "resnet"} and (df["status"] == "ok").all()
    for col in ("top1", "top5", "stored_params", "param_size_mb", "macs", "latency_s_per_img", "throughput_img_per_s"):
        assert df[col].notna().all() and (df[col] > 0).all(), col
    assert (tmp_path / "results" / "table2.csv").is_file() and (tmp_path / "results" / "tables.md").is_file()
    assert list((tmp_path / "results" / "figures").glob("synthetic_top1_vs_*.png"))
    # Finished runs are not redone, and the tables survive a rerun.
    again = snakemake("tables", "-n", "--cores", "1", "--directory", str(tmp_path), "--configfile", str(REPO / "config" / "smoke.yaml"))
    assert "Nothing to be done" in again.stdout + again.stderr
