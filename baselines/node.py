"""The two Neural ODEs of the model-order-reduction study (Lehtimäki, Paunonen & Linne, "Accelerating
Neural ODEs Using Model Order Reduction", IEEE TNNLS, arXiv:2105.14070).

The method compresses the ODE layer of a *trained* network, and needs its right-hand side in one
form: one affine map, then an elementwise nonlinearity,

    dx/dt = f(A x + b) [+ Z u(t)],   f = tanh,

so that DEIM can evaluate f at m selected entries only (``puppet.compress``). Both models keep
that form; the paper's exact architectures, data and solver are unknown (our reconstruction, named
as such in the docs):

* ``node_conv``: stem (3x3 conv C_in -> C, ReLU; two 4x4 stride-2 convs, ReLU: H -> H/4, 28 -> 7
  for Fashion-MNIST) -> ODE block on the C x H/4 x W/4 state with A = a 3x3 conv C -> C (same
  padding, bias b) -> flatten -> linear head. No normalisation inside the right-hand side (it
  would break the form above).
* ``node_rnn``: an image's rows as a sequence u_1 .. u_L (L = image height, C_in x width features
  each), held piecewise constant: on [i - 1, i] the state follows dx/dt = tanh(A x + b) + Z u_i,
  from x(0) = 0, and a linear head reads x(L). Row-sequential Fashion-MNIST is our stand-in for the
  paper's unknown time-series data.

The ODEs are solved with torchdiffeq's fixed-step ``rk4`` (its 3/8-rule variant, 4 right-hand-side
evaluations per step) over unit intervals; the same solver and step count serve every compressed
model, so speed-ups reflect the cost per evaluation. Widths are kwargs (``channels``, ``hidden``),
not the Puppet-CNN width cap (registry ``fixed_width=True``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torchdiffeq import odeint

from puppet.core.registry import register_model

Recorder = Callable[[torch.Tensor, torch.Tensor], None]


class RHS(nn.Module):
    """dx/dt = post(tanh(pre(x))): the affine map ``pre`` (the full A x + b, or a compressed one),
    the elementwise tanh, and a linear read-out ``post`` (None: identity; POD-DEIM's N).

    ``recorder``, when set, receives (x, tanh(pre(x))) at every evaluation: the snapshots of
    ``puppet.compress``."""

    def __init__(self, pre: nn.Module, post: nn.Module | None = None) -> None:
        super().__init__()
        self.pre = pre
        self.post = post
        self.recorder: Recorder | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.pre(x))
        if self.recorder is not None:
            self.recorder(x, y)
        return y if self.post is None else self.post(y)


def _solve(fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, steps: int) -> torch.Tensor:
    """x(1) of dx/dt = fn(x) from x0: torchdiffeq, fixed-step rk4, ``steps`` equal steps over [0, 1]
    (the grid given explicitly: a step size leaves the step count to float rounding)."""
    t = torch.linspace(0.0, 1.0, steps + 1, device=x0.device)
    return odeint(lambda _t, x: fn(x), x0, t, method="rk4")[-1]


class ODEBlock(nn.Module):
    """(B, *state) -> (B, *state): the state at t = 1 of dx/dt = rhs(x), x(0) = the input."""

    def __init__(self, rhs: RHS, steps: int) -> None:
        super().__init__()
        self.rhs, self.steps = rhs, steps

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        return _solve(self.rhs, x0, self.steps)


class RecurrentODE(nn.Module):
    """(B, L, d_in) -> (B, n): on each unit interval i, dx/dt = rhs(x) + Z u_i, from x(0) = 0.

    ``drive`` is Z (a bias-free linear map d_in -> n), applied to every step's input at once."""

    def __init__(self, rhs: RHS, drive: nn.Linear, steps_per_interval: int) -> None:
        super().__init__()
        self.rhs, self.drive, self.steps = rhs, drive, steps_per_interval

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        drives = self.drive(u)  # (B, L, n): Z u_i for every interval
        x = drives.new_zeros(drives.shape[0], drives.shape[2])
        for i in range(drives.shape[1]):
            z = drives[:, i]
            x = _solve(lambda s, z=z: self.rhs(s) + z, x, self.steps)
        return x


class _Reducible:
    """A trained Neural ODE deployed with its ODE layer reduced after training (POD-DEIM, pruning,
    SVD truncation) at each level its measure job's options name: ``puppet.compress.deploy``
    (``puppet.core.protocols.Deploys``). It reports the ODE layer's own numbers (level, state
    dimension, nonlinearities, parameters, MACs beside the hand formula) as its row's columns, as
    each reduction does (``HasDeploymentMetrics``), so the MOR study compares like with like."""

    image_shape: tuple[int, int, int]  # (C, H, W) of the images it was built for: fixes the state's shape

    def deployments(self, context) -> dict[str, str]:
        from puppet.compress.deploy import reduced_deployments

        return reduced_deployments(self, context)

    def deploy(self, name: str, context) -> nn.Module:
        from puppet.compress.deploy import deploy_reduced

        return deploy_reduced(self, name, context)

    def deployment_metrics(self) -> dict[str, float]:
        from puppet.compress.deploy import ode_metrics

        return ode_metrics(self, self, None)


class ConvNODE(_Reducible, nn.Module):
    """``stem`` (B, C_in, H, W) -> (B, C, H/4, W/4); ``ode``; ``head`` (flatten, linear)."""

    def __init__(self, stem: nn.Module, ode: nn.Module, head: nn.Module, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.stem, self.ode, self.head = stem, ode, head
        self.image_shape = image_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ode(self.stem(x)))


class RecurrentNODE(_Reducible, nn.Module):
    """Image rows as a sequence: (B, C_in, H, W) -> u (B, H, C_in W) -> ``ode`` -> ``head``."""

    def __init__(self, ode: nn.Module, head: nn.Module, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.ode, self.head = ode, head
        self.image_shape = image_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.permute(0, 2, 1, 3).flatten(2)  # (B, H, C_in * W): row i is the input on [i - 1, i]
        return self.head(self.ode(u))


def _check(name: str, value: int, what: str) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{name}: {what}={value!r} must be an integer >= 1")


# ---------------------------------------------------------------------------------------------
# Parameter formulas (layer by layer, without building a module)


def _state_side(image_size: int) -> int:
    side = image_size
    for _ in range(2):  # 4x4 conv, stride 2, padding 1
        side = (side + 2 - 4) // 2 + 1
    return side


def _node_conv_params(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    channels: int = 16,
    steps: int = 4,
) -> int:
    c = channels
    stem = (in_channels * 9 * c + c) + 2 * (c * 16 * c + c)
    ode = c * 9 * c + c
    return stem + ode + c * _state_side(image_size) ** 2 * num_classes + num_classes


def _node_rnn_params(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    hidden: int = 128,
    steps_per_interval: int = 1,
) -> int:
    d_in = in_channels * image_size
    return d_in * hidden + (hidden * hidden + hidden) + (hidden * num_classes + num_classes)


# ---------------------------------------------------------------------------------------------
# Registered builders


# The MOR study's Neural ODEs are not ResNet trunks: they keep PyTorch's default initialisation (the MOR
# study compares each trained model with its own reductions, so no other model's init matters).
_NODE_INIT = ("*",)


@register_model(
    "node_conv",
    family="node",
    paper_name="Conv. Neural ODE",
    param_formula=_node_conv_params,
    fixed_width=True,
    init_exempt=_NODE_INIT,
)
def node_conv(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    channels: int = 16,
    steps: int = 4,
) -> nn.Module:
    """Convolutional Neural ODE: stem to a C x H/4 x W/4 state, dx/dt = tanh(conv3x3(x) + b), RK4, linear head."""
    _check("node_conv", channels, "channels")
    _check("node_conv", steps, "steps")
    if _state_side(image_size) < 1:
        raise ValueError(f"node_conv needs image_size >= 4 (two stride-2 convs); got {image_size}")
    c = channels
    stem = nn.Sequential(
        nn.Conv2d(in_channels, c, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 4, stride=2, padding=1),  # H -> H/2
        nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 4, stride=2, padding=1),  # H/2 -> H/4
        nn.ReLU(inplace=True),
    )
    ode = ODEBlock(RHS(nn.Conv2d(c, c, 3, padding=1)), steps)
    head = nn.Sequential(nn.Flatten(), nn.Linear(c * _state_side(image_size) ** 2, num_classes))
    return ConvNODE(stem, ode, head, (in_channels, image_size, image_size))


@register_model(
    "node_rnn",
    family="node",
    paper_name="Recurrent Neural ODE",
    param_formula=_node_rnn_params,
    fixed_width=True,
    init_exempt=_NODE_INIT,
)
def node_rnn(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    hidden: int = 128,
    steps_per_interval: int = 1,
) -> nn.Module:
    """Recurrent Neural ODE over image rows: dx/dt = tanh(Ax + b) + Z u_i on each row's interval, linear head."""
    _check("node_rnn", hidden, "hidden")
    _check("node_rnn", steps_per_interval, "steps_per_interval")
    ode = RecurrentODE(
        RHS(nn.Linear(hidden, hidden)), nn.Linear(in_channels * image_size, hidden, bias=False), steps_per_interval
    )
    return RecurrentNODE(ode, nn.Linear(hidden, num_classes), (in_channels, image_size, image_size))
