"""Tests over every registered model: a model is tested the moment it is registered."""

from __future__ import annotations

import inspect

import pytest
import torch

from puppet import create_model, list_models
from puppet.core.measure import count_macs, count_macs_flopcounter, stored_param_count
from puppet.core.registry import UnknownModelError, model_info

SMALL = dict(num_classes=10, in_channels=3, image_size=32, max_channels=32)
MODELS = list_models()


def test_registry_has_models():
    assert MODELS, "no model registered"
    for family in ("fixed",):
        assert list_models(family), f"no {family} model registered"


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError) as err:
        create_model("resnet_9000")
    assert "resnet_9000" in str(err.value) and MODELS[0] in str(err.value)


def test_unknown_kwarg_is_an_error():
    with pytest.raises(TypeError):
        create_model(MODELS[0], **SMALL, no_such_option=1)


@pytest.mark.parametrize("name", MODELS)
def test_builder_signature(name):
    params = inspect.signature(model_info(name).builder).parameters
    for arg in ("num_classes", "in_channels", "image_size", "max_channels"):
        assert arg in params, f"{name}: builder lacks {arg}"


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_finite(name):
    torch.manual_seed(0)
    model = create_model(name, **SMALL)
    model.train()
    x = torch.randn(4, 3, 32, 32)
    y = torch.randint(0, 10, (4,))
    if hasattr(model, "compute_loss"):
        loss, logits = model.compute_loss(x, y)
    else:
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
    assert logits.shape == (4, 10)
    assert torch.isfinite(logits).all()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{name}: no gradient reached any parameter"
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_channels_capped(name):
    model = create_model(name, **SMALL)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert m.out_channels <= SMALL["max_channels"] or m.out_channels == SMALL["num_classes"], f"{name}: {m} exceeds max_channels"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("max_channels,num_classes", [(32, 10), (64, 100)])
def test_param_formula(name, max_channels, num_classes):
    info = model_info(name)
    assert info.param_formula is not None, f"{name}: register a param_formula (independent expected count)"
    kw = dict(num_classes=num_classes, in_channels=3, image_size=32, max_channels=max_channels)
    model = create_model(name, **kw)
    assert stored_param_count(model) == info.param_formula(**kw)


def bias_adds(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bias additions of nn.Conv2d / nn.Linear layers in one forward: ptflops counts them, FlopCounterMode does not."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        if module.bias is not None:
            total += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name", MODELS)
def test_macs_cross_check(name):
    """ptflops (aten backend) against torch's FlopCounterMode plus module bias adds.

    The 2% slack covers bias adds of functional convolutions (generated kernels with a
    generated bias), which forward hooks on modules cannot see."""
    torch.manual_seed(0)
    model = create_model(name, **SMALL).eval()
    x = torch.randn(1, 3, 32, 32)
    ptflops_macs = count_macs(model, x)
    independent = count_macs_flopcounter(model, x) + bias_adds(model, x)
    assert ptflops_macs > 0
    assert abs(ptflops_macs - independent) <= 0.02 * independent, f"{name}: ptflops {ptflops_macs} vs FlopCounterMode+bias {independent}"
