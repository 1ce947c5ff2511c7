"""puppet.core.memory: the live-tensor tracker is exact on cases counted by hand, and runs on every model."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from puppet.core.memory import LiveTensorMemory, state_tensors, training_step_memory
from puppet.core.registry import create_model, list_models

F32 = 4  # bytes per float32 number


def test_counts_allocations_and_frees():
    with LiveTensorMemory() as mem:
        a = torch.empty(1000)  # 4000 bytes
        b = torch.empty(10, dtype=torch.float64)  # 80 bytes
        assert (mem.live_bytes, mem.peak_bytes) == (4080, 4080)
        del a
        assert (mem.live_bytes, mem.peak_bytes) == (80, 4080)
        c = torch.empty(5, dtype=torch.bfloat16)  # 10 bytes
        assert (mem.live_bytes, mem.peak_bytes) == (90, 4080)
    del b, c


def test_views_detach_and_inplace_are_not_counted_twice():
    with LiveTensorMemory() as mem:
        a = torch.zeros(10, 10)  # 400 bytes
        views = [a[2:], a.view(100), a.t(), a.detach(), a[:, 3], a.expand(2, 10, 10), a.unsqueeze(0)]
        a.add_(1)
        a.mul_(2)
        assert mem.live_bytes == mem.peak_bytes == 400
        del a  # the views keep the storage alive
        assert mem.live_bytes == 400
        del views
        assert mem.live_bytes == 0
        assert mem.peak_bytes == 400


def test_a_freed_temporary_lowers_the_live_count_not_the_peak():
    x = torch.ones(100)
    with LiveTensorMemory() as mem:
        mem.track(x)  # 400 bytes that existed before
        s = (x * 2).sum()  # the temporary x * 2 (400 bytes) dies once the sum (4 bytes) exists
        assert mem.live_bytes == 400 + 4
        assert mem.peak_bytes == 400 + 400 + 4
    assert s.item() == 200


def test_tracking_an_existing_tensor_twice_counts_it_once():
    w = torch.empty(3, 4)
    with LiveTensorMemory() as mem:
        mem.track(w, [w, w.t()], {"again": w}, (p for p in [w]), None)
        assert mem.live_bytes == 12 * F32


def test_an_in_place_resize_is_counted():
    with LiveTensorMemory() as mem:
        a = torch.empty(10)
        a.resize_(100)
        assert mem.live_bytes == 400
        out = torch.empty(0)
        torch.mul(torch.ones(25), 2, out=out)  # out= grows an empty storage to 100 bytes
        assert mem.live_bytes == 400 + 100  # a and out (the ones are freed again)
        assert mem.peak_bytes == 400 + 100 + 100
    del a, out


def test_bias_free_linear_forward_backward_by_hand():
    """y = x W^T with W (50, 100), x (8, 100) not requiring grad: what lives and the peak, counted by hand."""
    lin = nn.Linear(100, 50, bias=False)
    x = torch.randn(8, 100)
    with LiveTensorMemory() as mem:
        mem.track(lin.parameters(), x)
        before = (50 * 100 + 8 * 100) * F32
        assert mem.live_bytes == before
        mem.phase("forward")
        y = lin(x)  # saved for backward: x (already counted); output y (8, 50)
        assert mem.live_bytes == before + 8 * 50 * F32
        loss = y.sum()  # 4 bytes
        mem.phase("backward")
        loss.backward()  # the seed gradient (4 bytes), dL/dy = its expansion (a view), dL/dW (50, 100)
        grad_w = 50 * 100 * F32
        assert mem.peak_bytes == before + 8 * 50 * F32 + 4 + 4 + grad_w
        del y, loss
        assert mem.live_bytes == before + grad_w
    assert mem.phase_peak_bytes == {
        "forward": before + 8 * 50 * F32 + 4,
        "backward": before + 8 * 50 * F32 + 4 + 4 + grad_w,
    }


def test_saved_activations_stay_an_unsaved_intermediate_goes():
    """x -> Linear(16, 32) -> ReLU -> Linear(32, 4): ReLU saves its output, the second mm its input;
    the first layer's output h is saved by nobody and is freed once the ReLU has run."""
    l1, l2 = nn.Linear(16, 32, bias=False), nn.Linear(32, 4, bias=False)
    x = torch.randn(8, 16)
    with LiveTensorMemory() as mem:
        mem.track(l1.parameters(), l2.parameters(), x)
        before = mem.live_bytes
        out = l2(torch.relu(l1(x)))
        h = r = 8 * 32 * F32
        assert mem.live_bytes == before + r + 8 * 4 * F32  # relu output (saved) + out
        assert mem.peak_bytes == before + h + r  # h and relu(h) were alive together
    del out


