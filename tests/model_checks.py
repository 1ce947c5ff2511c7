"""Helpers shared by the registry-wide model tests (``test_amp.py``, ``test_paper_scale.py``).

* ``real_cifar10_batch``: a few real, normalised CIFAR-10 images spread over input complexity,
  so depth-adaptive models see several depths in one batch;
* ``loss_and_logits``: the training objective the harness uses (``puppet.core.train.compute_loss``);
* ``CudaAutocastDtypeCheck``: a ``TorchFunctionMode`` that makes CPU autocast as strict as CUDA
  autocast about mixed-dtype indexed writes (its docstring says what and why).

Pytest puts this folder on ``sys.path`` (rootdir-less ``tests/``, "prepend" import mode), so the
test modules import it as ``model_checks``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from puppet.core.datasets import load_npz
from puppet.core.train import compute_loss
from puppet.models.complexity import image_complexity

# --------------------------------------------------------------------------- real images


@functools.lru_cache(maxsize=2)
def _cifar10(path: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training images (N, 3, 32, 32) uint8, labels, and the per-channel mean / std in [0, 1] units."""
    data = load_npz(path, "cifar10", expected_classes=10)
    xf = data.x_train.float() / 255.0
    return data.x_train, data.y_train, xf.mean(dim=(0, 2, 3)), xf.std(dim=(0, 2, 3))


def normalise(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float() / 255.0 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


class RealBatch(NamedTuple):
    x: torch.Tensor  # (n, 3, 32, 32) float32, normalised
    y: torch.Tensor  # (n,) int64
    pool: torch.Tensor  # (pool, 3, 32, 32) float32: what Puppet models' prepare() sees

    def __repr__(self) -> str:  # pytest prints fixture values in failure reports: shapes, not pixels
        return f"RealBatch(x={tuple(self.x.shape)}, y={self.y.tolist()}, pool={tuple(self.pool.shape)})"


def real_cifar10_batch(npz: Path, n: int, pool: int = 256) -> RealBatch:
    """``n`` real training images, normalised, at evenly spaced complexity ranks of the first ``pool``.

    Fitted on ``pool`` by ``prepare()``, Puppet models put the least and the most complex of the
    chosen images at h = 0 and h = 1 (the pool's complexity quantiles), hence at different depths.
    """
    x_uint8, y, mean, std = _cifar10(str(npz))
    pool_x = normalise(x_uint8[:pool], mean, std)  # (pool, 3, 32, 32)
    order = image_complexity(pool_x).argsort()  # simplest first
    pick = order[torch.linspace(0, pool - 1, n).round().long()]  # (n,)
    return RealBatch(pool_x[pick], y[:pool][pick], pool_x)


def prepare_if_needed(model: nn.Module, pool_x: torch.Tensor, batch_size: int = 64) -> None:
    """The registry's ``prepare(batches)`` hook, fed as the harness feeds it (normalised batches)."""
    if hasattr(model, "prepare"):
        model.prepare(pool_x[i : i + batch_size] for i in range(0, len(pool_x), batch_size))


def loss_and_logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.compute_loss(x, y)`` where the model has one, else cross-entropy of ``model(x)``."""
    return compute_loss(model, x, y)


# --------------------------------------------------------------------------- CUDA autocast's strictness on the CPU

# Ops whose floating tensor arguments must all share one dtype on CUDA under autocast. Names are
# matched, so the torch.* function, the Tensor method and the in-place method are all covered
# (torch.index_copy, Tensor.index_copy, Tensor.index_copy_, ...).
STRICT_OPS = frozenset(
    name
    for base in (
        "index_copy",
        "index_put",
        "index_add",
        "index_reduce",
        "scatter",
        "scatter_add",
        "scatter_reduce",
        "masked_scatter",
        "put",
        "lerp",
    )
    for name in (base, base + "_")
)


class MixedDtypeError(RuntimeError):
    pass


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    return []


class CudaAutocastDtypeCheck(TorchFunctionMode):
    """Raise where CUDA autocast would raise a dtype mismatch that CPU autocast lets through.

    Autocast is a per-backend op list (``aten/src/ATen/autocast_mode.cpp``). The two backends'
    "promote" lists, which cast all floating inputs of an op to the widest one, differ:

    * CPU (``AutocastCPU``): ``stack``, ``cat``, ``index_copy``;
    * CUDA (``AT_FORALL_PROMOTE`` in ``autocast_mode.h``): ``addcdiv``, ``addcmul``, ``atan2``,
      ``bilinear``, ``cross``, ``dot``, ``vdot``, ``grid_sampler``, ``index_put``, ``tensordot``,
      ``scatter_add``.

    So ``float32_buffer.index_copy(0, idx, bf16_rows)`` runs under CPU autocast (promoted) and
    raises on CUDA ("index_copy_(): self and source expected to have the same dtype"): a model that
    fills a float32 buffer with the lower-precision output of a layer passes every CPU test and
    crashes the first GPU run with ``amp: true``. ``stack`` / ``cat`` need no emulation: their
    kernels promote natively on every device. In-place ops are on no autocast list at all, and the
    indexed writes below check dtypes in device-independent ATen code, so they fail on both
    backends; the check names them anyway, so the message says which op and which dtypes.

    What this mode checks: for every op in ``STRICT_OPS`` (index_copy, index_put, index_add,
    index_reduce, scatter, scatter_add, scatter_reduce, masked_scatter, put, lerp; the torch.*,
    Tensor.* and in-place spellings of each) and for ``Tensor.__setitem__`` with a tensor key
    (advanced indexing, which dispatches to ``index_put_``), all floating tensor arguments must
    have the same dtype. It is a ``TorchFunctionMode`` because that sees the Python-level call
    with the caller's dtypes, *before* CPU autocast's dispatch key promotes anything.

    Stricter than CUDA in one corner, on purpose: out-of-place ``index_put`` and ``scatter_add``
    are on CUDA's promote list, so CUDA would accept them mixed; CPU autocast does not promote
    them (its kernels raise), and a model that runs only thanks to one backend's op list is the
    bug this check exists to catch. Not covered: ops called from C++ (inside a fused kernel or in
    autograd's backward), which never reach a Python mode.
    """

    def __init__(self) -> None:
        super().__init__()
        self.checked: list[str] = []  # names of the strict ops seen (tests of the check read it)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in STRICT_OPS:
            self._check(name, _tensors(args) + _tensors(list(kwargs.values())))
        elif name == "__setitem__" and len(args) == 3 and isinstance(args[0], torch.Tensor):
            self_, key, value = args
            if _tensors(key) or isinstance(key, list):  # advanced indexing: index_put_
                self._check("__setitem__ (index_put_)", [self_] + _tensors(value))
        return func(*args, **kwargs)

    def _check(self, name: str, tensors: list[torch.Tensor]) -> None:
        self.checked.append(name)
        _same_floating_dtype(name, [str(t.dtype).replace("torch.", "") for t in tensors if t.is_floating_point()])


def _same_floating_dtype(name: str, dtypes: list[str]) -> None:
    """Raise unless all ``dtypes`` are equal (takes strings, so a failure's traceback stays short)."""
    if len(set(dtypes)) > 1:
        listed = ", ".join(dtypes)
        raise MixedDtypeError(
            f"{name} got floating tensors of dtypes ({listed}): CUDA autocast does not promote this op, so "
            "it raises there (CPU autocast may promote it and hide the bug); cast the source to the "
            "destination's dtype, or allocate the destination in the dtype the layer returns"
        )
