"""The PDE Global layer (Kag & Saligrama, "Condensing CNNs with Partial Differential Equations",
CVPR 2022): ResNet-Global and its ResNet-32 baseline, for CIFAR.

The Global layer replaces repeated residual blocks by a few explicit time steps of an
advection-diffusion PDE solved per channel over the feature map H (x = rows, y = columns)::

    dH/dt = Dx d2H/dx2 + Dy d2H/dy2 + d(uH)/dx + d(vH)/dy + f

with the layer input as source f and as initial state (H^-1 = H^0 = f). The coefficient fields
u, v, Dx, Dy are computed once from H^0, each by a depthwise 3x3 conv (no bias), a BatchNorm and a
ReLU, and held fixed over the K steps. The scheme is leapfrog in time with the DuFort-Frankel
substitution for diffusion and central differences in space, on a periodic grid (``torch.roll``);
with Ax = u dt/dx, Ay = v dt/dy, Bx = Dx dt/dx^2, By = Dy dt/dy^2 and
2E' = dt (u[i+1] - u[i-1]) / dx + dt (v[j+1] - v[j-1]) / dy, one step is::

    H^{k+1} = [ (1 - 2Bx - 2By) H^{k-1} + 2E' H^k
                + (2Bx + Ax) H^k[i+1] + (2Bx - Ax) H^k[i-1]
                + (2By + Ay) H^k[j+1] + (2By - Ay) H^k[j-1] + 2 dt f ] / (1 + 2Bx + 2By)

followed by ReLU(BN(H^K)). A Global layer of C channels has 46 C parameters. These choices follow
the official code (github.com/anilkagak2/PDE_GlobalLayer, ``GlobalFeatureBlock_Diffusion`` with
``--non_linear``), not the poster's continuous form: the diffusion term is not in conservative form
(no grad D . grad H term), and the four coefficient BatchNorms are built with eps = C (the code
passes the channel count as BatchNorm2d's second positional argument, which is eps), which damps the
learned coefficients. Both are the defaults here; each is a builder kwarg.

ResNet-Global (the poster's CIFAR model): a 3x3 stem, four stages of one torchvision
``BasicBlock`` each (16/32/64/64 channels, stride 1/2/2/2, 1x1 projection shortcuts where the shape
changes), a Global layer after each of the first three stages, global average pooling and a linear
classifier: 161,402 parameters at 10 classes, 14,779,008 conv+fc MACs. ResNet-32 (the official
``resnet_original``): three stages of five BasicBlocks, 16/32/64 channels, projection shortcuts:
466,906 parameters.

Both are built at the poster's widths at every profile: ``max_channels`` (the Puppet-CNN paper's
cap on ImageNet-width models) does not apply to these CIFAR-width models (registry
``fixed_width=True``). The PDE's elementwise arithmetic is invisible to conv+fc MAC counters; the
model counts it and reports it per sample as ``last_stats["elementwise_ops"]`` (the metrics'
``elementwise_ops`` column).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock

from puppet.core.registry import register_model

BOUNDARIES = ("periodic", "zero")
UPDATES = ("reference", "addcmul")  # solve's two orders of the same arithmetic


# ---------------------------------------------------------------------------------------------
# The PDE solver: coefficient fields in, H^K out


def _neighbour(h: torch.Tensor, offset: int, dim: int, periodic: bool) -> torch.Tensor:
    """``h`` at index ``i + offset`` along ``dim``: wrapped around (periodic) or zero beyond the border."""
    if periodic:
        return torch.roll(h, shifts=-offset, dims=dim)
    n, s = h.shape[dim], abs(offset)
    zeros = torch.zeros_like(h.narrow(dim, 0, s))
    if offset > 0:
        return torch.cat([h.narrow(dim, s, n - s), zeros], dim)
    return torch.cat([zeros, h.narrow(dim, 0, n - s)], dim)


# Scalar arithmetic operations per feature-map element (each add, sub, mul, reciprocal counts one;
# shifts are memory moves, not arithmetic). Written from ``solve`` below line by line and checked
# against a dispatch-level count of the operations it runs (tests/test_pde_global.py).
SETUP_OPS = {True: 18, False: 7}  # advection on / off: coefficients, 1/(1 + 2Bx + 2By), source
STEP_OPS = {True: 13, False: 9}  # one time step


def ops_per_element(steps: int, advection: bool) -> int:
    return SETUP_OPS[advection] + steps * STEP_OPS[advection]


def solve(
    f: torch.Tensor,
    u: torch.Tensor | None,
    v: torch.Tensor | None,
    dxx: torch.Tensor,
    dyy: torch.Tensor,
    *,
    steps: int,
    dt: float,
    dx: int = 1,
    dy: int = 1,
    periodic: bool = True,
    update: str = "reference",
) -> torch.Tensor:
    """H^K of the three-level scheme in the module docstring, from H^-1 = H^0 = f.

    f, u, v, dxx (Dx), dyy (Dy): (B, C, H, W); u = v = None drops the advection term. dx and dy are
    integer grid spacings, also the stencil's shift (dx = 2 is a dilated stencil). ``update``: how a
    step's weighted sum is computed, the same arithmetic in another order: ``"reference"`` (one
    multiply and one add per term, 13 kernels a step) or ``"addcmul"`` (a chain of fused multiply-adds
    into one buffer, 7 kernels a step, fewer passes over memory; equal within float rounding).
    """
    if update not in UPDATES:
        raise ValueError(f"resnet_global: update={update!r} is not one of {list(UPDATES)}")
    advection = u is not None
    bx2 = dxx * (2 * dt / dx**2)  # 2 Bx
    by2 = dyy * (2 * dt / dy**2)  # 2 By
    b = bx2 + by2
    inv = torch.reciprocal(b + 1)  # 1 / (1 + 2Bx + 2By)
    c_prev = 1 - b  # (1 - 2Bx - 2By), the weight of H^{k-1}
    source = f * (2 * dt)
    if advection:
        ax = u * (dt / dx)
        ay = v * (dt / dy)
        # 2E' = -2E = 2 dt (du/dx + dv/dy), central differences
        e2 = (_neighbour(u, dx, 2, periodic) - _neighbour(u, -dx, 2, periodic)) * (dt / dx) + (
            _neighbour(v, dy, 3, periodic) - _neighbour(v, -dy, 3, periodic)
        ) * (dt / dy)
        cxp, cxm, cyp, cym = bx2 + ax, bx2 - ax, by2 + ay, by2 - ay
    h_prev, h = f, f
    for _ in range(steps):
        xp, xm = _neighbour(h, dx, 2, periodic), _neighbour(h, -dx, 2, periodic)
        yp, ym = _neighbour(h, dy, 3, periodic), _neighbour(h, -dy, 3, periodic)
        if update == "addcmul":  # source + sum of coefficient * neighbour, accumulated in one buffer
            total = torch.addcmul(source, c_prev, h_prev)
            if advection:
                for coefficient, value in ((e2, h), (cxp, xp), (cxm, xm), (cyp, yp), (cym, ym)):
                    total.addcmul_(coefficient, value)
            else:
                total.addcmul_(bx2, xp + xm).addcmul_(by2, yp + ym)
            h_prev, h = h, total * inv
            continue
        if advection:
            total = c_prev * h_prev + e2 * h + cxp * xp + cxm * xm + cyp * yp + cym * ym + source
        else:
            total = c_prev * h_prev + bx2 * (xp + xm) + by2 * (yp + ym) + source
        h_prev, h = h, total * inv
    return h


# ---------------------------------------------------------------------------------------------
# The layer and the models


def _coefficient_branch(channels: int, bn_eps: float) -> nn.Sequential:
    """Depthwise 3x3 conv (zero padding, no bias) -> BN -> ReLU: a non-negative coefficient field."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        nn.BatchNorm2d(channels, eps=bn_eps),
        nn.ReLU(inplace=True),
    )


