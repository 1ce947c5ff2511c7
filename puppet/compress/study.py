"""The MOR study job: one trained Neural ODE run -> snapshots -> every (method, level) -> ``mor.csv``.

For a run folder whose ``model.pt`` holds a trained ``node_conv`` or ``node_rnn``:

1. snapshots of the ODE layer's state and nonlinearity at every right-hand-side evaluation, over the
   first ``snapshot_images`` training images (``puppet.compress.reduce.collect_snapshots``);
2. for each method (POD-DEIM, pruning, SVD) and each level the config names: the reduced model,
   its test accuracy (the run's whole test split), parameters, MACs of the ODE layer and of the
   whole network (ptflops, beside the hand formula ``ode_macs_formula``), and its speed-up over
   the full model, timed interleaved in this process (``puppet.core.timing.compare``: median over
   rounds of the per-round ratio, with its 95 % interval) for the ODE layer alone and the whole
   network, at ``batch`` test images per call;
3. one row per (method, level), plus the full model's row, in ``<run>/mor.csv``; a failure is a
   ``status=error`` row (of that level, or of the whole study) and a line on the console, never a
   silent gap, and it marks the run failed at the end of the invocation.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch
import torch.nn as nn

from puppet.compress.reduce import (
    METHODS,
    Reduction,
    collect_snapshots,
    full_dimensions,
    is_node,
    ode_macs_formula,
    reduce,
    state_shape,
)
from puppet.core import timing
from puppet.core.data import Batches
from puppet.core.evaluate import evaluate
from puppet.core.io import atomic_write_csv, git_commit, one_line
from puppet.core.measure import count_macs, environment
from puppet.core.runs import inspect_run, record_failure
from puppet.core.specs import RunSpec
from puppet.core.train import build_model, configure_backend, load_splits, pick_device


@dataclass(frozen=True)
class MorSettings:
    """The config's ``mor`` block."""

    snapshot_images: int
    batch: int  # test images per timed call
    rounds: int
    warmup: int
    threads: int
    levels: Mapping[str, Mapping[str, list[int]]]  # model -> method -> levels

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MorSettings:
        return cls(**{k: values[k] for k in cls.__dataclass_fields__})


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _ode_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the ODE layer receives for images ``x``: the stem's output, or the row sequence."""
    with torch.no_grad():
        return model.stem(x) if hasattr(model, "stem") else x.permute(0, 2, 1, 3).flatten(2)


def _row(model: nn.Module, reduction: Reduction | None, full: nn.Module, shape, image_shape, test, x1, ode_x1) -> dict:
    top = evaluate(model, test)
    row = {
        "method": "full" if reduction is None else reduction.method,
        "level": full_dimensions(full, shape)["pod_deim"] if reduction is None else reduction.level,
        "state_dim": int(torch.tensor(shape).prod()) if reduction is None else reduction.state_dim,
        "nonlinearities": int(torch.tensor(shape).prod()) if reduction is None else reduction.nonlinearities,
        "top1": top.top1,
        "params_ode": _params(model.ode),
        "params_total": _params(model),
        "macs_ode": count_macs(model.ode, ode_x1),
        "macs_ode_formula": ode_macs_formula(full, reduction, shape, image_shape),
        "macs_total": count_macs(model, x1),
    }
    if reduction is not None:
        row.update(
            energy_state=reduction.energy_state,
            energy_nonlinear=reduction.energy_nonlinear,
            deim_condition=reduction.deim_condition,
        )
    return row


def _speedups(full: nn.Module, reduced: nn.Module, xs: list[torch.Tensor], settings: MorSettings, device) -> dict:
    """Full / reduced time, interleaved, for the whole network and the ODE layer alone."""
    out: dict[str, Any] = {}
    ode_xs = [_ode_input(full, x) for x in xs]
    with torch.inference_mode():
        for name, a, b, inputs in (
            ("speedup_total", full, reduced, xs),
            ("speedup_ode", full.ode, reduced.ode, ode_xs),
        ):
            c = timing.compare(a, b, inputs, rounds=settings.rounds, warmup=settings.warmup, device=device)
            out.update(c.ratio.record(name))
            if name == "speedup_total":
                out["time_full_s_per_img"] = c.a.median / len(xs[0])
                out["time_s_per_img"] = c.b.median / len(xs[0])
    return out


