"""Peak memory of one training step: the CUDA allocator's count where there is one, else a live-tensor tracker.

CUDA keeps allocator statistics (``torch.cuda.max_memory_allocated``); the CPU has none. On any
device, ``LiveTensorMemory`` counts the bytes of every tensor *storage* that is alive while it
is active, and the peak of that count:

* it is a ``TorchDispatchMode``, so it sees the output of every ATen op that runs while it is
  entered: forward ops, the autocast casts (bf16 copies of the weights included), every op the
  autograd engine runs in backward (gradients, gradients of activations, accumulation), and the
  optimizer's ops (Adam's ``exp_avg`` / ``exp_avg_sq`` when first created, foreach temporaries);
* tensors that exist before it starts (parameters, buffers, old gradients, optimizer state, the
  batch) are registered with ``track(...)``; ``training_step_memory`` registers all of those;
* a storage is counted once, when it is first seen, for its full ``nbytes()``: a view, a slice,
  a ``detach`` or an in-place op's result share the storage and add nothing (this is what the
  allocator sees too: a view allocates nothing);
* a storage is subtracted when it is freed: the tracker holds only a weak reference to the
  storage's Python object (PyTorch keeps that object alive as long as the C++ storage lives),
  whose callback fires when the last tensor using it dies. Saved activations therefore count
  until backward releases them, a temporary only while it lives;
* ``peak_bytes`` is the maximum live count after any op; ``phase(name)`` splits a step into
  named phases with their own peaks (``phase_peak_bytes``).

What it cannot see, and the CUDA number partly includes:

* memory allocated *inside* one ATen kernel and freed before it returns (im2col buffers of a
  CPU conv, cuDNN / cuBLAS workspaces, reduction scratch): the mode sees an op's outputs only.
  cuDNN workspaces are counted by ``max_memory_allocated`` (PyTorch allocates them through its
  caching allocator) and can reach hundreds of MB with ``cudnn.benchmark``;
* allocator effects: CUDA rounds every block up to a multiple of 512 bytes (counted by
  ``max_memory_allocated``); cached-but-free blocks and fragmentation (``memory_reserved``,
  not counted by either); the CUDA context itself (~0.3-0.5 GB on the card, counted by neither);
* tensors that are never the output of an op run under the mode and were not registered with
  ``track`` (e.g. a constant held in a plain attribute, ``torch.from_numpy`` arrays);
* sparse tensors and tensor subclasses without a plain storage are skipped.

A storage that an op resizes in place (``resize_``, ``out=``) is re-read when it is returned
again and the difference counted.
"""

from __future__ import annotations

import gc
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from puppet.core.protocols import ReportsStats

GIB = 1024**3


class LiveTensorMemory(TorchDispatchMode):
    """Live bytes of tensor storages while entered, and their peak (see the module docstring).

        with LiveTensorMemory() as mem:
            mem.track(model.parameters())   # what existed before
            loss = model(x).sum(); loss.backward()
        mem.peak_bytes

    ``device``: count only storages on this device type ("cpu", "cuda"); None counts all.
    """

    def __init__(self, device: str | torch.device | None = None):
        super().__init__()
        self.device_type = None if device is None else torch.device(device).type
        self.live_bytes = 0
        self.peak_bytes = 0
        self.phase_peak_bytes: dict[str, int] = {}
        self._phase: str | None = None
        # id(storage) -> (weak reference whose callback releases the bytes, bytes counted)
        self._storages: dict[int, tuple[weakref.ref, int]] = {}
        self._lock = threading.RLock()  # CUDA backward runs on autograd threads; a GC inside _count may free a storage

    # ------------------------------------------------------------------ counting

    def _count(self, t: torch.Tensor) -> None:
        if self.device_type is not None and t.device.type != self.device_type:
            return
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested, subclass without storage
            return
        nbytes = storage.nbytes()
        key = id(storage)
        with self._lock:
            known = self._storages.get(key)
            if known is not None:
                if known[1] == nbytes:  # a view or in-place result: already counted
                    return
                self._storages[key] = (known[0], nbytes)  # resized in place
                self._add(nbytes - known[1])
                return
            if nbytes == 0:
                return
            self._storages[key] = (weakref.ref(storage, self._released(key)), nbytes)
            self._add(nbytes)

    def _released(self, key: int) -> Callable[[weakref.ref], None]:
        def release(_ref: weakref.ref) -> None:
            with self._lock:
                entry = self._storages.pop(key, None)
                if entry is not None:
                    self.live_bytes -= entry[1]

        return release

    def _add(self, nbytes: int) -> None:
        self.live_bytes += nbytes
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
        if self._phase is not None and self.live_bytes > self.phase_peak_bytes[self._phase]:
            self.phase_peak_bytes[self._phase] = self.live_bytes

    def track(self, *tensors: Any) -> None:
        """Count tensors that already exist (any nesting of lists, tuples, dicts, generators; None is skipped)."""
        flat, _ = tree_flatten(
            [
                list(t) if isinstance(t, Iterable) and not isinstance(t, (torch.Tensor, dict, list, tuple)) else t
                for t in tensors
            ]
        )
        for t in flat:
            if isinstance(t, torch.Tensor):
                self._count(t)

    def phase(self, name: str) -> None:
        """Start phase ``name``: its peak starts at the live bytes now."""
        with self._lock:
            self._phase = name
            self.phase_peak_bytes[name] = max(self.phase_peak_bytes.get(name, 0), self.live_bytes)

    # ------------------------------------------------------------------ the mode

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._count_outputs(out)
        return out

    def _count_outputs(self, out: Any) -> None:
        # ATen ops return a tensor, or (nested) tuples / lists of tensors and other values;
        # a plain walk is much cheaper than a pytree flatten of a foreach op's list
        if isinstance(out, torch.Tensor):
            self._count(out)
        elif isinstance(out, (tuple, list)):
            for item in out:
                self._count_outputs(item)

    def __exit__(self, *exc) -> Any:
        result = super().__exit__(*exc)
        with self._lock:
            self._storages.clear()  # drop the weak references: no callback after exit
        return result


