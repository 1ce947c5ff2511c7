"""Puppet-CNN: complexity, kernel generation, batching, parameter counts, Table 5, precomputed inference, learning."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from puppet import create_model, list_models
from puppet.core.measure import count_macs_flopcounter, stored_param_count, total_param_count
from puppet.core.protocols import DEFAULT_DEPLOYMENT, DeployContext, Deploys, HasDeploymentMetrics
from puppet.models.complexity import histogram_entropy, image_complexity
from puppet.models.deploy import PrecomputedPuppet
from puppet.models.plan import plan_convs
from puppet.models.puppet import PuppetCNN
from puppet.models.puppeteer import puppeteer_param_count, step_macs

C = 16  # test width: max_channels (the puppeteer state is C x C x 3 x 3)


def _images(b: int = 6, seed: int = 0) -> torch.Tensor:
    """Inputs from smooth (low entropy) to noisy (high entropy), normalised-looking floats."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(b, 3, 32, 32)
    noise = torch.randn(b, 3, 32, 32, generator=g)
    mix = torch.linspace(0, 1, b).view(b, 1, 1, 1)
    return (1 - mix) * ramp + mix * noise  # (B, 3, 32, 32)


def _model(name: str = "puppet_cnn", **kw) -> PuppetCNN:
    torch.manual_seed(0)
    model = create_model(name, max_channels=C, **kw)
    model.prepare([_images(8, seed=1)])  # h spans [0, 1] over these inputs
    return model


# --------------------------------------------------------------------------- complexity


def _numpy_complexity(img: np.ndarray, bins: int = 256) -> float:
    """Per-image reference: grey -> min-max -> histogram entropy; |FFT| -> log1p -> min-max -> entropy."""

    def unit(v):
        span = v.max() - v.min()
        return (v - v.min()) / span if span > 0 else np.zeros_like(v)

    def entropy(v):
        counts, _ = np.histogram(v, bins=bins, range=(0.0, 1.0))
        p = counts[counts > 0] / v.size
        return float(-(p * np.log2(p)).sum())

    grey = unit(img.astype(np.float64).mean(axis=0))
    freq = unit(np.log1p(np.abs(np.fft.fft2(grey))))
    return 0.5 * entropy(grey) + 0.5 * entropy(freq)


def test_entropy_of_known_histograms():
    # 4 equally frequent values: 2 bits; a 3:1 split: -(3/4 log2 3/4 + 1/4 log2 1/4); one value: 0
    v = torch.tensor([[0.1, 0.3, 0.6, 0.9] * 4, [0.2] * 12 + [0.8] * 4, [0.5] * 16])
    expected = [2.0, -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)), 0.0]
    torch.testing.assert_close(histogram_entropy(v), torch.tensor(expected))
    counts, _ = np.histogram(v[1].numpy(), bins=256, range=(0, 1))
    p = counts[counts > 0] / 16
    assert histogram_entropy(v[1:2]).item() == pytest.approx(-(p * np.log2(p)).sum(), abs=1e-6)


