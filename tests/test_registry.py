"""Tests over every registered model: a model is tested the moment it is registered."""

from __future__ import annotations

import fnmatch
import inspect

import pytest
import torch

from puppet import create_model, list_models
from puppet.core.measure import count_macs, count_macs_flopcounter, stored_param_count
from puppet.core.protocols import DEFAULT_DEPLOYMENT, STATS, Calibrates, DeployContext, Deploys, Prepares, ReportsStats
from puppet.core.registry import UnknownModelError, model_info
from puppet.core.train import compute_loss

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


@pytest.mark.parametrize("name", MODELS)
def test_unknown_kwarg_is_an_error(name):
    with pytest.raises(TypeError, match="no_such_option"):
        create_model(name, **SMALL, no_such_option=1)


@pytest.mark.parametrize("name", MODELS)
def test_builder_signature(name):
    params = inspect.signature(model_info(name).builder).parameters
    for arg in ("num_classes", "in_channels", "image_size", "max_channels"):
        assert arg in params, f"{name}: builder lacks {arg}"


def varied_images(n: int = 8, seed: int = 0) -> torch.Tensor:
    """``n`` normalised images from flat to noisy (1 to 256 grey levels): their complexity, hence a
    Puppet model's depth after ``prepare``, spreads over the whole range."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.logspace(0, 8, n, base=2).round().long()  # (n,) grey levels per image, 1 .. 256
    x = (
        torch.stack(
            [
                (torch.randint(0, int(k), (3, 32, 32), generator=g) * (255 // max(int(k) - 1, 1))).clamp(0, 255)
                for k in levels
            ]
        ).float()
        / 255.0
    )  # (n, 3, 32, 32) in [0, 1]
    return (x - 0.5) / 0.25


def ready_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A model as the measure job gets it: built, prepared on training images, one optimiser step
    (so BN statistics and weights are not at their initial values), calibrated on validation data."""
    torch.manual_seed(seed)
    model = create_model(name, **SMALL)
    train_x, val_x = varied_images(16, seed=1), varied_images(16, seed=2)
    labels = torch.arange(16) % 10
    if isinstance(model, Prepares):
        model.prepare([train_x[:8], train_x[8:]])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    loss, _ = compute_loss(model, train_x, labels)
    loss.backward()
    opt.step()
    model.eval()
    if isinstance(model, Calibrates):
        model.calibrate([(val_x[:8], labels[:8]), (val_x[8:], labels[8:])])
    return model


@pytest.mark.parametrize("name", MODELS)
def test_every_trainable_parameter_gets_a_gradient(name):
    """The harness' objective (``compute_loss``) reaches every trainable parameter, with a finite
    gradient; a parameter that only some inputs reach is declared in the registry (``no_grad_ok``)."""
    torch.manual_seed(0)
    model = create_model(name, **SMALL).train()
    x, y = varied_images(8), torch.arange(8) % 10
    if isinstance(model, Prepares):
        model.prepare([x])
    loss, logits = compute_loss(model, x, y)
    assert logits.shape == (8, 10) and torch.isfinite(logits).all() and torch.isfinite(loss)
    loss.backward()
    exempt = model_info(name).no_grad_ok
    for n, p in model.named_parameters():
        if p.requires_grad and not any(fnmatch.fnmatchcase(n, pattern) for pattern in exempt):
            assert p.grad is not None, f"{name}: no gradient for {n}"
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {n}"


# Kernels generated once for a batch are shared by the samples that use them: the generation
# cost per sample depends on the batch by definition (puppet.core.protocols.STATS).
BATCH_DEPENDENT_STATS = ("generation_macs",)


