"""Size, MACs and speed, measured the same way for every model (see README, "Measurement protocol").

* stored params: the trainable parameters one must save (generated weights are
  never parameters); a model may define ``stored_param_count()`` when that differs.
* MACs: ptflops with ``backend='aten'`` passed explicitly (its default changed
  between releases and the ``pytorch`` backend misses ``F.conv2d`` with generated
  weights), on a deep copy (the aten backend leaves hooks behind), asserted
  non-empty, averaged over real test images at batch 1 (adaptive models' cost
  depends on the input). Convention: conv and matmul MACs, conv bias included;
  BN, ReLU, pooling and element-wise ops are zero. A model whose own elementwise arithmetic is
  a real share of its cost (the PDE Global layer's update) counts it itself
  (``last_stats["elementwise_ops"]``): the ``elementwise_ops`` column, empty for the others.
* latency: batch 1, one real test image per timed forward, after warm-up, device
  synchronised around each; ``rounds`` rounds over ``latency_images`` images, the median over
  rounds with its 95 % interval and a noise flag (``puppet.core.timing``); p90 over every call.
* throughput: img/s at a large batch of real test images, median over rounds with its interval.
* deployments (``puppet.core.protocols.Deploys``): every trained model is measured as
  ``default`` (its own forward); a model that names more ways to run it (Puppet-CNN's
  precomputed kernels) has each built from the loaded model and measured by the same code,
  one record per deployment. A deployment other than ``default`` also gets its test accuracy
  (``default``'s is the train job's), and is timed interleaved with ``default``
  (``speedup_vs_default``: default time / its time, with its interval); ``default``'s own
  speed comes from its comparison with the first other deployment, or from timing it alone
  when it has none. What a deployed module reports of itself (``deployment_metrics()``, e.g.
  the precomputed kernels' memory) becomes plain columns of its record.
"""

from __future__ import annotations

import copy
import io
import os
import platform
import statistics
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from puppet.core import timing
from puppet.core.assemble import materialise
from puppet.core.data import Batches
from puppet.core.evaluate import evaluate
from puppet.core.io import git_commit, one_line
from puppet.core.job import run_job
from puppet.core.protocols import (
    DEFAULT_DEPLOYMENT,
    CountsStoredParams,
    CountsTotalParams,
    DeployContext,
    Deploys,
    HasDeploymentMetrics,
    ReportsStats,
    RoutesPerInput,
)
from puppet.core.repro import cpu_model
from puppet.core.runs import inspect_run, record_failure, remove_orphan_temporaries
from puppet.core.specs import MeasureSpec, RunSpec


def trainable_param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def stored_param_count(model: nn.Module) -> int:
    """Parameters one must store to deploy the model (the headline size)."""
    if isinstance(model, CountsStoredParams):
        return int(model.stored_param_count())
    return trainable_param_count(model)


def total_param_count(model: nn.Module) -> int:
    """All parameters, trainable or not (torchinfo's "Total params" where a model defines it)."""
    if isinstance(model, CountsTotalParams):
        return int(model.total_param_count())
    return sum(p.numel() for p in model.parameters())


def param_size_mb(n_params: int) -> float:
    """float32 bytes / 1e6, the paper's "Params Size (MB)"."""
    return n_params * 4 / 1e6


class MacsCountError(RuntimeError):
    pass


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of one forward pass on ``x`` (batch 1) with ptflops' aten backend, on a deep copy."""
    from ptflops import get_model_complexity_info
    from ptflops.flops_counter import FLOPS_BACKEND

    clone = copy.deepcopy(model).eval()
    with torch.no_grad():  # one uncounted forward: one-time work (precomputed kernels) is no per-image cost
        clone(x)
    with redirect_stdout(io.StringIO()) as out:
        macs, _ = get_model_complexity_info(
            clone,
            tuple(x.shape[1:]),
            input_constructor=lambda _: x,
            as_strings=False,
            print_per_layer_stat=False,
            backend=FLOPS_BACKEND.ATEN,
            verbose=False,
        )
    if macs is None:  # ptflops prints the traceback and returns None instead of raising
        raise MacsCountError(
            f"ptflops could not count MACs for {type(model).__name__}: {out.getvalue().strip().splitlines()[-1:]}"
        )
    return int(macs)


def count_macs_flopcounter(model: nn.Module, x: torch.Tensor) -> int:
    """An independent count: torch's FlopCounterMode (FLOPs = 2 x MACs, bias excluded)."""
    from torch.utils.flop_counter import FlopCounterMode

    # grad enabled: FlopCounterMode's module tracker (torch >= 2.4) expects autograd nodes on outputs
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops() // 2


