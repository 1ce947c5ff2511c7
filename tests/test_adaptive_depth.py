"""Mechanism tests of the adaptive-depth baselines (BranchyNet, SkipNet, DRNN).

Conditional execution must really save work (fewer measured MACs on the early /
skipped path), batched inference with compaction must agree with batch-1
inference, thresholds must come from the batches given to ``calibrate``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from baselines._resnet_parts import softmax_entropy
from baselines.drnn import masked_batch_norm
from puppet import create_model
from puppet.core.data import Batches, make_splits
from puppet.core.datasets import load_dataset
from puppet.core.measure import count_macs, count_macs_flopcounter

SMALL = dict(num_classes=10, in_channels=3, image_size=32, max_channels=16)
NAMES = ("branchynet", "skipnet", "drnn")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _model(name: str, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, **SMALL, **kw).eval()


def _force(model: torch.nn.Module, path: str) -> None:
    """path='short': leave at the first exit / skip every gated block / one loop per stage;
    path='full': the whole network."""
    short = path == "short"
    if hasattr(model, "thresholds"):  # entropy < +inf always holds, < -inf never
        model.thresholds.fill_(math.inf if short else -math.inf)
    elif hasattr(model, "gate_threshold"):  # p(execute) > 1.1 never holds, > -1 always
        model.gate_threshold.fill_(1.1 if short else -1.0)
    else:
        model.halt_threshold.fill_(1.1 if short else -1.0)


def _synthetic_batches(n: int, batch_size: int, offset: int = 0, train: bool = True) -> Batches:
    data = load_dataset("synthetic")
    x, y = (data.x_train, data.y_train) if train else (data.x_test, data.y_test)
    return Batches(x[offset : offset + n], y[offset : offset + n], batch_size, (0.5,) * 3, (0.25,) * 3)


@pytest.mark.parametrize("name", NAMES)
def test_short_path_costs_fewer_measured_macs(name):
    model = _model(name)
    x = torch.randn(1, 3, 32, 32)
    _force(model, "full")
    full = count_macs(model, x)
    with torch.no_grad():
        model(x)
    full_depth = int(model.last_stats["depth"][0])
    _force(model, "short")
    short = count_macs(model, x)
    with torch.no_grad():
        model(x)
    short_depth = int(model.last_stats["depth"][0])
    assert short < 0.8 * full, f"{name}: short path {short} MACs vs full {full}"
    assert short_depth < full_depth
    # the counters agree on the short path too (nothing executed is invisible to ptflops)
    independent = count_macs_flopcounter(model, x)
    assert abs(short - independent) <= 0.02 * independent


def test_branchynet_exit_stats_and_cost_per_exit():
    model = _model("branchynet")
    x = torch.randn(1, 3, 32, 32)
    costs = model.exit_macs(x)
    assert costs == sorted(costs) and len(costs) == model.num_exits == 3
    for n in range(model.num_exits):  # force exit n: earlier exits never hold, exit n always
        model.thresholds.fill_(-math.inf)
        if n < len(model.thresholds):
            model.thresholds[n] = math.inf
        with torch.no_grad():
            model(x)
        assert int(model.last_stats["exit"][0]) == n
        assert int(model.last_stats["depth"][0]) == model.exit_depth[n]
        assert abs(count_macs(model, x) - costs[n]) <= 0.02 * costs[n]


def test_skipnet_skipped_path_counts_gates_and_shortcuts_only():
    """All gates skip: MACs = stem + block 1 + every gate + the projection shortcuts + FC."""
    model = _model("skipnet")
    _force(model, "short")
    x = torch.randn(1, 3, 32, 32)
    expected = 0
    with torch.no_grad():
        h = model.stem(x)
        expected += count_macs_flopcounter(model.stem, x)
        expected += count_macs_flopcounter(model.blocks[0], h)
        h = model.blocks[0](h)
        for block, gate in zip(model.blocks[1:], model.gates):
            expected += count_macs_flopcounter(gate, h)
            expected += count_macs_flopcounter(block.downsample, h) if block.downsample is not None else 0
            h = block.shortcut(h)
        expected += count_macs_flopcounter(model.fc, h.mean((2, 3)))
    assert count_macs_flopcounter(model, x) == expected
    with torch.no_grad():
        model(x)
    assert int(model.last_stats["blocks"][0]) == 1


def test_branchynet_calibrate_uses_the_given_batches():
    model = _model("branchynet", calib_tolerance=100.0)  # accept any accuracy: everyone leaves at exit 1
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "thresholds"}
    chosen = []
    for offset in (0, 200):
        val = _synthetic_batches(96, 32, offset)
        record = model.calibrate(val)
        with torch.no_grad():
            ent = torch.cat([softmax_entropy(model.exit_logits(x)[0]) for x, _ in val])
        # the cheapest rule lets every validation image leave at exit 1: T_1 just above their largest entropy
        assert record["val_exit_fraction"][0] == 1.0 and record["val_images"] == 96
        assert model.thresholds[0].item() == pytest.approx(ent.max().item(), rel=1e-6)
        assert record["thresholds"] == model.thresholds.tolist()
        chosen.append(model.thresholds.clone())
    assert not torch.equal(chosen[0], chosen[1]), "thresholds did not change with the validation data"
    assert not model.training
    for k, v in model.state_dict().items():  # calibration changes thresholds only
        if k != "thresholds":
            assert torch.equal(v, state[k]), k
    assert "thresholds" in model.state_dict()


def test_branchynet_calibrate_keeps_accuracy_within_tolerance():
    model = _model("branchynet", calib_tolerance=0.0)
    record = model.calibrate(_synthetic_batches(64, 32))
    assert record["val_top1"] >= record["val_top1_best_candidate"] >= record["val_top1_final_exit"]
    assert record["val_mean_macs"] <= record["full_path_macs"]


@pytest.mark.parametrize("name", ("skipnet", "drnn"))
def test_gate_calibrate_reports_accuracy_on_the_given_batches(name):
    model = _model(name)
    val = _synthetic_batches(48, 16, offset=100)
    record = model.calibrate(val)
    buffer = model.gate_threshold if name == "skipnet" else model.halt_threshold
    assert buffer.item() == pytest.approx(record["threshold"])
    assert record["val_images"] == 48
    with torch.no_grad():  # re-evaluate on the same batches with the stored threshold
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in val)
        depth = torch.cat([(model(x), model.last_stats["depth"])[1] for x, _ in val]).float().mean().item()
    assert record["val_top1"] == pytest.approx(100.0 * correct / 48)
    assert record["val_mean_depth"] == pytest.approx(depth)
    best = max(r["val_top1"] for r in record["candidates"])
    assert record["val_top1"] >= best - model.calib_tolerance


def test_drnn_masked_batch_norm_uses_active_samples_only():
    bn = torch.nn.BatchNorm2d(3, momentum=1.0)  # momentum 1: running stats = this batch's
    x = torch.randn(6, 3, 4, 4)
    x[3:] += 100.0  # halted samples, far off: they must not move the statistics
    active = torch.tensor([True, True, True, False, False, False])
    y = masked_batch_norm(x, active, bn.train())
    torch.testing.assert_close(bn.running_mean, x[:3].mean((0, 2, 3)))
    torch.testing.assert_close(y[:3], F.batch_norm(x[:3], None, None, bn.weight, bn.bias, training=True))


@pytest.mark.parametrize("name", NAMES)
def test_short_training_run_decreases_loss(name):
    torch.manual_seed(0)
    model = create_model(name, **SMALL).train()
    batches = Batches(*_xy_train(64), 32, (0.5,) * 3, (0.25,) * 3, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for epoch in range(8):
        for x, y in batches.epoch(epoch):
            loss, logits = model.compute_loss(x, y)
            assert logits.shape == (len(y), 10)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
    assert model.last_stats["depth"].shape == (32,)


def _xy_train(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("synthetic")
    return data.x_train[:n], data.y_train[:n]


def test_calibration_split_is_drawn_from_training_data():
    """The harness calibrates on make_splits' validation subset: training images, disjoint from train and test."""
    data = load_dataset("synthetic")
    splits = make_splits(data, train_size=500, val_size=100, test_size=100, split_seed=0)
    assert not set(splits.val_index.tolist()) & set(splits.train_index.tolist())
    torch.testing.assert_close(splits.x_val, data.x_train[splits.val_index])