def run_study(spec: RunSpec, run_dir: Path, settings: MorSettings) -> pd.DataFrame:
    """Every reduction of the trained model in ``run_dir``: one row each, plus the full model's."""
    device = pick_device(spec.device)
    configure_backend(device)
    torch.set_num_threads(settings.threads)
    splits = load_splits(spec)
    full = build_model(spec, splits).to(device)
    if not is_node(full):
        raise ValueError(f"{spec.model} is not a Neural ODE of baselines.node; the MOR study reduces only those")
    saved = torch.load(run_dir / "model.pt", map_location=device, weights_only=False)
    full.load_state_dict(saved["model"])
    full.eval()
    image_shape = (splits.in_channels, splits.image_size, splits.image_size)
    shape = state_shape(full, image_shape)
    levels = settings.levels.get(spec.model, {})
    limits = full_dimensions(full, shape)
    for method, values in levels.items():  # refused before any work, in one line
        if method not in METHODS:
            raise ValueError(f"mor.levels.{spec.model}: unknown method {method!r}; choose from {', '.join(METHODS)}")
        too_big = [v for v in values if v > limits[method]]
        if too_big:
            raise ValueError(
                f"mor.levels.{spec.model}.{method}: {too_big} exceed {limits[method]}, the model's largest level"
            )
    norm = dict(mean=splits.mean, std=splits.std, device=device)
    test = Batches(splits.x_test, splits.y_test, 1000, **norm)
    snap_x = splits.x_train[: settings.snapshot_images]
    snaps = collect_snapshots(full, (x for x, _ in Batches(snap_x, splits.y_train[: len(snap_x)], 500, **norm)))
    x_timed = test.normalise(splits.x_test[: 2 * settings.batch].to(device))
    xs = [x_timed[: settings.batch], x_timed[settings.batch : 2 * settings.batch]]
    xs = [x for x in xs if len(x)]
    x1 = x_timed[:1]
    ode_x1 = _ode_input(full, x1)
    full_row = _row(full, None, full, shape, image_shape, test, x1, ode_x1)
    rows = [{**full_row, "status": "ok", "error": "", "speedup_total": 1.0, "speedup_ode": 1.0}]
    for method in METHODS:
        for level in levels.get(method, []):
            try:
                reduction = reduce(full, method, int(level), snaps, shape)
                row = _row(reduction.model, reduction, full, shape, image_shape, test, x1, ode_x1)
                row.update(_speedups(full, reduction.model, xs, settings, device), status="ok", error="")
            except Exception as exc:  # one level's failure is its row; the other levels stand
                row = {"method": method, "level": int(level), "status": "error", "error": one_line(exc)}
                print(f"mor failed: {spec.label} {method} {level}: {row['error']}", flush=True)
                rows.append(row)
                continue
            rows.append(row)
            print(
                f"{spec.label} {method} {level}: top-1 {row['top1']:.2f} (full {full_row['top1']:.2f}), "
                f"speed-up {row['speedup_total']:.2f} whole / {row['speedup_ode']:.2f} ODE layer",
                file=sys.stderr,
                flush=True,
            )
    timed = [r["time_full_s_per_img"] for r in rows if "time_full_s_per_img" in r]
    if timed:  # the full model was timed beside every reduction: its median over those comparisons
        rows[0]["time_full_s_per_img"] = rows[0]["time_s_per_img"] = float(pd.Series(timed).median())
    frame = pd.DataFrame(rows)
    frame["top1_full"] = full_row["top1"]
    frame["macs_reduction_ode"] = full_row["macs_ode"] / frame["macs_ode"]
    frame["macs_reduction_total"] = full_row["macs_total"] / frame["macs_total"]
    env = environment(device, torch.get_num_threads())
    for key, value in {
        "profile": spec.profile,
        "dataset": spec.dataset,
        "model": spec.model,
        "seed": spec.seed,
        "snapshots": snaps.count,
        "timing_batch": len(xs[0]),
        "rounds": settings.rounds,
        "device": env["device"],
        "threads": env["threads"],
        "torch_version": env["torch_version"],
        "git_commit": git_commit(),
        "config_hash": spec.hash,
    }.items():
        frame[key] = value
    return frame


KEY = ["profile", "dataset", "model", "seed"]


def mor_main(spec: RunSpec, run_dir: Path, settings: MorSettings) -> pd.DataFrame:
    """The Snakemake job: write ``<run_dir>/mor.csv``; a failure is a one-row ``status=error`` file
    (and a line on the console), a run whose training failed is skipped in the same way."""
    run_dir = Path(run_dir)
    key = {"profile": spec.profile, "dataset": spec.dataset, "model": spec.model, "seed": spec.seed}
    state = inspect_run(run_dir)
    if state.train != "ok":
        frame = pd.DataFrame([{**key, "status": "skipped", "error": f"training failed: {state.error or state.train}"}])
    else:
        try:
            frame = run_study(spec, run_dir, settings)
        except Exception as exc:  # recorded in the row, never a silent gap
            message = one_line(exc)
            print(f"mor failed: {spec.label}: {message}", flush=True)
            frame = pd.DataFrame([{**key, "status": "error", "error": message}])
    failed = frame[frame["status"] == "error"]
    if len(failed):  # counted by the mor rule's params: the next invocation redoes the study
        record_failure(run_dir, "mor", str(failed["error"].iloc[0]), levels_failed=len(failed))
    atomic_write_csv(frame[KEY + [c for c in frame.columns if c not in KEY]], run_dir / "mor.csv")
    return frame