def _stat_mean(model: nn.Module, name: str, default: float | None = 0.0) -> float | None:
    """The batch mean of ``last_stats[name]`` after a forward; ``default`` where the model has none."""
    if not isinstance(model, ReportsStats) or name not in model.last_stats:
        return default
    value = model.last_stats[name]
    return float(value.float().mean()) if isinstance(value, torch.Tensor) else float(value)


def _latency_record(est: timing.Estimate, calls: list[list[float]], threshold: float) -> dict[str, Any]:
    flat = [t for r in calls for t in r]
    return {
        **est.record("latency", "s_per_img", threshold),
        "latency_p90_s_per_img": timing.p90(calls),
        "latency_mean_s_per_img": statistics.fmean(flat),
    }


def _throughput(default: nn.Module, other: nn.Module | None, x_all: torch.Tensor, settings: MeasureSpec, device):
    """(images/s of ``default``, images/s of ``other``, default's time / other's, batch used; the
    second and third None without ``other``): at the largest batch up to ``throughput_batch``
    that fits, the two timed interleaved when there are two."""
    n, batch, rounds = len(x_all), settings.throughput_batch, settings.rounds
    warmup = min(2, settings.warmup)  # forwards of a whole batch: two warm a device up
    while batch >= 1:
        try:
            xb = x_all[torch.arange(batch, device=x_all.device) % n]
            calls = [0] * settings.throughput_iters  # one round: throughput_iters batched forwards
            if other is None:
                est = timing.timed(lambda _: default(xb), calls, rounds=rounds, warmup=warmup, device=device)  # noqa: B023
                return est.scaled_inverse(batch), None, None, batch
            c = timing.compare(
                lambda _: default(xb),  # noqa: B023 (called in this iteration)
                lambda _: other(xb),  # noqa: B023
                calls,
                rounds=rounds,
                warmup=warmup,
                device=device,
            )
            return c.a.scaled_inverse(batch), c.b.scaled_inverse(batch), c.ratio, batch
        except torch.cuda.OutOfMemoryError:  # timm-style back-off: halve the batch and retry
            torch.cuda.empty_cache()
            batch //= 2
    raise RuntimeError("throughput: out of memory even at batch 1")


