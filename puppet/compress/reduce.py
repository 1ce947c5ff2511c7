"""Reduce the ODE layer of a trained Neural ODE (``baselines.node``) in three ways, each a real
``nn.Module`` that replaces the model's ``ode`` (same input, same output shape):

* **POD-DEIM** (Lehtimäki et al., eqs. 3-6): the state x in R^n is approximated as V_k x~ (POD:
  the first k left singular vectors of state snapshots along training trajectories), and the
  nonlinearity by DEIM, f(.) ~ U_m (P^T U_m)^-1 P^T f(.) (U_m: the first m left singular vectors of
  snapshots of f(Ax + b); P: m rows picked greedily). As f is elementwise, P^T f(y) = f(P^T y), so
  the reduced layer evaluates m nonlinearities only::

      x~' = N f(A~_m x~ + b_m) + Z~ u,   N = V_k^T U_m (P^T U_m)^-1 (k x m),
      A~_m = P^T A V_k (m x k),  b_m = P^T b,  Z~ = V_k^T Z,

  wrapped by the projection x~(0) = V_k^T x(0) and the lifting x = V_k x~. Bases come from the
  snapshot correlation matrices X X^T and F F^T (the method of snapshots), accumulated and
  eigendecomposed in float64, without centring.
* **Pruning**: keep the k neurons (recurrent model) or channels (conv model) with the largest L1
  norm of their row of A (for a conv: the output filter, Li et al. 2017); the kept state follows
  A[S, S], b[S], Z[S, :]. A pruned neuron loses its nonlinear right-hand side, not its state: it
  keeps what the ODE adds to it without a nonlinearity, its initial value x_j(0) (the conv model's
  stem output; POD keeps the initial state too, through its projection) and, in the recurrent
  model, its integrated drive sum_i (Z u_i)_j. Zeroing the pruned state instead would throw the
  stem's features away and handicap pruning against POD (the harness did until revision 1 of the
  study: the recurrent model at 16 neurons fell below chance).
* **SVD truncation**: A replaced by its best rank-r factorisation; for the conv, the kernel matrix
  (C_out x C_in 9) is factorised into a 3x3 conv C -> r and a 1x1 conv r -> C (Denton et al. 2014).
  The state and its n nonlinearities are unchanged.

All three are post-training; what stays outside the ODE layer (stem, head) is unchanged, so the
comparison is the ODE layer's. ``puppet.compress.deploy`` also measures each one after a short
fine-tune of the same budget (its ``+ft`` deployment).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.node import RHS, ConvNODE, ODEBlock, RecurrentNODE, RecurrentODE

METHODS = ("pod_deim", "prune", "svd")


# ---------------------------------------------------------------------------------------------
# Snapshots and bases


@dataclass
class Snapshots:
    """Correlation matrices of the state (X X^T) and nonlinearity (F F^T) snapshots, float64 (n x n)."""

    xx: torch.Tensor
    ff: torch.Tensor
    count: int  # snapshot vectors accumulated (one per sample per right-hand-side evaluation)


@torch.no_grad()
def collect_snapshots(model: nn.Module, batches) -> Snapshots:
    """Run ``model`` over ``batches`` of training images and accumulate the ODE layer's states and
    nonlinear values at every right-hand-side evaluation (every RK4 stage of every step)."""
    rhs: RHS = model.ode.rhs
    acc: dict[str, torch.Tensor] = {}
    count = 0

    def record(x: torch.Tensor, y: torch.Tensor) -> None:
        nonlocal count
        xs, ys = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()  # (B, n)
        acc["xx"] = acc.get("xx", 0) + xs.T @ xs
        acc["ff"] = acc.get("ff", 0) + ys.T @ ys
        count += len(x)

    model.eval()
    rhs.recorder = record
    try:
        for x in batches:
            model(x)
    finally:
        rhs.recorder = None
    return Snapshots(acc["xx"].cpu(), acc["ff"].cpu(), count)


def pod_basis(correlation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors (columns, by decreasing singular value) and the singular values squared
    of a snapshot matrix S, from S S^T (float64, symmetric)."""
    values, vectors = torch.linalg.eigh(correlation)  # ascending
    return vectors.flip(1), values.flip(0).clamp_min(0)


def energy(values: torch.Tensor, k: int) -> float:
    """Share of the snapshots' energy the first k basis vectors keep: sum_i<=k s_i^2 / sum s_i^2."""
    return float(values[:k].sum() / values.sum()) if values.sum() > 0 else 1.0


