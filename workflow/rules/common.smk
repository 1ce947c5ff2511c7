# Config validation, the run grid, and the state of every planned run. Helper functions only.
import json
import sys
from pathlib import Path

from puppet.config import ConfigError, preflight, run_grid, run_spec, spec_hash, validate_config
from puppet.data import DataError
from puppet.runs import attempts, failure_lines, inspect_run, set_aside

try:
    config = validate_config(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

PROFILE = config["profile"]
# A run's folder names the hash of its spec (puppet/runs.py): a rerun with another spec
# trains beside a finished result, never over it.
RUN_DIR = "results/runs/{profile}/{dataset}/{model}/seed{seed}/{chash}"


RUNS = run_grid(config)
SPECS = {(d, m, s): run_spec(config, d, m, s) for d, m, s in RUNS}
RUN_PATHS = [
    RUN_DIR.format(profile=PROFILE, dataset=d, model=m, seed=s, chash=spec_hash(spec)) for (d, m, s), spec in SPECS.items()
]


wildcard_constraints:
    profile=PROFILE,
    dataset="|".join(sorted({d for d, _, _ in RUNS})),
    model="|".join(sorted({m for _, m, _ in RUNS}, key=len, reverse=True)),
    seed=r"\d+",
    chash=r"[0-9a-f]{12}",


# train.time_limit_min reaches the train job as a flag, not through params: it says how long
# one sitting may train, not what the run computes, so changing it between sittings must not
# rerun finished runs (rerun-triggers: params) nor change their config_hash.
TIME_LIMIT_FLAG = (
    f" --time-limit-min {config['train']['time_limit_min']}" if config["train"]["time_limit_min"] is not None else ""
)


# Appended to a job's command: keep its exit status, and append this attempt's log (which
# Snakemake deletes before the next attempt) to LOG.history (bash runs with -e).
KEEP_LOG = " || status=$?; cat {log} >> {log}.history; exit ${{status:-0}}"


def grid(filename):
    """One path per (dataset, model, seed) the config asks for."""
    return [f"{path}/{filename}" for path in RUN_PATHS]


def spec_json(wildcards):
    """The run's spec (everything that determines its result), passed to the CLI."""
    spec = SPECS.get((wildcards.dataset, wildcards.model, int(wildcards.seed)))
    if spec is None or spec_hash(spec) != wildcards.chash:
        expected = spec and RUN_DIR.format(**{**dict(wildcards.items()), "chash": spec_hash(spec)})
        raise WorkflowError(
            f"{RUN_DIR.format(**dict(wildcards.items()))} belongs to another config than the one in use"
            + (f"; this config's run is {expected}" if expected else "; the config does not plan this run")
        )
    return json.dumps(spec, sort_keys=True)


def failed_attempts(stage):
    """A rule parameter that counts the run's failed attempts (puppet/runs.py): it grows when
    the job fails, so Snakemake's params trigger redoes exactly the failed jobs next time."""

    def count(wildcards):
        return attempts(RUN_DIR.format(**dict(wildcards.items())), stage)

    return count


def run_states():
    return [inspect_run(path) for path in RUN_PATHS]


# Before any job: the data every dataset of the grid reads, and the runs left damaged by an
# earlier invocation (set aside, so their jobs rerun). Main process only: cluster jobs re-read
# this file.
if workflow.is_main_process:
    try:
        for warning in preflight(config):
            print(f"warning: {warning}", file=sys.stderr)
    except DataError as exc:
        raise WorkflowError(f"data pre-flight: {exc}") from None
    for state in run_states():
        for path, why in state.damaged:
            kept = set_aside(path, why, keep_original=path.name != "model.pt")
            print(f"warning: {path} is damaged ({why}); kept as {kept.name if kept else '-'}, the run is redone", file=sys.stderr)
    retry = failure_lines(run_states())
    if retry:
        print(f"{len(retry)} run(s) failed before and are retried:", file=sys.stderr)
        for line in retry:
            print(f"  {line}", file=sys.stderr)


def report_failures(crashed_ok):
    """The end-of-invocation summary: one line per failed run; True when any failed."""
    states = run_states()
    lines = failure_lines(states)
    if crashed_ok:
        unfinished = []
    else:  # a job that crashed (killed, out of memory on the host) or paused leaves no train.json
        unfinished = [s for s in states if s.train in ("missing", "paused")]
    if lines or unfinished:
        what = f"{len(lines)} failed" + (f", {len(unfinished)} unfinished" if unfinished else "")
        print(f"\n{what} of {len(states)} run(s):", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
        for s in unfinished[:20]:
            print(f"  UNFINISHED {'/'.join(s.path.parts[-5:-1])}: {s.describe()}; see {s.path / 'train.log'}", file=sys.stderr)
        if len(unfinished) > 20:
            print(f"  ... and {len(unfinished) - 20} more unfinished", file=sys.stderr)
        print("Fix the cause and rerun the same command: only these runs are redone"
              + (" (the tables mark the failed ones)." if crashed_ok else "."), file=sys.stderr)
    return bool(lines)
