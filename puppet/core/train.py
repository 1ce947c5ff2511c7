"""Train one (dataset, model, seed) run, with a checkpoint every epoch and automatic resume.

Read top to bottom, as torchvision's ``references/classification/train.py``: ``train_one_epoch``
(one epoch of optimizer steps), ``evaluate`` (``puppet.core.evaluate``) and ``main(spec, out_dir)``,
the whole run: data and model (``puppet.core.assemble``) -> optimizer, schedule and phases
(``puppet.core.optim``) -> resume (``puppet.core.checkpoint``) -> the epochs, each checkpointed ->
calibrate on validation -> evaluate on test -> ``model.pt`` and the ``train.json`` record.
``train_main`` is the job behind the Snakemake ``train`` rule: ``main`` inside
``puppet.core.job.run_job``, which turns a failure into a ``status=error`` record. A run
interrupted at any point resumes from its last checkpoint and ends with the same metrics as an
uninterrupted one (CPU).

With a time limit (``train.time_limit_min``, passed as ``time_limit_min``) a job that would
overrun it pauses at an epoch boundary instead: checkpoint saved, no ``train.json``, exit
code ``PAUSED_EXIT_CODE``; the same command resumes it. That is how a 100-epoch protocol
fits GPUs lent for minutes at a time.

With ``train.phases`` the run's optimizer steps are split into named phases, each with its own
learning-rate rule, and a ``TrainsInPhases`` model is told its phase (``puppet.core.optim.PhasePlan``).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from puppet.core.assemble import materialise
from puppet.core.checkpoint import resume, save, save_checkpoint
from puppet.core.data import Batches
from puppet.core.evaluate import evaluate
from puppet.core.io import atomic_write_json, git_commit
from puppet.core.job import failpoint, run_job
from puppet.core.optim import PhasePlan, describe_phases, make_optimizer, make_schedule
from puppet.core.progress import Progress, duration
from puppet.core.protocols import Calibrates, HasObjective, Prepares
from puppet.core.repro import machine
from puppet.core.runs import remove_orphan_temporaries
from puppet.core.specs import RunSpec, TrainSpec
from puppet.core.stopping import STOPPED, GracefulStop

# EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to retry"): a paused
# run is neither a success (Snakemake must rerun it) nor a failure (no status=error row).
PAUSED_EXIT_CODE = 75


class NonFiniteLossError(RuntimeError):
    pass


class DivergedError(RuntimeError):
    """A finite loss that exploded: the run is a failure, not a result."""


# The divergence rule: an epoch whose mean training loss is over this many times the run's first
# step's loss (the untrained model's, about ln(classes) for cross-entropy) has diverged. Loose on
# purpose: a healthy run ends far below its first loss, a diverged one (lr 1e8: 6.6e16) far above.
DIVERGENCE_FACTOR = 100.0


def check_divergence(history: list[dict]) -> None:
    """Raise ``DivergedError`` (one line, naming the fix) when the last epoch of ``history`` broke the
    divergence rule against the first epoch's ``first_step_loss`` (runs recorded before the rule
    have none: not checked)."""
    first = history[0].get("first_step_loss") if history else None
    last = history[-1] if history else {}
    if first is not None and last.get("loss", 0.0) > DIVERGENCE_FACTOR * max(first, 1e-12):
        raise DivergedError(
            f"training diverged: epoch {last['epoch']} mean loss {last['loss']:.3g} is over "
            f"{DIVERGENCE_FACTOR:g}x the first step's {first:.3g}; lower train.lr or set train.max_grad_norm"
        )


def compute_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A model's own objective where it has one (joint exit loss, gate loss), else cross-entropy."""
    if isinstance(model, HasObjective):
        return model.compute_loss(x, y)
    logits = model(x)
    return F.cross_entropy(logits, y), logits


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    epoch: int,
    opt: torch.optim.Optimizer,
    device: torch.device,
    train: TrainSpec,
    progress: Progress,
    phases: PhasePlan | None = None,
    *,
    partial: dict | None = None,
    stop: Callable[[int, int], bool] | None = None,
) -> dict:
    """One epoch of optimizer steps. With ``phases``, the model is told its phase before each
    step's forward, and each step runs at its phase's learning rate: the param groups' ``lr``
    (the epoch schedule's) is replaced for ``opt.step()`` and put back right after, so the
    schedule, the optimizer's state and the checkpoints are those of a run without phases.

    ``stop(epoch, steps_done)`` is asked after each step; when it says so, the epoch ends there and
    the record has a ``partial`` entry (the step and the epoch's sums so far) instead of the
    epoch's summary; ``partial`` given back continues the epoch from that step."""
    model.train()
    use_amp = train.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    partial = partial or {}
    start = partial.get("step", 0)
    total_loss, correct, seen = partial.get("total_loss", 0.0), partial.get("correct", 0), partial.get("seen", 0)
    first_step_loss = partial.get("first_step_loss")
    earlier_s = partial.get("seconds", 0.0)  # the epoch's time before it was stopped
    t0 = time.perf_counter()
    n = len(batches)
    progress.start_epoch(epoch, n)
    for i, (x, y) in enumerate(batches.epoch(epoch, start), start):
        if phases is not None:
            phases.enter(epoch * n + i)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            loss, logits = compute_loss(model, x, y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"loss is {loss_value} at epoch {epoch + 1}, step {i + 1}; lower train.lr or set train.max_grad_norm"
            )
        if first_step_loss is None:
            first_step_loss = loss_value
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if train.max_grad_norm:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        if phases is not None:
            scheduled = [group["lr"] for group in opt.param_groups]
            for group in opt.param_groups:
                group["lr"] = phases.lr(group["lr"])
        scaler.step(opt)
        if phases is not None:
            for group, lr in zip(opt.param_groups, scheduled):
                group["lr"] = lr
        scaler.update()
        total_loss += loss_value * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        progress.step(total_loss / seen, correct / seen, seen / (earlier_s + time.perf_counter() - t0))
        if stop is not None and i + 1 < n and stop(epoch, i + 1):
            sums = dict(total_loss=total_loss, correct=correct, seen=seen, first_step_loss=first_step_loss)
            sums["seconds"] = earlier_s + time.perf_counter() - t0
            return {"epoch": epoch + 1, "partial": {"step": i + 1, **sums}}
    seconds = earlier_s + time.perf_counter() - t0
    record = {
        "epoch": epoch + 1,
        "loss": total_loss / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "seconds": seconds,
        "img_per_s": seen / seconds,
    }
    if epoch == 0:  # the untrained model's loss: the divergence rule's reference
        record["first_step_loss"] = first_step_loss
    return record