def test_skipnet_sp_then_hrl_follows_the_phase_it_is_given():
    """gate_training='sp_hrl' (the default): SP (hard p > 0.5, straight-through) until the trainer says
    "hrl", then hybrid RL (sampled gates, REINFORCE); the gates receive gradient in both phases."""
    torch.manual_seed(0)
    model = create_model("skipnet", **SMALL).train()
    assert model.phase_names == ("sp", "hrl") and model.phase == "sp"
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    runs = []
    for phase in ("sp", "sp", "hrl", "hrl"):
        model.set_phase(phase)
        model.zero_grad()
        torch.manual_seed(1)
        loss, logits = model.compute_loss(x, y)
        loss.backward()
        assert torch.isfinite(loss) and logits.shape == (8, 10)
        gate_grad = sum(p.grad.abs().sum() for p in model.gates.parameters() if p.grad is not None)
        assert gate_grad > 0, f"no gradient reached the gates in phase {phase}"
        runs.append(model.last_stats["blocks_run"].clone())
    # SP gates are deterministic (p > 0.5); HRL samples them: same input and weights, another seed,
    # other decisions
    assert torch.equal(runs[0], runs[1])
    decisions = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model.compute_loss(x, y)
        decisions.append(model.last_stats["blocks_run"].clone())
    assert not torch.equal(*decisions), "HRL should sample its gates"
    with pytest.raises(ValueError, match="no training phase"):
        model.set_phase("warmup")
    gumbel = create_model("skipnet_gumbel", **SMALL)
    assert gumbel.phase_names == () and gumbel.gate_training == "gumbel"


