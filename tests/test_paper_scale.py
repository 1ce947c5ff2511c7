"""Every registered model at the paper's width (max_channels=512) takes one training step on CPU.

The test profiles run at max_channels <= 64, so a model that only breaks at full width (an
overflowing index, a shape rule that holds only for small widths, memory blow-up in kernel
generation) would first show up on the cluster. One step on 3 real CIFAR-10 images catches that
for the cost of a few seconds per model: the objective (``compute_loss`` or cross-entropy), its
backward, one Adam step, and one eval forward. The 3 images are the least, the median and the
most complex of 64 (``tests/model_checks.py``), so Puppet-CNN runs its shallowest and deepest
plans.
"""

from __future__ import annotations

import pytest
import torch
from model_checks import loss_and_logits, prepare_if_needed, real_cifar10_batch

from puppet import create_model, list_models

PAPER = dict(num_classes=10, in_channels=3, image_size=32, max_channels=512)
BATCH = 3
MOVES = 1e-6  # Adam's first step moves every element whose |grad| >> eps by about lr


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_paper_width_train_step_and_eval(name, cifar10_npz):
    x, y, pool = real_cifar10_batch(cifar10_npz, BATCH, pool=64)
    torch.manual_seed(0)
    model = create_model(name, **PAPER)
    prepare_if_needed(model, pool)
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.Adam(params.values(), lr=1e-3)

    loss, logits = loss_and_logits(model, x, y)
    assert logits.shape == (BATCH, 10), f"{name}: training logits {tuple(logits.shape)}"
    assert torch.isfinite(logits).all() and torch.isfinite(loss), f"{name}: loss {loss.item()}"
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

    moved = {n for n, p in params.items() if not torch.equal(p.detach(), before[n])}
    assert moved, f"{name}: the optimizer step changed no parameter"
    should_move = [n for n, p in params.items() if p.grad is not None and p.grad.abs().max() > MOVES]
    stuck = [n for n in should_move if n not in moved]
    assert not stuck, f"{name}: parameters with a gradient did not change: {stuck[:5]}"

    model.eval()
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (BATCH, 10), f"{name}: eval logits {tuple(out.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite eval logits"