def deim_indices(u: torch.Tensor) -> torch.Tensor:
    """The greedy DEIM interpolation indices of the columns of ``u`` (n x m), in order (Chaturantabut
    & Sorensen 2010): the first is argmax |u_1|; each next one is where the residual of interpolating
    u_l at the indices so far is largest."""
    n, m = u.shape
    idx = [int(u[:, 0].abs().argmax())]
    for col in range(1, m):
        p = torch.tensor(idx)
        c = torch.linalg.solve(u[p, :col], u[p, col])
        residual = u[:, col] - u[:, :col] @ c
        idx.append(int(residual.abs().argmax()))
    return torch.tensor(idx)


# ---------------------------------------------------------------------------------------------
# The linear part of the full right-hand side


def _apply_a(model: nn.Module, vectors: torch.Tensor, state_shape: tuple[int, ...]) -> torch.Tensor:
    """A applied to each column of ``vectors`` (n x k), float64: A V."""
    pre = model.ode.rhs.pre
    if isinstance(model, ConvNODE):
        maps = vectors.T.reshape(vectors.shape[1], *state_shape)  # (k, C, h, w)
        out = F.conv2d(maps, pre.weight.double(), None, padding=pre.padding)
        return out.reshape(vectors.shape[1], -1).T
    return pre.weight.double() @ vectors


def _bias_full(model: nn.Module, state_shape: tuple[int, ...]) -> torch.Tensor:
    """b in R^n (a conv's per-channel bias broadcast over the map), float64."""
    b = model.ode.rhs.pre.bias.detach().double().cpu()
    if isinstance(model, ConvNODE):
        return b[:, None, None].expand(*state_shape).reshape(-1)
    return b


def _linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight.float())
        if bias is not None:
            layer.bias.copy_(bias.float())
    return layer


# ---------------------------------------------------------------------------------------------
# The reduced layers


