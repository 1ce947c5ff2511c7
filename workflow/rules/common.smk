# Config validation, the run grid, and the state of every planned run: wiring only, the decisions
# are functions of puppet/core/invocation.py and puppet/core/runs.py.
import json
import sys
import time
from pathlib import Path

INVOCATION_START = time.time()  # failures recorded outside their run folder since then are this invocation's

from puppet.core.config import ConfigError, deploy_options, preflight, read_yaml, run_grid, run_spec, validate_config
from puppet.core.datasets import DataError
from puppet.core.registry import model_info
from puppet.core import invocation
from puppet.core.relay import relay_signals, release_signals
from puppet.core.runs import fallback_failures, inspect_run

try:
    # Snakemake's own YAML reading keeps the last of a duplicated key: read each config file again,
    # strictly, so a profile that names a key twice is refused in one line before any job
    for path in workflow.overwrite_configfiles or workflow.configfiles:
        read_yaml(path)
    config = validate_config(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

PROFILE = config["profile"]
# A run's folder names the hash of its spec (puppet/core/runs.py): a rerun with another spec
# trains beside a finished result, never over it.
RUN_DIR = "results/runs/{profile}/{dataset}/{model}/seed{seed}/{chash}"


RUNS = run_grid(config)
SPECS = {(d, m, s): run_spec(config, d, m, s) for d, m, s in RUNS}
RUN_PATHS = [
    RUN_DIR.format(profile=PROFILE, dataset=d, model=m, seed=s, chash=spec.hash) for (d, m, s), spec in SPECS.items()
]
# The figures each grid gives (rules/report.smk): accuracy-vs-cost per dataset, Fig. 3 per dataset
# with a Puppet run; MOR curves per Neural ODE run with reduction levels (rules/mor.smk).
GRID_DATASETS = sorted({d for d, _, _ in RUNS})
PUPPET_DATASETS = sorted({d for d, m, _ in RUNS if model_info(m).family == "puppet"})
COST_AXES = ["cost", "stored_params", "macs", "latency_s_per_img"]
# The measure job's deployment options per model (puppet.core.config.deploy_options): a Neural ODE's
# MOR levels make its reductions deployments of its own; its run gets a MOR figure (rules/mor.smk).
def deploy_options_json(wildcards):
    return json.dumps(deploy_options(config, wildcards.model), sort_keys=True)


MOR_RUN_PATHS = [
    RUN_DIR.format(profile=PROFILE, dataset=d, model=m, seed=s, chash=spec.hash)
    for (d, m, s), spec in SPECS.items()
    if model_info(m).family == "node" and deploy_options(config, m)
]
# results/figures/mor_<dataset>_<model>_seed<N>.png per such run (puppet/report/mor.py names it)
def mor_figure(path):
    return f"results/figures/mor_{'_'.join(Path(path).parts[3:6])}.png"


MOR_FIGURES = [mor_figure(p) for p in MOR_RUN_PATHS]


wildcard_constraints:
    profile=PROFILE,
    dataset="|".join(sorted({d for d, _, _ in RUNS})),
    model="|".join(sorted({m for _, m, _ in RUNS}, key=len, reverse=True)),
    seed=r"\d+",
    chash=r"[0-9a-f]{12}",


# Every job's software environment (`snakemake --use-conda` builds it): the repository's own
# environment.yml, so the workflow's environment and the documented one never drift apart.
ENV_FILE = str(Path(workflow.basedir).parent / "environment.yml")


# The default workflow profile's global `machine: 100`: a timing job takes all of it (it runs alone on
# the machine), every other job one share, so none runs beside a timing job (workflow/profiles/default).
MACHINE_SHARE = 1
MACHINE_ALL = 100


# A train, measure or MOR job asks for one GPU unless the profile runs on the CPU: on SLURM the
# resource becomes --gpus=1, which a CPU-only partition refuses ("Invalid generic resource").
GPUS_PER_JOB = 0 if config["device"] == "cpu" else 1


# `python -m puppet plan` writes results/plan.csv: each job's projected minutes with a margin
# (runtime_min). Where it has a row for a job's run (same profile and config hash), the job asks the
# scheduler for that runtime (SLURM's --time), times the attempt, instead of the slurm profile's
# default 240 min; local runs ignore it.
PLANNED_RUNTIMES = invocation.planned_runtimes("results/plan.csv", PROFILE)


def planned_runtime(job):
    """The ``resources`` entry of a train or measure rule: runtime from the plan, if one was made."""
    if not PLANNED_RUNTIMES:
        return {}

    def runtime(wildcards, attempt):
        key = (wildcards.dataset, wildcards.model, int(wildcards.seed), wildcards.chash, job)
        minutes = PLANNED_RUNTIMES.get(key)
        # a run the plan does not know (planned for another config): the slurm profile's default
        return attempt * minutes if minutes else 240

    return {"runtime": runtime}


# train.time_limit_min reaches the train job as a flag, not through params: it says how long
# one sitting may train, not what the run computes, so changing it between sittings must not
# rerun finished runs (rerun-triggers: params) nor change their config_hash.
TIME_LIMIT_FLAG = (
    f" --time-limit-min {config['train']['time_limit_min']}" if config["train"]["time_limit_min"] is not None else ""
)


# A job's stderr goes to its log (this attempt: Snakemake deletes it before the next) and is
# appended to LOG.history as it is written, so the history survives a killed job too. tee ignores
# SIGINT and SIGTERM (it ends at the end of its input): a Ctrl-C or a scheduler's SIGTERM to the
# process group must not cut the log while the job writes why it stopped.
STDERR_TO_LOG = " 2> >(trap '' INT TERM; exec tee -a {log}.history > {log})"


def run_folder(wildcards, output):
    """A job's run folder, from its first output (run folders are never hard-coded in params)."""
    return str(Path(output[0]).parent)


def grid(filename):
    """One path per (dataset, model, seed) the config asks for."""
    return [f"{path}/{filename}" for path in RUN_PATHS]


def spec_json(wildcards):
    """The run's spec (everything that determines its result), passed to the CLI."""
    spec = SPECS.get((wildcards.dataset, wildcards.model, int(wildcards.seed)))
    if spec is None or spec.hash != wildcards.chash:
        expected = spec and RUN_DIR.format(**{**dict(wildcards.items()), "chash": spec.hash})
        raise WorkflowError(
            f"{RUN_DIR.format(**dict(wildcards.items()))} belongs to another config than the one in use"
            + (f"; this config's run is {expected}" if expected else "; the config does not plan this run")
        )
    return json.dumps(spec.to_dict(), sort_keys=True)


def failed_attempts(stage):
    """The params value: the run's failed attempts of ``stage`` (puppet/core/invocation.py)."""

    def count(wildcards):
        return invocation.failed_attempts(STATES[RUN_DIR.format(**dict(wildcards.items()))], stage)

    return count


def run_states():
    return {path: inspect_run(path) for path in RUN_PATHS}


# Before any job (read only, so dry runs and --unlock change nothing): the state of every planned
# run, and the data of the datasets that still have runs to train. Main process only: cluster
# jobs re-read this file.
STATES = run_states()
# Runs whose folder is on a read-only file system (a separately mounted disk) are left out, so the
# others finish (Snakemake itself cannot prepare such a job); the end summary reports them failed.
ALL_RUN_PATHS = list(RUN_PATHS)
try:
    LEFT_OUT = invocation.unwritable_runs(list(STATES.values()))
except ValueError as exc:
    raise WorkflowError(str(exc)) from None
RUN_PATHS[:] = [p for p in RUN_PATHS if p not in LEFT_OUT]
MOR_RUN_PATHS[:] = [p for p in MOR_RUN_PATHS if p not in LEFT_OUT]
MOR_FIGURES[:] = [mor_figure(p) for p in MOR_RUN_PATHS]
if workflow.is_main_process:
    invocation.say(f"warning: {path}: {why}; it is left out of this invocation" for path, why in LEFT_OUT.items())
    unfinished = {Path(p).parts[3] for p, s in STATES.items() if s.train != "ok"}
    try:
        invocation.say(f"warning: {warning}" for warning in preflight(config, datasets=unfinished))
    except DataError as exc:
        raise WorkflowError(f"data pre-flight: {exc}") from None
    invocation.say(invocation.startup_warnings(list(STATES.values()), "results/metrics.csv", Path(".snakemake/metadata").is_dir()))


def set_aside_damaged():
    """onstart (inside Snakemake's lock, never in a dry run): keep each damaged file aside."""
    invocation.say(invocation.set_aside_damaged(list(STATES.values())))
    invocation.say(invocation.set_aside_derived(DERIVED_DAMAGE))


# The derived tables (metrics.csv, models.csv, mor.csv, the paper's tables) carry a content check
# (puppet/core/derived.py); DERIVED_DAMAGE (set in the Snakefile once the report rules exist) holds
# those that no longer match theirs. A report rule's params count the damage, so a damaged table is
# rebuilt from the run records, and a dry run shows it.
DERIVED_SUFFIXES = (".csv", ".md", ".tex")


def derived_outputs(*rules_):
    return [path for rule_ in rules_ for path in rule_.output if path.endswith(DERIVED_SUFFIXES)]


def derived_rebuilds(rule_name):
    """A report rule's params entry. A function of the wildcards only: Snakemake does not record a
    param computed from the output (a "derived" param), so the params trigger would not see it."""
    return lambda wildcards: invocation.derived_rebuilds(DERIVED_DAMAGE, derived_outputs(getattr(rules, rule_name)))


def report_failures(crashed_ok):
    """The end-of-invocation summary: one line per failed run; True when any failed. A failure its
    run folder could not take (a full or read-only disk) is read from the fallback ledgers."""
    fallback = fallback_failures(since=INVOCATION_START)
    states = [inspect_run(path) for path in ALL_RUN_PATHS]
    lines, failed = invocation.end_summary(states, crashed_ok, fallback, LEFT_OUT)
    invocation.say(lines)
    return failed
