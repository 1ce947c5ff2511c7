"""Top-1 / top-5 evaluation, collecting adaptive models' per-sample statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from puppet.core.data import Batches
from puppet.core.protocols import ReportsStats


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent (top-k with k = min(5, classes))
    loss: float
    num_samples: int
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. depth, exit, complexity
    stats_summary: dict[str, float] = field(default_factory=dict)  # mean of each per-sample stat
    # confusion[i][j]: test images of class i predicted as class j (the claims' most-confused class pair)
    confusion: list[list[int]] = field(default_factory=list)


def collect_stats(model: torch.nn.Module, batch_size: int) -> dict[str, torch.Tensor]:
    """The per-sample tensors a model left in ``last_stats`` after its forward pass."""
    if not isinstance(model, ReportsStats):
        return {}
    out = {}
    stats = model.last_stats
    for key, value in stats.items():
        if isinstance(value, torch.Tensor) and value.ndim == 1 and len(value) == batch_size:
            out[key] = value.detach().float().cpu()
    return out


@torch.inference_mode()
def evaluate(model: torch.nn.Module, batches: Batches) -> EvalResult:
    model.eval()
    correct1 = correct5 = seen = 0
    loss_sum = 0.0
    per_sample: dict[str, list[torch.Tensor]] = {}
    confusion = None
    for x, y in batches:
        logits = model(x)
        classes = logits.shape[1]
        if confusion is None:
            confusion = torch.zeros(classes * classes, dtype=torch.long)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        correct1 += (topk[:, 0] == y).sum().item()
        correct5 += (topk == y[:, None]).any(dim=1).sum().item()
        confusion += torch.bincount((y * classes + topk[:, 0]).cpu(), minlength=classes * classes)
        seen += len(y)
        for key, value in collect_stats(model, len(y)).items():
            per_sample.setdefault(key, []).append(value)
    per = {k: torch.cat(v) for k, v in per_sample.items()}
    return EvalResult(
        top1=100.0 * correct1 / seen,
        top5=100.0 * correct5 / seen,
        loss=loss_sum / seen,
        num_samples=seen,
        per_sample=per,
        stats_summary={f"mean_{k}": float(v.mean()) for k, v in per.items()},
        confusion=[] if confusion is None else confusion.view(classes, classes).tolist(),
    )