class GlobalLayer(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): K steps of the advection-diffusion PDE, then ReLU(BN(.)).

    ``coefficient_bn_eps``: ``"channels"`` (the official code's eps = C) or a number (1e-5 is
    BatchNorm's usual value). ``advection=False`` drops u and v (24 C parameters instead of 46 C).
    """

    def __init__(
        self,
        channels: int,
        *,
        steps: int = 1,
        dt: float = 0.2,
        dx: int = 1,
        dy: int = 1,
        coefficient_bn_eps: float | str = "channels",
        advection: bool = True,
        boundary: str = "periodic",
        update: str = "reference",
    ) -> None:
        super().__init__()
        _check_pde_options(steps, dt, dx, dy, coefficient_bn_eps, boundary, update)
        self.update = update
        eps = float(channels) if coefficient_bn_eps == "channels" else float(coefficient_bn_eps)
        self.steps, self.dt, self.dx, self.dy = steps, dt, dx, dy
        self.periodic = boundary == "periodic"
        self.advection = advection
        if advection:
            self.coef_u = _coefficient_branch(channels, eps)
            self.coef_v = _coefficient_branch(channels, eps)
        self.coef_dx = _coefficient_branch(channels, eps)
        self.coef_dy = _coefficient_branch(channels, eps)
        self.bn_out = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)
        self.ops_per_sample = 0  # elementwise operations of the last forward, per sample

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        u = self.coef_u(f) if self.advection else None
        v = self.coef_v(f) if self.advection else None
        h = solve(
            f,
            u,
            v,
            self.coef_dx(f),
            self.coef_dy(f),
            steps=self.steps,
            dt=self.dt,
            dx=self.dx,
            dy=self.dy,
            periodic=self.periodic,
            update=self.update,
        )
        self.ops_per_sample = ops_per_element(self.steps, self.advection) * f[0].numel()
        return self.act(self.bn_out(h))


def _check_pde_options(steps, dt, dx, dy, bn_eps, boundary, update="reference") -> None:
    if update not in UPDATES:
        raise ValueError(f"resnet_global: update={update!r} is not one of {list(UPDATES)}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"resnet_global: steps={steps!r} must be an integer >= 1")
    if not dt > 0:
        raise ValueError(f"resnet_global: dt={dt!r} must be > 0")
    for name, value in (("dx", dx), ("dy", dy)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(
                f"resnet_global: {name}={value!r} must be an integer >= 1 (it is also the stencil's shift)"
            )
    if not (bn_eps == "channels" or (isinstance(bn_eps, (int, float)) and bn_eps > 0)):
        raise ValueError(f"resnet_global: coefficient_bn_eps={bn_eps!r} must be 'channels' or a number > 0")
    if boundary not in BOUNDARIES:
        raise ValueError(f"resnet_global: boundary={boundary!r} is not one of {list(BOUNDARIES)}")


def _basic_block(c_in: int, c_out: int, stride: int) -> BasicBlock:
    downsample = None
    if stride != 1 or c_in != c_out:  # projection shortcut, as the official code and torchvision
        downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
    return BasicBlock(c_in, c_out, stride=stride, downsample=downsample)


class CifarResNet(nn.Module):
    """3x3 stem -> stages of BasicBlocks (first stage stride 1, then 2), each optionally followed by
    a Global layer -> global average pool -> linear. ``features`` / ``classifier`` as the fixed CNNs."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        widths: tuple[int, ...],
        blocks: int,
        global_stages: int = 0,
        **pde: object,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        c_in = widths[0]
        for i, width in enumerate(widths):
            for b in range(blocks):
                layers.append(_basic_block(c_in, width, 2 if (i > 0 and b == 0) else 1))
                c_in = width
            if i < global_stages:
                layers.append(GlobalLayer(width, **pde))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)  # PyTorch's default init, as the official code
        for m in self.modules():  # the official init: He normal (fan-out) convs, BN weight 1, bias 0
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C_last, H / 2^(stages-1), W / 2^(stages-1))
        return self.classifier(torch.flatten(self.pool(x), 1))  # (B, num_classes)

    def block_depth(self) -> int:
        """Residual blocks plus Global layers: the depth the PDE table reports."""
        return sum(isinstance(m, (BasicBlock, GlobalLayer)) for m in self.modules())


