"""Check (not a test): ``puppet-bench plan``'s projection against the measured wall time of the same jobs.

In a fresh checkout (``--workdir``, its own ``results/`` is replaced), plan the profile, then run it
from scratch with ``snakemake --cores 2 tables`` and the same ``--configfile``/``--config``, and
append one row per job and one for the whole invocation to ``results/bench/plan_check.csv`` of this
repository: projected seconds, measured seconds (per job from Snakemake's log, whole-run wall clock
around the snakemake command) and their ratio. Run it alone on a quiet machine:

    git clone -q . /tmp/check && python bench/plan_check.py --workdir /tmp/check --name smoke \\
        --configfile config/smoke.yaml
    python bench/plan_check.py --workdir /tmp/check --name quick6 \\
        --config data_root=../shared/data "data_sources={cifar10: ../shared/data/cifar10_subset.npz}" \\
        "models=[alexnet,resnet,mobilenet_v2,skipnet,branchynet,puppet_cnn]" "extra_grid=[]"

(``--workdir`` beside the data when relative data paths are given.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "bench" / "plan_check.csv"
STAMP = re.compile(r"\[(\w{3} \w{3}\s+\d+ \d+:\d+:\d+ \d{4})\]")


def job_seconds(log: str) -> dict[tuple[str, str], float]:
    """(model or '', rule) -> seconds from Snakemake's console log: from the stamp before a job's
    "rule" block to the stamp before its "Finished jobid" line (whole seconds, as Snakemake prints)."""
    now, start, rule, jobs, out = None, None, "", {}, {}
    current: list = []
    for line in log.splitlines():
        if m := STAMP.match(line):
            now = dt.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        if m := re.match(r"(?:local)?rule (\w+):", line):
            rule, start = m.group(1), now
        if m := re.match(r"\s+jobid: (\d+)", line):
            current = jobs[m.group(1)] = [rule, "", start]
        if (m := re.search(r"wildcards: .*model=([\w-]+)", line)) and current:
            current[1] = m.group(1)
        if m := re.match(r"Finished jobid: (\d+)", line):
            r, model, t0 = jobs.get(m.group(1), (None, None, None))
            if r and now and t0:
                out[(model, r)] = (now - t0).total_seconds()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path, help="a fresh checkout; its results/ is replaced")
    parser.add_argument("--name", required=True, help="the check's label in the CSV")
    parser.add_argument("--configfile", nargs="+", default=[])
    parser.add_argument("--config", nargs="+", default=[])
    args = parser.parse_args()
    work = args.workdir.resolve()
    env = {**os.environ, "PYTHONPATH": str(work)}
    profile = ["--configfile", *args.configfile] if args.configfile else []
    overrides = ["--config", *args.config] if args.config else []
    for stale in (work / "results", work / ".snakemake"):
        shutil.rmtree(stale, ignore_errors=True)
    plan_csv = work / "plan_check_plan.csv"
    cmd = [sys.executable, "-m", "puppet", "plan", *profile, *overrides, "--out", str(plan_csv), "--recalibrate"]
    subprocess.run(cmd, cwd=work, env=env, check=True)
    plan = pd.read_csv(plan_csv)
    t0 = time.perf_counter()
    run = subprocess.run(
        ["snakemake", "--cores", "2", "tables", *profile, *overrides], cwd=work, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if run.returncode:
        sys.exit(f"snakemake failed ({run.returncode}); its log:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    measured = job_seconds(run.stdout + run.stderr)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from puppet.core.repro import cpu_model as cpu_name

    rows = []
    for r in plan.itertuples():
        key = (r.model if isinstance(r.model, str) else "", r.job)
        if key in measured:
            rows.append({"check": args.name, "job": f"{key[0]}/{key[1]}".lstrip("/"), "projected_s": r.projected_s})
            rows[-1].update(measured_s=measured[key])
    total = plan["projected_s"].sum()
    rows.append({"check": args.name, "job": "whole invocation (wall clock)", "projected_s": total, "measured_s": wall})
    frame = pd.DataFrame(rows)
    frame["ratio"] = frame["projected_s"] / frame["measured_s"]
    frame = frame.round({"projected_s": 1, "measured_s": 1, "ratio": 2})
    frame["machine"] = f"{cpu_name()}, 2 cores"
    frame["measured_utc"] = when
    old = pd.read_csv(OUT) if OUT.is_file() else pd.DataFrame()
    old = old[old["check"] != args.name] if len(old) else old
    OUT.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([old, frame], ignore_index=True).to_csv(OUT, index=False)
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