def test_skipnet_reinforce_gradient_has_the_official_per_batch_scale():
    """In HRL the gates learn from REINFORCE alone (the sampled decision carries no CE gradient). The
    official code calls ``action.reinforce(rl_weight * R)`` on each sample's multinomial draw, which
    back-propagates -rl_weight * R_b * d log pi(a_b) for every sample b, summed over the batch (not
    averaged). Derived here from that formula for the last gate's logit bias, on the decisions the
    model drew: R_b = alpha / N_gates * (1 - a_b) - CE_b (the last gate's return, gamma = 1)."""
    torch.manual_seed(0)
    model = create_model("skipnet", **SMALL).train()
    model.set_phase("hrl")
    last = model.gates[-1]
    with torch.no_grad():
        last.logits.bias.zero_()  # p(execute) near 0.5: both decisions in the batch
    seen: dict[str, torch.Tensor] = {}
    last.register_forward_hook(lambda _m, _i, out: seen.__setitem__("logits", out.detach()))
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    torch.manual_seed(3)
    loss, logits = model.compute_loss(x, y)
    loss.backward()
    action = model.last_stats["blocks_run"][:, -1].long()  # (B,) 1 = the last gated block ran
    ce = F.cross_entropy(logits.detach(), y, reduction="none")
    reward = model.hrl_alpha / len(model.gates) * (1 - action.double()) - ce.double()  # (B,)
    dlogp = F.one_hot(action, 2).double() - F.softmax(seen["logits"].double(), 1)  # d log pi(a_b) / d logits
    expected = -model.rl_weight * (reward[:, None] * dlogp).sum(0)  # summed over the batch
    assert model.hrl_alpha == 0.1  # the official train_rl.py default
    assert 0 < action.sum() < len(action), "the test needs both decisions in the batch"
    torch.testing.assert_close(last.logits.bias.grad.double(), expected, rtol=1e-4, atol=1e-7)
    # a batch mean would be 1/16 of it
    assert not torch.allclose(last.logits.bias.grad.double(), expected / len(x), rtol=1e-2)


def test_skipnet_fixed_rule_is_a_deployment_beside_the_calibrated_threshold():
    """SkipNet's own test-time rule (a block runs when p(execute) > 0.5) is the deployment ``fixed_0.5``
    of the same trained model: same weights, threshold 0.5, the calibrated model left as it was."""
    from puppet.core.protocols import DeployContext

    model = _model("skipnet")
    model.gate_threshold.fill_(0.75)
    assert set(model.deployments(DeployContext())) == {"default", "fixed_0.5"}
    fixed = model.deploy("fixed_0.5", DeployContext())
    assert float(fixed.gate_threshold) == 0.5 and float(model.gate_threshold) == 0.75
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model.gate_threshold.fill_(0.5)
        torch.testing.assert_close(fixed(x), model(x))
    with pytest.raises(ValueError, match="unknown deployment"):
        model.deploy("fixed_0.7", DeployContext())


@pytest.mark.parametrize("name", ("skipnet", "drnn", "branchynet", "skipnet38"))
def test_calibration_prices_each_path_as_ptflops_counts_it(name):
    """The calibration's per-sample MACs (path prices from forced passes) equal ptflops on that sample,
    the counter the tables use, on a batch whose samples take different paths."""
    from puppet.core.registry import model_info

    model = _model(name)
    x = torch.randn(6, 3, 32, 32)
    model_info(name).spread_paths(model, x)
    model.eval()
    if name == "branchynet":
        prices = torch.tensor(model.exit_macs(x[:1]), dtype=torch.float64)
        with torch.no_grad():
            model(x)
        per_sample = prices[model.last_stats["exit"]]
    else:
        prices = model.path_costs(x[:1])
        with torch.no_grad():
            model(x)
        per_sample = model.sample_macs(model.last_stats, prices)
    paths = model.last_stats["depth"]
    assert len(set(paths.tolist())) > 1, "the batch should take more than one path"
    for i in range(len(x)):
        assert per_sample[i].item() == count_macs(model, x[i : i + 1]), f"{name}: sample {i}"


def test_drnn_halting_gate_batch_norm_sees_looping_samples_only():
    """The halting gate's BN statistics in training come from the samples still looping."""
    from baselines.drnn import HaltGate

    gate = HaltGate(8, 4).train()
    gate.bn.momentum = 1.0
    x = torch.randn(6, 8, 4, 4)
    x[3:] += 50.0  # halted samples, far off
    active = torch.tensor([True, True, True, False, False, False])
    gate(x, active)
    z = gate.fc1(x.mean((2, 3)))
    torch.testing.assert_close(gate.bn.running_mean, z[:3].mean(0).detach())


def test_filter_norm_is_finite_in_float16():
    """DDF's eps (1e-10) underflows in fp16; the norm runs in float32, so a constant filter stays finite."""
    from baselines.ddfn_sw import _filter_norm

    f = torch.ones(2, 4, 9, dtype=torch.float16)
    out = _filter_norm(f)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    g = torch.randn(2, 4, 9)
    torch.testing.assert_close(_filter_norm(g.half()).float(), _filter_norm(g), atol=2e-3, rtol=2e-3)
