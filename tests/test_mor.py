"""The MOR study: POD-DEIM, pruning and SVD truncation of the Neural ODEs' ODE layer."""

from __future__ import annotations

import json

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
        ("node_rnn", "prune"): level * level + level + d_in * level + d_in * (n - level),  # + Z's pruned rows
        ("node_rnn", "svd"): n * level + level * n + n + d_in * n,
    }[(name, method)]
    assert params == expected


@pytest.mark.parametrize("name", ["node_conv", "node_rnn"])
def test_pruning_removes_a_neurons_right_hand_side_not_its_state(name):
    """A pruned neuron keeps what the ODE gives it without its nonlinearity: the conv model's pruned
    channels leave the layer at their initial value (the stem's output); the recurrent model's pruned
    neurons at their integrated drive sum_i Z u_i (from x(0) = 0). The kept ones follow A[S, S]."""
    model, x, snaps, shape = trained_like(name)
    reduced = reduce(model, "prune", 1, snaps, shape).model.ode
    kept = reduced.kept
    with torch.no_grad():
        if name == "node_conv":
            x0 = model.stem(x)
            out = reduced(x0)
            pruned = [c for c in range(shape[0]) if c not in kept.tolist()]
            torch.testing.assert_close(out[:, pruned], x0[:, pruned])
            assert not torch.allclose(out[:, kept], x0[:, kept])
        else:
            u = x.permute(0, 2, 1, 3).flatten(2)
            out = reduced(u)
            pruned = [j for j in range(shape[0]) if j not in kept.tolist()]
            drive = model.ode.drive.weight[pruned]  # (n - k, d_in)
            torch.testing.assert_close(out[:, pruned], u.sum(1) @ drive.T)


def test_levels_beyond_the_model_are_refused():
    model, _, snaps, shape = trained_like("node_rnn")
    with pytest.raises(ValueError, match="pod_deim: k=13"):
        reduce(model, "pod_deim", 13, snaps, shape)
    with pytest.raises(ValueError, match="prune: keeping 13 of 12"):
        reduce(model, "prune", 13, snaps, shape)
    with pytest.raises(ValueError, match="unknown reduction method 'pca'"):
        reduce(model, "pca", 2, snaps, shape)


LEVELS = {"pod_deim": [4, 12], "prune": [6, 12], "svd": [3]}


def _measured_study(tmp_path, levels=LEVELS):
    """A node_rnn run measured by the measure job, its MOR levels as deployments: the run folder."""
    from puppet.core.assemble import build_model, load_splits
    from puppet.core.config import deploy_options, load_config, run_spec
    from puppet.core.measure import measure_main

    cfg = load_config(
        "config/smoke.yaml",
        overrides={
            "models": ["node_rnn"],
            "model_kwargs": {"node_rnn": {"hidden": 12}},
            "mor": {"snapshot_images": 100, "levels": {"node_rnn": levels}, "finetune_steps": 3, "finetune_batch": 32},
        },
    )
    spec = run_spec(cfg, "synthetic", "node_rnn", 0)
    model = build_model(spec, load_splits(spec))
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, tmp_path / "model.pt")
    record = {"status": "ok", "top1": 10.0, "config_hash": spec.hash, "epochs": 1}
    record.update(profile="smoke", dataset="synthetic", model="node_rnn", seed=0)
    (tmp_path / "train.json").write_text(json.dumps(record))
    measured = measure_main(spec, tmp_path, deploy_options(cfg, "node_rnn"))
    return measured, model, spec


