"""The official B-ResNet-110 (``branchynet_resnet110``): the network kunglab/branchynet @ 2c61194 builds
(``networks/resnet_cifar10.py``, ``branchynet/links/resnet.py``), its two training phases and its early exits.

The registry-wide tests (``test_registry.py``, ``test_amp.py``, ...) run on it too; these check what is
particular to it against the official code, written out here independently of the model's own formula.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines._resnet_parts import OptionABlock, softmax_entropy
from baselines.branchynet import BResNet110
from puppet import create_model
from puppet.core.protocols import Calibrates, HasObjective, ReportsStats, TrainsInPhases
from puppet.core.registry import model_info

NAME = "branchynet_resnet110"

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def official_layers(num_classes: int = 10, in_channels: int = 3) -> list[tuple]:
    """The official layer list at 32x32 input: ("conv", in, out, kernel, bias), ("bn", channels),
    ("fc", in, out); activations, LRN, pooling and the option-A shortcuts have no parameters."""

    def res_block(c_in: int, c_out: int) -> list[tuple]:  # resnet.ResBlock: Chainer convs keep their bias
        return [("conv", c_in, c_out, 3, True), ("bn", c_out), ("conv", c_out, c_out, 3, True), ("bn", c_out)]

    layers: list[tuple] = [("conv", in_channels, 16, 3, True), ("bn", 16)]  # L.Convolution2D(3, 16, 3, 1, 0, w)
    # exit 1: conv5x5 16->64 pad 2, ReLU, LRN, conv(64), conv(32), cap(28800)
    layers += [("conv", 16, 64, 5, True), ("conv", 64, 32, 3, True), ("conv", 32, 32, 3, True)]
    layers += [("fc", 32 * 30 * 30, num_classes)]
    for _ in range(18):
        layers += res_block(16, 16)
    layers += res_block(16, 16) + [("fc", 16 * 30 * 30, num_classes)]  # exit 2: ResBlock(16, 16), Linear(14400, 10)
    layers += res_block(16, 32)
    for _ in range(17):
        layers += res_block(32, 32)
    layers += res_block(32, 64)
    for _ in range(17):
        layers += res_block(64, 64)
    layers += [("fc", 64 * 3 * 3, num_classes)]  # average_pooling_2d(6, 1): 8x8 -> 3x3; Linear(576, 10)
    return layers


def count(layers: list[tuple]) -> int:
    n = 0
    for layer in layers:
        if layer[0] == "conv":
            _, c_in, c_out, k, bias = layer
            n += c_in * c_out * k * k + (c_out if bias else 0)
        elif layer[0] == "bn":
            n += 2 * layer[1]
        else:
            n += layer[1] * layer[2] + layer[2]
    return n


def model_layers(model: nn.Module) -> list[tuple]:
    out: list[tuple] = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            out.append(("conv", m.in_channels, m.out_channels, m.kernel_size[0], m.bias is not None))
        elif isinstance(m, nn.BatchNorm2d):
            out.append(("bn", m.num_features))
        elif isinstance(m, nn.Linear):
            out.append(("fc", m.in_features, m.out_features))
    return out


@pytest.fixture(scope="module")
def model() -> BResNet110:
    torch.manual_seed(0)
    return create_model(NAME, num_classes=10, in_channels=3, image_size=32)


def test_parameter_count_is_the_official_layer_list(model):
    assert count(official_layers()) == 2_227_230
    assert sum(p.numel() for p in model.parameters()) == count(official_layers())
    assert Counter(model_layers(model)) == Counter(official_layers())  # the same layers, not just the same total
    other = create_model(NAME, num_classes=100, in_channels=1, image_size=32)
    assert sum(p.numel() for p in other.parameters()) == count(official_layers(100, 1))


def test_param_formula_follows_the_image_size():
    """The FCs read flattened maps, so their sizes follow the input: 28x28 -> 26 -> 13 -> 7 -> 2 after the pool."""
    formula = model_info(NAME).param_formula
    small = create_model(NAME, num_classes=10, in_channels=1, image_size=28)
    assert sum(p.numel() for p in small.parameters()) == formula(num_classes=10, in_channels=1, image_size=28)
    assert small.fc.in_features == 64 * 2 * 2 and small.branches[0][-1].in_features == 32 * 26 * 26
    with pytest.raises(ValueError, match="at least 23x23"):
        create_model(NAME, image_size=16)


def test_every_exit_has_the_official_shapes(model):
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    seen: dict[str, tuple] = {}
    hooks = [
        mod.register_forward_hook(lambda _m, _i, out, key=key: seen.__setitem__(key, tuple(out.shape)))
        for key, mod in {
            "stem": model.stem,
            "exit1_conv5x5": model.branches[0][0],
            "exit1_last_conv": model.branches[0][5],
            "stage1": model.segments[1],
            "exit2_block": model.branches[1][0],
            "stage2_first": model.segments[2][0],
            "stage3_first": model.segments[2][18],
            "stage3": model.segments[2],
            "pool": model.pool,
        }.items()
    ]
    try:
        with torch.no_grad():
            outs = model.exit_logits(x)
    finally:
        for h in hooks:
            h.remove()
    assert seen == {
        "stem": (2, 16, 30, 30),  # conv3x3 without padding: 32 -> 30
        "exit1_conv5x5": (2, 64, 30, 30),
        "exit1_last_conv": (2, 32, 30, 30),  # flattened: 28800
        "stage1": (2, 16, 30, 30),
        "exit2_block": (2, 16, 30, 30),  # flattened: 14400
        "stage2_first": (2, 32, 15, 15),
        "stage3_first": (2, 64, 8, 8),
        "stage3": (2, 64, 8, 8),
        "pool": (2, 64, 3, 3),  # average_pooling_2d(6, 1); flattened: 576
    }
    assert [tuple(o.shape) for o in outs] == [(2, 10)] * 3
    assert len(model.segments[0]) == 0 and len(model.segments[1]) == 18 and len(model.segments[2]) == 36
    assert model.exit_depth == (4, 39, 109)  # stem + 3 branch convs; stem + 18 blocks + the branch's block; 109


@pytest.mark.parametrize("c_in,c_out,stride,side", [(16, 32, 2, 30), (32, 64, 2, 15), (16, 16, 1, 30)])
def test_option_a_shortcut_is_zero_channels_first_then_stride(c_in, c_out, stride, side):
    """``ResBlock``'s shortcut: ``F.concat((zeros, x))`` then ``F.average_pooling_2d(x, 1, 2)``; no parameters."""
    torch.manual_seed(0)
    block = OptionABlock(c_in, c_out, stride, bias=True, eps=2e-5).eval()
    assert sum(p.numel() for p in block.parameters()) == count(
        [("conv", c_in, c_out, 3, True), ("bn", c_out), ("conv", c_out, c_out, 3, True), ("bn", c_out)]
    )
    x = torch.randn(2, c_in, side, side)
    padded = torch.cat([torch.zeros(2, c_out - c_in, side, side), x], 1)  # zeros BEFORE x, as Chainer's concat
    expected = F.avg_pool2d(padded, 1, stride) if stride != 1 else padded  # Chainer's 1x1 average pool
    torch.testing.assert_close(expected, padded[:, :, ::stride, ::stride], rtol=0, atol=0)
    with torch.no_grad():
        shortcut, residual = block.shortcut(x), block.residual(x)
        assert torch.equal(shortcut, expected)
        assert shortcut.shape == residual.shape == (2, c_out, math.ceil(side / stride), math.ceil(side / stride))
        torch.testing.assert_close(block(x), F.relu(residual + expected))


