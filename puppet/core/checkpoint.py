"""A run's checkpoint and how a run resumes from it; the writes of a run's ``.pt`` files.

``checkpoint.pt`` is saved at the end of every epoch and holds the state of the run at that
boundary: the model, the optimizer, the schedule, torch's RNG state, the epochs done, their
history and the training time so far. A job stopped by a signal (``puppet.core.stopping``) saves
one inside an epoch too, with that epoch's steps done and sums (``partial``). With the batches of
an epoch depending only on the seed and the epoch (``puppet.core.data.Batches``), a run killed or
paused at any point and resumed from it ends with the metrics of an uninterrupted one (CPU).
Separate from ``puppet.core.train`` so its loop reads as ``resume`` once and ``save_checkpoint``
every epoch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

from puppet.core.io import atomic_save, one_line
from puppet.core.runs import archive_problem, set_aside, write_problem
from puppet.core.specs import RunSpec

CHECKPOINT = "checkpoint.pt"


class CheckpointWriteError(OSError):
    pass


def save(path: Path, obj: dict) -> None:
    """atomic_save with an error that names the file and the free space: torch reports a full
    disk as "[enforce fail at inline_container.cc:...]"."""
    try:
        atomic_save(obj, path)
    except (OSError, RuntimeError) as exc:
        raise CheckpointWriteError(f"cannot write {path} ({one_line(exc, 200)}): {write_problem(path, exc)}") from None


def load_checkpoint(path: Path, device: torch.device) -> dict | None:
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


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume(
    out_dir: Path,
    spec: RunSpec,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> tuple[int, list[dict], float]:
    """Continue from ``checkpoint.pt`` if it belongs to this spec; a checkpoint of another
    spec is set aside (renamed with its hash), never deleted. Loads the model, optimizer, schedule
    and RNG state in place and returns the epochs done, their history and the training time so far
    and the next epoch's partial state when the run stopped inside it (``0, [], 0.0, None`` when there
    is nothing to resume)."""
    path = out_dir / CHECKPOINT
    ckpt = load_checkpoint(path, device)
    if ckpt is None:
        return 0, [], 0.0, None
    if ckpt.get("config_hash") != spec.hash:
        path.rename(out_dir / f"checkpoint.{ckpt.get('config_hash', 'old')}.pt")
        return 0, [], 0.0, None
    try:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["schedule"])
    except (RuntimeError, ValueError, KeyError) as exc:  # same spec, other code: the model changed
        raise RuntimeError(
            f"checkpoint {path} (epoch {ckpt.get('epoch')}, commit {ckpt.get('git_commit', 'unknown')}) "
            f"does not fit this code's {spec.model}: {one_line(exc, 160)}; check out that commit to "
            f"resume, or move the checkpoint away to retrain"
        ) from None
    _set_rng_state(ckpt["rng"])
    partial = ckpt.get("partial")
    where = f"epoch {ckpt['epoch'] + 1}, step {partial['step']}" if partial else f"epoch {ckpt['epoch']}"
    print(f"resuming {out_dir} from {where}", file=sys.stderr)
    return ckpt["epoch"], ckpt["history"], ckpt["train_time_s"], partial


def save_checkpoint(
    out_dir: Path,
    spec: RunSpec,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    *,
    epochs_done: int,
    history: list[dict],
    train_time_s: float,
    commit: str,
    partial: dict | None = None,
) -> None:
    """Save the run's state after ``epochs_done`` epochs as ``checkpoint.pt`` (what ``resume`` reads);
    ``partial``: the next epoch's steps done so far and its sums (a run stopped by a signal)."""
    save(
        out_dir / CHECKPOINT,
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "schedule": sched.state_dict(),
            "rng": _rng_state(),
            "epoch": epochs_done,
            "history": history,
            "train_time_s": train_time_s,
            "config_hash": spec.hash,
            "git_commit": commit,
            "partial": partial,
        },
    )