def test_every_level_is_a_deployment_measured_like_any_other(tmp_path):
    """Each (method, level) is a deployment of the run, measured by the one measure path: its
    accuracy, its MACs (the ODE layer's beside the hand formula), its speed-ups over the full model
    with their intervals; the full model reports the ODE layer's numbers too."""
    from puppet.core.assemble import load_splits
    from puppet.core.data import Batches
    from puppet.core.evaluate import evaluate

    measured, model, spec = _measured_study(tmp_path)
    assert measured["status"] == "ok", measured["error"]
    rows = {r["deployment"]: r for r in measured["deployments"]}
    reduced = ["pod_deim@4", "pod_deim@12", "prune@6", "prune@12", "svd@3"]
    assert list(rows) == ["default", *(n for name in reduced for n in (name, f"{name}+ft"))]
    assert rows["pod_deim@4"]["deployment_label"] == "POD-DEIM, k = m = 4"
    assert rows["pod_deim@4+ft"]["deployment_label"] == "POD-DEIM, k = m = 4, fine-tuned 3 x 32 images"
    for name in reduced:  # the same budget for every method and level, and it changed the model
        tuned = rows[f"{name}+ft"]
        assert (tuned["finetune_steps"], tuned["finetune_images"], tuned["finetune_lr"]) == (3, 96, 1e-3), name
        assert "finetune_steps" not in rows[name]
    assert rows["prune@6+ft"]["top1"] != rows["prune@6"]["top1"] or rows["svd@3+ft"]["top1"] != rows["svd@3"]["top1"]
    assert {r["device"].split(" ")[0] for r in rows.values()} == {"cpu"}  # mor.device: timed on the CPU
    for name, row in rows.items():
        assert row["status"] == "ok" and row["macs_ode"] == row["macs_ode_formula"], name
    full = rows["default"]
    assert (full["level"], full["state_dim"], full["nonlinearities"]) == (12, 12, 12)
    splits = load_splits(spec)
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=False)["model"])
    top1 = evaluate(model, Batches(splits.x_test, splits.y_test, 128, splits.mean, splits.std)).top1
    for name in ("pod_deim@12", "prune@12"):  # the full level reproduces the full model's accuracy
        assert rows[name]["top1"] == pytest.approx(top1)
    for name, row in rows.items():
        if name != "default":
            for ratio in ("speedup_vs_default", "throughput_speedup_vs_default"):
                assert row[f"{ratio}_ci_low"] <= row[ratio] <= row[f"{ratio}_ci_high"], (name, ratio)
    rows_per_image = model.image_shape[1]  # one interval per image row, four RK4 stages each
    assert rows["pod_deim@4"]["snapshots"] == 100 * rows_per_image * 4
    assert "snapshots" not in rows["prune@6"] and rows["prune@6"]["state_dim"] == 6


def test_the_mor_table_is_a_view_of_the_rows(tmp_path):
    """results/mor.csv: the full model and each reduction of a run, read from metrics.csv; the
    ratios against the full model's row; a figure per run, and one saying so for a run without rows."""
    from puppet.report.collate import collate
    from puppet.report.mor import write_mor

    _measured_study(tmp_path / "run")
    metrics = collate([tmp_path / "run" / "train.json"], tmp_path / "metrics.csv")
    expect = ["mor_synthetic_node_rnn_seed0.png", "mor_synthetic_node_conv_seed0.png"]
    frame = write_mor(tmp_path / "metrics.csv", tmp_path / "mor.csv", tmp_path / "figures", expect)
    assert list(frame["method"]) == ["full", *["pod_deim"] * 4, *["prune"] * 4, *["svd"] * 2]
    assert list(frame["level"]) == [12, 4, 12, 4, 12, 6, 12, 6, 12, 3, 3]
    assert list(frame["finetuned"]) == [False, False, False, True, True, False, False, True, True, False, True]
    by = metrics.set_index("deployment").loc[frame["deployment"]]  # metrics.csv's rows in the view's order
    assert frame["top1"].tolist() == by["top1"].tolist()
    assert (frame["macs_reduction_ode"] == by.loc["default", "macs_ode"] / frame["macs_ode"].to_numpy()).all()
    full = frame.iloc[0]
    assert full["speedup_total"] == 1.0 and full["top1_full"] == 10.0  # the train job's accuracy
    reduced = frame.iloc[1:]
    assert (reduced["speedup_total"] == by["throughput_speedup_vs_default"].iloc[1:].to_numpy()).all()
    assert (reduced["time_full_s_per_img"] == 1 / by.loc["default", "throughput_img_per_s"]).all()
    assert (tmp_path / "figures" / "mor_synthetic_node_rnn_seed0.png").stat().st_size > 10_000
    assert (tmp_path / "figures" / "mor_synthetic_node_conv_seed0.png").is_file()  # the placeholder
    assert pd.read_csv(tmp_path / "mor.csv")["method"].tolist() == frame["method"].tolist()


