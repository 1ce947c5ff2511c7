"""What a run's numbers depend on beyond its spec: the machine's instruction set.

A run is bit-identical when repeated on the same machine type (same CPU instruction set or GPU, same
torch): the tests train every registered model for a few steps twice
(``puppet.core.train.train_steps``) and compare the weights bit for bit (``weights_digest``). Across
CPU types it is not guaranteed: torch's own kernels (ATen) and oneDNN's pick their code by
instruction set (AVX-512, AVX2, ...), and a different order of floating-point sums moves a single
seed's accuracy by up to a few points after a few epochs. ``machine()`` is what every run record
keeps of this (``train.json``: ``train_cpu``, ``train_isa``), and ``bench/isa_repro.py`` measures
which models train differently when the instruction set is capped on one machine
(``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``).
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import torch

# The variables that cap the instruction set torch's CPU kernels use; set before torch is imported.
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what the platform says: recorded with
    every run (``machine``) and every timing (``puppet.core.measure.environment``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine(device: torch.device | str = "cpu") -> dict[str, str]:
    """What a run's numbers depend on besides its spec: the CPU (model, and the vector instruction set
    torch's kernels dispatch to: ``torch.backends.cpu.get_cpu_capability()``, with any cap set by
    ``ATEN_CPU_CAPABILITY`` / ``ONEDNN_MAX_CPU_ISA``) or the GPU, and torch's version."""
    device = torch.device(device)
    isa = torch.backends.cpu.get_cpu_capability()
    caps = [f"{name}={os.environ[name]}" for name in ISA_VARIABLES if os.environ.get(name)]
    out = {
        "train_cpu": cpu_model(),
        "train_isa": isa + (f" ({', '.join(caps)})" if caps else ""),
        "train_torch_version": torch.__version__,
    }
    if device.type == "cuda":
        out["train_gpu"] = torch.cuda.get_device_name(device)
    return out


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names and tensor bytes, in key order: equal only when bit-identical."""
    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(value).encode())
    return h.hexdigest()