class ResNetGlobal(CifarResNet):
    """A ``CifarResNet`` with Global layers; reports their elementwise cost per sample."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._last_batch = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._last_batch = x.shape[0]
        return super().forward(x)

    @property
    def last_stats(self) -> dict[str, torch.Tensor]:
        ops = sum(m.ops_per_sample for m in self.modules() if isinstance(m, GlobalLayer))
        return {"elementwise_ops": torch.full((self._last_batch,), float(ops))}


# ---------------------------------------------------------------------------------------------
# Parameter formulas: layer-by-layer arithmetic, without building a module


def _conv(c_in: int, c_out: int, k: int, groups: int = 1) -> int:
    return c_in // groups * c_out * k * k


def _block_params(c_in: int, c_out: int, stride: int) -> int:
    total = _conv(c_in, c_out, 3) + 2 * c_out + _conv(c_out, c_out, 3) + 2 * c_out
    if stride != 1 or c_in != c_out:
        total += _conv(c_in, c_out, 1) + 2 * c_out
    return total


def global_layer_params(channels: int, advection: bool = True) -> int:
    """Coefficient branches (depthwise 3x3 + BN each: 11 C) and the output BN (2 C): 46 C with advection."""
    branches = 4 if advection else 2
    return branches * (_conv(channels, channels, 3, groups=channels) + 2 * channels) + 2 * channels


def _cifar_resnet_params(num_classes, in_channels, widths, blocks, global_stages=0, advection=True) -> int:
    total = _conv(in_channels, widths[0], 3) + 2 * widths[0]
    c_in = widths[0]
    for i, width in enumerate(widths):
        for b in range(blocks):
            total += _block_params(c_in, width, 2 if (i > 0 and b == 0) else 1)
            c_in = width
        if i < global_stages:
            total += global_layer_params(width, advection)
    return total + c_in * num_classes + num_classes


# ---------------------------------------------------------------------------------------------
# Registered builders

_GLOBAL_WIDTHS = (16, 32, 64, 64)
_RESNET32_WIDTHS = (16, 32, 64)


def _resnet_global_params(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    widths: tuple[int, ...] = _GLOBAL_WIDTHS,
    blocks: int = 1,
    global_stages: int = 3,
    advection: bool = True,
    **_pde,
) -> int:
    return _cifar_resnet_params(num_classes, in_channels, tuple(widths), blocks, global_stages, advection)


def _check_image_size(name: str, image_size: int, stages: int) -> None:
    minimum = 2 ** (stages - 1)
    if image_size < minimum:
        raise ValueError(f"{name} needs image_size >= {minimum} ({stages - 1} stride-2 stages); got {image_size}")


@register_model(
    "resnet_global",
    family="pde",
    paper_name="ResNet-Global",
    param_formula=_resnet_global_params,
    fixed_width=True,
)
def resnet_global(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    widths: tuple[int, ...] | list[int] = _GLOBAL_WIDTHS,
    blocks: int = 1,
    global_stages: int = 3,
    steps: int = 1,
    dt: float = 0.2,
    dx: int = 1,
    dy: int = 1,
    coefficient_bn_eps: float | str = "channels",
    advection: bool = True,
    boundary: str = "periodic",
    update: str = "reference",
) -> nn.Module:
    """ResNet-Global (Kag & Saligrama 2022): 4 BasicBlocks 16/32/64/64 + 3 PDE Global layers (K=1), 161K params."""
    # max_channels is part of the registry's signature; these CIFAR-width models ignore it (fixed_width).
    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1 or not (isinstance(blocks, int) and blocks >= 1):
        raise ValueError(f"resnet_global: widths={widths!r} and blocks={blocks!r} must be positive")
    if not 0 <= global_stages <= len(widths):
        raise ValueError(f"resnet_global: global_stages={global_stages!r} must be in 0..{len(widths)}")
    _check_image_size("resnet_global", image_size, len(widths))
    pde = dict(
        steps=steps,
        dt=dt,
        dx=dx,
        dy=dy,
        coefficient_bn_eps=coefficient_bn_eps,
        advection=advection,
        boundary=boundary,
        update=update,
    )
    _check_pde_options(steps, dt, dx, dy, coefficient_bn_eps, boundary, update)
    return ResNetGlobal(num_classes, in_channels, widths, blocks, global_stages, **pde)


_RESNET_DEPTHS = (20, 32, 44, 56, 110)  # 6n + 2


def _resnet32_params(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, depth: int = 32
) -> int:
    return _cifar_resnet_params(num_classes, in_channels, _RESNET32_WIDTHS, (depth - 2) // 6)


@register_model(
    "resnet32",
    family="fixed",
    paper_name="ResNet-32",
    param_formula=_resnet32_params,
    fixed_width=True,
)
def resnet32(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, *, depth: int = 32
) -> nn.Module:
    """ResNet-32 for CIFAR (the PDE poster's baseline): 3x5 BasicBlocks 16/32/64, projection shortcuts, 467K params."""
    if depth not in _RESNET_DEPTHS:
        raise ValueError(f"resnet32: depth={depth!r} is not one of {list(_RESNET_DEPTHS)} (6n + 2)")
    _check_image_size("resnet32", image_size, len(_RESNET32_WIDTHS))
    return CifarResNet(num_classes, in_channels, _RESNET32_WIDTHS, (depth - 2) // 6)