# --------------------------------------------------------------------------- one training step


@dataclass
class StepMemory:
    """Peak memory of one training step, in bytes.

    ``before_bytes``: live at the step's start (parameters, buffers, the previous step's
    gradients, optimizer state, the batch); ``peak_bytes``: the step's peak, those included;
    ``phase_peak_bytes``: the peak within "forward" (autocast forward + loss), "backward"
    (zero_grad + backward) and "step" (optimizer.step). ``method``: "tracked" (LiveTensorMemory)
    or "cuda_allocator" (max_memory_allocated); ``tracked_peak_bytes`` / ``tracked_before_bytes``
    are the tracker's counts of the same step (on CUDA: for comparison with the allocator's).
    """

    peak_bytes: int
    before_bytes: int
    phase_peak_bytes: dict[str, int]
    method: str
    tracked_peak_bytes: int | None = None
    tracked_before_bytes: int | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


def state_tensors(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> list[torch.Tensor]:
    """Every tensor a training step finds alive: parameters, their gradients, buffers, optimizer state."""
    tensors = list(model.parameters()) + [p.grad for p in model.parameters() if p.grad is not None]
    tensors += list(model.buffers())
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


def default_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from puppet.core.train import compute_loss  # the harness' objective: model.compute_loss, else cross-entropy

    return compute_loss(model, x, y)


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    amp_dtype: torch.dtype | None,
    loss_fn=default_loss,
    phase: Callable[[str], None] = lambda _: None,
) -> None:
    """One step in ``puppet.core.train.train_one_epoch``'s order: autocast forward and loss, zero_grad,
    backward, optimizer step. The order matters for memory: the previous step's gradients are
    still alive during the forward (zero_grad comes after it, as in the harness)."""
    phase("forward")
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        loss, _ = loss_fn(model, x, y)
    phase("backward")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    del loss
    phase("step")
    optimizer.step()


def training_step_memory(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    amp_dtype: torch.dtype | None,
    loss_fn=default_loss,
) -> StepMemory:
    """Peak memory of one training step (call it after a first step, so optimizer state exists).

    CUDA: ``max_memory_allocated`` per phase (peak stats reset at each phase start), plus the
    tracker's count. Elsewhere: ``LiveTensorMemory``.
    """
    model.train()
    device = x.device
    cuda = device.type == "cuda"
    tracker = LiveTensorMemory(device)
    if cuda:
        gc.collect()  # garbage of earlier steps (reference cycles) is not this step's memory
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        phases: dict[str, int] = {}
        current: list[str] = []

        def phase(name: str) -> None:
            tracker.phase(name)
            if current:
                torch.cuda.synchronize(device)
                phases[current[0]] = torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            current[:] = [name]
    else:
        phase = tracker.phase
    with tracker:
        tracker.track(state_tensors(model, optimizer), x, y)
        tracked_before = tracker.live_bytes
        training_step(model, optimizer, x, y, amp_dtype=amp_dtype, loss_fn=loss_fn, phase=phase)
    stats = dict(model.last_stats) if isinstance(model, ReportsStats) else {}
    if cuda:
        torch.cuda.synchronize(device)
        phases[current[0]] = torch.cuda.max_memory_allocated(device)
        return StepMemory(
            max(phases.values()), before, phases, "cuda_allocator", tracker.peak_bytes, tracked_before, stats
        )
    return StepMemory(
        tracker.peak_bytes,
        tracked_before,
        dict(tracker.phase_peak_bytes),
        "tracked",
        tracker.peak_bytes,
        tracked_before,
        stats,
    )
