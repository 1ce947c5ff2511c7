"""Train one (dataset, model, seed) run, with a checkpoint every epoch and automatic resume.

``train_run(spec, out_dir)`` is the whole job behind the Snakemake ``train`` rule:
data -> model -> optimise -> calibrate on validation -> evaluate on test ->
``train.json`` + ``model.pt``. A run interrupted at any point resumes from its
last checkpoint and ends with the same metrics as an uninterrupted one (CPU).

With a time limit (``train.time_limit_min``, passed as ``time_limit_min``) a job that would
overrun it pauses at an epoch boundary instead: checkpoint saved, no ``train.json``, exit
code ``PAUSED_EXIT_CODE``; the same command resumes it. That is how a 100-epoch protocol
fits GPUs lent for minutes at a time.

With ``train.phases`` the run's optimizer steps are split into named phases, each with its own
learning-rate rule, and a ``TrainsInPhases`` model is told its phase (``PhasePlan``).
"""

from __future__ import annotations

import bisect
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from puppet.core.data import Batches, Splits, load_dataset, make_splits
from puppet.core.evaluate import evaluate
from puppet.core.io import atomic_save, atomic_write_json, git_commit, one_line
from puppet.core.protocols import Calibrates, HasObjective, Prepares, TrainsInPhases
from puppet.core.registry import create_model
from puppet.core.runs import archive_problem, disk_hint, record_failure, remove_orphan_temporaries, set_aside
from puppet.core.specs import Phase, RunSpec, TrainSpec

# Fault injection for the test suite (tests/test_faults.py), off unless the variable is set:
# "kill-after-epoch:N[:RUN]" SIGKILLs the job right after epoch N's checkpoint is saved;
# "raise[:RUN]" fails the job with a RuntimeError before training. RUN is a model name or
# "model/seedS"; without it every job is hit.
FAILPOINT_ENV = "PUPPET_FAILPOINT"


# EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to retry"): a paused
# run is neither a success (Snakemake must rerun it) nor a failure (no status=error row).
PAUSED_EXIT_CODE = 75


class NonFiniteLossError(RuntimeError):
    pass


def _failpoint(spec: RunSpec, event: str, epoch: int | None = None) -> None:
    point = os.environ.get(FAILPOINT_ENV, "")
    if not point:
        return
    kind, *args = point.split(":")
    target = args[-1] if (kind == "raise" and args) or (kind == "kill-after-epoch" and len(args) > 1) else None
    if target not in (None, spec.model, f"{spec.model}/seed{spec.seed}"):
        return
    if kind == "raise" and event == "start":
        raise RuntimeError(f"injected failure ({FAILPOINT_ENV}={point})")
    if kind == "kill-after-epoch" and event == "epoch" and epoch == int(args[0]):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but no CUDA device is visible; set device: auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def configure_backend(device: torch.device) -> None:
    """Numerics flags for a training or measuring process on ``device``."""
    if device.type == "cpu":
        # Same config and seed -> same metrics on CPU. With several threads the backward of
        # indexing with repeated indices (a per-sample kernel picked from shared trajectories)
        # accumulates in a run-dependent order; the deterministic path is exact and changes
        # nothing for models that were deterministic already.
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def load_splits(spec: RunSpec) -> Splits:
    d = spec.data
    data = load_dataset(
        spec.dataset,
        data_root=spec.data_root,
        source=spec.data_source,
        download=spec.download,
        image_size=d.image_size,
        split_seed=d.split_seed,
    )
    return make_splits(data, d.train_size, d.val_size, d.test_size, d.split_seed)


def build_model(spec: RunSpec, splits: Splits) -> nn.Module:
    return create_model(
        spec.model,
        num_classes=splits.num_classes,
        in_channels=splits.in_channels,
        image_size=splits.image_size,
        max_channels=spec.max_channels,
        **spec.model_kwargs,
    )


def make_optimizer(model: nn.Module, train: TrainSpec) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, nesterov=True
        )
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)


def make_schedule(opt: torch.optim.Optimizer, train: TrainSpec, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    if train.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if train.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=train.step_every, gamma=0.1)
    if train.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(train.milestones), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def phase_bounds(phases: tuple[Phase, ...], total_steps: int) -> list[tuple[int, int]]:
    """Each phase's optimizer steps ``[first, stop)`` in a run of ``total_steps``: phase i covers
    ``[round(end_(i-1) * total), round(end_i * total))``, the first starting at 0."""
    stops = [round(p.end * total_steps) for p in phases]
    return list(zip([0] + stops[:-1], stops))


