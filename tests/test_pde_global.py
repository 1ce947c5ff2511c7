"""The PDE Global layer and ResNet-Global / ResNet-32 (Kag & Saligrama, CVPR 2022).

The numbers asserted here were obtained by building the official code's models (thop params,
conv+fc MACs) and are quoted by the poster rounded (162K, 15M; 460K/473K, 70M)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from baselines.pde_global import UPDATES, GlobalLayer, global_layer_params, ops_per_element, solve
from puppet import create_model
from puppet.core.datasets import load_npz
from puppet.core.measure import count_macs, count_macs_flopcounter, stored_param_count

# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "name,kwargs,classes,expected",
    [
        ("resnet_global", {}, 10, 161_402),  # poster: 162K (CIFAR-10 table)
        ("resnet_global", {}, 100, 167_252),  # poster: 168K (footprint table, CIFAR-100)
        ("resnet32", {}, 10, 466_906),  # poster: 460K
        ("resnet32", {}, 100, 472_756),  # poster: 473K
        ("resnet32", {"depth": 56}, 100, 861_620),  # poster's ResNet-56: 861K
        ("resnet_global", {"blocks": 2, "widths": [32, 64, 128, 128]}, 100, 1_326_020),  # poster: 1.3M
        ("resnet_global", {"widths": [10, 9, 16, 16]}, 100, 15_923),  # poster's tiny model: 16K
    ],
)
def test_parameter_counts_of_the_official_models(name, kwargs, classes, expected):
    model = create_model(name, num_classes=classes, **kwargs)
    assert stored_param_count(model) == expected


@pytest.mark.parametrize("channels", [16, 32, 64, 5])
def test_global_layer_has_46_c_parameters(channels):
    layer = GlobalLayer(channels)
    assert sum(p.numel() for p in layer.parameters()) == 46 * channels == global_layer_params(channels)
    no_advection = GlobalLayer(channels, advection=False)
    assert sum(p.numel() for p in no_advection.parameters()) == 24 * channels


def test_coefficient_batchnorms_use_eps_equal_to_channels_as_the_official_code():
    layer = GlobalLayer(32)
    coefficient_bns = [m for name, m in layer.named_modules() if name.startswith("coef_") and name.endswith(".1")]
    assert len(coefficient_bns) == 4 and all(bn.eps == 32.0 for bn in coefficient_bns)
    assert layer.bn_out.eps == 1e-5
    assert all(m.eps == 1e-5 for n, m in GlobalLayer(32, coefficient_bn_eps=1e-5).named_modules() if n.endswith(".1"))


def test_conv_fc_macs_of_resnet_global():
    model = create_model("resnet_global", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    assert count_macs_flopcounter(model, x) == 14_779_008  # conv + fc, no bias: the spec's count
    assert count_macs(model, x) == 14_779_008 + 10  # ptflops adds the classifier's 10 bias adds


def test_max_channels_does_not_scale_the_cifar_width_models():
    for name in ("resnet_global", "resnet32"):
        sizes = {stored_param_count(create_model(name, max_channels=c)) for c in (16, 32, 512)}
        assert len(sizes) == 1, name


# --------------------------------------------------------------------------- the update


def scalar_reference(f, u, v, dxx, dyy, steps, dt, dx, dy, periodic):
    """The three-level scheme written element by element from the formula (float64), with the
    neighbours taken by index arithmetic: modulo for the periodic wrap, zero beyond the border."""
    b_, c_, h_, w_ = f.shape

    def at(t, b, c, i, j):
        if periodic:
            return float(t[b, c, i % h_, j % w_])
        return float(t[b, c, i, j]) if (0 <= i < h_ and 0 <= j < w_) else 0.0

    prev, cur = f.clone(), f.clone()
    for _ in range(steps):
        new = torch.empty_like(f)
        for b, c, i, j in itertools.product(range(b_), range(c_), range(h_), range(w_)):
            ax = float(u[b, c, i, j]) * dt / dx if u is not None else 0.0
            ay = float(v[b, c, i, j]) * dt / dy if v is not None else 0.0
            bx = float(dxx[b, c, i, j]) * dt / dx**2
            by = float(dyy[b, c, i, j]) * dt / dy**2
            e = 0.0
            if u is not None:
                e = -dt * ((at(u, b, c, i + dx, j) - at(u, b, c, i - dx, j)) / (2 * dx))
                e += -dt * ((at(v, b, c, i, j + dy) - at(v, b, c, i, j - dy)) / (2 * dy))
            num = (
                (1 - 2 * bx - 2 * by) * float(prev[b, c, i, j])
                - 2 * e * at(cur, b, c, i, j)
                + (2 * bx + ax) * at(cur, b, c, i + dx, j)
                + (2 * bx - ax) * at(cur, b, c, i - dx, j)
                + (2 * by + ay) * at(cur, b, c, i, j + dy)
                + (2 * by - ay) * at(cur, b, c, i, j - dy)
                + 2 * dt * float(f[b, c, i, j])
            )
            new[b, c, i, j] = num / (1 + 2 * bx + 2 * by)
        prev, cur = cur, new
    return cur


@pytest.mark.parametrize(
    "steps,dx,dy,periodic,advection",
    [
        (1, 1, 1, True, True),
        (2, 1, 1, True, True),
        (3, 2, 1, True, True),
        (2, 1, 1, False, True),
        (2, 1, 2, True, False),
    ],
)
def test_update_matches_a_scalar_loop(steps, dx, dy, periodic, advection):
    g = torch.Generator().manual_seed(steps * 10 + dx)
    shape = (2, 2, 4, 5)  # non-square, so rows and columns cannot be swapped unnoticed

    def field(scale=1.0):
        return torch.rand(shape, generator=g, dtype=torch.float64) * scale

    f = torch.randn(shape, generator=g, dtype=torch.float64)
    u, v = (field(2.0), field(2.0)) if advection else (None, None)
    dxx, dyy = field(), field()
    ref = scalar_reference(f, u, v, dxx, dyy, steps, 0.2, dx, dy, periodic)
    for update in UPDATES:  # both orders of the arithmetic are the scheme
        ours = solve(f, u, v, dxx, dyy, steps=steps, dt=0.2, dx=dx, dy=dy, periodic=periodic, update=update)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps,advection", [(1, True), (3, True), (2, False)])
def test_fused_update_in_float32_equals_the_float64_reference(steps, advection):
    """The addcmul update in float32, values and gradients, within 1e-5 of the reference in float64."""
    g = torch.Generator().manual_seed(steps)
    shape = (2, 3, 8, 8)
    f64 = torch.randn(shape, generator=g, dtype=torch.float64)
    fields64 = [torch.rand(shape, generator=g, dtype=torch.float64) for _ in range(4)]

    def run(dtype, update):
        f = f64.detach().to(dtype).requires_grad_(True)  # a leaf of its own in each run
        fields = [x.detach().to(dtype).requires_grad_(True) for x in fields64]
        u, v = (fields[0], fields[1]) if advection else (None, None)
        h = solve(f, u, v, fields[2], fields[3], steps=steps, dt=0.2, update=update)
        h.pow(2).sum().backward()
        grads = [f.grad] + [x.grad if x.grad is not None else torch.zeros_like(x) for x in fields]
        return h.detach(), grads

    ref, ref_grads = run(torch.float64, "reference")
    fused, fused_grads = run(torch.float32, "addcmul")
    torch.testing.assert_close(fused.double(), ref, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(fused_grads, ref_grads):
        torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-5)


def test_an_unknown_update_is_refused():
    with pytest.raises(ValueError, match="update='fast' is not one of"):
        create_model("resnet_global", update="fast")


def test_the_periodic_wrap_is_what_the_border_sees():
    """A single bright pixel in the last row diffuses into the first row (periodic) or not (zero)."""
    f = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    f[0, 0, 3, 1] = 1.0
    d = torch.ones_like(f)
    periodic = solve(f, None, None, d, d, steps=2, dt=0.2, periodic=True)
    zero = solve(f, None, None, d, d, steps=2, dt=0.2, periodic=False)
    assert periodic[0, 0, 0, 1] > 0 and zero[0, 0, 0, 1] == 0


def test_without_diffusion_and_advection_one_step_adds_the_source():
    f = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    zero = torch.zeros_like(f)
    out = solve(f, zero, zero, zero, zero, steps=1, dt=0.2)
    torch.testing.assert_close(out, f + 2 * 0.2 * f)  # H^1 = H^-1 + 2 dt f, with H^-1 = f


@pytest.mark.parametrize("steps", [3, 5, 10])
def test_more_steps_run_stably(steps):
    torch.manual_seed(0)
    model = create_model("resnet_global", steps=steps).eval()
    layer = GlobalLayer(16, steps=steps).eval()
    x = torch.randn(4, 16, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(4, 3, 32, 32))).all()
        h = solve(x, *(torch.relu(torch.randn_like(x)) * 0.5 for _ in range(4)), steps=steps, dt=0.2)
        assert torch.isfinite(layer(x)).all()
    assert h.abs().max() < 10 * (1 + 2 * 0.2 * steps) * x.abs().max()  # no blow-up over the steps


# --------------------------------------------------------------------------- the elementwise cost


ARITHMETIC = {"add", "sub", "mul", "div", "reciprocal", "rsub", "neg"}


class CountArithmetic(TorchDispatchMode):
    """Elements produced by the elementwise arithmetic ops that run (one op per element)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in ARITHMETIC:
            self.ops += out.numel()
        return out


