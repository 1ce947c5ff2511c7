"""Mechanism tests of the adaptive-parameter baselines (DFN, WeightNet, DDFN-SW).

The registry-wide tests (tests/test_registry.py) check shapes, backward, the parameter
formulas and the MAC cross-check; these check what makes each model adaptive.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from baselines._generated_conv import GeneratedConv2d
from baselines.ddfn_sw import _filter_norm
from baselines.weightnet import WeightNetConv2d
from puppet import create_model
from puppet.core.datasets import load_dataset
from puppet.core.measure import param_size_mb, stored_param_count
from puppet.core.registry import model_info
from puppet.layers import per_sample_conv2d_loop

NAMES = ("dfn", "weightnet", "ddfn_sw")
SMALL = dict(num_classes=10, in_channels=3, image_size=32, max_channels=32)

# Table 1 of the Puppet-CNN paper, "Params Size (MB)"; ours at max_channels=512 (float32 bytes / 1e6).
PAPER_MB = {"dfn": 75.89, "weightnet": 45.87, "ddfn_sw": 300.83}
# The size knob of each model, its chosen value and the neighbouring values it was chosen over.
KNOBS = {
    "dfn": ("hidden", 7, (6, 8)),
    "weightnet": (("m", "g"), (2, 2), ((4, 2), (2, 1))),  # M / G = 1 (official); the next sizes are M / G = 2
    "ddfn_sw": ("channel_hidden_ratio", 6.5, (6.25, 6.75)),
}


def _knob_kwargs(name: str, value) -> dict:
    key = KNOBS[name][0]
    return dict(zip(key, value)) if isinstance(key, tuple) else {key: value}


def _record_kernels(model: torch.nn.Module) -> list[GeneratedConv2d]:
    layers = model.generated_layers()
    assert layers, "no generated layer found"
    for layer in layers:
        layer.record_kernels = True
    return layers


@pytest.mark.parametrize("name", NAMES)
def test_generated_kernels_differ_per_sample(name):
    torch.manual_seed(0)
    model = create_model(name, **SMALL).eval()
    layers = _record_kernels(model)
    a, b = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(torch.stack([a, b, a]))  # the third sample repeats the first
    for layer in layers:
        k = layer.last_kernels  # (3, C_out, C_in / groups, k, k)
        assert k.shape[0] == 3
        gap = (k[0] - k[1]).abs().max() / k[0].abs().max()
        assert gap > 1e-3, f"{name}: {type(layer).__name__} generated the same kernel for two different images"
        # a kernel depends on its own sample only, not on the rest of the batch
        torch.testing.assert_close(k[0], k[2])


@pytest.mark.parametrize("name", NAMES)
def test_grouped_application_equals_per_sample_loop(name):
    """The batch-folded grouped conv of every generated layer equals convolving sample by sample."""
    torch.manual_seed(0)
    model = create_model(name, **SMALL).eval()
    layers = _record_kernels(model)
    seen: list[tuple[GeneratedConv2d, torch.Tensor, torch.Tensor]] = []
    hooks = [layer.register_forward_hook(lambda m, inp, out: seen.append((m, inp[0], out))) for layer in layers]
    with torch.no_grad():
        model(torch.randn(3, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert len(seen) == len(layers)
    for layer, x, out in seen:
        kernels = layer.last_kernels  # (B, C_out, C_in / groups, k, k)
        groups = x.shape[1] // kernels.shape[2]
        ref = per_sample_conv2d_loop(x, kernels, stride=layer.stride, padding=kernels.shape[-1] // 2, groups=groups)
        # float32 sums in another order: the error scales with the activations' magnitude
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * max(1.0, out.abs().max().item()))


@pytest.mark.parametrize("name", NAMES)
def test_paper_scale_size_closest_to_table1(name):
    """At max_channels=512 the stored size is the paper's Table 1 size to within 2.5%,
    the knob's value is closer to it than its neighbours, and the formula is exact."""
    info = model_info(name)
    paper = PAPER_MB[name]
    _, chosen, neighbours = KNOBS[name]
    ours = param_size_mb(info.param_formula(max_channels=512))
    for value in neighbours:
        other = param_size_mb(info.param_formula(max_channels=512, **_knob_kwargs(name, value)))
        assert abs(ours - paper) < abs(other - paper), (
            f"{name}: {value} gives {other:.2f} MB, closer to {paper} than {ours:.2f}"
        )
    assert abs(ours - paper) / paper < 0.025, f"{name}: ours {ours:.2f} MB vs paper {paper} MB"
    model = create_model(name, max_channels=512, **_knob_kwargs(name, chosen))
    stored = stored_param_count(model)
    assert stored == info.param_formula(max_channels=512)
    print(f"{name}: {stored} params = {param_size_mb(stored):.2f} MB (paper {paper} MB)")


@pytest.mark.parametrize(
    "name,kwargs", [("dfn", {"hidden": 3}), ("weightnet", {"m": 4, "g": 2}), ("ddfn_sw", {"channel_hidden_ratio": 0.2})]
)
def test_knob_changes_size_as_formula_says(name, kwargs):
    info = model_info(name)
    model = create_model(name, **SMALL, **kwargs)
    assert stored_param_count(model) == info.param_formula(**SMALL, **kwargs) != info.param_formula(**SMALL)
    with pytest.raises(TypeError):
        create_model(name, **SMALL, no_such_option=1)


