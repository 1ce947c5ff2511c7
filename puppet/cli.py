"""Command line: the small interface the Snakemake rules call (``python -m puppet ...``).

python -m puppet train   --spec JSON --out-dir DIR [--time-limit-min M]   # -> DIR/train.json, model.pt
                                                    # (exit 75: paused by the limit, rerun to resume)
python -m puppet train   --model resnet --dataset cifar10 [--configfile F --set train.lr=0.01 --measure]
                                                    # one run by hand, in the folder the workflow would use
python -m puppet evaluate --run-dir DIR                 # top-1/top-5 of a trained model.pt on its test split
python -m puppet measure --spec JSON --run-dir DIR      # -> DIR/measure.json
python -m puppet collate --runs A/train.json ... --out results/metrics.csv
python -m puppet mor-report --metrics results/metrics.csv --out results/mor.csv --figures results/figures
python -m puppet describe-models --out results/models.csv   # sizes, depths, configurations from the model code
python -m puppet tables  --metrics results/metrics.csv --models results/models.csv --out-dir results
python -m puppet figures --metrics results/metrics.csv --models results/models.csv --out-dir results/figures
python -m puppet publish --name NAME --run-command CMD      # snapshot results/ into results/published/NAME
python -m puppet publish --merge --name NAME --run-command CMD  # add this sitting's rows to that snapshot
python -m puppet validate --configfile config/config.yaml --config KEY=VALUE ...   # check a config and its
                                                    # data, print each run's state (both options optional)
python -m puppet plan --configfile F --config KEY=VALUE ...     # projected wall time and memory of every
                                                    # job, before anything trains -> results/plan.csv
python -m puppet models '*resnet*' --family F --sizes --json   # the registered models (all optional)

The installed command ``puppet-bench`` is the same as ``python -m puppet``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch

# Exit status of a command refused for bad input (config, data, model name, spec): the message
# is one line on stderr, printed before any work starts.
EXIT_BAD_INPUT = 2
# 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe.
EXIT_BROKEN_PIPE = 141
# 128 + SIGINT: Ctrl-C (a training loop catches the first one itself and exits with the same status).
EXIT_INTERRUPTED = 130


def _check(args: argparse.Namespace, paths: list[Path], sources=()) -> None:
    """A content check beside each derived file this command wrote (puppet.core.derived): the next
    invocation of the workflow rebuilds one that no longer matches it."""
    from puppet.core.derived import write_checks

    write_checks(paths, made_by=f"python -m puppet {args.command}", sources=sources)


def _spec(text: str):
    from puppet.core.specs import RunSpec

    return RunSpec.from_dict(json.loads(text))


def _config(configfiles: list[str] | None, sets: list[str] | None, **top: object) -> dict:
    from puppet.core.config import DEFAULT_PROFILE, load_config

    return load_config(*(configfiles or [DEFAULT_PROFILE]), overrides=top, sets=sets)


def _job_status(record: dict) -> int:
    """A train or measure job's exit status: the record's own ``exit_code`` where it has one (128 + N
    stopped by signal N, 73 another process writes the run folder, 74 the record could not be
    written), 75 paused by the time limit, else 0 (a failed run is a status=error record, not a crash)."""
    from puppet.core.train import PAUSED_EXIT_CODE

    return PAUSED_EXIT_CODE if record["status"] == "paused" else record.get("exit_code", 0)


def _train(args: argparse.Namespace) -> int:
    from puppet.core.train import train_main

    if args.spec:
        if args.model or args.dataset:
            raise SystemExit("error: give either --spec or --model/--dataset, not both")
        if args.out_dir is None:
            raise SystemExit("error: --spec needs --out-dir")
        # a failed run is a status=error row, not a crash; a paused one is neither
        record = train_main(_spec(args.spec), args.out_dir, time_limit_min=args.time_limit_min)
        return _job_status(record)
    if not (args.model and args.dataset):
        raise SystemExit("error: name the run with --model and --dataset (or pass a --spec)")
    from puppet.core.config import run_spec
    from puppet.core.runs import run_dir

    config = _config(args.configfile, args.set, models=[args.model], datasets=[args.dataset], extra_grid=[])
    spec = run_spec(config, args.dataset, args.model, args.seed)
    out_dir = args.out_dir or run_dir(args.results, spec.profile, spec.dataset, spec.model, spec.seed, spec.hash)
    limit = args.time_limit_min if args.time_limit_min is not None else config["train"]["time_limit_min"]
    print(f"{spec.label} (profile {spec.profile}, recipe {spec.recipe}, {spec.epochs} epochs) -> {out_dir}", flush=True)
    record = train_main(spec, out_dir, time_limit_min=limit)
    if record["status"] in ("paused", "stopped", "busy"):
        return _job_status(record)
    if record["status"] != "ok":
        return 1  # train_main printed the one-line error and wrote the error record
    if args.measure:  # (train_main printed the run's headline)
        from puppet.core.config import deploy_options
        from puppet.core.measure import measure_main

        measured = measure_main(spec, Path(out_dir), deploy_options(config, spec.model))
        if measured["status"] != "ok":
            return 1
        for row in measured["deployments"]:
            noisy = " (noisy: its 95% interval is wider than measure.noise_threshold)" * bool(row.get("latency_noisy"))
            print(
                f"{spec.label} ({row['deployment']}): {row['stored_params']:,} stored params, "
                f"{row['macs'] / 1e6:.2f} M MACs, {row['latency_s_per_img'] * 1e3:.2f} ms/img at batch 1{noisy}"
            )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from puppet.core.assemble import materialise
    from puppet.core.data import Batches
    from puppet.core.evaluate import evaluate
    from puppet.core.runs import inspect_run
    from puppet.core.specs import RunSpec

    path = Path(args.run_dir) / "model.pt"
    if not Path(args.run_dir).is_dir():
        raise SystemExit(
            f"error: no run folder at {args.run_dir}; `validate` lists each run's folder, `train` makes it"
        )
    if not path.is_file():
        state = inspect_run(args.run_dir)
        why = f"its training failed: {state.error}" if state.train == "error" else f"the run is {state.describe()}"
        raise SystemExit(f"error: {path} does not exist: {why}; rerun the workflow (or train) to make it")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    spec = RunSpec.from_dict(saved["spec"])
    device, splits, model = materialise(spec, device=args.device)
    model.load_state_dict(saved["model"])
    result = evaluate(
        model, Batches(splits.x_test, splits.y_test, spec.train.eval_batch_size, splits.mean, splits.std, device=device)
    )
    print(
        f"{spec.label}: top-1 {result.top1:.2f}%, top-5 {result.top5:.2f}%, loss {result.loss:.4f} "
        f"on {result.num_samples} test images ({splits.source})"
    )
    return 0


def _measure(args: argparse.Namespace) -> int:
    from puppet.core.measure import measure_main

    options = json.loads(args.deploy_options)  # a failed measurement is a status=error row
    record = measure_main(_spec(args.spec), args.run_dir, options)
    return _job_status(record)


def _mor_report(args: argparse.Namespace) -> int:
    from puppet.report.mor import write_mor

    write_mor(args.metrics, args.out, args.figures, args.expect)
    _check(args, [args.out])
    return 0


def _collate(args: argparse.Namespace) -> int:
    from puppet.report.collate import collate

    collate(args.runs, args.out)
    _check(args, [args.out], sources=args.runs)
    return 0


def _describe_models(args: argparse.Namespace) -> int:
    from puppet.report.models import write_models

    write_models(args.out)
    _check(args, [args.out])
    return 0


def _tables(args: argparse.Namespace) -> int:
    from puppet.report.tables import write_tables

    written = write_tables(args.metrics, args.out_dir, args.models, args.claims)
    names = [f"{name}.csv" for name in written] + ["tables.md", "tables.tex"]
    _check(args, [args.out_dir / name for name in names])
    return 0


def _figures(args: argparse.Namespace) -> int:
    from puppet.report.figures import write_figures

    write_figures(args.metrics, args.out_dir, args.models, args.runs)
    return 0


def _claims(args: argparse.Namespace) -> int:
    from puppet.report.claims import ClaimError, read_records, write_claims
    from puppet.report.collate import load_metrics
    from puppet.report.curves import learning_curves, mor_seed_curves

    metrics, records = load_metrics(args.metrics), read_records(args.runs)
    mor = load_metrics(args.mor) if args.mor and args.mor.is_file() and args.mor.stat().st_size else None
    try:
        written = write_claims(metrics, mor, records, json.loads(args.claims), args.out_dir)
    except ClaimError as exc:
        raise SystemExit(f"error: {exc}") from None
    for dataset in args.datasets:
        learning_curves(records, dataset, args.figures / f"{dataset}_learning_curves.png")
    for dataset, model in (pair.split("/") for pair in args.mor_models):
        mor_seed_curves(written["mor_seeds"], dataset, model, args.figures / f"mor_{dataset}_{model}_seeds.png")
    _check(args, [args.out_dir / f"{name}.csv" for name in written] + [args.out_dir / "claims.md"])
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
    from puppet.core.config import DEFAULT_PROFILE, load_config, preflight, run_grid, run_spec
    from puppet.core.datasets import source_status
    from puppet.core.runs import inspect_run, run_dir

    config = load_config(*(args.configfile or [DEFAULT_PROFILE]), sets=args.config)
    runs = run_grid(config)
    warnings = preflight(config)  # raises DataError on the first bad data source
    print(f"config OK: profile {config['profile']}, {len(runs)} runs")
    for dataset in dict.fromkeys(d for d, _, _ in runs):
        source = config["data_sources"].get(dataset)
        print(f"  data {source_status(dataset, source, config['data_root'], config['download'])}")
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


def _plan(args: argparse.Namespace) -> int:
    from puppet.core.config import DEFAULT_PROFILE, load_config
    from puppet.core.io import atomic_write_csv, atomic_write_text
    from puppet.core.jobplan import device_memory_mb, plan, summary

    config = load_config(*(args.configfile or [DEFAULT_PROFILE]), sets=args.config)
    cache = args.out.with_name(args.out.stem + "_calibration.json")
    calibrations = {}
    if cache.is_file() and not args.recalibrate:
        calibrations = json.loads(cache.read_text())
        print(f"reusing the calibrations in {cache} (--recalibrate to time again)")
    memory_mb = args.memory_gb * 1024 if args.memory_gb else device_memory_mb(config["device"])
    frame = plan(config, calibrations, memory_mb, steps=args.steps)
    atomic_write_text(json.dumps(calibrations, indent=1, sort_keys=True), cache)
    atomic_write_csv(frame, args.out)
    print("\n".join(summary(frame, memory_mb)))
    print(f"-> {args.out} (SLURM: each job's runtime request, workflow/profiles/slurm)")
    return 0


def _models(args: argparse.Namespace) -> int:
    """The registry, as timm's ``list_models('*resnet*')``: a glob, a family, sizes, or JSON."""
    from fnmatch import fnmatchcase

    from puppet.core.registry import list_models, model_info

    names = [n for n in list_models(args.family) if fnmatchcase(n, args.pattern)]
    if not names:
        families = sorted({model_info(n).family for n in list_models()})
        raise SystemExit(f"error: no model matches {args.pattern!r} (families: {', '.join(families)})")
    rows = []
    for name in names:
        info = model_info(name)
        row = {"name": name, "family": info.family, "paper_name": info.paper_name, "description": info.description}
        if args.sizes:
            from puppet.core.measure import param_size_mb, stored_param_count
            from puppet.core.registry import create_model

            stored = stored_param_count(create_model(name, max_channels=args.max_channels))
            row.update(max_channels=args.max_channels, stored_params=stored, param_size_mb=param_size_mb(stored))
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    size = f"{'stored params':>15s} {'MB':>8s}  " if args.sizes else ""
    print(f"{'model':24s} {'family':16s} {size}description")
    for r in rows:
        size = f"{r['stored_params']:>15,d} {r['param_size_mb']:>8.2f}  " if args.sizes else ""
        print(f"{r['name']:24s} {r['family']:16s} {size}{r['description']}")
    if args.sizes:
        print(f"(built for CIFAR-10 at max_channels {args.max_channels}; results/models.csv has every width)")
    return 0