def describe_phases(phases: tuple[Phase, ...] | None, total_steps: int | None = None) -> str:
    """``"sp[0,318) x1; hrl[318,375) lr=0.0001"`` (steps), or with fractions of the run when
    ``total_steps`` is unknown; ``""`` without phases."""
    if not phases:
        return ""
    if total_steps is None:
        ranges = [f"[{a:g},{p.end:g})" for a, p in zip([0.0] + [p.end for p in phases[:-1]], phases)]
    else:
        ranges = [f"[{a},{b})" for a, b in phase_bounds(phases, total_steps)]
    return "; ".join(f"{p.name}{r} {p.rule}" for p, r in zip(phases, ranges))


@dataclass
class PhasePlan:
    """``train.phases`` laid out on one run's optimizer steps, and the model it tells of them
    (``TrainsInPhases``). One plan per sitting: the model is told its phase at the sitting's
    first step, then at each phase's first step."""

    phases: tuple[Phase, ...]
    bounds: list[tuple[int, int]]  # each phase's steps [first, stop)
    model: nn.Module
    say: Callable[[str], None] | None = None
    current: int | None = None  # the phase the model was last told of in this sitting

    @classmethod
    def build(cls, spec: RunSpec, model: nn.Module, steps_per_epoch: int) -> PhasePlan | None:
        """The run's plan, or None without phases; a one-line ValueError, before training,
        when the model and ``train.phases`` do not fit each other or the run is too short."""
        phases = spec.train.phases
        names = tuple(model.phase_names) if isinstance(model, TrainsInPhases) else None
        if phases and names is None:
            raise ValueError(f"{spec.model} does not train in phases; remove train.phases from its recipe")
        if not phases:
            if names:
                ends = [f"{{name: {n}, end: {(i + 1) / len(names):.2g}}}" for i, n in enumerate(names[:-1])]
                example = ", ".join(ends + [f"{{name: {names[-1]}}}"])
                raise ValueError(
                    f"{spec.model} trains in phases ({', '.join(names)}): give train.phases in its recipe, "
                    f"e.g. train: {{phases: [{example}]}}"
                )
            return None
        if not names:
            raise ValueError(
                f"{spec.model} trains in no phases as built (model_kwargs {dict(spec.model_kwargs)}); "
                f"remove train.phases from its recipe"
            )
        unknown = [p.name for p in phases if p.name not in names]
        if unknown:
            raise ValueError(
                f"{spec.model} has no phase {unknown[0]!r} (its phases: {', '.join(names)}); "
                f"use those names in train.phases of its recipe"
            )
        total = spec.epochs * steps_per_epoch
        bounds = phase_bounds(phases, total)
        for phase, (first, stop) in zip(phases, bounds):
            if stop <= first:
                raise ValueError(
                    f"train.phases: phase {phase.name!r} gets no optimizer step of the run's {total} "
                    f"({spec.epochs} epochs x {steps_per_epoch} batches); move its end or train longer"
                )
        return cls(phases, bounds, model)

    def enter(self, step: int) -> None:
        """Before global optimizer step ``step`` (past the last: the last phase): tell the model
        its phase if it is not the one it was last told of in this sitting."""
        i = bisect.bisect_right([stop for _, stop in self.bounds], min(step, self.bounds[-1][1] - 1))
        if i != self.current:
            self.current = i
            phase = self.phases[i]
            self.model.set_phase(phase.name)
            if self.say is not None:
                first, stop = self.bounds[i]
                self.say(f"phase {phase.name}: steps [{first},{stop}) at {phase.rule}, from step {step}")

    def lr(self, scheduled: float) -> float:
        """The learning rate of the current phase's step, given the schedule's."""
        phase = self.phases[self.current]
        return phase.lr if phase.lr is not None else scheduled * phase.lr_mult

    def names_in(self, first: int, stop: int) -> list[str]:
        """The phases of steps ``[first, stop)`` (one epoch's)."""
        return [p.name for p, (a, b) in zip(self.phases, self.bounds) if a < stop and first < b]

    def record(self) -> list[dict]:
        """Per phase: its name, first and last global step, and its learning-rate rule (train.json)."""
        return [
            {"name": p.name, "first_step": a, "last_step": b - 1, "lr": p.lr, "lr_mult": p.lr_mult}
            for p, (a, b) in zip(self.phases, self.bounds)
        ]