def _deployed(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every deployment of a (prepared, calibrated) model: its own forward and, for a model that
    names more ways to run it, each built as the measure job builds it."""
    out = {DEFAULT_DEPLOYMENT: model}
    if isinstance(model, Deploys):
        for name in model.deployments(DeployContext()):
            if name != DEFAULT_DEPLOYMENT:
                out[name] = model.deploy(name, DeployContext())
    return out


@pytest.mark.parametrize("name", MODELS)
def test_batched_evaluation_equals_batch_one(name):
    """Eval-mode logits and per-sample statistics do not depend on what else is in the batch, in
    every inference mode (adaptive models gather and scatter the samples of each path)."""
    model = ready_model(name)
    x = varied_images(8, seed=3)
    spread = model_info(name).spread_paths
    if spread is not None:
        spread(model, x)
    for mode, deployed in _deployed(model).items():
        with torch.no_grad():
            batched = deployed(x)
            stats = dict(deployed.last_stats) if isinstance(deployed, ReportsStats) else {}
            singles, single_stats = [], []
            for i in range(len(x)):
                singles.append(deployed(x[i : i + 1]))
                single_stats.append(dict(deployed.last_stats) if isinstance(deployed, ReportsStats) else {})
        torch.testing.assert_close(batched, torch.cat(singles), atol=1e-5, rtol=1e-4, msg=f"{name} ({mode})")
        if spread is not None or name == "puppet_cnn":  # the batch must really take several paths
            assert stats["depth"].unique().numel() >= 2, f"{name} ({mode}): one depth for the whole batch"
        for key, value in stats.items():
            if isinstance(value, torch.Tensor) and key not in BATCH_DEPENDENT_STATS:
                joined = torch.cat([s[key].reshape(1, *value.shape[1:]) for s in single_stats])
                torch.testing.assert_close(value.double(), joined.double(), msg=f"{name} ({mode}): {key}")


@pytest.mark.parametrize("name", MODELS)
def test_save_and_reload_after_prepare_and_calibrate_gives_identical_logits(name, tmp_path):
    """What the measure job relies on: a model rebuilt from its builder and ``model.pt`` (no
    prepare, no calibrate) computes exactly what the trained one did."""
    trained = ready_model(name, seed=0)
    torch.save({"model": trained.state_dict()}, tmp_path / "model.pt")
    torch.manual_seed(1)  # another init: everything that matters must come from the file
    rebuilt = create_model(name, **SMALL)
    rebuilt.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=False)["model"])
    rebuilt.eval()
    x = varied_images(8, seed=4)
    for (mode, a), b in zip(_deployed(trained.eval()).items(), _deployed(rebuilt).values()):
        with torch.no_grad():
            assert torch.equal(a(x), b(x)), f"{name} ({mode}): reloaded model differs"


@pytest.mark.parametrize("name", MODELS)
def test_last_stats_follow_the_contract(name):
    """``last_stats`` names only statistics of ``puppet.core.protocols.STATS``; each is a tensor
    whose first dimension is the batch (or, for generation MACs, one float for the batch)."""
    model = ready_model(name)
    if not isinstance(model, ReportsStats):
        return
    for batch in (5, 1):
        with torch.no_grad():
            model(varied_images(batch, seed=5))
        stats = model.last_stats
        assert stats, f"{name}: last_stats is empty after a forward pass"
        for key, value in stats.items():
            assert key in STATS, f"{name}: last_stats[{key!r}] is not in puppet.core.protocols.STATS"
            if isinstance(value, torch.Tensor):
                assert value.ndim >= 1 and value.shape[0] == batch, (
                    f"{name}: last_stats[{key!r}] has shape {value.shape}"
                )
            else:
                assert key == "generation_macs" and isinstance(value, float), f"{name}: last_stats[{key!r}] = {value!r}"


@pytest.mark.parametrize("name", MODELS)
def test_channels_capped(name):
    if model_info(name).fixed_width:  # built at its paper's widths: max_channels changes nothing
        sizes = {stored_param_count(create_model(name, **{**SMALL, "max_channels": c})) for c in (8, 32, 512)}
        assert len(sizes) == 1, f"{name} is registered fixed_width but its size depends on max_channels"
        return
    if model_info(name).uncapped:  # wider than the cap by design: its widths still scale with max_channels
        widest = {
            c: max(
                m.out_channels
                for m in create_model(name, **{**SMALL, "max_channels": c}).modules()
                if isinstance(m, torch.nn.Conv2d)
            )
            for c in (32, 512)
        }
        assert widest[512] > 512, f"{name} is registered uncapped but no conv exceeds 512 channels"
        assert abs(widest[32] - widest[512] * 32 / 512) <= 1, f"{name}: widths do not scale with max_channels"
        return
    model = create_model(name, **SMALL)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert m.out_channels <= SMALL["max_channels"] or m.out_channels == SMALL["num_classes"], (
                f"{name}: {m} exceeds max_channels"
            )


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

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
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
    assert abs(ptflops_macs - independent) <= 0.02 * independent, (
        f"{name}: ptflops {ptflops_macs} vs FlopCounterMode+bias {independent}"
    )


@pytest.mark.parametrize("name", MODELS)
def test_convolutions_start_from_torchvision_init(name):
    """Every conv of every model starts He-normal with fan-out (torchvision's ResNet init,
    ``puppet.layers.torchvision_init``), except the modules the registry exempts with a reason:
    the sample std and mean of each weight against sqrt(2 / fan_out), within 5 standard errors."""
    import math

    info = model_info(name)
    torch.manual_seed(0)
    model = create_model(name, **SMALL)
    checked = 0
    for module_name, m in model.named_modules():
        if not isinstance(m, torch.nn.Conv2d) or any(fnmatch.fnmatch(module_name, p) for p in info.init_exempt):
            continue
        w = m.weight.detach().double().flatten()
        expected = math.sqrt(2.0 / (m.weight.shape[0] * m.weight[0, 0].numel()))
        n = w.numel()
        assert abs(w.std().item() / expected - 1) < 5 / math.sqrt(2 * n) + 0.01, f"{name}: {module_name} std"
        assert abs(w.mean().item()) < 5 * expected / math.sqrt(n), f"{name}: {module_name} mean"
        checked += 1
    assert checked or info.init_exempt, f"{name}: no conv checked and no exemption declared"
