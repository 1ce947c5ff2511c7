"""Command line: the small interface the Snakemake rules call (``python -m puppet ...``).

    python -m puppet train   --spec JSON --out-dir DIR [--time-limit-min M]   # -> DIR/train.json, model.pt
                                                        # (exit 75: paused by the limit, rerun to resume)
    python -m puppet measure --spec JSON --run-dir DIR      # -> DIR/measure.json
    python -m puppet collate --runs A/train.json ... --out results/metrics.csv
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

import torch


def _measure(spec: dict, run_dir: Path) -> dict:
    from puppet.core.data import Batches
    from puppet.core.io import atomic_write_json, one_line
    from puppet.core.measure import measure_model
    from puppet.core.runs import inspect_run, record_failure, remove_orphan_temporaries
    from puppet.core.train import build_model, load_splits, pick_device

    remove_orphan_temporaries(run_dir)  # a killed measure's; the train job of this run has finished
    record = {k: spec[k] for k in ("profile", "dataset", "model", "seed")}
    state = inspect_run(run_dir)
    if state.train != "ok":
        why = state.error or f"train.json is {state.train}"
        record.update(status="skipped", error=f"training failed: {why}")
    else:
        try:
            device = pick_device(spec["device"])
            splits = load_splits(spec)
            model = build_model(spec, splits).to(device)
            try:
                state = torch.load(run_dir / "model.pt", map_location=device, weights_only=False)
                model.load_state_dict(state["model"])
            except Exception as exc:
                raise RuntimeError(f"cannot load {run_dir / 'model.pt'} ({one_line(exc, 160)}); "
                                   f"delete it and rerun: the run is redone from its checkpoint") from None
            test = Batches(splits.x_test, splits.y_test, 1, splits.mean, splits.std, device=device)
            record.update(status="ok", error="", **measure_model(model, test, spec["measure"], device))
        except Exception as exc:  # recorded in the row, never a silent None
            record.update(status="error", error=one_line(exc))
            print(f"measure failed: {record['error']}", file=sys.stderr)
            print(f"measure failed: {spec['dataset']}/{spec['model']}/seed{spec['seed']}: {record['error']}", flush=True)
            record_failure(run_dir, "measure", record["error"])
    atomic_write_json(record, run_dir / "measure.json")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m puppet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one run")
    p.add_argument("--spec", required=True, help="run spec as JSON (see puppet.core.config.run_spec)")
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--time-limit-min", type=float, default=None,
                   help="pause at an epoch boundary before this many minutes (checkpoint kept, no train.json, "
                        "exit code 75); rerun to resume. Snakemake passes train.time_limit_min")
    p = sub.add_parser("measure", help="measure a trained run")
    p.add_argument("--spec", required=True)
    p.add_argument("--run-dir", required=True, type=Path)
    p = sub.add_parser("collate", help="collect runs into results/metrics.csv")
    p.add_argument("--runs", nargs="+", required=True, type=Path, help="train.json files (measure.json is read beside each)")
    p.add_argument("--out", required=True, type=Path)
    p = sub.add_parser("tables", help="paper-layout tables and tables.md from metrics.csv")
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    p = sub.add_parser("figures", help="figures from metrics.csv")
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    p = sub.add_parser("publish", help="copy the collated results to results/published/NAME (a committed snapshot)")
    p.add_argument("--name", required=True, help="label: profile, machine and data, e.g. quick-cpu2-cifar10subset")
    p.add_argument("--run-command", required=True, help="the command that produced the results")
    p.add_argument("--timing", default="", help="measured wall-clock, free text")
    p.add_argument("--results", default=Path("results"), type=Path)
    p.add_argument("--merge", action="store_true",
                   help="add the rows of results/metrics.csv to the existing snapshot NAME (a row of the same "
                        "profile, dataset, model and seed is replaced) and rebuild its tables and figures")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --merge: let a row replace one of the same run whose config_hash differs")
    p = sub.add_parser("validate", help="validate config files and their data sources; print each run, its state and folder")
    p.add_argument("--configfile", nargs="+", required=True)
    p.add_argument("--results", default=Path("results"), type=Path, help="where the runs' folders are (default: results)")
    sub.add_parser("models", help="list registered models")
    args = parser.parse_args(argv)

    from puppet.core.config import ConfigError
    from puppet.core.data import DataError
    from puppet.core.registry import UnknownModelError

    try:
        if args.command == "train":
            from puppet.core.train import PAUSED_EXIT_CODE, train_main

            # a failed run is a status=error row, not a crash; a paused one is neither
            record = train_main(json.loads(args.spec), args.out_dir, time_limit_min=args.time_limit_min)
            if record["status"] == "paused":
                return PAUSED_EXIT_CODE
        elif args.command == "measure":
            _measure(json.loads(args.spec), args.run_dir)
        elif args.command == "collate":
            from puppet.report.collate import collate

            collate(args.runs, args.out)
        elif args.command == "tables":
            from puppet.report.tables import write_tables

            write_tables(args.metrics, args.out_dir)
        elif args.command == "figures":
            from puppet.report.figures import write_figures

            write_figures(args.metrics, args.out_dir)
        elif args.command == "publish":
            from puppet.report.publish import PublishError, publish  # pandas: not imported for train jobs

            try:
                print(publish(args.results, args.name, args.run_command, args.timing,
                              merge=args.merge, allow_config_change=args.allow_config_change))
            except PublishError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        elif args.command == "validate":
            from puppet.core.config import load_config, preflight, run_grid, run_spec, spec_hash
            from puppet.core.runs import inspect_run, run_dir

            cfg = load_config(*args.configfile)
            runs = run_grid(cfg)
            warnings = preflight(cfg)  # raises DataError on the first bad data source
            print(f"config OK: profile {cfg['profile']}, {len(runs)} runs; data sources checked")
            if cfg["device"] == "cuda" and not torch.cuda.is_available():
                warnings.append("device: cuda but no CUDA device is visible here; every run will fail on this machine "
                                "(fine on a login node whose jobs run on GPU nodes)")
            for warning in warnings:
                print(f"warning: {warning}")
            for dataset, model, seed in runs:
                path = run_dir(args.results, cfg["profile"], dataset, model, seed, spec_hash(run_spec(cfg, dataset, model, seed)))
                state = inspect_run(path)
                print(f"  {dataset:14s} {model:24s} seed {seed}  {state.describe():24s} {path}")
        elif args.command == "models":
            from puppet.core.registry import list_models, model_info

            for name in list_models():
                info = model_info(name)
                print(f"{name:22s} {info.family:16s} {info.description}")
    except (ConfigError, DataError, UnknownModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
