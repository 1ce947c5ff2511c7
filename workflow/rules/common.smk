# Config validation and the run grid. Helper functions only; no logic in rules.
import json

from puppet.config import ConfigError, run_grid, run_spec, validate_config

try:
    config = validate_config(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

PROFILE = config["profile"]
RUN_DIR = "results/runs/{profile}/{dataset}/{model}/seed{seed}"


RUNS = run_grid(config)


wildcard_constraints:
    profile=PROFILE,
    dataset="|".join(sorted({d for d, _, _ in RUNS})),
    model="|".join(sorted({m for _, m, _ in RUNS}, key=len, reverse=True)),
    seed=r"\d+",


# train.time_limit_min reaches the train job as a flag, not through params: it says how long
# one sitting may train, not what the run computes, so changing it between sittings must not
# rerun finished runs (rerun-triggers: params) nor change their config_hash.
TIME_LIMIT_FLAG = (
    f" --time-limit-min {config['train']['time_limit_min']}" if config["train"]["time_limit_min"] is not None else ""
)


def grid(filename):
    """One path per (dataset, model, seed) the config asks for."""
    return [RUN_DIR.format(profile=PROFILE, dataset=d, model=m, seed=s) + f"/{filename}" for d, m, s in RUNS]


def spec_json(wildcards):
    """The run's spec (everything that determines its result), passed to the CLI."""
    return json.dumps(run_spec(config, wildcards.dataset, wildcards.model, int(wildcards.seed)), sort_keys=True)