class Project(nn.Module):
    """(B, *state) -> (B, k): x~ = V^T x (flattened)."""

    def __init__(self, v: torch.Tensor) -> None:
        super().__init__()
        self.map = _linear(v.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.map(x.flatten(1))


class Lift(nn.Module):
    """(B, k) -> (B, *state): x = V x~."""

    def __init__(self, v: torch.Tensor, state_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.map = _linear(v)
        self.state_shape = tuple(state_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.map(z).reshape(len(z), *self.state_shape)


class PrunedConvODE(nn.Module):
    """The conv model's ODE layer pruned to the ``kept`` channels: they follow the pruned ODE block;
    the pruned channels keep their initial state (their right-hand side is gone, not their value)."""

    def __init__(self, kept: torch.Tensor, block: ODEBlock) -> None:
        super().__init__()
        self.register_buffer("kept", kept.clone())
        self.block = block

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        out = x0.clone()
        out[:, self.kept] = self.block(x0[:, self.kept])
        return out


class PrunedRecurrentODE(nn.Module):
    """The recurrent model's ODE layer pruned to the ``kept`` neurons: they follow the pruned ODE;
    each pruned neuron j keeps its linear part, the drive integrated over the unit intervals,
    x_j(L) = sum_i (Z u_i)_j (from x(0) = 0), by ``drive_pruned`` (Z's pruned rows) on sum_i u_i."""

    def __init__(
        self, kept: torch.Tensor, pruned: torch.Tensor, block: RecurrentODE, drive_pruned: nn.Linear | None
    ) -> None:
        super().__init__()
        self.register_buffer("kept", kept.clone())
        self.register_buffer("pruned", pruned.clone())
        self.block, self.drive_pruned = block, drive_pruned
        self.n = len(kept) + len(pruned)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        z = self.block(u)  # (B, k)
        out = z.new_empty(len(z), self.n)
        out[:, self.kept] = z
        if self.drive_pruned is not None:  # None: every neuron kept
            out[:, self.pruned] = self.drive_pruned(u.sum(1))
        return out


class ReducedConvODE(nn.Module):
    """The conv model's ODE layer replaced: ``encode`` -> ODE block -> ``decode``."""

    def __init__(self, encode: nn.Module, block: ODEBlock, decode: nn.Module) -> None:
        super().__init__()
        self.encode, self.block, self.decode = encode, block, decode

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        return self.decode(self.block(self.encode(x0)))


class ReducedRecurrentODE(nn.Module):
    """The recurrent model's ODE layer replaced: a recurrent ODE on the reduced state -> ``decode``."""

    def __init__(self, block: RecurrentODE, decode: nn.Module) -> None:
        super().__init__()
        self.block, self.decode = block, decode

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.decode(self.block(u))


# ---------------------------------------------------------------------------------------------
# The three methods


@dataclass
class Reduction:
    model: nn.Module  # a deep copy of the full model with ``ode`` replaced
    method: str
    level: int  # k (= m) for POD-DEIM, neurons/channels kept for pruning, rank for SVD
    state_dim: int  # dimension of the state the reduced ODE integrates
    nonlinearities: int  # tanh evaluations per right-hand-side evaluation
    energy_state: float = float("nan")  # POD: share of the state snapshots' energy kept
    energy_nonlinear: float = float("nan")  # DEIM: share of the nonlinear snapshots' energy kept
    deim_condition: float = float("nan")  # condition number of P^T U_m


def state_shape(model: nn.Module, image_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The ODE state's shape (without batch) for an input image of ``image_shape`` (C, H, W)."""
    if isinstance(model, ConvNODE):
        with torch.no_grad():
            return tuple(model.stem(torch.zeros(1, *image_shape, device=_device(model))).shape[1:])
    return (model.ode.rhs.pre.out_features,)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _replace_ode(model: nn.Module, ode: nn.Module) -> nn.Module:
    reduced = copy.deepcopy(model)
    reduced.ode = ode.to(_device(model))
    return reduced.eval()


def pod_deim(model: nn.Module, snaps: Snapshots, k: int, m: int, shape: tuple[int, ...]) -> Reduction:
    """The POD-DEIM reduced model with a k-dimensional state and m interpolation points."""
    n = snaps.xx.shape[0]
    if not (1 <= k <= n and 1 <= m <= n):
        raise ValueError(f"pod_deim: k={k} and m={m} must be in 1..{n} (the state dimension)")
    v_all, sx = pod_basis(snaps.xx)
    u_all, sf = pod_basis(snaps.ff)
    v, u = v_all[:, :k], u_all[:, :m]  # (n, k), (n, m)
    p = deim_indices(u)
    pu = u[p]  # (m, m) = P^T U_m
    n_mat = v.T @ u @ torch.linalg.inv(pu)  # (k, m)
    a_red = _apply_a(model, v.to(_device(model)), shape).cpu()[p]  # (m, k) = P^T A V_k
    b_red = _bias_full(model, shape).cpu()[p]
    rhs = RHS(_linear(a_red, b_red), _linear(n_mat))
    if isinstance(model, ConvNODE):
        ode = ReducedConvODE(Project(v), ODEBlock(rhs, model.ode.steps), Lift(v, shape))
    else:
        z = model.ode.drive.weight.detach().double().cpu()  # (n, d_in)
        drive = _linear(v.T @ z)  # Z~ = V^T Z (k, d_in)
        ode = ReducedRecurrentODE(RecurrentODE(rhs, drive, model.ode.steps), _linear(v))
    return Reduction(
        _replace_ode(model, ode),
        "pod_deim",
        k,
        k,
        m,
        energy(sx, k),
        energy(sf, m),
        float(torch.linalg.cond(pu)),
    )


def prune(model: nn.Module, kept_count: int, shape: tuple[int, ...]) -> Reduction:
    """Keep the ``kept_count`` neurons (channels) whose row of A (output filter) has the largest L1 norm."""
    pre = model.ode.rhs.pre
    weight = pre.weight.detach()
    total = weight.shape[0]
    if not 1 <= kept_count <= total:
        raise ValueError(f"prune: keeping {kept_count} of {total} neurons/channels is not possible")
    score = weight.abs().reshape(total, -1).sum(1)  # L1 norm of each output row / filter
    order = score.argsort(descending=True)
    kept, pruned = order[:kept_count].sort().values, order[kept_count:].sort().values
    with torch.no_grad():
        if isinstance(model, ConvNODE):
            conv = nn.Conv2d(kept_count, kept_count, pre.kernel_size, padding=pre.padding)
            conv.weight.copy_(weight[kept][:, kept])
            conv.bias.copy_(pre.bias[kept])
            ode = PrunedConvODE(kept, ODEBlock(RHS(conv), model.ode.steps))
            dim = kept_count * shape[1] * shape[2]
        else:
            rhs = RHS(_linear(weight[kept][:, kept], pre.bias.detach()[kept]))
            z = model.ode.drive.weight.detach()
            block = RecurrentODE(rhs, _linear(z[kept]), model.ode.steps)
            ode = PrunedRecurrentODE(kept, pruned, block, _linear(z[pruned]) if len(pruned) else None)
            dim = kept_count
    return Reduction(_replace_ode(model, ode), "prune", kept_count, dim, dim)


def svd(model: nn.Module, rank: int, shape: tuple[int, ...]) -> Reduction:
    """A replaced by its best rank-``rank`` factorisation (the state and nonlinearities unchanged)."""
    pre = model.ode.rhs.pre
    weight = pre.weight.detach().double()
    c_out = weight.shape[0]
    matrix = weight.reshape(c_out, -1)  # (C_out, C_in k k) or (n, n)
    if not 1 <= rank <= min(matrix.shape):
        raise ValueError(f"svd: rank {rank} must be in 1..{min(matrix.shape)}")
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    first = root[:, None] * vh[:rank]  # (r, C_in k k): Sigma^1/2 V^T
    second = u[:, :rank] * root[None, :]  # (C_out, r): U Sigma^1/2
    with torch.no_grad():
        if isinstance(model, ConvNODE):
            conv_a = nn.Conv2d(weight.shape[1], rank, pre.kernel_size, padding=pre.padding, bias=False)
            conv_a.weight.copy_(first.reshape(rank, *weight.shape[1:]).float())
            conv_b = nn.Conv2d(rank, c_out, 1)
            conv_b.weight.copy_(second[:, :, None, None].float())
            conv_b.bias.copy_(pre.bias)
            ode = ODEBlock(RHS(nn.Sequential(conv_a, conv_b)), model.ode.steps)
            dim = c_out * shape[1] * shape[2]
        else:
            factored = nn.Sequential(_linear(first), _linear(second, pre.bias.detach().double()))
            ode = RecurrentODE(RHS(factored), copy.deepcopy(model.ode.drive), model.ode.steps)
            dim = c_out
    return Reduction(_replace_ode(model, ode), "svd", rank, dim, dim)


def reduce(model: nn.Module, method: str, level: int, snaps: Snapshots | None, shape: tuple[int, ...]) -> Reduction:
    if method == "pod_deim":
        return pod_deim(model, snaps, level, level, shape)
    if method == "prune":
        return prune(model, level, shape)
    if method == "svd":
        return svd(model, level, shape)
    raise ValueError(f"unknown reduction method {method!r}; choose one of {', '.join(METHODS)}")


def full_dimensions(model: nn.Module, shape: tuple[int, ...]) -> dict[str, int]:
    """The largest level each method accepts: n for POD-DEIM, C (channels) or n (neurons) for
    pruning, the kernel matrix's rank bound for SVD."""
    weight = model.ode.rhs.pre.weight
    n = int(torch.tensor(shape).prod())
    return {"pod_deim": n, "prune": weight.shape[0], "svd": min(weight.shape[0], weight[0].numel())}


def is_node(model: nn.Module) -> bool:
    return isinstance(model, (ConvNODE, RecurrentNODE))


def ode_macs_formula(model: nn.Module, reduction: Reduction | None, shape: tuple[int, ...], image_shape) -> int:
    """Multiply-adds of the ODE layer per sample, by hand (the harness' convention: conv and linear
    multiply-adds plus their bias adds; elementwise work, the RK4 stage sums included, counts zero).
    ``reduction`` None: the full layer."""
    evals = 4 * model.ode.steps  # rk4 (3/8 rule): 4 right-hand-side evaluations per step, unit interval
    method = "full" if reduction is None else reduction.method
    level = 0 if reduction is None else reduction.level
    m = 0 if reduction is None else reduction.nonlinearities  # POD-DEIM: interpolation points
    if isinstance(model, ConvNODE):
        c, h, w = shape
        hw, n = h * w, c * h * w
        per_eval = {
            "full": hw * c * c * 9 + n,
            "pod_deim": m * level + m + level * m,  # A~_m x~ + b_m (m k + m), then N (k m)
            "prune": hw * level * level * 9 + hw * level,
            "svd": hw * level * c * 9 + hw * c * level + hw * c,
        }[method]
        outside = 2 * n * level if method == "pod_deim" else 0  # projection V^T x(0) and lifting V x~(1)
        return evals * per_eval + outside
    n = shape[0]
    length, d_in = image_shape[1], image_shape[0] * image_shape[2]  # rows are the steps
    per_eval = {
        "full": n * n + n,
        "pod_deim": 2 * m * level + m,
        "prune": level * level + level,
        "svd": 2 * n * level + n,
    }[method]
    state = {"full": n, "pod_deim": level, "prune": level, "svd": n}[method]
    lift = n * level if method == "pod_deim" else 0
    held = d_in * (n - level) if method == "prune" else 0  # the pruned neurons' integrated drive, once
    return length * (d_in * state + evals * per_eval) + lift + held
