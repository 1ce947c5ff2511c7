"""The MOR study: POD-DEIM, pruning and SVD truncation of the Neural ODEs' ODE layer."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from puppet import create_model
from puppet.compress.reduce import (
    collect_snapshots,
    deim_indices,
    full_dimensions,
    ode_macs_formula,
    pod_basis,
    reduce,
    state_shape,
)
from puppet.core.measure import count_macs

# Small enough that full bases are cheap: conv state 3 x 4 x 4 (n = 48), recurrent n = 12.
SMALL = {
    "node_conv": dict(num_classes=5, in_channels=1, image_size=16, channels=3, steps=2),
    "node_rnn": dict(num_classes=5, in_channels=1, image_size=10, hidden=12, steps_per_interval=1),
}
IMAGE = {"node_conv": (1, 16, 16), "node_rnn": (1, 10, 10)}


def trained_like(name: str, seed: int = 0):
    """A model whose weights are large enough that tanh is far from linear (untrained weights would
    make every method look exact), its images and its snapshots."""
    torch.manual_seed(seed)
    model = create_model(name, **SMALL[name]).eval()
    with torch.no_grad():
        for p in model.ode.parameters():
            p.mul_(3.0)
    x = torch.randn(64, *IMAGE[name])
    snaps = collect_snapshots(model, [x[:32], x[32:]])
    return model, x, snaps, state_shape(model, IMAGE[name])


def test_deim_is_exact_on_the_span_of_its_basis():
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(40, 6, generator=g, dtype=torch.float64))
    p = deim_indices(u)
    assert len(set(p.tolist())) == 6
    f = u @ torch.randn(6, 5, generator=g, dtype=torch.float64)  # five vectors in span(U)
    interpolated = u @ torch.linalg.solve(u[p], f[p])  # U (P^T U)^-1 P^T f
    torch.testing.assert_close(interpolated, f, rtol=1e-10, atol=1e-10)


def test_snapshots_are_the_states_and_nonlinearities_of_every_evaluation():
    model, x, snaps, shape = trained_like("node_rnn")
    states, values = [], []
    model.ode.rhs.recorder = lambda s, y: (states.append(s.double()), values.append(y.double()))
    with torch.no_grad():
        model(x)
    model.ode.rhs.recorder = None
    xs, ys = torch.cat(states), torch.cat(values)
    assert snaps.count == len(xs) == 64 * 10 * 4  # samples x intervals x RK4 stages
    torch.testing.assert_close(snaps.xx, xs.T @ xs)
    torch.testing.assert_close(snaps.ff, ys.T @ ys)
    vectors, values2 = pod_basis(snaps.xx)
    assert torch.all(values2[:-1] >= values2[1:])  # by decreasing energy
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(len(vectors), dtype=torch.float64))


@pytest.mark.parametrize("name", ["node_conv", "node_rnn"])
@pytest.mark.parametrize("method", ["pod_deim", "prune", "svd"])
def test_full_level_reproduces_the_full_model(name, method):
    """k = m = n, every neuron kept, full rank: the reduced model is the full model to round-off."""
    model, x, snaps, shape = trained_like(name)
    level = full_dimensions(model, shape)[method]
    reduced = reduce(model, method, level, snaps, shape).model
    with torch.no_grad():
        full_logits, reduced_logits = model(x), reduced(x)
    torch.testing.assert_close(reduced_logits, full_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["node_conv", "node_rnn"])
def test_lower_levels_change_the_output(name):
    """A reduced model below full size is a different model (the tests above are not vacuous)."""
    model, x, snaps, shape = trained_like(name)
    with torch.no_grad():
        full_logits = model(x)
        for method, level in (("pod_deim", 2), ("prune", 1), ("svd", 1)):
            assert not torch.allclose(reduce(model, method, level, snaps, shape).model(x), full_logits, atol=1e-3)


@pytest.mark.parametrize("name", ["node_conv", "node_rnn"])
@pytest.mark.parametrize("method,level", [("full", 0), ("pod_deim", 5), ("prune", 2), ("svd", 2)])
def test_macs_and_parameters_of_the_reduced_layer_match_the_formulas(name, method, level):
    model, x, snaps, shape = trained_like(name)
    reduction = None if method == "full" else reduce(model, method, level, snaps, shape)
    ode = model.ode if reduction is None else reduction.model.ode
    ode_input = model.stem(x[:1]) if name == "node_conv" else x[:1].permute(0, 2, 1, 3).flatten(2)
    assert count_macs(ode, ode_input) == ode_macs_formula(model, reduction, shape, IMAGE[name])
    params = sum(p.numel() for p in ode.parameters())
    n, c = int(torch.tensor(shape).prod()), shape[0]
    d_in = IMAGE[name][0] * IMAGE[name][2]
    expected = {
        ("node_conv", "full"): c * c * 9 + c,
        ("node_conv", "pod_deim"): n * level + (level * level + level) + level * level + level * n,
        ("node_conv", "prune"): level * level * 9 + level,
        ("node_conv", "svd"): c * 9 * level + level * c + c,
        ("node_rnn", "full"): n * n + n + d_in * n,
        ("node_rnn", "pod_deim"): (level * level + level) + level * level + d_in * level + level * n,
        ("node_rnn", "prune"): level * level + level + d_in * level,
        ("node_rnn", "svd"): n * level + level * n + n + d_in * n,
    }[(name, method)]
    assert params == expected


def test_levels_beyond_the_model_are_refused():
    model, _, snaps, shape = trained_like("node_rnn")
    with pytest.raises(ValueError, match="pod_deim: k=13"):
        reduce(model, "pod_deim", 13, snaps, shape)
    with pytest.raises(ValueError, match="prune: keeping 13 of 12"):
        reduce(model, "prune", 13, snaps, shape)
    with pytest.raises(ValueError, match="unknown reduction method 'pca'"):
        reduce(model, "pca", 2, snaps, shape)


def test_study_writes_every_level_and_the_full_model(tmp_path):
    """The job end to end on synthetic data: one row per (method, level) plus the full model, each
    with accuracy, MACs beside the formula, and a speed-up with its interval."""
    from puppet.compress.study import MorSettings, run_study
    from puppet.core.config import load_config, run_spec
    from puppet.core.train import build_model, load_splits

    cfg = load_config(
        "config/smoke.yaml", overrides={"models": ["node_rnn"], "model_kwargs": {"node_rnn": {"hidden": 12}}}
    )
    spec = run_spec(cfg, "synthetic", "node_rnn", 0)
    model = build_model(spec, load_splits(spec))
    torch.save({"model": model.state_dict()}, tmp_path / "model.pt")
    settings = MorSettings(
        snapshot_images=64,
        batch=16,
        rounds=3,
        warmup=1,
        threads=1,
        levels={"node_rnn": {"pod_deim": [4, 12], "prune": [6, 12], "svd": [3]}},
    )
    frame = run_study(spec, tmp_path, settings)
    assert list(frame["method"]) == ["full", "pod_deim", "pod_deim", "prune", "prune", "svd"]
    assert (frame["macs_ode"] == frame["macs_ode_formula"]).all()
    full = frame[frame.method == "full"].iloc[0]
    for method in ("pod_deim", "prune"):  # the full level reproduces the full model's accuracy
        assert frame[(frame.method == method) & (frame.level == 12)]["top1"].item() == pytest.approx(full["top1"])
    reduced = frame[frame.method != "full"]
    assert (
        reduced["speedup_total"].notna().all() and (reduced["speedup_total_ci_low"] <= reduced["speedup_total"]).all()
    )
    assert set(frame["status"]) == {"ok"} and frame["snapshots"].iloc[0] > 0


def test_a_failed_study_is_an_error_row(tmp_path):
    from puppet.compress.study import MorSettings, mor_main
    from puppet.core.config import load_config, run_spec

    spec = run_spec(load_config("config/smoke.yaml", overrides={"models": ["node_rnn"]}), "synthetic", "node_rnn", 0)
    (tmp_path / "train.json").write_text('{"status": "ok", "top1": 1.0, "config_hash": "h", "epochs": 1}')
    settings = MorSettings(64, 16, 3, 1, 1, {})
    frame = mor_main(spec, tmp_path, settings)  # no model.pt
    assert frame["status"].item() == "error" and "model.pt" in frame["error"].item()
    written = pd.read_csv(tmp_path / "mor.csv")
    assert written["status"].item() == "error"
    from puppet.core.runs import inspect_run

    state = inspect_run(tmp_path)
    assert state.failed and state.error.startswith("mor:")
    from puppet.core.runs import attempts

    assert attempts(tmp_path, "mor") == 1 and attempts(tmp_path, "train") == 0  # the mor rule reruns, not train


def test_report_stacks_the_runs_and_draws_one_figure_per_task(tmp_path):
    from puppet.report.mor import write_mor

    rows = []
    for method, levels in (("full", [12]), ("pod_deim", [4, 8]), ("prune", [6]), ("svd", [3])):
        for level in levels:
            rows.append(
                dict(
                    profile="quick", dataset="fashion_mnist", model="node_rnn", seed=0, status="ok", error="",
                    method=method, level=level, top1=50.0 + level, macs_reduction_ode=12 / level,
                    speedup_total=12 / level, speedup_total_ci_low=11 / level, speedup_total_ci_high=13 / level,
                    device="cpu (x86_64)", threads=2, timing_batch=256,
                )
            )  # fmt: skip
    good = tmp_path / "a.csv"
    pd.DataFrame(rows).to_csv(good, index=False)
    broken = tmp_path / "b.csv"
    broken.write_text("")
    frame = write_mor([good, broken], tmp_path / "mor.csv", tmp_path / "figures")
    assert len(frame) == len(rows) + 1 and frame["status"].iloc[-1] == "error" and "b.csv" in frame["error"].iloc[-1]
    assert (tmp_path / "figures" / "mor_fashion_mnist_node_rnn_seed0.png").stat().st_size > 10_000