def test_complexity_is_batch_vectorised_and_matches_reference():
    x = _images(6)
    batched = image_complexity(x)
    per_image = torch.cat([image_complexity(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, per_image)
    reference = torch.tensor([_numpy_complexity(img) for img in x.numpy()], dtype=torch.float32)
    torch.testing.assert_close(batched, reference, atol=2e-2, rtol=0)  # float32 vs float64 bin edges
    assert batched[-1] > batched[0]  # noise is more complex than a ramp
    assert not batched.requires_grad


def test_complexity_invariant_to_global_normalisation_and_zero_for_constant():
    x = _images(4)
    torch.testing.assert_close(image_complexity(3.0 * x - 0.7), image_complexity(x), atol=1e-4, rtol=0)
    assert image_complexity(torch.full((2, 3, 8, 8), 0.3)).abs().max() == 0


# --------------------------------------------------------------------------- kernels, depth, batching


def test_more_complex_input_gets_other_kernels_and_at_least_as_many_layers():
    model = _model().eval()
    x = _images(6)
    simple, complex_ = x[:1], x[-1:]
    with torch.no_grad():
        model(simple)
        h_s, d_s = model.last_stats["complexity"].item(), model.last_stats["depth"].item()
        model(complex_)
        h_c, d_c = model.last_stats["complexity"].item(), model.last_stats["depth"].item()
        assert h_c > h_s and d_c >= d_s and d_c > d_s  # prepare() put them at h = 0 and h = 1
        levels = torch.tensor([0.0, 1.0])
        dl, fill = model.step_and_fill(levels)
        kernels = model.generate_kernels(fill, dl, model.depth_per_stage(dl))
    k_simple, k_complex = kernels[min(kernels)][0][0], kernels[max(kernels)][0][0]  # first conv
    assert k_simple.shape == k_complex.shape and not torch.allclose(k_simple, k_complex)


@pytest.mark.parametrize("conv_impl", ["level", "grouped", "loop"])
def test_batched_forward_equals_per_sample_loop(conv_impl):
    # continuous complexity: every sample has its own kernels and several depths occur
    model = _model(complexity_levels=0, conv_impl=conv_impl).eval()
    x = _images(6, seed=2)
    with torch.no_grad():
        batched = model(x)
        depths = model.last_stats["depth"]
        singles = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    assert depths.unique().numel() >= 2
    torch.testing.assert_close(batched, singles, atol=1e-4, rtol=1e-4)


def _loss_and_grads(model: PuppetCNN, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("levels", [0, 4])  # every sample its own trajectory / shared levels
def test_conv_impls_agree_in_training_and_inference(levels):
    """The dense per-level convs, the grouped conv and the per-sample loop: same logits, loss
    and gradients, with samples in shuffled order (the level sort must be undone exactly).
    In float64, so that summation order (BN over small groups amplifies it) cannot hide a bug."""
    x = _images(8, seed=4)[torch.tensor([5, 0, 7, 2, 1, 6, 3, 4])].double()
    y = torch.arange(8) % 10
    models = {impl: _model(complexity_levels=levels, conv_impl=impl).double() for impl in ("level", "grouped", "loop")}
    with torch.no_grad():
        outs = {impl: m.eval()(x) for impl, m in models.items()}
    assert models["level"].last_stats["depth"].unique().numel() >= 2
    torch.testing.assert_close(outs["level"], outs["loop"])
    torch.testing.assert_close(outs["grouped"], outs["loop"])
    results = {impl: _loss_and_grads(m.train(), x, y) for impl, m in models.items()}
    for impl in ("level", "grouped"):
        torch.testing.assert_close(results[impl][0], results["loop"][0])
        assert results[impl][1].keys() == results["loop"][1].keys()
        for name, grad in results[impl][1].items():
            torch.testing.assert_close(grad, results["loop"][1][name], msg=f"{impl}: {name}")


def test_checkpointed_generation_gives_the_same_loss_and_gradients():
    x, y = _images(6, seed=6), torch.arange(6)
    plain = _model(checkpoint_generation=False).train()
    recomputed = _model(checkpoint_generation=True).train()
    loss_plain, grads_plain = _loss_and_grads(plain, x, y)
    loss_ckpt, grads_ckpt = _loss_and_grads(recomputed, x, y)
    assert recomputed.last_stats["depth"].unique().numel() >= 2
    torch.testing.assert_close(loss_ckpt, loss_plain)
    assert grads_ckpt.keys() == grads_plain.keys()
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, msg=name)


def test_checkpointing_keeps_less_for_backward():
    """The Euler chain's saved tensors shrink when each step is recomputed in backward."""

    def saved_bytes(model: PuppetCNN) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            dl, fill = model.step_and_fill(torch.linspace(0, 1, 4))
            model.generate_kernels(fill, dl, model.depth_per_stage(dl))
        return total

    plain = saved_bytes(_model(checkpoint_generation=False).train())
    recomputed = saved_bytes(_model(checkpoint_generation=True).train())
    assert recomputed < plain / 3, (recomputed, plain)


def test_batchnorm_statistics_are_kept_per_depth():
    """Evaluation normalises a depth-d sample with statistics gathered from depth-d samples only.

    With momentum 1 a training pass leaves, in each slot's row for depth d, exactly the batch
    statistics of the depth-d group's input to that slot; rows of depths absent from the batch
    are untouched; in eval mode each group is normalised with its own depth's row."""
    from puppet.models.puppet import DepthBatchNorm2d

    model = _model()
    seen: list[tuple[str, int, torch.Tensor, torch.Tensor]] = []  # (slot, depth, input, output)

    def hook(slot):
        return lambda module, args, out: seen.append((slot, args[1], args[0].detach().clone(), out.detach()))

    for slot, bn in model.bns.items():
        assert isinstance(bn, DepthBatchNorm2d)
        bn.momentum = 1.0
        bn.register_forward_hook(hook(slot))
    x = _images(8, seed=7)
    with torch.no_grad():
        model.train()(x)
        depths_in_batch = {d for _, d, _, _ in seen}
        assert len(depths_in_batch) >= 2
        for slot, depth, inp, _ in seen:
            bn = model.bns[slot]
            row = bn.depths.index(depth)
            torch.testing.assert_close(bn.running_mean[row], inp.mean(dim=(0, 2, 3)), msg=f"{slot} depth {depth}")
            torch.testing.assert_close(
                bn.running_var[row], inp.var(dim=(0, 2, 3), unbiased=True), msg=f"{slot} depth {depth}"
            )
        bn = model.bns["s0_0"]  # used by every depth
        for row, depth in enumerate(bn.depths):
            if depth not in depths_in_batch:
                assert (bn.running_mean[row] == 0).all() and (bn.running_var[row] == 1).all()
        seen.clear()
        model.eval()(x)
        for slot, depth, inp, out in seen:
            bn = model.bns[slot]
            row = bn.depths.index(depth)
            expected = (inp - bn.running_mean[row].view(1, -1, 1, 1)) / torch.sqrt(
                bn.running_var[row].view(1, -1, 1, 1) + bn.eps
            )
            expected = expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
            torch.testing.assert_close(out, expected, msg=f"{slot} depth {depth}")


def test_checkpoint_with_one_statistic_per_slot_still_loads():
    model = _model()
    old = {
        k: (
            v[0]
            if k.startswith("bns.") and k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")
            else v
        )
        for k, v in model.state_dict().items()
    }
    old["bns.s0_0.running_mean"] = torch.full_like(old["bns.s0_0.running_mean"], 0.25)
    fresh = create_model("puppet_cnn", max_channels=C)
    fresh.load_state_dict(old)
    assert (fresh.bns["s0_0"].running_mean == 0.25).all()  # every depth starts from the old statistic


def test_gradients_reach_only_puppeteer_bns_and_head():
    model = _model().train()
    loss = F.cross_entropy(model(_images(4)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.puppeteer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.template.grad is None and not model.template.requires_grad
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.split(".")[0] in ("puppeteer", "bns", "head") for n in trainable)
    # no puppet conv owns a weight: the only Conv2d modules are the puppeteer's own
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(n.startswith("puppeteer.") for n in convs)


@pytest.mark.parametrize(
    "name", ["puppet_cnn", "puppet_cnn_param", "puppet_cnn_static", "puppet_resnet", "puppet_vgg_static"]
)
def test_stored_and_total_param_counts(name):
    model = create_model(name, max_channels=C, num_classes=7)
    bn = sum(p.numel() for p in model.bns.parameters())
    head = model.head.in_features * 7 + 7
    assert puppeteer_param_count(C) == C * C + 15 * C == sum(p.numel() for p in model.puppeteer.parameters())
    assert stored_param_count(model) == C * C + 15 * C + bn + head
    assert total_param_count(model) == stored_param_count(model) + 9 * C * C  # + the fixed template
    assert bn == sum(
        2 * c.c_out
        for c in plan_convs(model.plan_for_depth(model.cfg.max_depth if model.adapt_depth else model.cfg.fixed_depth))
    )


def test_variants_adapt_what_they_claim():
    x = _images(6)
    with torch.no_grad():
        static = _model("puppet_cnn_static").eval()
        static(x)
        assert static.last_stats["depth"].unique().numel() == 1 and static.last_stats["step"].unique().numel() == 1
        assert static.last_stats["generation_macs"].sum() == pytest.approx(
            16 * step_macs(C)
        )  # one trajectory per batch
        param = _model("puppet_cnn_param").eval()
        param(x)
        assert param.last_stats["depth"].unique().tolist() == [16] and param.last_stats["step"].unique().numel() > 1
        for name in ("puppet_alexnet", "puppet_vgg", "puppet_resnet"):
            fixed = _model(name).eval()
            fixed(x)
            assert fixed.last_stats["depth"].unique().numel() == 1
    assert {"puppet_cnn", "puppet_cnn_param", "puppet_cnn_static", "puppet_alexnet_static"} <= set(
        list_models("puppet")
    )


# --------------------------------------------------------------------------- MACs, Table 5, cache


class _Generation(nn.Module):
    def __init__(self, model: PuppetCNN, levels: torch.Tensor):
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x):
        dl, fill = self.model.step_and_fill(self.levels)
        self.model.generate_kernels(fill, dl, self.model.depth_per_stage(dl))
        return x


def test_generation_macs_match_flopcounter():
    model = _model().eval()
    levels = torch.tensor([0.0, 0.5, 1.0])
    dl, _ = model.step_and_fill(levels)
    steps = [len(plan_convs(model.plan_for_depth(int(d)))) for d in model.depth_per_stage(dl)]
    counted = count_macs_flopcounter(_Generation(model, levels), torch.zeros(1))
    assert counted == sum(steps) * step_macs(C)
    with torch.no_grad():
        x = _images(6)[-1:]
        model(x)
        reported = model.last_stats["generation_macs"].item()
    alone = count_macs_flopcounter(_Generation(model, model.last_stats["complexity_normalised"]), torch.zeros(1))
    assert reported == alone == model.last_stats["depth"].item() * step_macs(C)
    assert step_macs(512) == pytest.approx(1.23e9, rel=0.01)  # spec §11


def test_table5_matches_paper(model_descriptions):
    from puppet.report.table5 import table5

    frame = table5(model_descriptions)
    assert len(frame) == 7 and list(frame.c_max) == [64, 128, 256, 512, 1024, 2048, 4096]
    assert (frame.total_params_m == frame.paper_total_params_m).all()
    assert (frame.param_size_mb == frame.paper_param_size_mb).all()
    c = frame.c_max
    assert (frame.param_count == c * c + 15 * c).all() and (frame.total_params == 10 * c * c + 15 * c).all()


PUPPETS = [name for name in list_models() if name.startswith("puppet_")]


def _precomputed(model: PuppetCNN) -> PrecomputedPuppet:
    return model.deploy("precomputed", DeployContext())


@pytest.mark.parametrize("name", PUPPETS)
def test_precomputed_inference_equals_on_the_fly(name):
    x = _images(8, seed=5)
    model = _model(name).eval()
    with torch.no_grad():
        expected = model(x)
        depth = model.last_stats["depth"]
        deployed = _precomputed(model)
        assert not deployed.training
        batched = deployed(x)
        assert (deployed.last_stats["generation_macs"] == 0).all()  # nothing generated per image
        assert torch.equal(deployed.last_stats["depth"], depth)  # the same realised plan
        single = torch.cat([deployed(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(single, expected, rtol=1e-4, atol=1e-5)
    assert deployed.stored_param_count() == model.stored_param_count()  # kernels are generated, not stored
    assert deployed.total_param_count() == model.total_param_count()


def test_deployments_are_named_and_unknown_names_refused():
    model = _model()
    assert isinstance(model, Deploys)
    assert set(model.deployments(DeployContext())) == {DEFAULT_DEPLOYMENT, "precomputed"}
    with pytest.raises(ValueError, match="precomputed"):  # the message lists the valid names
        model.deploy("cached", DeployContext())


def test_precomputed_deployment_is_a_snapshot():
    """The deployment copies what it uses: an optimizer step, load_state_dict, a new complexity
    range (prepare), new BN statistics or a dtype move on the model leave it as it was; deploying
    again follows the model."""
    x = _images(6, seed=5)
    model = _model().eval()
    with torch.no_grad():
        first = _precomputed(model)
        before = first(x)
    last = before

    def check(changes_logits: bool = True):
        nonlocal last
        with torch.no_grad():
            assert torch.equal(first(x), before)  # the old deployment: unchanged
            xm = x.to(model.template.dtype)
            expected = model(xm)
            assert changes_logits != torch.allclose(expected.float(), last, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(_precomputed(model)(xm), expected, rtol=1e-4, atol=1e-5)  # a new one follows
            last = expected.float()

    opt = torch.optim.SGD(model.puppeteer.parameters(), lr=0.5)  # an optimizer step changes G in place
    model.puppeteer.pw.weight.grad = torch.randn(
        model.puppeteer.pw.weight.shape, generator=torch.Generator().manual_seed(0)
    )
    opt.step()
    check()
    torch.manual_seed(1)
    other = create_model("puppet_cnn", max_channels=C)  # load_state_dict copies in place
    other.prepare([_images(8, seed=1)])
    model.load_state_dict(other.state_dict())
    check()
    model.prepare([_images(8, seed=3) * 0.5])  # another complexity range: other levels
    check()
    model.bns["s0_0"].running_var.mul_(4)  # the BN rows are copied too
    check()
    model.double()
    check(changes_logits=False)
    assert first.kernels[0].s0_0.dtype == torch.float32  # the deployment kept its own tensors
    first.double()  # .to() on the deployment moves its own tensors
    assert all(t.dtype == torch.float64 for t in first.buffers() if t.is_floating_point())
    with torch.no_grad():
        torch.testing.assert_close(first(x.double()), before.double(), rtol=1e-5, atol=1e-6)


def test_fixed_cnn_is_the_realised_plan_with_stored_kernels():
    deployed = _precomputed(_model())
    x = _images(8, seed=5)
    with torch.no_grad():
        levels = deployed.level_index(x)
        for i in (0, 3, 7):
            fixed = deployed.fixed_cnn(int(levels[i]))
            assert not any(isinstance(m, (PuppetCNN, PrecomputedPuppet)) for m in fixed.modules())
            convs = [m for m in fixed.modules() if isinstance(m, nn.Conv2d)]
            expected = deployed(x[i : i + 1])
            assert len(convs) == int(deployed.last_stats["depth"][0])  # one stored conv per generated conv
            assert torch.equal(fixed(x[i : i + 1]), expected)  # the same arithmetic, layer for layer


def test_precomputed_kernel_memory_matches_the_plans():
    model = _model().eval()
    expected = 0
    for level in range(model.num_levels):
        h = torch.tensor([level / (model.num_levels - 1)])
        depth = int(model.depth_per_stage(model.step_and_fill(h)[0]))
        expected += sum(c.c_out * c.c_in * c.kernel**2 for c in plan_convs(model.plan_for_depth(depth))) * 4
    deployed = _precomputed(model)
    assert isinstance(deployed, HasDeploymentMetrics)
    assert deployed.deployment_metrics() == {"kernels_mb": expected / 1e6}


def test_precomputed_needs_quantised_complexity_and_training_generates():
    continuous = _model(complexity_levels=0)
    assert set(continuous.deployments(DeployContext())) == {DEFAULT_DEPLOYMENT}
    with pytest.raises(ValueError, match="complexity_levels"):
        continuous.deploy("precomputed", DeployContext())
    trained = _model().train()
    _precomputed(trained)
    assert trained.training  # deploying leaves the model's mode alone
    trained(_images(4)).sum().backward()  # training generates on the fly: G gets a gradient
    assert trained.puppeteer.pw.weight.grad is not None and trained.puppeteer.pw.weight.grad.abs().sum() > 0


def test_one_interpreter_skips_pools_that_do_not_fit():
    """run_plan skips a max-pool whose window exceeds the map (VGG's fourth pool on 12x12 inputs
    meets a 1x1 map; max_pool2d would raise), in the training forward, the deployment and the
    fixed CNN alike."""
    model = create_model("puppet_vgg", max_channels=C, image_size=12)
    model.prepare([_images(8, seed=1)[..., :12, :12]])
    x = _images(4, seed=5)[..., :12, :12]
    with torch.no_grad():
        expected = model.eval()(x)
        deployed = _precomputed(model)
        torch.testing.assert_close(deployed(x), expected, rtol=1e-4, atol=1e-5)
        level = int(deployed.level_index(x[:1]))
        assert torch.equal(deployed.fixed_cnn(level)(x[:1]), deployed(x[:1]))
    model.train()(x).sum().backward()
    assert expected.shape == (4, 10)


# --------------------------------------------------------------------------- learning


def test_puppet_cnn_learns_synthetic_data():
    from puppet.core.data import Batches, make_splits
    from puppet.core.datasets import load_dataset

    torch.manual_seed(0)
    splits = make_splits(load_dataset("synthetic"), train_size=600, test_size=300)
    train = Batches(splits.x_train, splits.y_train, 50, splits.mean, splits.std, shuffle=True, seed=0)
    test = Batches(splits.x_test, splits.y_test, 150, splits.mean, splits.std)
    # 2-4 layers per stage instead of 2-8 keeps this test within seconds on one shared core
    model = create_model("puppet_cnn", max_channels=32, dl_min=0.25)
    model.prepare(x for x, _ in Batches(splits.x_train, splits.y_train, 300, splits.mean, splits.std))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    start = time.perf_counter()
    for epoch in range(4):
        model.train()
        for x, y in train.epoch(epoch):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        if time.perf_counter() - start > 40:
            break
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test)
    assert correct / test.num_samples > 0.3  # chance: 0.1
