"""Command line: the small interface the Snakemake rules call (``python -m puppet ...``).

python -m puppet train   --spec JSON --out-dir DIR [--time-limit-min M]   # -> DIR/train.json, model.pt
                                                    # (exit 75: paused by the limit, rerun to resume)
python -m puppet measure --spec JSON --run-dir DIR      # -> DIR/measure.json
python -m puppet mor     --spec JSON --settings JSON --run-dir DIR   # -> DIR/mor.csv (Neural ODE runs)
python -m puppet collate --runs A/train.json ... --out results/metrics.csv
python -m puppet mor-report --runs A/mor.csv ... --out results/mor.csv --figures results/figures
python -m puppet tables  --metrics results/metrics.csv --out-dir results
python -m puppet figures --metrics results/metrics.csv --out-dir results/figures
python -m puppet publish --name NAME --run-command CMD      # snapshot results/ into results/published/NAME
python -m puppet publish --merge --name NAME --run-command CMD  # add this sitting's rows to that snapshot
python -m puppet validate --configfile config/config.yaml   # check a config and its data, print each run's state
python -m puppet models                                     # list registered models
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch

# Exit status of a command refused for bad input (config, data, model name, spec): the message
# is one line on stderr, printed before any work starts.
EXIT_BAD_INPUT = 2


def _spec(text: str):
    from puppet.core.specs import RunSpec

    return RunSpec.from_dict(json.loads(text))


def _train(args: argparse.Namespace) -> int:
    from puppet.core.train import PAUSED_EXIT_CODE, train_main

    # a failed run is a status=error row, not a crash; a paused one is neither
    record = train_main(_spec(args.spec), args.out_dir, time_limit_min=args.time_limit_min)
    return PAUSED_EXIT_CODE if record["status"] == "paused" else 0


def _measure(args: argparse.Namespace) -> int:
    from puppet.core.measure import measure_main

    measure_main(_spec(args.spec), args.run_dir)  # a failed measurement is a status=error row
    return 0


def _mor(args: argparse.Namespace) -> int:
    from puppet.compress.study import MorSettings, mor_main

    mor_main(_spec(args.spec), args.run_dir, MorSettings.from_dict(json.loads(args.settings)))  # failures: rows
    return 0


def _mor_report(args: argparse.Namespace) -> int:
    from puppet.report.mor import write_mor

    write_mor(args.runs, args.out, args.figures)
    return 0


def _collate(args: argparse.Namespace) -> int:
    from puppet.report.collate import collate

    collate(args.runs, args.out)
    return 0


def _tables(args: argparse.Namespace) -> int:
    from puppet.report.tables import write_tables

    write_tables(args.metrics, args.out_dir)
    return 0


def _figures(args: argparse.Namespace) -> int:
    from puppet.report.figures import write_figures

    write_figures(args.metrics, args.out_dir)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from puppet.report.publish import PublishError, publish  # pandas: not imported for train jobs

    try:
        print(
            publish(
                args.results,
                args.name,
                args.run_command,
                args.timing,
                merge=args.merge,
                allow_config_change=args.allow_config_change,
            )
        )
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _validate(args: argparse.Namespace) -> int:
    from puppet.core.config import load_config, preflight, run_grid, run_spec
    from puppet.core.runs import inspect_run, run_dir

    config = load_config(*args.configfile)
    runs = run_grid(config)
    warnings = preflight(config)  # raises DataError on the first bad data source
    print(f"config OK: profile {config['profile']}, {len(runs)} runs; data sources checked")
    if config["device"] == "cuda" and not torch.cuda.is_available():
        warnings.append(
            "device: cuda but no CUDA device is visible here; every run will fail on this machine "
            "(fine on a login node whose jobs run on GPU nodes)"
        )
    for warning in warnings:
        print(f"warning: {warning}")
    for dataset, model, seed in runs:
        spec = run_spec(config, dataset, model, seed)
        path = run_dir(args.results, config["profile"], dataset, model, seed, spec.hash)
        recipe = f"{spec.recipe}, {spec.epochs} ep"
        print(f"  {dataset:14s} {model:24s} seed {seed}  {recipe:24s} {inspect_run(path).describe():24s} {path}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from puppet.core.registry import list_models, model_info

    for name in list_models():
        info = model_info(name)
        print(f"{name:22s} {info.family:16s} {info.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m puppet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(handler=handler)
        return p

    p = command("train", _train, "train one run")
    p.add_argument("--spec", required=True, help="run spec as JSON (puppet.core.specs.RunSpec.to_dict)")
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument(
        "--time-limit-min",
        type=float,
        default=None,
        help="pause at an epoch boundary before this many minutes (checkpoint kept, no train.json, "
        "exit code 75); rerun to resume. Snakemake passes train.time_limit_min",
    )
    p = command("measure", _measure, "measure a trained run")
    p.add_argument("--spec", required=True)
    p.add_argument("--run-dir", required=True, type=Path)
    p = command("mor", _mor, "reduce a trained Neural ODE run at every level (POD-DEIM, pruning, SVD)")
    p.add_argument("--spec", required=True)
    p.add_argument("--settings", required=True, help="the config's mor block as JSON")
    p.add_argument("--run-dir", required=True, type=Path)
    p = command("mor-report", _mor_report, "collect runs' mor.csv into results/mor.csv and its figures")
    p.add_argument("--runs", nargs="+", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--figures", required=True, type=Path)
    p = command("collate", _collate, "collect runs into results/metrics.csv")
    p.add_argument(
        "--runs", nargs="+", required=True, type=Path, help="train.json files (measure.json is read beside each)"
    )
    p.add_argument("--out", required=True, type=Path)
    p = command("tables", _tables, "paper-layout tables and tables.md from metrics.csv")
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    p = command("figures", _figures, "figures from metrics.csv")
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    p = command("publish", _publish, "copy the collated results to results/published/NAME (a committed snapshot)")
    p.add_argument("--name", required=True, help="label: profile, machine and data, e.g. quick-cpu2-cifar10subset")
    p.add_argument("--run-command", required=True, help="the command that produced the results")
    p.add_argument("--timing", default="", help="measured wall-clock, free text")
    p.add_argument("--results", default=Path("results"), type=Path)
    p.add_argument(
        "--merge",
        action="store_true",
        help="add the rows of results/metrics.csv to the existing snapshot NAME (a row of the same "
        "profile, dataset, model and seed is replaced) and rebuild its tables and figures",
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --merge: let a row replace one of the same run whose config_hash differs",
    )
    p = command(
        "validate", _validate, "validate config files and their data sources; print each run, its state and folder"
    )
    p.add_argument("--configfile", nargs="+", required=True)
    p.add_argument(
        "--results", default=Path("results"), type=Path, help="where the runs' folders are (default: results)"
    )
    command("models", _models, "list registered models")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from puppet.core.config import ConfigError
    from puppet.core.data import DataError
    from puppet.core.registry import UnknownModelError
    from puppet.core.specs import SpecError

    try:
        return args.handler(args)
    except (ConfigError, DataError, UnknownModelError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
