"""What a profile will cost before it runs: ``puppet-bench plan`` (``python -m puppet plan``).

Two steps, kept apart so that the second can be checked on its own:

1. ``calibrate(spec)`` times a short sample of the run's work on the device at hand, at the
   profile's width, batch and precision: a few optimizer steps of the run's own training loop
   (``puppet.core.train.train_one_epoch``, after warm-up steps), one timed evaluation at the
   evaluation batch, a batch-1 forward and a forward at the throughput batch of each deployment,
   and the peak memory of one more training step (``puppet.core.memory``: the CUDA allocator's
   peak, elsewhere the live tensors'). A run's data is used when it is at hand; otherwise synthetic
   images of the dataset's shape stand in (the record says so), which is what a model's speed
   depends on. Runs that differ only by seed share one calibration. The start-up of a job (a
   Python process importing the package) is timed once.
2. ``project(spec, calibration, startup_s)`` turns one record into the run's jobs (train,
   measure) with their projected seconds and peak memory: a pure function of its arguments, no
   timing, no torch. The arithmetic follows what each job does (``puppet.core.train``,
   ``puppet.core.measure``): optimizer steps per epoch times epochs, the test and validation
   passes, MACs counting, latency and throughput rounds and the build of each deployment. It is
   a projection, not a promise: an adaptive model's untrained routing, a data loader's warm-up,
   a MOR study's reductions are approximated (docs: "The workflow", "Planning a run").

``plan(config)`` does both for a whole grid and adds the workflow's own jobs (collation, model
descriptions, tables); the ``plan`` command writes ``results/plan.csv``, which the SLURM profile
reads for each job's runtime request (``workflow/rules/common.smk``, ``planned_runtime``).
"""

from __future__ import annotations

import io
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from puppet.core.specs import RunSpec

# Full training and test split sizes where the data is not at hand (train_size / test_size null).
SPLIT_SIZES = {
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "fashion_mnist": (60_000, 10_000),
    "mini_imagenet": (50_000, 10_000),  # 60,000 images pooled, 5:1 (puppet.core.datasets)
    "synthetic": (2_000, 500),
}
# The workflow's own jobs besides the runs, each one process: collate, describe_models, paper_tables.
REPORT_JOBS = ("collate", "describe_models", "paper_tables")
# Validation passes of a model that calibrates a threshold (``Calibrates``): the candidates of the
# adaptive-depth rule (``baselines._resnet_parts``: 0.1, ..., 0.9).
CALIBRATION_PASSES = 9
# Torch threads of a train job: the train rule's ``threads`` (workflow/rules/train.smk), which
# Snakemake passes on as OMP_NUM_THREADS.
TRAIN_THREADS = 2
# Projected seconds are multiplied by this for a scheduler's runtime request (plus one minute).
RUNTIME_MARGIN = 1.5


def calibration_key(spec: RunSpec) -> str:
    """What a calibration depends on: the run's hash without its seed (the seed changes no cost)."""
    return spec.replace(seed=0).hash


def device_memory_mb(device: str = "auto") -> float | None:
    """The memory a job can use on ``device``: the GPU's, else the machine's (MemTotal)."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 2**20
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def startup_seconds() -> float:
    """One job's start-up: a fresh Python process importing the package and every model."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "puppet", "models"], check=True, capture_output=True)
    return time.perf_counter() - t0