def _stopped(out_dir: Path, stop: GracefulStop, epoch: int, step: int, epochs: int) -> dict[str, Any]:
    """The record of a run stopped by a signal, and ``stopped.json`` (what the end summary reads)."""
    where = f"at epoch {epoch}/{epochs}, step {step}" if step else f"before epoch {epoch}/{epochs}"
    record = {"status": "stopped", "signal": stop.name, "epoch": epoch, "step": step, "exit_code": stop.exit_code}
    record["message"] = f"stopped by {stop.name} {where}; rerun resumes"
    atomic_write_json({**record, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, out_dir / STOPPED)
    return record


def _pause_message(label: str, epoch: int, epochs: int, elapsed_s: float, limit_min: float, last_epoch_s: float) -> str:
    return (
        f"{label}: paused at epoch {epoch}/{epochs} after {elapsed_s / 60:.1f} min "
        f"(train.time_limit_min={limit_min:g}, last epoch {last_epoch_s / 60:.1f} min); "
        f"rerun the same command to resume"
    )


def recipe_columns(spec: RunSpec, steps_per_epoch: int | None = None) -> dict[str, Any]:
    """How the run was trained, for its metrics row: models of one table may train differently.
    ``phases`` gives each phase's optimizer steps (fractions of the run without ``steps_per_epoch``)."""
    t = spec.train
    schedule = f"multistep{list(t.milestones)}" if t.schedule == "multistep" else t.schedule
    return {
        "max_channels": spec.max_channels,  # the width cap the run's sizes were taken at
        "recipe": spec.recipe,
        "optimizer": f"{t.optimizer} (nesterov)" if t.optimizer == "sgd" else t.optimizer,
        "lr": t.lr,
        "weight_decay": t.weight_decay,
        "batch_size": t.batch_size,
        "schedule": schedule,
        "augment": spec.data.augment,
        "phases": describe_phases(t.phases, None if steps_per_epoch is None else spec.epochs * steps_per_epoch),
    }


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main(
    spec: RunSpec,
    out_dir: str | Path,
    *,
    stop_after_epoch: int | None = None,
    time_limit_min: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    stop: GracefulStop | None = None,
) -> dict[str, Any]:
    """Run (or resume) one training job; return the ``train.json`` record, or a record with
    ``status="paused"`` (and a one-line ``message``) when ``time_limit_min`` stops it early, or
    ``status="stopped"`` when ``stop`` (``puppet.core.stopping``) caught a signal: the checkpoint
    then holds the epoch up to its last optimizer step.

    Before each epoch after the first of this sitting, the job pauses if the time since it
    started plus the duration of its last epoch would pass ``time_limit_min``; the first
    epoch always runs, so every sitting makes progress. ``clock`` (seconds) lets tests fake
    time. ``stop_after_epoch`` simulates an interruption after that many epochs (tests).
    """
    started = clock()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # an attempt starts: the last one's stop is history (train.log)
        (out_dir / STOPPED).unlink(missing_ok=True)
    failpoint(spec, "start")
    for tmp in remove_orphan_temporaries(out_dir):  # left by a killed writer; this job owns the folder
        print(f"removed {tmp.name}, an unfinished write of an earlier attempt", file=sys.stderr)
    device, splits, model = materialise(spec, for_training=True)  # seeded: the seed's initial weights
    if isinstance(model, Calibrates) and len(splits.y_val) == 0 and not spec.cost_only:  # before training
        raise ValueError(f"{spec.model} calibrates on a validation split but data.val_size is 0; set data.val_size > 0")
    train_batches = Batches(
        splits.x_train,
        splits.y_train,
        spec.train.batch_size,
        splits.mean,
        splits.std,
        shuffle=True,
        seed=spec.seed,
        augment=spec.data.augment,
        device=device,
    )
    eval_kw = dict(batch_size=spec.train.eval_batch_size, mean=splits.mean, std=splits.std, device=device)
    if spec.cost_only:  # no optimizer, no step, no calibration, no test pass: a model to measure
        if isinstance(model, Prepares):  # what the model fits on training images without training
            model.prepare(x for x, _ in Batches(splits.x_train, splits.y_train, **eval_kw))
        _save_model(out_dir / "model.pt", spec, model, splits)
        return {**_untrained_record(spec, splits, device), **recipe_columns(spec, len(train_batches))}
    phases = PhasePlan.build(spec, model, len(train_batches))  # refused before any work
    if isinstance(model, Prepares):
        model.prepare(x for x, _ in Batches(splits.x_train, splits.y_train, **eval_kw))
    opt = make_optimizer(model, spec.train)
    sched = make_schedule(opt, spec.train, spec.epochs)
    start_epoch, history, train_time_s, partial = resume(out_dir, spec, model, opt, sched, device)

    commit = git_commit()
    progress = Progress(spec.epochs, f"{spec.model}/{spec.dataset}/seed{spec.seed}")
    steps_per_epoch = len(train_batches)
    if phases is not None:  # the phase this sitting starts in (the last one when no step is left)
        phases.say = progress.say
        phases.enter(start_epoch * steps_per_epoch)
    last_epoch_s = None  # measured in this sitting (with its checkpoint save); None until one epoch ran

    def checkpoint(epochs_done: int, partial: dict | None = None) -> None:  # the run so far (and its epoch's steps)
        save_checkpoint(
            out_dir, spec, model, opt, sched, epochs_done=epochs_done, history=history,
            train_time_s=train_time_s, commit=commit, partial=partial,
        )  # fmt: skip

    def should_stop(epoch: int, steps_done: int) -> bool:  # asked after each optimizer step
        failpoint(spec, "step", epoch + 1, steps_done)
        return stop is not None and stop.requested

    for epoch in range(start_epoch, spec.epochs):
        if stop is not None and stop.requested:  # before the epoch: the last checkpoint holds everything
            return _stopped(out_dir, stop, epoch + 1, 0, spec.epochs)
        if time_limit_min is not None and last_epoch_s is not None:
            elapsed_s = clock() - started
            if elapsed_s + last_epoch_s > 60 * time_limit_min:
                return {
                    "status": "paused",
                    "epoch": epoch,
                    "epochs": spec.epochs,
                    "elapsed_min": elapsed_s / 60,
                    "message": _pause_message(
                        progress.label, epoch, spec.epochs, elapsed_s, time_limit_min, last_epoch_s
                    ),
                }
        epoch_start = clock()
        record = train_one_epoch(
            model, train_batches, epoch, opt, device, spec.train, progress, phases, partial=partial, stop=should_stop
        )
        partial = None
        if "partial" in record:  # stopped by a signal: the epoch so far is saved, the rerun goes on from there
            checkpoint(epoch, record["partial"])
            return _stopped(out_dir, stop, epoch + 1, record["partial"]["step"], spec.epochs)
        if phases is not None:
            record["phases"] = phases.names_in(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        if spec.train.val_curve and len(splits.y_val):  # the learning curve; the next epoch sets train mode again
            val = evaluate(model, Batches(splits.x_val, splits.y_val, **eval_kw))
            record["val_top1"], record["val_loss"] = val.top1, val.loss
        sched.step()
        train_time_s += record["seconds"]
        history.append(record)
        progress.epoch(
            epoch, record["loss"], record["train_acc"], record["img_per_s"], record["seconds"], record.get("val_top1")
        )
        check_divergence(history)  # before the checkpoint: a rerun starts from the last healthy epoch
        checkpoint(epoch + 1)
        failpoint(spec, "epoch", epoch + 1)
        last_epoch_s = clock() - epoch_start
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < spec.epochs:
            return {"status": "interrupted", "epoch": epoch + 1}

    calibration = {}
    if isinstance(model, Calibrates):
        progress.say(f"calibrating on {len(splits.y_val)} validation images")
        calibration = model.calibrate(Batches(splits.x_val, splits.y_val, **eval_kw)) or {}
    progress.say(f"evaluating on {len(splits.y_test)} test images")
    test = evaluate(model, Batches(splits.x_test, splits.y_test, **eval_kw))
    progress.say(f"test top-1 {test.top1:.2f}%, top-5 {test.top5:.2f}%")
    _save_model(out_dir / "model.pt", spec, model, splits)
    if test.per_sample:  # per-sample depth / exit / complexity feed the depth figures
        save(out_dir / "test_stats.pt", test.per_sample)
    return {
        "status": "ok",
        "error": "",
        "top1": test.top1,
        "top5": test.top5,
        "test_loss": test.loss,
        "epochs": spec.epochs,
        "train_time_s": train_time_s,
        "final_train_loss": history[-1]["loss"] if history else None,
        "final_train_acc": history[-1]["train_acc"] if history else None,
        "history": history,
        "stats": test.stats_summary,
        "confusion": test.confusion,
        "calibration": calibration,
        **recipe_columns(spec, steps_per_epoch),
        "phase_steps": phases.record() if phases is not None else [],
        **_provenance(spec, splits, device),
    }


def _provenance(spec: RunSpec, splits: Any, device: torch.device) -> dict[str, Any]:
    """Where a run's record comes from, trained or not: device, scheduler job, data, code, spec."""
    return {
        "train_device": _device_name(device),
        # the CPU and the instruction set its kernels used: a seed repeats bit for bit only on the same
        # type (puppet.core.repro); torch's version is the measure job's column
        **machine(device),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),  # proof that the job ran under the scheduler
        "train_size": len(splits.y_train),
        "val_size": len(splits.y_val),
        "test_size": len(splits.y_test),
        "data_source": splits.source,
        "git_commit": git_commit(),
        "config_hash": spec.hash,
    }


def _save_model(path: Path, spec: RunSpec, model: nn.Module, splits: Any) -> None:
    """``model.pt``: the weights and what the measure job needs to rebuild the model around them."""
    save(
        path,
        {
            "model": model.state_dict(),
            "spec": spec.to_dict(),
            "num_classes": splits.num_classes,
            "in_channels": splits.in_channels,
            "image_size": splits.image_size,
            "mean": splits.mean,
            "std": splits.std,
        },
    )


# What a cost-only run's record says of what it did not do: the columns a trained run fills.
NOT_TRAINED = "not trained (cost_only profile): size, MACs and speed only"


def _untrained_record(spec: RunSpec, splits: Any, device: torch.device) -> dict[str, Any]:
    """The ``train.json`` record of a cost-only run: the model as initialised (and prepared), no
    accuracy. ``trained`` False is what the tables and ``collate`` read."""
    return {
        "status": "ok",
        "error": "",
        "trained": False,
        "note": NOT_TRAINED,
        "top1": None,
        "top5": None,
        "test_loss": None,
        "epochs": 0,
        "train_time_s": 0.0,
        "final_train_loss": None,
        "final_train_acc": None,
        "history": [],
        "stats": {},
        "calibration": {},
        "phase_steps": [],
        **_provenance(spec, splits, device),
    }


def train_main(spec: RunSpec, out_dir: str | Path, time_limit_min: float | None = None) -> dict:
    """Train and write ``train.json``; a failure becomes a ``status=error`` record, not a crash,
    so one bad run never stops the tables. A run paused by ``time_limit_min`` writes nothing
    but its checkpoint (so Snakemake reruns it and it resumes) and prints one line saying so."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    # train.log holds this attempt; the rule appends it to train.log.history, where this header
    # starts each attempt.
    print(
        f"==== attempt started {time.strftime('%Y-%m-%d %H:%M:%S %Z')} · config_hash {spec.hash} "
        f"· commit {commit} ====",
        file=sys.stderr,
        flush=True,
    )

    def job() -> dict[str, Any]:
        record = main(spec, out_dir, time_limit_min=time_limit_min, stop=stop)
        if record["status"] in ("paused", "stopped"):
            # stdout reaches the console (the train rule sends stderr to the run's log); both get it
            print(record["message"], flush=True)
            print(record["message"], file=sys.stderr, flush=True)
        elif record.get("trained") is False:
            print(f"done: {spec.label}: built, {NOT_TRAINED}", flush=True)
        else:  # the run's headline on the console, between Snakemake's job lines
            print(
                f"done: {spec.label}: top-1 {record['top1']:.2f}%, top-5 {record['top5']:.2f}% "
                f"({record['test_size']} test images), trained {duration(record['train_time_s'])}",
                flush=True,
            )
        return record

    with GracefulStop() as stop:  # SIGTERM (SLURM's time limit) or Ctrl-C: checkpoint the step, then exit
        return run_job(
            "train",
            job,
            spec=spec,
            run_dir=out_dir,
            failed="run failed",
            log=out_dir / "train.log",
            provenance={"config_hash": spec.hash, "git_commit": commit},
            oom_hint="lower train.batch_size or max_channels",
        )


def train_steps(spec, steps: int = 2) -> dict[str, torch.Tensor]:
    """The weights of ``spec``'s model after its first ``steps`` optimizer steps, trained as the train
    job trains (its data, seed, ``prepare``, optimizer, phases and ``train_one_epoch``)."""
    device, splits, model = materialise(spec, for_training=True)
    norm = dict(mean=splits.mean, std=splits.std, device=device)
    batch = spec.train.batch_size
    if isinstance(model, Prepares):
        model.prepare(x for x, _ in Batches(splits.x_train, splits.y_train, spec.train.eval_batch_size, **norm))
    opt = make_optimizer(model, spec.train)
    phases = PhasePlan.build(spec, model, steps)
    quiet = Progress(1, spec.model)
    quiet.live = False
    quiet.say = lambda text: None
    x, y = splits.x_train[: steps * batch], splits.y_train[: steps * batch]
    batches = Batches(x, y, batch, shuffle=True, seed=spec.seed, augment=spec.data.augment, **norm)
    train_one_epoch(model, batches, 0, opt, device, spec.train, quiet, phases)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