def test_lrn_is_chainers_formula(model):
    """Chainer: y_i = x_i / (k + alpha * sum_{|j-i| <= n//2} x_j^2)^beta, alpha NOT divided by n."""
    lrn = model.branches[0][2]
    assert isinstance(lrn, nn.LocalResponseNorm)
    x = torch.randn(2, 64, 5, 5) * 30  # large enough that the normaliser matters
    sq = F.pad(x.pow(2), (0, 0, 0, 0, 1, 1))  # pad channels by n // 2 = 1 on each side
    window = sq[:, :-2] + sq[:, 1:-1] + sq[:, 2:]  # (2, 64, 5, 5): channels i-1, i, i+1
    chainer = x / (2.0 + 5e-5 * window).pow(0.75)
    torch.testing.assert_close(lrn(x), chainer, rtol=1e-5, atol=1e-6)


def test_initialisation_is_chainers(model):
    """Chainer 1.17: W ~ N(0, sqrt(wscale / fan_in)), bias 0; wscale sqrt(2) on the stem's and the blocks'
    convs, 1 on exit 1's convs and every FC; BN eps 2e-5."""

    def pooled_std(modules: list[nn.Module], wscale: float) -> float:
        z = torch.cat([m.weight.detach().flatten() / math.sqrt(wscale / m.weight[0].numel()) for m in modules])
        return z.std().item()

    trunk = [m for part in (model.stem, model.segments, model.branches[1][0]) for m in part.modules()]
    trunk_convs = [m for m in trunk if isinstance(m, nn.Conv2d)]
    exit1_convs = [m for m in model.branches[0].modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(trunk_convs) == 1 + 2 * 55 and len(exit1_convs) == 3 and len(fcs) == 3
    assert pooled_std(trunk_convs, math.sqrt(2)) == pytest.approx(1.0, abs=0.02)
    assert pooled_std(exit1_convs, 1.0) == pytest.approx(1.0, abs=0.02)
    assert pooled_std(fcs, 1.0) == pytest.approx(1.0, abs=0.02)
    for m in trunk_convs + exit1_convs + fcs:
        assert torch.count_nonzero(m.bias) == 0
    assert {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {2e-5}


def test_phases_choose_the_loss_and_not_the_inference():
    torch.manual_seed(0)
    model = create_model(NAME).train()
    assert all(isinstance(model, kind) for kind in (TrainsInPhases, HasObjective, Calibrates, ReportsStats))
    assert model.phase_names == ("main", "joint") and model.phase == "main"  # until the trainer sets one
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    outs = model.exit_logits(x)  # training mode: batch statistics, the same numbers on every pass
    ces = [F.cross_entropy(z, y) for z in outs]

    loss, logits = model.compute_loss(x, y)  # "main": the final exit alone
    torch.testing.assert_close(loss, ces[-1])
    torch.testing.assert_close(logits, outs[-1])
    model.zero_grad(set_to_none=True)
    loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is None) == name.startswith("branches."), name  # the main network alone trains

    model.set_phase("joint")  # the sum of the three exits' CE, weight 1 each
    loss, logits = model.compute_loss(x, y)
    torch.testing.assert_close(loss, ces[0] + ces[1] + ces[2])
    torch.testing.assert_close(logits, outs[-1])
    model.zero_grad(set_to_none=True)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    with pytest.raises(ValueError, match="no training phase 'sp'"):
        model.set_phase("sp")
    model.eval()
    with torch.no_grad():
        joint = model(x)
        model.set_phase("main")
        torch.testing.assert_close(model(x), joint, rtol=0, atol=0)  # inference does not depend on the phase


def test_early_exit_forward_returns_each_samples_exit_logits():
    """Thresholds set so that 3 of 8 samples leave at exit 1, 2 at exit 2 and 3 reach the final exit: the
    early-exit forward (exited samples dropped) returns, per sample, the logits of the exit it took."""
    torch.manual_seed(1)
    model = create_model(NAME).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():  # untrained exits are saturated or flat: scale each exit's FC to logits of std 2
        for n, fc in enumerate((model.branches[0][-1], model.branches[1][-1], model.fc)):
            fc.weight.mul_(2.0 / model.exit_logits(x)[n].std())
        outs = model.exit_logits(x)
    e0, e1 = softmax_entropy(outs[0]), softmax_entropy(outs[1])
    s0 = e0.sort().values
    t0 = float(s0[2] + s0[3]) / 2  # the 3 lowest entropies leave at exit 1
    rest = e0 >= t0
    s1 = e1[rest].sort().values
    t1 = float(s1[1] + s1[2]) / 2  # 2 of the remaining 5 leave at exit 2
    assert min(s0[3] - s0[2], s1[2] - s1[1]) > 1e-5, "entropies too close for a stable split"
    expected = torch.where(e0 < t0, 0, torch.where(e1 < t1, 1, 2))
    assert expected.bincount().tolist() == [3, 2, 3]
    model.thresholds.copy_(torch.tensor([t0, t1]))
    with torch.no_grad():
        got = model(x)
    assert torch.equal(model.last_stats["exit"], expected)
    assert torch.equal(model.last_stats["depth"], torch.tensor(model.exit_depth)[expected])
    per_exit = torch.stack(outs)[expected, torch.arange(8)]  # (8, classes): each sample's exit's logits
    torch.testing.assert_close(got, per_exit, rtol=1e-5, atol=1e-5)


def test_exit_costs_grow_and_forced_exits_report_them(model):
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    costs = model.exit_macs(x)
    assert costs == sorted(costs) and len(costs) == 3
    assert costs[0] > 0.15 * costs[-1]  # exit 1's conv5x5 to 64 channels at 30x30 is not cheap
    saved = model.thresholds.clone()
    try:
        for n in range(3):
            model.thresholds.fill_(-math.inf)
            if n < 2:
                model.thresholds[n] = math.inf
            with torch.no_grad():
                model(x)
            assert int(model.last_stats["exit"][0]) == n
            assert int(model.last_stats["depth"][0]) == model.exit_depth[n]
    finally:
        model.thresholds.copy_(saved)


def test_registry_entry():
    info = model_info(NAME)
    assert info.family == "adaptive_depth" and info.paper_name == "BranchyNet"
    assert info.fixed_width and info.configuration == "as published" and info.base == ""
    assert "kunglab/branchynet @ 2c61194" in info.description
    assert info.revision == 2  # the architecture changed: runs of revision 1 are not reused
    assert info.param_formula(num_classes=10, in_channels=3, image_size=32, max_channels=32) == 2_227_230