def _version() -> str:
    """The installed distribution's version (pyproject.toml), or "unknown" when run from a bare tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("puppet-bench")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    # the name it was called by: the installed puppet-bench, or python -m puppet (whose argv[0] is __main__.py)
    called = Path(sys.argv[0]).name
    prog = called if called.startswith("puppet-bench") else "python -m puppet"
    description = __doc__.replace("``", "`")  # the docstring's reST literals, as a terminal reads them
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(handler=handler)
        return p

    p = command("train", _train, "train one run: by name (--model, --dataset), or from a --spec (the workflow)")
    p.add_argument("--model", help="a registered model (python -m puppet models)")
    p.add_argument("--dataset", help="cifar10, cifar100, fashion_mnist, mini_imagenet or synthetic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--configfile", nargs="+", help="profile(s) to read (default: config/config.yaml, the quick profile)"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="change one config key, e.g. --set train.lr=0.01 --set epochs=2",
    )
    p.add_argument("--measure", action="store_true", help="after training, measure the run as the workflow does")
    p.add_argument("--results", default=Path("results"), type=Path, help="where run folders go (default: results)")
    p.add_argument("--spec", help="run spec as JSON (puppet.core.specs.RunSpec.to_dict); the workflow's way")
    p.add_argument("--out-dir", type=Path, help="the run's folder (default with --model: the workflow's own)")
    p.add_argument(
        "--time-limit-min",
        type=float,
        default=None,
        help="pause at an epoch boundary before this many minutes (checkpoint kept, no train.json, "
        "exit code 75); rerun to resume. Snakemake passes train.time_limit_min",
    )
    p = command("evaluate", _evaluate, "top-1/top-5 of a trained run's model.pt on its test split")
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: the run's own device setting")
    p = command("measure", _measure, "measure a trained run in each of its deployments")
    p.add_argument("--spec", required=True)
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument(
        "--deploy-options", default="{}", help="JSON: the model's deployment options (e.g. a Neural ODE's MOR levels)"
    )
    p = command("mor-report", _mor_report, "the MOR study's view of metrics.csv: results/mor.csv and its figures")
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--figures", required=True, type=Path)
    p.add_argument("--expect", nargs="*", default=[], help="figure files the workflow declares (a placeholder each)")
    p = command("collate", _collate, "collect runs into results/metrics.csv")
    p.add_argument(
        "--runs", nargs="+", required=True, type=Path, help="train.json files (measure.json is read beside each)"
    )
    p.add_argument("--out", required=True, type=Path)
    p = command(
        "describe-models", _describe_models, "describe every model as the code builds it (sizes at 512 channels, ...)"
    )
    p.add_argument("--out", required=True, type=Path, help="the table to write, e.g. results/models.csv")
    models_help = "the model descriptions describe-models wrote (results/models.csv)"
    p = command("tables", _tables, "paper-layout tables and tables.md from metrics.csv and models.csv")
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--models", required=True, type=Path, help=models_help)
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--claims", type=Path, help="claims.md (rule claims): the section that leads tables.md")
    p = command("figures", _figures, "figures from metrics.csv and models.csv")
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--models", required=True, type=Path, help=models_help)
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument(
        "--runs", nargs="*", default=[], type=Path, help="train.json of the runs whose per-image records Fig. 3 reads"
    )
    p = command("claims", _claims, "claims.csv (a verdict per claim), per-model means over seeds, learning curves")
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--mor", type=Path, help="results/mor.csv, for MOR claims")
    p.add_argument("--claims", required=True, help="the profile's claims list, as JSON")
    p.add_argument("--runs", nargs="*", default=[], type=Path, help="train.json of the runs (confusions, curves)")
    p.add_argument("--datasets", nargs="*", default=[], help="datasets to draw learning curves for")
    p.add_argument(
        "--mor-models", nargs="*", default=[], help="DATASET/MODEL Neural ODEs to draw MOR curves over seeds for"
    )
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--figures", default=Path("results/figures"), type=Path)
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
    p.add_argument("--configfile", nargs="+", help="profile(s) to check (default: config/config.yaml)")
    p.add_argument(
        "--config", nargs="+", default=[], metavar="KEY=VALUE", help="change config keys, as snakemake --config"
    )
    p.add_argument(
        "--results", default=Path("results"), type=Path, help="where the runs' folders are (default: results)"
    )
    p = command(
        "plan",
        _plan,
        "project each job's wall time and memory for a profile from a short calibration on this device; nothing trains",
    )
    p.add_argument("--configfile", nargs="+", help="profile(s) to plan (default: config/config.yaml)")
    p.add_argument(
        "--config", nargs="+", default=[], metavar="KEY=VALUE", help="change config keys, as snakemake --config"
    )
    p.add_argument("--out", default=Path("results/plan.csv"), type=Path, help="default: results/plan.csv")
    p.add_argument("--memory-gb", type=float, help="memory a job may use (default: the GPU's, else the machine's)")
    p.add_argument("--recalibrate", action="store_true", help="time again instead of reusing <out>_calibration.json")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per model, after one warm-up step")
    p = command("models", _models, "list registered models: a glob, a family, their sizes, or JSON")
    p.add_argument("pattern", nargs="?", default="*", help="a glob on the name, e.g. '*resnet*' (default: all)")
    p.add_argument("--family", help="only this family, e.g. puppet, fixed, adaptive_depth")
    p.add_argument("--sizes", action="store_true", help="build each model and show its stored parameters")
    p.add_argument("--max-channels", type=int, default=512, help="the width --sizes builds at (default: 512)")
    p.add_argument("--json", action="store_true", help="one JSON list (name, family, paper_name, description, ...)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stderr = sys.stderr
    if args.command in ("train", "measure"):  # a job's stderr is its log, which a full disk can break
        from puppet.core.job import LogStream

        if not isinstance(stderr, LogStream):
            sys.stderr = LogStream(stderr)
    try:
        return _run(args)
    finally:
        if not getattr(sys.stderr, "broken", False):  # a broken log stays wrapped: Python flushes it at exit
            sys.stderr = stderr


def _run(args: argparse.Namespace) -> int:
    from puppet.core.config import ConfigError
    from puppet.core.datasets import DataError
    from puppet.core.registry import UnknownModelError
    from puppet.core.specs import SpecError

    try:
        status = args.handler(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not as a warning at exit
        return status
    except (ConfigError, DataError, UnknownModelError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `python -m puppet models | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit must not fail again
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which stops at its step: puppet.core.stopping)
        resumes = " (a rerun resumes from the last checkpoint)" if args.command == "train" else ""
        print(f"interrupted{resumes}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