def _splits(spec: RunSpec) -> tuple[Any, str, tuple[int, int, int]]:
    """(splits, what data they are, the run's (train, validation, test) sizes): the run's own
    splits where its data is at hand, else synthetic images of the dataset's shape (a few batches;
    the sizes are then the spec's, or the dataset's full splits where the spec takes them all)."""
    from puppet.core.assemble import load_splits
    from puppet.core.data import make_splits
    from puppet.core.datasets import DATASETS, ArrayData

    try:
        splits = load_splits(spec)
        return splits, "real", (len(splits.y_train), len(splits.y_val), len(splits.y_test))
    except Exception as exc:  # not at hand: its shape is enough to time the model
        why = str(exc).splitlines()[0][:120]
    import torch

    info = DATASETS[spec.dataset]
    full_train, full_test = SPLIT_SIZES.get(spec.dataset, (10_000, 2_000))
    d = spec.data
    n_train = d.train_size or full_train - d.val_size
    n_test = d.test_size or full_test
    size = d.image_size or info.image_size
    g = torch.Generator().manual_seed(0)
    n_x = 4 * max(spec.train.batch_size, spec.measure.throughput_batch, spec.train.eval_batch_size)
    x = torch.randint(0, 256, (n_x, info.in_channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n_x) % info.num_classes
    data = ArrayData(spec.dataset, x, y, x[: n_x // 4], y[: n_x // 4], info.num_classes, "synthetic stand-in")
    splits = make_splits(data, None, min(d.val_size, n_x // 4), None, d.split_seed)
    return splits, f"synthetic stand-in ({why})", (n_train, d.val_size, n_test)


def calibrate(spec: RunSpec, steps: int = 3, warmup_steps: int = 1) -> dict[str, Any]:
    """Time a sample of ``spec``'s work on its device: ``steps`` optimizer steps after
    ``warmup_steps``, an evaluation batch, a batch-1 forward and a throughput-batch forward."""
    import torch

    from puppet.core.assemble import build_model, configure_backend, pick_device
    from puppet.core.data import Batches
    from puppet.core.measure import DeployContext, deployment_names
    from puppet.core.memory import training_step_memory
    from puppet.core.optim import PhasePlan, make_optimizer
    from puppet.core.progress import Progress
    from puppet.core.protocols import DEFAULT_DEPLOYMENT, Calibrates, Prepares, RoutesPerInput
    from puppet.core.train import train_one_epoch

    device = pick_device(spec.device)
    torch.manual_seed(spec.seed)
    configure_backend(device)
    t0 = time.perf_counter()
    splits, data, (n_train, n_val, n_test) = _splits(spec)
    data_s = time.perf_counter() - t0 if data == "real" else 0.0
    torch.set_num_threads(TRAIN_THREADS)
    model = build_model(spec, splits).to(device)
    batch = spec.train.batch_size
    norm = dict(mean=splits.mean, std=splits.std, device=device)
    t0 = time.perf_counter()
    if isinstance(model, Prepares):  # on a stand-in split: scaled to the run's training images below
        model.prepare(x for x, _ in Batches(splits.x_train, splits.y_train, spec.train.eval_batch_size, **norm))
    prepare_s_per_img = (time.perf_counter() - t0) / len(splits.y_train) if isinstance(model, Prepares) else 0.0
    record: dict[str, Any] = {"key": calibration_key(spec), "dataset": spec.dataset, "model": spec.model}
    record["prepare_s_per_img"] = prepare_s_per_img
    record.update(data=data, device=str(device), threads=spec.measure.threads, max_channels=spec.max_channels)
    record.update(n_train=n_train, n_val=n_val, n_test=n_test, data_s=data_s)
    if not spec.cost_only:
        need = (warmup_steps + steps) * batch
        reps = math.ceil(need / len(splits.y_train))
        x, y = splits.x_train.repeat(reps, 1, 1, 1)[:need], splits.y_train.repeat(reps)[:need]
        opt = make_optimizer(model, spec.train)
        phases = PhasePlan.build(spec, model, max(1, math.ceil(n_train / batch)))
        quiet = Progress(1, spec.model)
        quiet.live = False
        quiet.say = lambda text: None
        warm = Batches(x[: warmup_steps * batch], y[: warmup_steps * batch], batch, **norm)
        timed = Batches(x[warmup_steps * batch :], y[warmup_steps * batch :], batch, **norm)
        train_one_epoch(model, warm, 0, opt, device, spec.train, quiet, phases)
        record["train_step_s"] = train_one_epoch(model, timed, 1, opt, device, spec.train, quiet, phases)[
            "seconds"
        ] / len(timed)
        record["train_steps_timed"] = len(timed)
        # one more step, its peak memory: the CUDA allocator's, elsewhere the live tensors' (puppet.core.memory)
        amp = torch.bfloat16 if spec.train.amp and device.type == "cuda" else None
        xb, yb = next(iter(timed.epoch(2)))
        step = training_step_memory(model, opt, xb, yb, amp_dtype=amp)
        record.update(peak_mb=step.peak_bytes / 2**20, peak_method=step.method)
    else:
        record.update(train_step_s=0.0, train_steps_timed=0, peak_mb=None, peak_method="")
    if not spec.cost_only:  # one checkpoint: the model and the optimizer state, serialised
        t0 = time.perf_counter()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, io.BytesIO())
        record["checkpoint_s"] = time.perf_counter() - t0
    record["calibrates"] = isinstance(model, Calibrates)
    torch.set_num_threads(spec.measure.threads)  # the measure job's threads from here on
    routed = spec.cost_only and isinstance(model, RoutesPerInput)
    if routed:  # what the cost-only measure job times: the dearest path
        model.force_path("dearest")
    record["cost_only_routed"] = routed
    model.eval()
    x_test = Batches(splits.x_test, splits.y_test, 1, **norm).normalise(splits.x_test.to(device))

    def timed_forward(module: Any, n: int) -> float:
        xb = x_test[torch.arange(n, device=device) % len(x_test)]
        with torch.inference_mode():
            module(xb)  # warm
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            module(xb)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    record["eval_s_per_img"] = timed_forward(model, spec.train.eval_batch_size) / spec.train.eval_batch_size
    deployments = []
    names = [DEFAULT_DEPLOYMENT] if routed else deployment_names(model, DeployContext())
    for name in names:
        t0 = time.perf_counter()
        module = model if name == DEFAULT_DEPLOYMENT else model.deploy(name, DeployContext()).eval()
        build_s = time.perf_counter() - t0
        deployments.append(
            {
                "name": name,
                "build_s": build_s,
                "forward1_s": timed_forward(module, 1),
                "forward_batch_s": timed_forward(module, spec.measure.throughput_batch),
            }
        )
    record["deployments"] = deployments
    return record


def _job(spec: RunSpec, job: str, seconds: float, peak_mb: float | None, memory_mb: float | None, how: str) -> dict:
    fits = None if peak_mb is None or memory_mb is None else bool(peak_mb <= memory_mb)
    return {
        "profile": spec.profile,
        "dataset": spec.dataset,
        "model": spec.model,
        "seed": spec.seed,
        "config_hash": spec.hash,
        "job": job,
        "projected_s": seconds,
        "runtime_min": math.ceil(RUNTIME_MARGIN * seconds / 60) + 1,
        "peak_mb": peak_mb,
        "fits": fits,
        "basis": how,
    }


def project(
    spec: RunSpec,
    calibration: dict[str, Any],
    startup_s: float,
    memory_mb: float | None = None,
    deploy_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The run's train and measure jobs with their projected seconds and peak memory, from one
    ``calibrate`` record and the job start-up ``startup_s``; ``fits`` is False where the peak is
    above ``memory_mb``. Pure: the same arguments give the same rows."""
    c, m, t = calibration, spec.measure, spec.train
    eval_s, start = c["eval_s_per_img"], startup_s + c.get("data_s", 0.0)
    # build, then fit what needs no training on the training images (Puppet-CNN's complexity range)
    train_s = start + c["n_train"] * c.get("prepare_s_per_img", 0.0)
    if not spec.cost_only:
        steps = spec.epochs * math.ceil(c["n_train"] / t.batch_size)
        train_s += steps * c["train_step_s"] + spec.epochs * c.get("checkpoint_s", 0.0)
        val_passes = CALIBRATION_PASSES if c.get("calibrates") else 0  # once per threshold candidate
        train_s += (val_passes * c["n_val"] + c["n_test"]) * eval_s  # and the test pass
    deployments = list(c["deployments"])
    default, others = deployments[0], deployments[1:]
    options = deploy_options or {}
    levels = options.get("levels") if isinstance(options.get("levels"), dict) else {}
    n_levels = sum(len(v) for v in levels.values())
    for _ in range(2 * n_levels):  # each reduction level as reduced and fine-tuned: timed as the default
        others.append(default)
    latency_calls = m.warmup + m.rounds * m.latency_images
    throughput_calls = min(2, m.warmup) + m.rounds * m.throughput_iters

    def timing(a: dict, b: dict | None) -> float:  # interleaved: both in every round
        pair = [a] + ([b] if b else [])
        return sum(latency_calls * d["forward1_s"] + throughput_calls * d["forward_batch_s"] for d in pair)

    timing_s = sum(timing(default, o) for o in others) if others else timing(default, None)
    # per MACs image: a deep copy's uncounted forward, ptflops' counted one and the statistics forward
    macs_s = sum(3 * m.macs_images * d["forward1_s"] for d in [default, *others])
    if c.get("cost_only_routed"):  # the cheapest path's MACs, counted on one image
        macs_s += 3 * default["forward1_s"]
    build_s = sum(d.get("build_s", 0.0) for d in others)
    accuracy_s = 0.0 if spec.cost_only else len(others) * c["n_test"] * eval_s
    finetune_s = n_levels * options.get("finetune_steps", 0) * c["train_step_s"]
    measure_s = start + build_s + macs_s + timing_s + accuracy_s + finetune_s
    how = f"{c['device']}, {c['data']} data"
    return [
        _job(spec, "train", train_s, c.get("peak_mb"), memory_mb, how),
        _job(spec, "measure", measure_s, None, memory_mb, how),
    ]


def plan(
    config: dict,
    calibrations: dict[str, dict] | None = None,
    memory_mb: float | None = None,
    say: Callable[[str], None] = print,
    startup_s: float | None = None,
    steps: int = 3,
) -> pd.DataFrame:
    """Every job of ``config``'s grid with its projection: calibrating each distinct run once (or
    reusing ``calibrations``, keyed by ``calibration_key``, which it fills in), plus the workflow's
    report jobs. One row per job; ``fits`` False flags a job above ``memory_mb``."""
    from puppet.core.assemble import pick_device
    from puppet.core.config import deploy_options, run_grid, run_spec

    calibrations = {} if calibrations is None else calibrations
    startup_s = startup_seconds() if startup_s is None else startup_s
    say(f"job start-up on this machine: {startup_s:.1f} s")
    rows = []
    for dataset, model, seed in run_grid(config):
        spec = run_spec(config, dataset, model, seed)
        key = calibration_key(spec)
        cached = calibrations.get(key, {})
        if cached and "error" not in cached and cached.get("device") != str(pick_device(spec.device)):
            del calibrations[key]  # timed on another device (a login node's CPU, another GPU)
        if key not in calibrations:
            t0 = time.perf_counter()
            try:
                calibrations[key] = calibrate(spec, steps=steps)
            except Exception as exc:  # one model that cannot be timed is a row saying so
                calibrations[key] = {"key": key, "error": str(exc).splitlines()[0][:200]}
            say(f"calibrated {dataset}/{model} in {time.perf_counter() - t0:.1f} s")
        c = calibrations[key]
        if "error" in c:
            rows.append({"profile": spec.profile, "dataset": dataset, "model": model, "seed": seed, "job": "train"})
            rows[-1].update(projected_s=math.nan, basis=f"calibration failed: {c['error']}", fits=None)
            continue
        rows += project(spec, c, startup_s, memory_mb, deploy_options(config, model))
    for job in REPORT_JOBS:
        rows.append({"profile": config["profile"], "job": job, "projected_s": startup_s, "basis": "job start-up"})
    frame = pd.DataFrame(rows)
    frame["runtime_min"] = [math.ceil(RUNTIME_MARGIN * s / 60) + 1 if s == s else None for s in frame["projected_s"]]
    return frame


def summary(frame: pd.DataFrame, memory_mb: float | None) -> list[str]:
    """The lines ``plan`` prints: a job per line, the total, the jobs that will not fit."""
    from puppet.core.progress import duration

    lines = []
    for _, r in frame.iterrows():
        what = f"{r['dataset']}/{r['model']}/seed{int(r['seed'])}" if isinstance(r.get("model"), str) else "workflow"
        peak = f", peak {r['peak_mb']:,.0f} MB" if r.get("peak_mb") == r.get("peak_mb") and r.get("peak_mb") else ""
        flag = "  WILL NOT FIT" if r.get("fits") is False else ""
        projected = "?" if r["projected_s"] != r["projected_s"] else duration(r["projected_s"])
        lines.append(f"{what:45s} {r['job']:16s} {projected:>9s}{peak}{flag}")
    total = frame["projected_s"].sum()
    unknown = int(frame["projected_s"].isna().sum())
    missing = f"; {unknown} job(s) not projected (calibration failed: see their basis)" if unknown else ""
    lines.append(
        f"total: {duration(total)} for {len(frame)} jobs, one at a time (the default workflow profile){missing}"
    )
    too_big = frame[frame["fits"].eq(False)] if "fits" in frame else frame.iloc[:0]
    if len(too_big):
        limit = f"{memory_mb:,.0f} MB" if memory_mb else "the device's memory"
        lines.append(f"{len(too_big)} job(s) will not fit {limit}: lower train.batch_size or max_channels")
    return lines