@pytest.mark.parametrize(
    "steps,advection,periodic", [(1, True, True), (3, True, True), (2, False, True), (1, True, False)]
)
def test_counted_ops_match_the_operations_that_run(steps, advection, periodic):
    x = torch.randn(2, 3, 8, 8)
    fields = [torch.rand_like(x) for _ in range(4)]
    u, v = (fields[0], fields[1]) if advection else (None, None)
    with CountArithmetic() as counter:
        solve(x, u, v, fields[2], fields[3], steps=steps, dt=0.2, periodic=periodic)
    assert counter.ops == ops_per_element(steps, advection) * x.numel()


def test_model_reports_its_elementwise_ops_per_sample():
    model = create_model("resnet_global").eval()
    with torch.no_grad():
        model(torch.randn(3, 3, 32, 32))
    feature_elements = 16 * 32 * 32 + 32 * 16 * 16 + 64 * 8 * 8  # the three Global layers' inputs
    assert feature_elements == 28_672
    expected = ops_per_element(1, True) * feature_elements
    assert model.last_stats["elementwise_ops"].tolist() == [expected] * 3


# --------------------------------------------------------------------------- options and learning


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps": 0}, "steps"),
        ({"dt": 0}, "dt"),
        ({"dx": 1.5}, "dx"),
        ({"coefficient_bn_eps": "big"}, "coefficient_bn_eps"),
        ({"boundary": "reflect"}, "boundary"),
        ({"global_stages": 5}, "global_stages"),
    ],
)
def test_bad_options_fail_with_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        create_model("resnet_global", **kwargs)
    assert "\n" not in str(err.value)


def test_resnet_global_learns_on_real_images(cifar10_npz):
    """Fifty SGD steps on 64 real CIFAR-10 images drive the training loss well down."""
    data = load_npz(cifar10_npz, "cifar10", expected_classes=10)
    x = data.x_train[:64].float() / 255.0
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    y = data.y_train[:64]
    torch.manual_seed(0)
    model = create_model("resnet_global").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    losses = []
    for _ in range(50):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
