"""The Snakemake workflow: the workflow profile is in force, the grid is planned, bad configs fail
early, the smoke profile runs end to end.

Every call runs `snakemake` as the README does: from the repository root, without -s (Snakemake
finds workflow/Snakefile and, beside it, profiles/default); --directory keeps outputs out of the repo.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))


def snakemake(*args, cwd=REPO, check=True):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def parsed_cli(*args, cwd=REPO) -> dict:
    """The settings Snakemake's own CLI parsing (profiles included) gives ``snakemake ARGS`` in ``cwd``."""
    code = (
        "import json, sys\n"
        "from snakemake.cli import parse_args\n"
        "_, a = parse_args(sys.argv[1:])\n"
        "print(json.dumps({'keep_going': a.keep_going, 'rerun_incomplete': a.rerun_incomplete,\n"
        "    'resources': {k: v.value for k, v in (a.resources or {}).items()},\n"
        "    'set_resources': "
        "{r: {k: v.value for k, v in res.items()} for r, res in (a.set_resources or {}).items()},\n"
        "    'rerun_triggers': sorted(t.name.lower() for t in a.rerun_triggers), 'jobs': a.jobs}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# What workflow/profiles/default must put in force (README "The workflow").
DEFAULT_PROFILE = {
    "keep_going": True,
    "rerun_incomplete": True,
    "resources": {"gpu": 1, "speed_lock": 1, "machine": 100},
    "rerun_triggers": ["input", "mtime", "params"],
}


@pytest.mark.parametrize("how", ["repo root, no -s", "elsewhere, -s workflow/Snakefile"])
def test_workflow_profile_is_in_force(how, tmp_path):
    """Snakemake 9 reads a workflow profile only from profiles/default in the cwd or beside the
    Snakefile: with the Snakefile at the repository root the profile was silently ignored."""
    if how == "repo root, no -s":
        got = parsed_cli("--cores", "1", "tables")
    else:
        got = parsed_cli("--cores", "1", "tables", "-s", str(REPO / "workflow" / "Snakefile"), cwd=tmp_path)
    assert {k: got[k] for k in DEFAULT_PROFILE} == DEFAULT_PROFILE


def test_dry_run_says_it_uses_the_workflow_profile(tmp_path):
    proc = snakemake("tables", "-n", "--cores", "1", "--directory", str(tmp_path))
    assert "workflow specific profile workflow/profiles/default" in proc.stdout + proc.stderr


def test_slurm_profile_replaces_the_default_one():
    """Used as the workflow profile, the slurm profile drops the default's global gpu=1 (one GPU job at
    a time); the rules give each train/measure job a GPU of its own unless the config runs on the CPU
    (next test). --executor dryrun stands in for the slurm plugin, an optional extra; every other entry
    comes from the profile file."""
    got = parsed_cli("tables", "--workflow-profile", "workflow/profiles/slurm", "--executor", "dryrun")
    assert got["resources"] == {"speed_lock": 1} and got["jobs"] == 16
    assert got["keep_going"] and got["rerun_incomplete"] and got["rerun_triggers"] == ["input", "mtime", "params"]
    assert "gpu" not in str(got["set_resources"])  # the rules decide, from the config's device


@pytest.mark.parametrize("configfile,gpus", [("config/smoke.yaml", 0), ("config/config.yaml", 1)])
def test_jobs_ask_for_a_gpu_unless_the_device_is_cpu(configfile, gpus, tmp_path):
    """On SLURM a gpu resource becomes --gpus=1, which a CPU partition refuses ("Invalid generic
    resource"): the smoke profile (device: cpu) asks for none, the quick one (device: auto) for one."""
    out = snakemake("tables", "-n", "--configfile", configfile, "--directory", str(tmp_path)).stdout
    train_jobs = [block for block in out.split("rule ")[1:] if block.startswith("train:")]
    assert train_jobs and all(f"gpu={gpus}" in block for block in train_jobs)


def test_slurm_profile_plans_with_the_plugin(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="optional extra: pip install -e '.[slurm]'")
    proc = snakemake("tables", "-n", "--workflow-profile", "workflow/profiles/slurm", "--directory", str(tmp_path))
    assert "workflow specific profile workflow/profiles/slurm" in proc.stdout + proc.stderr


def test_dry_run_plans_the_whole_grid(tmp_path):
    from puppet.core.config import load_config, run_grid

    n_runs = len(run_grid(load_config(REPO / "config" / "config.yaml")))
    out = snakemake("tables", "-n", "--cores", "1", "--directory", str(tmp_path), "--quiet", "rules").stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["train"] == n_runs and counts["measure"] == n_runs
    assert counts["collate"] == 1 and counts["paper_tables"] == 1 and counts["describe_models"] == 1


def test_profile_file_replaces_the_default(tmp_path):
    """--configfile config/paper.yaml must not inherit the quick profile's data_overrides or model_kwargs."""
    out = snakemake(
        "tables",
        "-n",
        "-p",
        "--cores",
        "1",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config" / "paper.yaml"),
    ).stdout
    specs = [
        json.loads(line.split("--spec ", 1)[1].split(" --out-dir")[0].strip("'"))
        for line in out.splitlines()
        if "puppet train --spec" in line
    ]
    assert specs and all(s["profile"] == "paper" and s["max_channels"] == 512 for s in specs)
    puppet = next(s for s in specs if s["model"] == "puppet_cnn" and s["dataset"] == "cifar10")
    assert puppet["model_kwargs"] == {}  # the quick profile's dl_min override must not leak in
    # (a default-recipe run: the PDE models' own recipe trains on the whole set; the planner's job order is its own)
    cifar100 = next(s for s in specs if s["dataset"] == "cifar100" and s["recipe"] == "default")
    assert cifar100["data"]["train_size"] == 8000  # not the quick profile's cifar100 override


def planned_train_commands(tmp_path, *args) -> list[str]:
    out = snakemake("tables", "-n", "-p", "--cores", "1", "--directory", str(tmp_path), *args).stdout
    return [line for line in out.splitlines() if "puppet train --spec" in line]


def test_paper_subset_profile_plans_tables_4_and_2_with_a_time_limit(tmp_path):
    # The profile reads ../shared/data/cifar10_subset.npz, which the pre-flight checks: give it one.
    rng = np.random.default_rng(0)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    np.savez(
        tmp_path / "shared" / "data" / "cifar10_subset.npz",
        x_train=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(20) % 10,
        x_test=rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(10) % 10,
    )
    commands = planned_train_commands(tmp_path / "work", "--configfile", str(REPO / "config" / "paper_subset.yaml"))
    specs = [json.loads(c.split("--spec ", 1)[1].split(" --out-dir")[0].strip("'")) for c in commands]
    assert sorted((s["dataset"], s["model"], s["seed"]) for s in specs) == sorted(
        ("cifar10", m, 0)
        for m in ("resnet", "puppet_resnet", "puppet_cnn", "alexnet", "mobilenet_v1", "mobilenet_v2", "squeezenet")
    )
    for s in specs:
        assert (
            s["max_channels"] == 512 and s["train"]["amp"] and s["data_source"] == "../shared/data/cifar10_subset.npz"
        )
        assert "time_limit_min" not in s["train"]  # not part of the run's identity
    assert all(c.split(" 2> ")[0].endswith("--time-limit-min 6") for c in commands)


def test_time_limit_changes_no_run_spec(tmp_path):
    """A new limit between sittings must neither change a spec (params trigger reruns) nor its hash."""
    smoke = ("--configfile", str(REPO / "config" / "smoke.yaml"))
    plain = planned_train_commands(tmp_path, *smoke)
    limited = planned_train_commands(tmp_path, *smoke, "--config", "train={batch_size: 64, time_limit_min: 2.5}")
    # Snakemake's dry-run order of independent jobs is not fixed: compare as sets of specs.
    assert sorted(c.split(" --out-dir")[0] for c in limited) == sorted(c.split(" --out-dir")[0] for c in plain)
    assert all("--time-limit-min 2.5 2>" in c for c in limited) and not any("--time-limit-min" in c for c in plain)


def test_bad_config_fails_before_any_job(tmp_path):
    proc = snakemake(
        "tables", "-n", "--cores", "1", "--directory", str(tmp_path), "--config", "models=[resnet_9000]", check=False
    )
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
    # The claims pipeline (config/smoke.yaml's two claims): one seed gives no interval, so no verdict on
    # accuracy; the parameter ratio is an exact count; the claims section leads tables.md.
    claims = pd.read_csv(tmp_path / "results" / "claims.csv").set_index("id")
    assert claims.loc["resnet_beats_alexnet", "verdict"] == "inconclusive"
    assert claims.loc["resnet_beats_alexnet", "seeds"] == 1 and pd.isna(claims.loc["resnet_beats_alexnet", "ci_low"])
    ratio = claims.loc["alexnet_smaller"]
    by_model = df.set_index("model")["stored_params"]
    assert ratio["effect"] == pytest.approx(by_model["resnet"] / by_model["alexnet"])
    assert ratio["verdict"] == ("supported" if ratio["effect"] >= 2.0 else "contradicted")
    tables_md = (tmp_path / "results" / "tables.md").read_text()
    assert tables_md.index("## Claims put to the test") < tables_md.index("## Table 1")
    summary = pd.read_csv(tmp_path / "results" / "seed_summary.csv")
    assert set(summary["model"]) == {"alexnet", "resnet"} and (summary["n_seeds"] == 1).all()
    assert (tmp_path / "results" / "figures" / "synthetic_learning_curves.png").is_file()
    # Finished runs are not redone, and the tables survive a rerun.
    again = snakemake(
        "tables",
        "-n",
        "--cores",
        "1",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config" / "smoke.yaml"),
    )
    assert "Nothing to be done" in again.stdout + again.stderr
    # The report: one self-contained HTML file with every declared table and figure embedded.
    snakemake("all", "--cores", "1", "--directory", str(tmp_path), "--configfile", str(REPO / "config" / "smoke.yaml"),
              "--report", str(tmp_path / "report.html"))  # fmt: skip
    html = (tmp_path / "report.html").read_text()
    results = json.loads(re.search(r"var results = (\{.*?\});\n", html).group(1))
    names = {r["filename"]: r for r in results.values()}
    figures = [f"synthetic_top1_vs_{a}.png" for a in ("cost", "stored_params", "macs", "latency_s_per_img")]
    tables = [f"table{n}.csv" for n in range(1, 7)] + ["metrics.csv", "sizes.csv", "table_pde.csv", "models.csv"]
    assert set(figures + ["size_vs_depth.png"] + tables) <= set(names)
    for name in figures:
        uri = names[name]["data_uri"]
        assert uri.startswith("data:image/png;") and ";base64," in uri and len(uri) > 10_000
    table2 = base64.b64decode(names["table2.csv"]["data_uri"].split("base64,", 1)[1]).decode()
    assert "AlexNet" in table2 and "paper_top1" in table2  # the table text, ours beside the paper's
    assert "max_channels 512" in names["table1.csv"]["caption"]


def planned_jobs(workdir, *args, cwd=REPO) -> dict[str, int]:
    """rule -> number of jobs a dry run of ``snakemake ARGS`` in ``workdir`` plans ({} for "Nothing to be done")."""
    # --quiet takes any number of values: last, so that it does not swallow a target
    out = snakemake(*args, "-n", "--cores", "1", "--directory", str(workdir), "--quiet", "rules", cwd=cwd).stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.mark.slow
def test_a_change_to_model_code_remakes_the_model_descriptions_and_what_reads_them(tmp_path):
    """The report is a function of its declared inputs: an edit to a baseline's module replans the model
    descriptions (results/models.csv) and the tables and figures that read them (sizes.csv, Table 5, the
    PDE and SkipNet tables, Fig. 4), and nothing upstream: no run is trained, measured or collated again.

    The edit is made in a copy of the workflow and the code it declares (the rule's inputs are found
    beside the Snakefile), not in this checkout; a touch alone would not do, as Snakemake 9 compares a
    newer input's checksum with the one it recorded. The jobs still import this checkout's package."""
    repo = tmp_path / "repo"
    for part in ("workflow", "config", "baselines", "puppet"):
        shutil.copytree(REPO / part, repo / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(REPO / "environment.yml", repo / "environment.yml")
    work = tmp_path / "work"
    smoke = ("all", "--configfile", str(repo / "config" / "smoke.yaml"), "--config", "models=[alexnet]")
    snakemake("--cores", "1", "--directory", str(work), *smoke, cwd=repo)
    assert planned_jobs(work, *smoke, cwd=repo) == {}  # up to date
    module = repo / "baselines" / "fixed.py"
    module.write_text(module.read_text() + "\n# an edit to the model code\n")
    # newer than the description for certain, whatever the file system's timestamp resolution
    os.utime(module, (module.stat().st_atime, (work / "results" / "models.csv").stat().st_mtime + 60))
    planned = planned_jobs(work, *smoke, cwd=repo)
    assert planned.keys() >= {"describe_models", "paper_tables", "plot_figures"}, planned
    assert not planned.keys() & {"train", "measure", "collate"}, planned


@pytest.mark.slow
def test_paused_run_resumes_through_snakemake(tmp_path):
    """A job paused by train.time_limit_min exits 75 without train.json; the same command resumes it."""
    from puppet.core.config import load_config, run_spec

    train = {"batch_size": 64, "time_limit_min": 0.0001}
    cfg = load_config(REPO / "config" / "smoke.yaml", overrides={"epochs": 2, "models": ["alexnet"], "train": train})
    target = f"results/runs/smoke/synthetic/alexnet/seed0/{run_spec(cfg, 'synthetic', 'alexnet', 0).hash}/train.json"
    args = (
        target,
        "--cores",
        "1",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config" / "smoke.yaml"),
        "--config",
        "epochs=2",
        "models=[alexnet]",
        "train={batch_size: 64, time_limit_min: 0.0001}",
    )
    paused = snakemake(*args, check=False)
    assert paused.returncode != 0 and "exit status 75" in paused.stdout + paused.stderr
    assert "paused at epoch 1/2" in paused.stdout and "rerun the same command to resume" in paused.stdout
    assert not (tmp_path / target).exists() and (tmp_path / target).with_name("checkpoint.pt").is_file()
    snakemake(*args)  # the first epoch of a sitting always runs, so this one finishes
    log = (tmp_path / target).with_name("train.log").read_text()
    assert json.loads((tmp_path / target).read_text())["status"] == "ok" and "resuming" in log


def test_every_job_rule_has_a_log_and_the_documented_environment():
    """snakemake-workflows practice: a rule that runs a command logs it and names its environment,
    here the repository's environment.yml itself (so the two never drift apart)."""
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule )", path.read_text())[1:]:
            name = block.split(":", 1)[0]
            if "    shell:" in block:
                assert "    log:" in block and "    conda:\n        ENV_FILE" in block, f"{path.name}: {name}"
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert 'ENV_FILE = str(Path(workflow.basedir).parent / "environment.yml")' in common


def test_a_configfile_naming_a_key_twice_fails_before_any_job(tmp_path):
    """Snakemake's own YAML reading keeps the last duplicate: the workflow reads its config files
    again, strictly, and refuses the invocation in one line."""
    profile = tmp_path / "profile.yaml"
    profile.write_text((REPO / "config" / "smoke.yaml").read_text() + "epochs: 3\n")
    proc = snakemake(
        "tables", "-n", "--cores", "1", "--directory", str(tmp_path), "--configfile", str(profile), check=False
    )
    assert proc.returncode != 0
    assert "key 'epochs' appears twice" in proc.stderr + proc.stdout