def test_a_level_beyond_the_model_fails_the_measure_job_before_any_work(tmp_path):
    from puppet.core.runs import attempts, inspect_run

    measured, _, _ = _measured_study(tmp_path, levels={"prune": [13]})
    assert measured["status"] == "error" and "mor.levels.prune: [13] exceed 12" in measured["error"]
    assert "deployments" not in measured
    state = inspect_run(tmp_path)
    assert state.failed and state.error.startswith("measure:")
    assert attempts(tmp_path, "measure") == 1 and attempts(tmp_path, "train") == 0  # measured again, not retrained


def test_a_fine_tuned_deployment_leaves_the_trained_model_and_the_snapshots_as_they_were():
    """``+ft`` trains a copy of the reduction: the trained model's weights, the snapshots cached for
    the next POD level, and the reduction without fine-tuning are unchanged; a context without
    labelled batches refuses the fine-tune in one line."""
    from puppet.core.data import Batches
    from puppet.core.protocols import DeployContext

    model, _, _, _ = trained_like("node_conv")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, *IMAGE["node_conv"]), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 5, (64,), generator=g)

    def batches(batch, seed):
        return Batches(images, labels, batch, (0.5,), (0.25,), shuffle=True, seed=seed, drop_last=True)

    options = {
        "levels": {"pod_deim": [5], "prune": [2]},
        "snapshot_images": 32,
        "finetune_steps": 3,
        "finetune_batch": 16,
    }
    context = DeployContext(options=options, train_images=lambda: (x for x, _ in batches(32, 0)), train_batches=batches)
    x = batches(64, 1).normalise(images[:8])
    with torch.no_grad():
        reduced = model.deploy("pod_deim@5", context)(x)
    key = next(iter(context.cache))
    cached = (context.cache[key].xx.clone(), context.cache[key].ff.clone())
    tuned = model.deploy("pod_deim@5+ft", context)
    model.deploy("prune@2+ft", context)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    torch.testing.assert_close(context.cache[key].xx, cached[0], rtol=0, atol=0)
    torch.testing.assert_close(context.cache[key].ff, cached[1], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model.deploy("pod_deim@5", context)(x), reduced, rtol=0, atol=0)
        assert not torch.allclose(tuned(x), reduced)  # the fine-tune changed its own copy
    assert tuned.deployment_metrics()["finetune_images"] == 3 * 16
    with pytest.raises(ValueError, match="no train_batches"):
        model.deploy("prune@2+ft", DeployContext(options=options))


def test_the_study_is_measured_on_the_device_mor_names(tmp_path, monkeypatch):
    """``mor.device`` reaches the measure job: ``run`` leaves the run's own device, any other value
    is the device the job materialises the model on (and so times it on)."""
    from puppet.core import measure
    from puppet.core.config import deploy_options, load_config

    def options(device):
        cfg = load_config("config/smoke.yaml", overrides={"models": ["node_rnn"], "mor": {"device": device}})
        return deploy_options(cfg, "node_rnn")

    assert "device" not in options("run")
    assert options("cpu")["device"] == "cpu" and options("cuda:1")["device"] == "cuda:1"
    seen = []

    def materialise(spec, *, for_training=False, device=None):
        seen.append(device)
        raise RuntimeError("stop here")

    _, _, spec = _measured_study(tmp_path / "built")  # a run folder with a finished train.json
    monkeypatch.setattr(measure, "materialise", materialise)
    record = measure.measure_main(spec, tmp_path / "built", {**options("cuda:1"), "levels": {}})
    assert seen == ["cuda:1"] and record["status"] == "error" and "stop here" in record["error"]


def test_level_labels_that_would_overlap_or_leave_the_frame_are_dropped():
    import matplotlib.pyplot as plt

    from puppet.report.mor import drop_overlapping

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    first = ax.annotate("k=16", (2, 2), fontsize=8)
    on_top = ax.annotate("k=32", (2.1, 2.05), fontsize=8)  # over the first
    apart = ax.annotate("k=64", (6, 7), fontsize=8)
    outside = ax.annotate("k=128", (9.9, 9.9), fontsize=8)  # runs past the right edge
    fig.canvas.draw()
    assert drop_overlapping(fig, [first, on_top, apart, outside]) == 2
    assert [t.get_text() for t in ax.texts] == ["k=16", "k=64"]
    plt.close(fig)