def compute_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A model's own objective where it has one (joint exit loss, gate loss), else cross-entropy."""
    if isinstance(model, HasObjective):
        return model.compute_loss(x, y)
    logits = model(x)
    return F.cross_entropy(logits, y), logits


class Progress:
    """What a person watching a run sees (stderr: the run's log under Snakemake, ``tail -f`` it).

    On a terminal (and not under CI) each epoch is a tqdm bar with its ETA, loss, accuracy and
    images/s; elsewhere nothing per step. After every epoch one line: its loss, accuracy, speed and
    the run's ETA (the mean epoch so far times the epochs left); calibration and test evaluation
    say when they start and what they found."""

    def __init__(self, total_epochs: int, label: str):
        self.live = sys.stderr.isatty() and not os.environ.get("CI")
        self.total, self.label = total_epochs, label
        self.epoch_seconds: list[float] = []
        self._bar = None

    def start_epoch(self, epoch: int, n: int) -> None:
        if self.live:
            from tqdm import tqdm

            self._bar = tqdm(total=n, desc=f"{self.label} ep {epoch + 1}/{self.total}", leave=False, file=sys.stderr)

    def step(self, loss: float, acc: float, img_s: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {loss:.3f} acc {acc:.3f} {img_s:,.0f} img/s", refresh=False)
            self._bar.update(1)

    def epoch(self, epoch: int, loss: float, acc: float, img_s: float, seconds: float) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.epoch_seconds.append(seconds)
        left = (self.total - epoch - 1) * sum(self.epoch_seconds) / len(self.epoch_seconds)
        self.say(
            f"epoch {epoch + 1}/{self.total}: loss {loss:.4f} train_acc {acc:.4f} {img_s:,.0f} img/s "
            f"{seconds:.1f}s; run ETA {_duration(left)}"
        )

    def say(self, text: str) -> None:
        print(f"{self.label} {text}", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.1f} min"
        if seconds < 7200
        else f"{seconds / 3600:.1f} h"
    )


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    epoch: int,
    opt: torch.optim.Optimizer,
    device: torch.device,
    train: TrainSpec,
    progress: Progress,
    phases: PhasePlan | None = None,
) -> dict:
    """One epoch of optimizer steps. With ``phases``, the model is told its phase before each
    step's forward, and each step runs at its phase's learning rate: the param groups' ``lr``
    (the epoch schedule's) is replaced for ``opt.step()`` and put back right after, so the
    schedule, the optimizer's state and the checkpoints are those of a run without phases."""
    model.train()
    use_amp = train.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    total_loss, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    n = len(batches)
    progress.start_epoch(epoch, n)
    for i, (x, y) in enumerate(batches.epoch(epoch)):
        if phases is not None:
            phases.enter(epoch * n + i)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            loss, logits = compute_loss(model, x, y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"loss is {loss_value} at epoch {epoch + 1}, step {i + 1}; lower train.lr or set train.max_grad_norm"
            )
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
        progress.step(total_loss / seen, correct / seen, seen / (time.perf_counter() - t0))
    seconds = time.perf_counter() - t0
    return {
        "epoch": epoch + 1,
        "loss": total_loss / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "seconds": seconds,
        "img_per_s": seen / seconds,
    }


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class _Trainer:
    """The state of one sitting of a run: what a checkpoint saves and restores."""

    spec: RunSpec
    out_dir: Path
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    start_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    train_time_s: float = 0.0

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def resume(self, device: torch.device) -> None:
        """Continue from ``checkpoint.pt`` if it belongs to this spec; a checkpoint of another
        spec is set aside (renamed with its hash), never deleted."""
        ckpt = _load_checkpoint(self.ckpt_path, device)
        if ckpt is None:
            return
        if ckpt.get("config_hash") != self.spec.hash:
            self.ckpt_path.rename(self.out_dir / f"checkpoint.{ckpt.get('config_hash', 'old')}.pt")
            return
        try:
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.sched.load_state_dict(ckpt["schedule"])
        except (RuntimeError, ValueError, KeyError) as exc:  # same spec, other code: the model changed
            raise RuntimeError(
                f"checkpoint {self.ckpt_path} (epoch {ckpt.get('epoch')}, commit {ckpt.get('git_commit', 'unknown')}) "
                f"does not fit this code's {self.spec.model}: {one_line(exc, 160)}; check out that commit to "
                f"resume, or move the checkpoint away to retrain"
            ) from None
        _set_rng_state(ckpt["rng"])
        self.start_epoch, self.history, self.train_time_s = ckpt["epoch"], ckpt["history"], ckpt["train_time_s"]
        print(f"resuming {self.out_dir} from epoch {self.start_epoch}", file=sys.stderr)

    def checkpoint(self, epoch: int, commit: str) -> None:
        _save(
            self.ckpt_path,
            {
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "schedule": self.sched.state_dict(),
                "rng": _rng_state(),
                "epoch": epoch + 1,
                "history": self.history,
                "train_time_s": self.train_time_s,
                "config_hash": self.spec.hash,
                "git_commit": commit,
            },
        )