@torch.inference_mode()
def measure_speed(
    default: nn.Module, batches: Batches, settings: MeasureSpec, device: torch.device, other: nn.Module | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Batch-1 latency over real test images and batched throughput, each a median over
    ``rounds`` rounds with its interval (``puppet.core.timing``): ``default`` alone, or
    ``default`` and ``other`` interleaved, ``other``'s record then carrying
    ``speedup_vs_default`` (default's latency / its own, the median of per-round ratios) and
    ``throughput_speedup_vs_default`` (the same at the throughput batch)."""
    default.eval()
    x_all = batches.normalise(batches.x)
    n = len(x_all)
    images = [x_all[i % n : i % n + 1] for i in range(settings.latency_images)]
    idx = list(range(len(images)))
    rounds, threshold, warmup = settings.rounds, settings.noise_threshold, settings.warmup
    if other is None:
        calls = timing.time_calls(lambda i: default(images[i]), idx, rounds=rounds, warmup=warmup, device=device)
        mine, theirs = _latency_record(timing.per_round(calls), calls, threshold), None
    else:
        other.eval()
        c = timing.compare(
            lambda i: default(images[i]), lambda i: other(images[i]), idx, rounds=rounds, warmup=warmup, device=device
        )
        mine = _latency_record(c.a, c.calls_a, threshold)
        theirs = _latency_record(c.b, c.calls_b, threshold)
        theirs.update(c.ratio.record("speedup_vs_default", threshold=threshold))
    thr, thr_other, thr_ratio, used = _throughput(default, other, x_all, settings, device)
    for record, est in ((mine, thr), (theirs, thr_other)):
        if record is not None:
            record.update(est.record("throughput", "img_per_s", threshold))
            record.update(throughput_batch=used, latency_rounds=rounds)
    if theirs is not None:  # the batched speed-up, as the batch-1 one: default's time / its own, per round
        theirs.update(thr_ratio.record("throughput_speedup_vs_default", threshold=threshold))
    return mine, theirs


@torch.no_grad()  # not inference_mode: ptflops' aten dispatch counts nothing under it
def measure_macs(model: nn.Module, batches: Batches, n_images: int) -> dict[str, Any]:
    """MACs at batch 1, averaged over the first ``n_images`` test images; with the
    kernel-generation share the model reports in ``last_stats['generation_macs']``."""
    x_all = batches.normalise(batches.x[:n_images])
    macs, gen, elementwise = [], [], []
    for i in range(len(x_all)):
        xi = x_all[i : i + 1]
        macs.append(count_macs(model, xi))
        model.eval()(xi)
        gen.append(_stat_mean(model, "generation_macs"))
        elementwise.append(_stat_mean(model, "elementwise_ops", default=None))
    mean = statistics.fmean(macs)
    mean_gen = statistics.fmean(gen)
    record = {
        "macs": mean,
        "macs_min": min(macs),
        "macs_max": max(macs),
        "macs_generation": mean_gen,
        "macs_without_generation": mean - mean_gen,
        "macs_images": len(macs),
    }
    if None not in elementwise:  # only models that count their elementwise arithmetic: no 0 for "not counted"
        record["elementwise_ops"] = statistics.fmean(elementwise)
    return record


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:  # the CPU's model where the system names it: "cpu (AMD EPYC, x86_64)"
        cpu, machine = cpu_model(), platform.machine()
        name = f"cpu ({cpu}, {machine})" if cpu != machine else f"cpu ({machine})"
    return {
        "device": name,
        "device_type": device.type,
        "threads": threads,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "cudnn_version": str(torch.backends.cudnn.version() or "") if device.type == "cuda" else "",
        "python_version": sys.version.split()[0],
    }


def measure_costs(model: nn.Module, test: Batches, settings: MeasureSpec) -> dict[str, Any]:
    """Size and MACs of one deployed model (its own counts where it defines them)."""
    stored = stored_param_count(model)
    record: dict[str, Any] = {
        "stored_params": stored,
        "trainable_params": trainable_param_count(model),
        "total_params": total_param_count(model),
        "param_size_mb": param_size_mb(stored),
    }
    record.update(measure_macs(model, test, settings.macs_images))
    if isinstance(model, HasDeploymentMetrics):
        record.update({k: float(v) for k, v in model.deployment_metrics().items()})
    return record


def deployment_names(model: nn.Module, context: DeployContext) -> dict[str, str]:
    """Every deployment of ``model``, ``default`` first: name -> description ('' when none)."""
    names = {DEFAULT_DEPLOYMENT: ""}
    if isinstance(model, Deploys):
        names.update(model.deployments(context))
    return names


def measure_model(
    model: nn.Module,
    test: Batches,
    settings: MeasureSpec,
    device: torch.device,
    context: DeployContext | None = None,
    cost_only: bool = False,
) -> list[dict[str, Any]]:
    """One record per deployment of the trained ``model``, ``default`` first, everything the
    tables need except ``default``'s accuracy (the train job's). A deployment that cannot be
    built or measured is a ``status=error`` record of its own; the others stand.

    ``cost_only`` (an untrained model, ``RunSpec.cost_only``): no deployment's accuracy is taken,
    and a model that routes each input by what it learned (``RoutesPerInput``) is measured on its
    dearest path, with its cheapest path's MACs beside (``macs_cheapest_path``): never the
    untrained routing. Each record says which in ``cost_basis``."""
    torch.set_num_threads(settings.threads)
    context = context or DeployContext()
    model.eval()
    basis: dict[str, Any] = {}
    if cost_only:
        basis["cost_basis"] = "as built: no learned routing"
        if isinstance(model, RoutesPerInput):
            model.force_path("cheapest")
            cheapest = measure_macs(model, test, 1)["macs"]
            model.force_path("dearest")
            basis = {"cost_basis": "dearest path: its routing needs training", "macs_cheapest_path": cheapest}
    names = deployment_names(model, context)
    if "macs_cheapest_path" in basis:  # its other deployments differ by routing alone: the same path here
        names = {DEFAULT_DEPLOYMENT: "dearest path (every gate runs, no early exit), not trained"}
    records: list[dict[str, Any]] = []
    deployed: dict[str, nn.Module] = {}
    for name, label in names.items():
        record: dict[str, Any] = {"deployment": name, "deployment_label": label}
        try:
            module = model if name == DEFAULT_DEPLOYMENT else model.deploy(name, context).eval()
            record.update(measure_costs(module, test, settings), **basis)
            if name != DEFAULT_DEPLOYMENT and not cost_only:  # on the run's test images, as the train job's top1
                batched = copy.copy(test)
                batched.batch_size = 128
                result = evaluate(module, batched)
                # with its own per-sample statistics (an adaptive model's mean depth, exit, ...)
                record.update(top1=result.top1, top5=result.top5, **result.stats_summary)
            deployed[name] = module
            record.update(status="ok", error="")
        except Exception as exc:  # this deployment's row says why; the others stand
            record.update(status="error", error=one_line(exc))
        records.append(record)
    env = environment(device, torch.get_num_threads())
    by_name = {r["deployment"]: r for r in records}
    others = [n for n in deployed if n != DEFAULT_DEPLOYMENT]
    if DEFAULT_DEPLOYMENT in deployed:
        default = deployed[DEFAULT_DEPLOYMENT]
        for i, name in enumerate(others or [None]):
            try:
                mine, theirs = measure_speed(default, test, settings, device, deployed.get(name))
            except Exception as exc:
                failed = by_name[name or DEFAULT_DEPLOYMENT]
                failed.update(status="error", error=f"timing: {one_line(exc)}")
                continue
            if i == 0:  # default's speed: from its first comparison (or timed alone)
                by_name[DEFAULT_DEPLOYMENT].update(mine)
            if name is not None:
                by_name[name].update(theirs)
    for record in records:
        record.update(env)
    return records


def deploy_context(splits: Any, device: torch.device | str, options: dict[str, Any] | None = None) -> DeployContext:
    """What the measure job gives a run's deployments: ``options`` and the run's training split
    (``splits``, a ``puppet.core.data.Splits``) on ``device``, as images in their stored order and as
    shuffled labelled batches."""
    return DeployContext(
        options=dict(options or {}),
        train_images=lambda: (
            x for x, _ in Batches(splits.x_train, splits.y_train, 500, splits.mean, splits.std, device=device)
        ),
        train_batches=lambda batch_size, seed: Batches(
            splits.x_train,
            splits.y_train,
            batch_size,
            splits.mean,
            splits.std,
            shuffle=True,
            seed=seed,
            device=device,
            drop_last=True,
        ),
    )


def measure_main(spec: RunSpec, run_dir: Path, deploy_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The measure job: load the trained ``model.pt``, measure each of its deployments and write
    ``measure.json``; a failure is a ``status=error`` record (``puppet.core.job.run_job``), a run
    whose training failed is skipped. ``deploy_options``: the config's options for this model's
    deployments (``DeployContext.options``, e.g. a Neural ODE's reduction levels)."""

    def job() -> dict[str, Any]:
        remove_orphan_temporaries(run_dir)  # a killed measure's; the train job of this run has finished
        state = inspect_run(run_dir)
        record = {"profile": spec.profile, "dataset": spec.dataset, "model": spec.model, "seed": spec.seed}
        if state.train != "ok":
            why = state.error or f"train.json is {state.train}"
            record.update(status="skipped", error=f"training failed: {why}")
            return record
        # a family's options may pin the device its deployments are measured on (the MOR study times on
        # the CPU by default: its small layers are launch-bound on a GPU); every row names the device
        device, splits, model = materialise(spec, device=(deploy_options or {}).get("device"))
        try:
            saved = torch.load(run_dir / "model.pt", map_location=device, weights_only=False)
            model.load_state_dict(saved["model"])
        except Exception as exc:
            raise RuntimeError(
                f"cannot load {run_dir / 'model.pt'} ({one_line(exc, 160)}); "
                f"delete it and rerun: the run is redone from its checkpoint"
            ) from None
        test = Batches(splits.x_test, splits.y_test, 1, splits.mean, splits.std, device=device)
        context = deploy_context(splits, device, deploy_options)
        busy = timing.wait_for_quiet()  # the workflow runs timing jobs alone; something else may not
        contended = busy is not None and busy >= timing.QUIET_CORES
        if contended:
            print(
                f"warning: {spec.label}: {busy:.1f} of {os.cpu_count()} cores were busy with other processes when "
                f"timing started; its latencies are flagged timing_contended",
                flush=True,
            )
        deployments = measure_model(model, test, spec.measure, device, context, cost_only=spec.cost_only)
        for row in deployments:
            row.update(machine_busy_cores=busy, timing_contended=contended)
        failed = [r for r in deployments if r["status"] != "ok"]
        for r in failed:
            print(f"measure failed: {spec.label} ({r['deployment']}): {r['error']}", flush=True)
        error = "; ".join(f"{r['deployment']}: {r['error']}" for r in failed)
        record.update(status="error" if failed else "ok", error=error, deployments=deployments)
        record["measure_slurm_job_id"] = os.environ.get("SLURM_JOB_ID", "")
        record["measure_git_commit"] = git_commit()  # the code that measured (train.json has the training's)
        if failed:
            record_failure(run_dir, "measure", error)
        return record

    return run_job("measure", job, spec=spec, run_dir=run_dir, failed="measure failed")
