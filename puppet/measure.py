"""Size, MACs and speed, measured the same way for every model (see README, "Measurement protocol").

* stored params: the trainable parameters one must save (generated weights are
  never parameters); a model may define ``stored_param_count()`` when that differs.
* MACs: ptflops with ``backend='aten'`` passed explicitly (its default changed
  between releases and the ``pytorch`` backend misses ``F.conv2d`` with generated
  weights), on a deep copy (the aten backend leaves hooks behind), asserted
  non-empty, averaged over real test images at batch 1 (adaptive models' cost
  depends on the input). Convention: conv and matmul MACs, conv bias included;
  BN, ReLU, pooling and element-wise ops are zero.
* latency: batch 1, one real test image per timed forward, after warm-up,
  device synchronised; median and p90 in seconds per image.
* throughput: img/s at a large batch of real test images.
"""

from __future__ import annotations

import copy
import io
import platform
import statistics
import sys
import time
from contextlib import redirect_stdout
from typing import Any

import torch
import torch.nn as nn

from puppet.data import Batches


def trainable_param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def stored_param_count(model: nn.Module) -> int:
    """Parameters one must store to deploy the model (the headline size)."""
    if hasattr(model, "stored_param_count"):
        return int(model.stored_param_count())
    return trainable_param_count(model)


def total_param_count(model: nn.Module) -> int:
    """All parameters, trainable or not (torchinfo's "Total params" where a model defines it)."""
    if hasattr(model, "total_param_count"):
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
    with redirect_stdout(io.StringIO()) as out:
        macs, _ = get_model_complexity_info(
            clone, tuple(x.shape[1:]), input_constructor=lambda _: x, as_strings=False,
            print_per_layer_stat=False, backend=FLOPS_BACKEND.ATEN, verbose=False,
        )
    if macs is None:  # ptflops prints the traceback and returns None instead of raising
        raise MacsCountError(f"ptflops could not count MACs for {type(model).__name__}: {out.getvalue().strip().splitlines()[-1:]}")
    return int(macs)


def count_macs_flopcounter(model: nn.Module, x: torch.Tensor) -> int:
    """An independent count: torch's FlopCounterMode (FLOPs = 2 x MACs, bias excluded)."""
    from torch.utils.flop_counter import FlopCounterMode

    # grad enabled: FlopCounterMode's module tracker (torch >= 2.4) expects autograd nodes on outputs
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops() // 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generation_macs(model: nn.Module) -> float:
    stats = getattr(model, "last_stats", None) or {}
    value = stats.get("generation_macs", 0.0)
    return float(value.float().mean()) if isinstance(value, torch.Tensor) else float(value)


@torch.inference_mode()
def measure_speed(model: nn.Module, batches: Batches, cfg: dict, device: torch.device) -> dict[str, Any]:
    """Batch-1 latency over real test images and batched throughput."""
    model.eval()
    x_all = batches.normalise(batches.x)
    n = len(x_all)
    for i in range(cfg["warmup"]):
        model(x_all[i % n : i % n + 1])
    _sync(device)
    times = []
    for i in range(cfg["latency_images"]):
        xi = x_all[i % n : i % n + 1]
        _sync(device)
        t0 = time.perf_counter()
        model(xi)
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]

    batch = cfg["throughput_batch"]
    throughput, used_batch = None, batch
    while used_batch >= 1:
        try:
            idx = torch.arange(used_batch, device=x_all.device) % n
            xb = x_all[idx]
            for _ in range(2):
                model(xb)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(cfg["throughput_iters"]):
                model(xb)
            _sync(device)
            throughput = used_batch * cfg["throughput_iters"] / (time.perf_counter() - t0)
            break
        except torch.cuda.OutOfMemoryError:  # timm-style back-off: halve the batch and retry
            torch.cuda.empty_cache()
            used_batch //= 2
    return {
        "latency_s_per_img": statistics.median(times),
        "latency_p90_s_per_img": p90,
        "latency_mean_s_per_img": statistics.fmean(times),
        "throughput_img_per_s": throughput,
        "throughput_batch": used_batch,
    }


@torch.no_grad()  # not inference_mode: ptflops' aten dispatch counts nothing under it
def measure_macs(model: nn.Module, batches: Batches, n_images: int) -> dict[str, Any]:
    """MACs at batch 1, averaged over the first ``n_images`` test images; with the
    kernel-generation share the model reports in ``last_stats['generation_macs']``."""
    x_all = batches.normalise(batches.x[:n_images])
    macs, gen = [], []
    for i in range(len(x_all)):
        xi = x_all[i : i + 1]
        macs.append(count_macs(model, xi))
        model.eval()(xi)
        gen.append(_generation_macs(model))
    mean = statistics.fmean(macs)
    mean_gen = statistics.fmean(gen)
    return {
        "macs": mean,
        "macs_min": min(macs),
        "macs_max": max(macs),
        "macs_generation": mean_gen,
        "macs_without_generation": mean - mean_gen,
        "macs_images": len(macs),
    }


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "device_type": device.type,
        "threads": threads,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "cudnn_version": str(torch.backends.cudnn.version() or "") if device.type == "cuda" else "",
        "python_version": sys.version.split()[0],
    }


def measure_model(model: nn.Module, test: Batches, cfg: dict, device: torch.device) -> dict[str, Any]:
    """Everything the tables need about a trained model, except accuracy."""
    torch.set_num_threads(cfg["threads"])
    stored = stored_param_count(model)
    record: dict[str, Any] = {
        "stored_params": stored,
        "trainable_params": trainable_param_count(model),
        "total_params": total_param_count(model),
        "param_size_mb": param_size_mb(stored),
    }
    record.update(measure_macs(model, test, cfg["macs_images"]))
    record.update(measure_speed(model, test, cfg, device))
    record.update(environment(device, torch.get_num_threads()))
    return record
