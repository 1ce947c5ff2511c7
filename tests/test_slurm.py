"""The SLURM path, end to end on a real one-node cluster (tests/slurm_cluster.py): the smoke profile
through ``sbatch`` with the workflow's SLURM profile, every job's SLURM_JOB_ID in its run record."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import slurm_cluster

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake") or "snakemake"

# The flags a site without accounting or accounts needs beside the profile (docs: "SLURM").
SITE_FLAGS = [
    "--default-resources",
    "slurm_partition=main",
    "mem_mb=2000",
    "cpus_per_task=1",
    "runtime=30",
    "--slurm-no-account",
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "5",
]


@pytest.mark.slow
def test_smoke_profile_runs_through_sbatch(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="optional extra: pip install -e '.[slurm]'")
    reason = slurm_cluster.why_not()
    if reason:
        pytest.skip(reason)
    work = tmp_path / "work"
    for part in ("workflow", "config"):  # a private working directory: its own results/ and .snakemake/
        shutil.copytree(REPO / part, work / part)
    shutil.copy(REPO / "environment.yml", work / "environment.yml")  # every job rule's conda: environment
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with slurm_cluster.local_cluster(tmp_path / "cluster"):
        proc = subprocess.run(
            [SNAKEMAKE, "all", "--workflow-profile", "workflow/profiles/slurm", "--configfile", "config/smoke.yaml"]
            + ["--jobs", "2", "--cores", "2", *SITE_FLAGS],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    records = sorted((work / "results" / "runs" / "smoke").glob("*/*/seed0/*/train.json"))
    assert len(records) == 2
    train_ids = [json.loads(r.read_text())["slurm_job_id"] for r in records]
    measure_ids = [json.loads(r.with_name("measure.json").read_text())["measure_slurm_job_id"] for r in records]
    assert all(i.isdigit() for i in train_ids + measure_ids) and len(set(train_ids + measure_ids)) == 4
    assert (work / "results" / "tables.md").is_file()