def _flops_by_op(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("name", NAMES)
def test_generation_macs_match_flopcounter(name):
    """Every generator is a matmul and nothing else is but the classifier, so FlopCounterMode's
    matmul MACs minus the classifier's are the generation MACs the model reports."""
    torch.manual_seed(0)
    model = create_model(name, **SMALL)
    flops = _flops_by_op(model, torch.randn(1, 3, 32, 32))
    matmul_macs = sum(n for op, n in flops.items() if op in ("mm", "addmm", "bmm")) // 2
    classifier = model.classifier.in_features * model.classifier.out_features
    reported = model.last_stats["generation_macs"]
    assert reported.shape == (1,)
    assert matmul_macs - classifier == int(reported[0]) > 0


@pytest.mark.parametrize("name", NAMES)
def test_conv_macs_include_generated_convs(name):
    """FlopCounterMode's conv MACs = static convs + generated convs (kernel size x output pixels),
    i.e. the functional convs with generated kernels are counted, not skipped."""
    torch.manual_seed(0)
    model = create_model(name, **SMALL).eval()
    layers = _record_kernels(model)
    expected = []

    def static_hook(m, inp, out):
        expected.append(m.weight.numel() * out.shape[-2] * out.shape[-1])

    def generated_hook(m, inp, out):
        expected.append(m.last_kernels.numel() * out.shape[-2] * out.shape[-1])

    hooks = [m.register_forward_hook(static_hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks += [layer.register_forward_hook(generated_hook) for layer in layers]
    x = torch.randn(1, 3, 32, 32)
    flops = _flops_by_op(model, x)
    for h in hooks:
        h.remove()
    generated = sum(layer.last_kernels.numel() for layer in layers)
    assert generated > 0
    assert flops["convolution"] // 2 == sum(expected)


def test_weightnet_grouped_fc_equals_official_grouped_conv():
    """Our bmm layout of FC2 is the official grouped 1x1 conv (G*C_out groups, M*C_out -> C_out*C_in*k^2)."""
    torch.manual_seed(0)
    c_in, c_out, r, m, g = 6, 4, 5, 2, 2
    layer = WeightNetConv2d(c_in, c_out, r, m, g)
    x_gap = torch.randn(3, r)
    ours = layer.generate_kernels(x_gap)  # (3, C_out, C_in, 3, 3)
    a = torch.sigmoid(layer.fc1(x_gap))[:, :, None, None]  # (3, M C_out, 1, 1)
    # official conv weight: (out, in/groups, 1, 1) with out = C_out C_in k^2, groups = G C_out
    w = layer.fc2_weight.transpose(1, 2).reshape(c_out * c_in * 9, m // g, 1, 1)
    official = F.conv2d(a, w, groups=g * c_out).view(3, c_out, c_in, 3, 3)
    torch.testing.assert_close(ours, official)
    with pytest.raises(ValueError):
        WeightNetConv2d(c_in, c_out, r, m=3, g=2)


def test_ddf_filters_are_normalised_and_spatial_branch_is_the_averaged_official_one():
    torch.manual_seed(0)
    model = create_model("ddfn_sw", **SMALL).eval()
    layer = model.blocks[0].ddf1
    x = torch.randn(2, layer.c, 8, 8)
    f = _filter_norm(torch.randn(4, 7, 9))
    torch.testing.assert_close(f.mean(-1), torch.zeros(4, 7), atol=1e-6, rtol=0)
    torch.testing.assert_close(f.std(-1), torch.ones(4, 7))
    # official spatial branch: a per-pixel 1x1 conv C -> k^2; ours applies it to the GAP, which is its mean
    per_pixel = F.conv2d(x, layer.spatial_fc.weight[:, :, None, None], layer.spatial_fc.bias)  # (B, k^2, H, W)
    torch.testing.assert_close(layer.spatial_fc(x.mean(dim=(2, 3))), per_pixel.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    # the depthwise kernel factorises: kernel / channel filter is the same spatial filter for every channel
    with torch.no_grad():
        kernels = layer.generate_kernels(x).view(2, layer.c, 9)  # (B, C, k^2)
        z = x.mean(dim=(2, 3))
        cf = _filter_norm(layer.channel_fc2(F.relu(layer.channel_fc1(z))).view(2, layer.c, 9)) * layer.channel_gain
        spatial = kernels / cf  # (B, C, k^2), each row the sample's spatial filter
    torch.testing.assert_close(spatial, spatial[:, :1].expand_as(spatial), rtol=1e-3, atol=1e-4)
    assert (spatial[0, 0] - spatial[1, 0]).abs().max() > 1e-3  # and it differs per sample


@pytest.mark.parametrize("name", NAMES)
def test_trains_on_synthetic(name, one_thread):
    """A few Adam steps at a small width lower the loss on a fixed batch (train-mode BN both times)."""
    torch.manual_seed(0)
    data = load_dataset("synthetic")
    x = data.x_train[:256].float() / 255.0
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)  # (256, 3, 32, 32)
    y = data.y_train[:256]
    model = create_model(name, num_classes=10, in_channels=3, image_size=32, max_channels=16).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        before = F.cross_entropy(model(x[:128]), y[:128]).item()
    for _ in range(3):
        for i in range(0, 256, 32):
            loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        after = F.cross_entropy(model(x[:128]), y[:128]).item()
    # over seeds 0-3 the ratio was 0.17-0.65; 0.8 leaves room for thread-count noise
    assert after < 0.8 * before, f"{name}: loss {before:.3f} -> {after:.3f}"