def _pause_message(label: str, epoch: int, epochs: int, elapsed_s: float, limit_min: float, last_epoch_s: float) -> str:
    return (
        f"{label}: paused at epoch {epoch}/{epochs} after {elapsed_s / 60:.1f} min "
        f"(train.time_limit_min={limit_min:g}, last epoch {last_epoch_s / 60:.1f} min); "
        f"rerun the same command to resume"
    )


def train_run(
    spec: RunSpec,
    out_dir: str | Path,
    *,
    stop_after_epoch: int | None = None,
    time_limit_min: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Run (or resume) one training job; return the ``train.json`` record, or a record with
    ``status="paused"`` (and a one-line ``message``) when ``time_limit_min`` stops it early.

    Before each epoch after the first of this sitting, the job pauses if the time since it
    started plus the duration of its last epoch would pass ``time_limit_min``; the first
    epoch always runs, so every sitting makes progress. ``clock`` (seconds) lets tests fake
    time. ``stop_after_epoch`` simulates an interruption after that many epochs (tests).
    """
    started = clock()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(spec.device)
    torch.manual_seed(spec.seed)
    configure_backend(device)

    _failpoint(spec, "start")
    for tmp in remove_orphan_temporaries(out_dir):  # left by a killed writer; this job owns the folder
        print(f"removed {tmp.name}, an unfinished write of an earlier attempt", file=sys.stderr)
    splits = load_splits(spec)
    model = build_model(spec, splits).to(device)
    if isinstance(model, Calibrates) and len(splits.y_val) == 0:  # refused before training, not after it
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
    phases = PhasePlan.build(spec, model, len(train_batches))  # refused before any work
    eval_kw = dict(batch_size=spec.train.eval_batch_size, mean=splits.mean, std=splits.std, device=device)
    if isinstance(model, Prepares):
        model.prepare(x for x, _ in Batches(splits.x_train, splits.y_train, **eval_kw))
    opt = make_optimizer(model, spec.train)
    run = _Trainer(spec, out_dir, model, opt, make_schedule(opt, spec.train, spec.epochs))
    run.resume(device)

    commit = git_commit()
    progress = Progress(spec.epochs, f"{spec.model}/{spec.dataset}/seed{spec.seed}")
    steps_per_epoch = len(train_batches)
    if phases is not None:  # the phase this sitting starts in (the last one when no step is left)
        phases.say = progress.say
        phases.enter(run.start_epoch * steps_per_epoch)
    last_epoch_s = None  # measured in this sitting (with its checkpoint save); None until one epoch ran
    for epoch in range(run.start_epoch, spec.epochs):
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
        record = train_one_epoch(model, train_batches, epoch, opt, device, spec.train, progress, phases)
        if phases is not None:
            record["phases"] = phases.names_in(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        run.sched.step()
        run.train_time_s += record["seconds"]
        run.history.append(record)
        progress.epoch(epoch, record["loss"], record["train_acc"], record["img_per_s"], record["seconds"])
        run.checkpoint(epoch, commit)
        _failpoint(spec, "epoch", epoch + 1)
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
    _save(
        out_dir / "model.pt",
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
    if test.per_sample:  # per-sample depth / exit / complexity feed the depth figures
        _save(out_dir / "test_stats.pt", test.per_sample)
    history = run.history
    return {
        "status": "ok",
        "error": "",
        "top1": test.top1,
        "top5": test.top5,
        "test_loss": test.loss,
        "epochs": spec.epochs,
        "train_time_s": run.train_time_s,
        "final_train_loss": history[-1]["loss"] if history else None,
        "final_train_acc": history[-1]["train_acc"] if history else None,
        "history": history,
        "stats": test.stats_summary,
        "calibration": calibration,
        "train_device": _device_name(device),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),  # proof that the job ran under the scheduler
        **recipe_columns(spec, steps_per_epoch),
        "phase_steps": phases.record() if phases is not None else [],
        "train_size": len(splits.y_train),
        "val_size": len(splits.y_val),
        "test_size": len(splits.y_test),
        "data_source": splits.source,
        "git_commit": git_commit(),
        "config_hash": spec.hash,
    }


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


class CheckpointWriteError(OSError):
    pass


def _save(path: Path, obj: dict) -> None:
    """atomic_save with an error that names the file and the free space: torch reports a full
    disk as "[enforce fail at inline_container.cc:...]"."""
    try:
        atomic_save(obj, path)
    except (OSError, RuntimeError) as exc:
        raise CheckpointWriteError(
            f"cannot write {path} ({one_line(exc, 200)}){disk_hint(path)}; free space or move results/"
        ) from None


def _load_checkpoint(path: Path, device: torch.device) -> dict | None:
    """The checkpoint to resume from, or None. A damaged one (a truncated copy, a half-synced
    file) is set aside with a warning and the run starts over, rather than failing forever."""
    if not path.exists():
        return None
    problem = archive_problem(path)
    if not problem:
        try:
            return torch.load(path, map_location=device, weights_only=False)
        except Exception as exc:  # complete archive, unreadable content
            problem = one_line(exc, 200)
    kept = set_aside(path, problem, keep_original=False)
    print(f"warning: {path} is damaged ({problem}); set aside as {kept.name}, training starts over", file=sys.stderr)
    return None


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def train_main(spec: RunSpec, out_dir: str | Path, time_limit_min: float | None = None) -> dict:
    """Train and write ``train.json``; a failure becomes a ``status=error`` record, not a crash,
    so one bad run never stops the tables. A run paused by ``time_limit_min`` writes nothing
    but its checkpoint (so Snakemake reruns it and it resumes) and prints one line saying so."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # train.log holds this attempt; the rule appends it to train.log.history, where this header
    # starts each attempt.
    print(
        f"==== attempt started {time.strftime('%Y-%m-%d %H:%M:%S %Z')} · config_hash {spec.hash} "
        f"· commit {git_commit()} ====",
        file=sys.stderr,
        flush=True,
    )
    try:
        record = train_run(spec, out_dir, time_limit_min=time_limit_min)
        if record["status"] == "paused":
            # stdout reaches the console (the train rule sends stderr to the run's log); both get it
            print(record["message"], flush=True)
            print(record["message"], file=sys.stderr, flush=True)
            return record
        # the run's headline on the console, between Snakemake's job lines
        print(
            f"done: {spec.label}: top-1 {record['top1']:.2f}%, top-5 {record['top5']:.2f}% "
            f"({record['test_size']} test images), trained {_duration(record['train_time_s'])}",
            flush=True,
        )
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # recorded, not swallowed: the row says what failed
        message = one_line(exc)
        if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
            message = f"out of memory: lower train.batch_size or max_channels ({message[:200]})"
        label = spec.label
        print(f"run failed: {message}", file=sys.stderr)
        print(f"run failed: {label}: {message} (log: {out_dir / 'train.log'})", flush=True)  # stdout: the console
        record_failure(out_dir, "train", message, config_hash=spec.hash, git_commit=git_commit())
        record = {"status": "error", "error": message, "config_hash": spec.hash, "git_commit": git_commit()}
    record.update(profile=spec.profile, dataset=spec.dataset, model=spec.model, seed=spec.seed)
    atomic_write_json(record, out_dir / "train.json")
    return record