def test_autocast_keeps_bf16_copies_that_backward_needs():
    """Under bf16 autocast a Linear casts x and W; with both requiring grad both copies are saved."""
    lin = nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64, requires_grad=True)
    with LiveTensorMemory() as mem:
        mem.track(lin.parameters(), x)
        before = mem.live_bytes
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = lin(x)
        assert y.dtype == torch.bfloat16
        assert mem.live_bytes == before + 2 * (8 * 64 + 64 * 32 + 8 * 32)  # x, W (bf16 copies), y
    del y


def test_device_filter_ignores_other_devices():
    with LiveTensorMemory("cuda") as mem:
        a = torch.empty(100)
        assert mem.live_bytes == 0
    del a


def test_no_callback_after_exit():
    with LiveTensorMemory() as mem:
        a = torch.empty(100)
    live = mem.live_bytes
    del a
    assert mem.live_bytes == live  # the tracker stopped counting when it exited


def test_training_step_counts_what_exists_before_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # Adam's state exists, as after a first step
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    nbytes = sum(t.untyped_storage().nbytes() for t in state_tensors(model, opt)) + x.nbytes + y.nbytes
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    n_tensors = len(list(model.parameters()))
    # params, grads, exp_avg, exp_avg_sq (float32), BN buffers, num_batches_tracked (int64), Adam step counters
    assert nbytes == 4 * n_params * F32 + n_buffers * F32 + 8 + n_tensors * F32 + x.nbytes + y.nbytes
    mem = training_step_memory(model, opt, x, y, amp_dtype=torch.bfloat16)
    assert mem.method == "tracked"
    assert mem.before_bytes == nbytes
    assert set(mem.phase_peak_bytes) == {"forward", "backward", "step"}
    assert mem.peak_bytes == max(mem.phase_peak_bytes.values()) > mem.before_bytes
    # the step's foreach temporaries come on top of params, grads and both moments
    assert mem.phase_peak_bytes["step"] >= nbytes


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_steps_under_the_tracker(name):
    """The tracker sees a training step of every model (nothing silently reports zero)."""
    torch.manual_seed(0)
    model = create_model(name, max_channels=16)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    if hasattr(model, "prepare"):
        model.prepare([torch.randn(16, 3, 32, 32)])
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, foreach=True)
    mem = training_step_memory(model, opt, x, y, amp_dtype=torch.bfloat16)  # first step: Adam's state is created
    grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    assert grads > 0, f"no gradient for {name}"
    assert mem.before_bytes >= sum(p.nbytes for p in model.parameters()) + x.nbytes
    # the step created both moments of every parameter with a gradient: at least 2 x their bytes above before
    assert mem.phase_peak_bytes["step"] >= mem.before_bytes + grads + 2 * grads
    assert mem.phase_peak_bytes["forward"] > mem.before_bytes  # activations


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tracker_agrees_with_the_cuda_allocator():
    """What a step adds above what existed before, on an MLP (no cuDNN workspace; cuBLAS's workspace
    exists after the first step): the allocator's count and the tracker's agree up to its rounding."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(256, 512, device="cuda"), torch.randint(0, 10, (256,), device="cuda")
    training_step_memory(model, opt, x, y, amp_dtype=torch.bfloat16)  # Adam's state, cuBLAS workspace
    mem = training_step_memory(model, opt, x, y, amp_dtype=torch.bfloat16)
    assert mem.method == "cuda_allocator"
    allocator, tracked = mem.peak_bytes - mem.before_bytes, mem.tracked_peak_bytes - mem.tracked_before_bytes
    assert tracked > 0
    assert abs(allocator - tracked) <= 0.02 * allocator + 64 * 512
