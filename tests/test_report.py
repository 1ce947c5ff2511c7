"""Collation, tables and figures from run records."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest

from puppet.core.runs import run_dir
from puppet.report.collate import COLUMNS, collate
from puppet.report.figures import pareto_front, write_figures
from puppet.report.paper import TABLE2
from puppet.report.tables import write_tables


def _run(root, model, seed, top1, status="ok", measured=True, deployments=()):
    """A run folder as the train and measure jobs leave it; ``deployments``: records of deployments
    other than ``default`` (as ``puppet.core.measure.measure_model`` writes them)."""
    d = run_dir(root, "quick", "cifar10", model, seed, "h")
    d.mkdir(parents=True)
    train = {
        "profile": "quick",
        "dataset": "cifar10",
        "model": model,
        "seed": seed,
        "status": status,
        "error": "" if status == "ok" else "RuntimeError: boom",
        "epochs": 2,
        "train_size": 100,
        "test_size": 50,
        "data_source": "npz:x.npz",
        "git_commit": "abc",
        "config_hash": "h",
        "max_channels": 512,
        "stats": {"mean_depth": 7.0} if model == "puppet_cnn" else {},
        "history": [{"loss": 1.0}],
    }
    if status == "ok":
        train.update(top1=top1, top5=top1 + 20, train_time_s=3.0)
    (d / "train.json").write_text(json.dumps(train))
    if measured:
        default = {
            "deployment": "default",
            "deployment_label": "",
            "status": "ok",
            "error": "",
            "stored_params": 1000 * (seed + 1) * len(model),
            "param_size_mb": 0.004 * len(model),
            "macs": 1e6 * len(model),
            "latency_s_per_img": 0.001 * len(model),
        }
        m = {
            "status": "ok" if status == "ok" else "skipped",
            "error": "",
            "device": "cpu (x86_64)",
            "threads": 2,
            "torch_version": "2.x",
        }
        if status == "ok":
            m["deployments"] = [default, *deployments]
        (d / "measure.json").write_text(json.dumps(m))
    return d / "train.json"


@pytest.fixture
def metrics(tmp_path):
    runs = [
        _run(tmp_path, "alexnet", 0, 50.0),
        _run(tmp_path, "alexnet", 1, 54.0),
        _run(tmp_path, "squeezenet", 0, 40.0, status="error"),
        _run(tmp_path, "mobilenet_v1", 0, 45.0, measured=False),
    ]
    out = tmp_path / "metrics.csv"
    collate(runs, out)
    return out


def test_metrics_csv_is_tidy_with_provenance(metrics):
    df = pd.read_csv(metrics)
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert len(df) == 4 and df.groupby(["profile", "dataset", "model", "seed", "deployment"]).size().max() == 1
    assert set(df["deployment"]) == {"default"}
    assert set(df["status"]) == {"ok", "error"}
    assert df.loc[df.model == "mobilenet_v1", "error"].item().startswith("measure:")


def test_table2_puts_paper_numbers_beside_ours(metrics, models_csv, tmp_path):
    frames = write_tables(metrics, tmp_path / "out", models_csv)
    t2 = pd.read_csv(tmp_path / "out" / "table2.csv")
    assert list(t2["label"]) == [r.label for r in TABLE2.rows]
    alex = t2[t2.model == "alexnet"].iloc[0]
    assert alex["top1"] == 52.0 and alex["n_seeds"] == 2
    assert math.isclose(alex["top1_std"], pd.Series([50.0, 54.0]).std())
    assert alex["paper_top1"] == 65.86 and math.isclose(alex["top1_diff"], 52.0 - 65.86)
    squeeze = t2[t2.model == "squeezenet"].iloc[0]
    assert math.isnan(squeeze["top1"]) and squeeze["note"].startswith("failed")
    puppet = t2[t2.model == "puppet_cnn"].iloc[0]
    assert puppet["note"] == "not run" and puppet["paper_top1"] == 72.51
    md = (tmp_path / "out" / "tables.md").read_text()
    assert "Table 2" in md and "not run" in md and "52.00 ± 2.83" in md
    assert set(frames) >= {"table1", "table2", "table3", "table4", "table6"}


def test_a_failure_without_message_is_said_so(metrics, models_csv, tmp_path):
    df = pd.read_csv(metrics)
    df.loc[df.model == "squeezenet", "error"] = None  # an error record with an empty message
    df.to_csv(tmp_path / "m.csv", index=False)
    write_tables(tmp_path / "m.csv", tmp_path / "out", models_csv)
    squeeze = pd.read_csv(tmp_path / "out" / "table2.csv").set_index("model").loc["squeezenet"]
    assert squeeze["note"] == "failed: no message recorded"


def test_figures_are_written(metrics, models_csv, tmp_path):
    paths = write_figures(metrics, tmp_path / "fig", models_csv)
    names = {p.name for p in paths}
    assert {
        "cifar10_top1_vs_stored_params.png",
        "cifar10_top1_vs_macs.pdf",
        "cifar10_top1_vs_latency_s_per_img.png",
    } <= names
    assert all(p.stat().st_size > 1000 for p in paths if p.suffix in (".png", ".pdf"))
    assert {"size_vs_depth.png", "size_vs_depth.csv"} <= names


def test_size_vs_depth_fixed_grow_puppets_flat(model_descriptions, tmp_path):
    from puppet.report.figures import size_vs_depth

    size_vs_depth(model_descriptions, tmp_path)
    frame = pd.read_csv(tmp_path / "size_vs_depth.csv")
    vgg = frame[frame.model == "vgg"].sort_values("depth")["param_size_mb"].tolist()
    puppet = frame[frame.model == "puppet_vgg"].sort_values("depth")["param_size_mb"].tolist()
    assert vgg == sorted(vgg) and vgg[-1] > 2 * vgg[0]  # VGG-19 is over twice VGG-11
    assert max(puppet) < 1.1 * min(puppet) and max(puppet) < vgg[0] / 10


def test_pareto_front():
    pts = pd.DataFrame({"x": [1, 2, 3, 4], "y": [10, 5, 20, 15]})
    assert pareto_front(pts, "x", "y")["x"].tolist() == [1, 3]


def test_publish_snapshot_with_provenance(metrics, models_csv, tmp_path):
    from puppet.report.publish import publish

    results = metrics.parent
    shutil.copy(models_csv, results / "models.csv")  # as the describe_models rule leaves it
    write_tables(metrics, results, results / "models.csv")
    write_figures(metrics, results / "figures", results / "models.csv")
    out = publish(results, "quick-test", "snakemake --cores all all", timing="1 min")
    readme = (out / "README.md").read_text()
    assert (out / "metrics.csv").read_text() == metrics.read_text()
    assert (out / "models.csv").read_text() == models_csv.read_text()  # what the size tables were made from
    assert (out / "table2.csv").is_file() and list((out / "figures").glob("*.png"))
    assert "4 (2 ok, 2 failed)" in readme and "cpu (x86_64)" in readme and "commit(s) abc" in readme


def test_publish_refuses_without_results(tmp_path):
    from puppet.report.publish import publish

    with pytest.raises(FileNotFoundError, match="run `snakemake"):
        publish(tmp_path, "x", "cmd")


def _sitting(tmp_path, models_csv, label, *runs, config_hash="h"):
    """One sitting: its runs collated into tmp_path/results/metrics.csv beside the model descriptions
    (``models_csv``), as `snakemake tables` leaves them."""
    root = tmp_path / label
    paths = [_run(root, model, seed, top1) for model, seed, top1 in runs]
    for p in paths:
        p.write_text(json.dumps({**json.loads(p.read_text()), "config_hash": config_hash}))
    results = tmp_path / "results"
    collate(paths, results / "metrics.csv")
    shutil.copy(models_csv, results / "models.csv")
    return results


def test_publish_merge_adds_each_sitting(tmp_path, models_csv):
    from puppet.report.publish import publish

    results = _sitting(tmp_path, models_csv, "s1", ("alexnet", 0, 50.0), ("mobilenet_v1", 0, 45.0))
    out = publish(
        results, "paper-x", "snakemake --cores all tables --config models='[alexnet,mobilenet_v1]'", "9 min", merge=True
    )
    assert len(pd.read_csv(out / "metrics.csv")) == 2 and (out / "table2.csv").is_file()
    # A second sitting: a new run, and alexnet redone (same spec) with another result.
    _sitting(tmp_path, models_csv, "s2", ("squeezenet", 0, 40.0), ("alexnet", 0, 60.0))
    publish(
        results, "paper-x", "snakemake --cores all tables --config models='[squeezenet,alexnet]'", "7 min", merge=True
    )
    merged = pd.read_csv(out / "metrics.csv")
    assert sorted(merged["model"]) == ["alexnet", "mobilenet_v1", "squeezenet"]
    assert merged.loc[merged.model == "alexnet", "top1"].item() == 60.0  # the newer row of the same run
    t2 = pd.read_csv(out / "table2.csv")  # tables rebuilt from the merged rows
    assert (
        t2.loc[t2.model == "squeezenet", "top1"].item() == 40.0 and t2.loc[t2.model == "alexnet", "top1"].item() == 60.0
    )
    assert "60.00" in (out / "tables.md").read_text() and list((out / "figures").glob("cifar10_top1_vs_*.png"))
    sittings = pd.read_csv(out / "sittings.csv")
    assert sittings["command"].str.contains("models=").all() and list(sittings["wall_clock"]) == ["9 min", "7 min"]
    assert sittings["runs"].iloc[1] == "quick/cifar10/alexnet/seed0; quick/cifar10/squeezenet/seed0"
    readme = (out / "README.md").read_text()
    assert "2 workflow sittings" in readme and "runs: 3 (3 ok, 0 failed)" in readme
    assert (
        "1. `snakemake --cores all tables --config models='[alexnet,mobilenet_v1]'`" in readme
        and "wall-clock 7 min" in readme
    )


def test_publish_merge_refuses_a_changed_run_spec(tmp_path, models_csv):
    from puppet.report.publish import PublishError, publish

    results = _sitting(tmp_path, models_csv, "s1", ("alexnet", 0, 50.0))
    out = publish(results, "paper-x", "sitting 1", merge=True)
    before = (out / "metrics.csv").read_text()
    _sitting(tmp_path, models_csv, "s2", ("alexnet", 0, 70.0), config_hash="other")
    with pytest.raises(PublishError) as err:
        publish(results, "paper-x", "sitting 2", merge=True)
    assert "\n" not in str(err.value) and "quick/cifar10/alexnet/seed0" in str(err.value)
    assert "config_hash h in the snapshot but other" in str(err.value) and "--allow-config-change" in str(err.value)
    assert (out / "metrics.csv").read_text() == before and len(pd.read_csv(out / "sittings.csv")) == 1
    publish(results, "paper-x", "sitting 2", merge=True, allow_config_change=True)
    assert pd.read_csv(out / "metrics.csv")["config_hash"].tolist() == ["other"]


def test_publish_merge_continues_a_snapshot_published_before_sittings_were_recorded(tmp_path, models_csv):
    from puppet.report.publish import publish

    results = _sitting(tmp_path, models_csv, "s1", ("alexnet", 0, 50.0))
    write_tables(results / "metrics.csv", results, results / "models.csv")
    out = publish(results, "quick-old", "snakemake --cores all all", timing="20 min")
    (out / "sittings.csv").unlink()  # as in snapshots published before --merge existed
    _sitting(tmp_path, models_csv, "s2", ("squeezenet", 0, 40.0))
    publish(results, "quick-old", "snakemake --cores all tables --config models='[squeezenet]'", merge=True)
    sittings = pd.read_csv(out / "sittings.csv", keep_default_na=False)
    assert list(sittings["command"]) == [
        "snakemake --cores all all",
        "snakemake --cores all tables --config models='[squeezenet]'",
    ]
    assert sittings["wall_clock"].iloc[0] == "20 min" and sorted(pd.read_csv(out / "metrics.csv")["model"]) == [
        "alexnet",
        "squeezenet",
    ]


def test_publish_merge_error_is_one_line_from_the_cli(tmp_path, models_csv, capsys):
    from puppet.cli import main

    results = _sitting(tmp_path, models_csv, "s1", ("alexnet", 0, 50.0))
    argv = ["publish", "--merge", "--name", "x", "--run-command", "c", "--results", str(results)]
    assert main(argv) == 0
    _sitting(tmp_path, models_csv, "s2", ("alexnet", 0, 50.0), config_hash="other")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot merge") and "\n" not in err


def test_a_model_measured_in_two_deployments_has_a_row_for_each(tmp_path, models_csv):
    """Tables select rows by the deployment key: a run measured as ``default`` and one more
    deployment appears twice in every table that names the model, each labelled by its
    deployment's description and beside the same paper numbers; the default row keeps the train
    job's accuracy and statistics, the other carries its own."""
    other = {
        "deployment": "precomputed",
        "deployment_label": "kernels precomputed per level",
        "status": "ok",
        "error": "",
        "stored_params": 10,
        "param_size_mb": 0.04,
        "latency_s_per_img": 0.0001,
        "macs": 2e6,
        "macs_without_generation": 2e6,
        "kernels_mb": 3.5,
        "top1": 29.0,
        "top5": 80.0,
        "speedup_vs_default": 100.0,
    }
    d = _run(tmp_path, "puppet_cnn", 0, 30.0, deployments=[other]).parent
    m = json.loads((d / "measure.json").read_text())
    m["deployments"][0].update(deployment_label="kernels generated on the fly", macs_without_generation=2e6)
    (d / "measure.json").write_text(json.dumps(m))
    df = collate([d / "train.json"], tmp_path / "metrics.csv").set_index("deployment")
    assert list(df.index) == ["default", "precomputed"]
    assert df.loc["default", "mean_depth"] == 7.0 and math.isnan(df.loc["precomputed", "mean_depth"])
    assert (df.loc["default", "top1"], df.loc["precomputed", "top1"]) == (30.0, 29.0)
    assert df["config_hash"].tolist() == ["h", "h"] and df["device"].tolist() == ["cpu (x86_64)"] * 2
    write_tables(tmp_path / "metrics.csv", tmp_path / "out", models_csv)
    for name in ("table1", "table2", "table4"):  # the tables with a CIFAR-10 Puppet-CNN row
        table = pd.read_csv(tmp_path / "out" / f"{name}.csv")
        ours = table[(table.model == "puppet_cnn") & (table.dataset == "cifar10")]
        assert ours["deployment"].tolist() == ["default", "precomputed"]
        assert ours["label"].str.endswith(("(kernels generated on the fly)", "(kernels precomputed per level)")).all()
    t4 = pd.read_csv(tmp_path / "out" / "table4.csv").set_index(["model", "deployment"])
    fly, pre = t4.loc[("puppet_cnn", "default")], t4.loc[("puppet_cnn", "precomputed")]
    assert fly["latency_s_per_img"] == 0.001 * len("puppet_cnn") and pre["latency_s_per_img"] == 0.0001
    assert fly["macs_g"] == 1e6 * len("puppet_cnn") / 1e9 and pre["macs_g"] == 2e6 / 1e9
    t1 = pd.read_csv(tmp_path / "out" / "table1.csv").set_index(["model", "deployment"])
    fly, pre = t1.loc[("puppet_cnn", "default")], t1.loc[("puppet_cnn", "precomputed")]
    assert (fly["top1"], pre["top1"]) == (30.0, 29.0) and math.isnan(fly["kernels_mb"]) and pre["kernels_mb"] == 3.5
    assert fly["paper_latency_s_per_img"] == pre["paper_latency_s_per_img"] == 0.0039  # the paper's beside both
    # the PDE and SkipNet tables, the provenance and Fig. 3 read one row per run: the default's
    write_figures(tmp_path / "metrics.csv", tmp_path / "figures", models_csv)


def test_a_failed_deployment_is_a_row_of_its_own(tmp_path):
    broken = {"deployment": "precomputed", "deployment_label": "x", "status": "error", "error": "ValueError: no"}
    d = _run(tmp_path, "puppet_cnn", 0, 30.0, deployments=[broken])
    df = collate([d], tmp_path / "metrics.csv").set_index("deployment")
    assert df.loc["default", "status"] == "ok"
    assert df.loc["precomputed", "status"] == "error" and df.loc["precomputed", "error"].endswith("ValueError: no")
    assert math.isnan(df.loc["precomputed", "top1"])  # never the default's accuracy


def test_a_measure_json_written_before_deployments_is_measured_again(tmp_path):
    from puppet.core.runs import inspect_run

    d = _run(tmp_path, "alexnet", 0, 50.0).parent
    m = json.loads((d / "measure.json").read_text())
    old = {**{k: v for k, v in m.items() if k != "deployments"}, **m["deployments"][0]}
    (d / "measure.json").write_text(json.dumps(old))
    state = inspect_run(d)
    assert state.measure == "corrupt" and "deployments" in state.damaged[0][1]
    row = collate([d / "train.json"], tmp_path / "metrics.csv").iloc[0]
    assert row["status"] == "error" and "predates deployments" in row["error"]


def test_tables_refuse_a_metrics_csv_without_deployments(metrics, models_csv, tmp_path):
    from puppet.report.collate import MetricsFormatError

    pd.read_csv(metrics).drop(columns="deployment").to_csv(tmp_path / "old.csv", index=False)
    with pytest.raises(MetricsFormatError, match="collate the runs again"):
        write_tables(tmp_path / "old.csv", tmp_path / "out", models_csv)


def _pde_metrics(train_size=4000, epochs=8):
    rows = []
    for dataset, classes in (("cifar10", 10), ("cifar100", 100)):
        for model, params, macs, top1, ops in (
            ("resnet_global", 161_402 + (classes - 10) * 65, 14_779_018, 60.0, 888_832.0),
            ("resnet32", 466_906 + (classes - 10) * 65, 69_124_746, 65.0, float("nan")),
        ):
            for seed, jitter in ((0, -1.0), (1, 1.0)):
                rows.append(
                    {
                        "profile": "quick",
                        "dataset": dataset,
                        "model": model,
                        "seed": seed,
                        "status": "ok",
                        "error": "",
                        "top1": top1 + jitter,
                        "stored_params": params,
                        "macs": macs,
                        "elementwise_ops": ops,
                        "throughput_img_per_s": 2000.0,
                        "throughput_batch": 128,
                        "epochs": epochs,
                        "train_size": train_size,
                        "recipe": "pde_global_short",
                        "device": "cpu (x86_64)",
                    }
                )
    return pd.DataFrame(rows)


def test_pde_table_puts_the_poster_beside_ours_and_says_what_is_not_built(model_descriptions):
    from puppet.report.pde import pde_table, render

    t = pde_table(_pde_metrics(), model_descriptions).set_index(["section", "label"])
    rg = t.loc[("CIFAR-10 comparison", "ResNet-Global")]
    assert rg["top1"] == 60.0 and math.isclose(rg["top1_std"], 2**0.5) and rg["paper_top1"] == 91.93
    assert math.isnan(rg["top1_diff"]) and not rg["comparable"]  # 8 epochs on a subset: no accuracy Δ
    assert math.isclose(rg["params_k"], 161.402) and math.isclose(rg["params_k_diff"], 161.402 - 162)
    assert math.isclose(rg["macs_m"], 14.779018) and math.isclose(rg["elementwise_mops"], 0.888832)
    assert rg["time_10k_s"] == 5.0 and rg["paper_time_10k_s"] == 1.9 and math.isnan(rg["time_10k_s_diff"])
    assert rg["depth"] == 7 and t.loc[("CIFAR-10 comparison", "ResNet-32"), "depth"] == 15
    mdeq = t.loc[("CIFAR-10 comparison", "MDEQ")]
    assert mdeq["note"] == "paper only: not built here" and math.isnan(mdeq["top1"]) and mdeq["paper_top1"] == 92.28
    footprint = t.loc[("Low model footprint", "ResNet-Global")]
    assert math.isclose(footprint["params_k"], 167.252)  # the poster quotes 100-class counts here
    assert footprint["top1_c10"] == 60.0 and footprint["top1_c100"] == 60.0 and footprint["paper_top1_c100"] == 68.1
    assert len(t.xs("Low model footprint")) == 8
    md = render(pde_table(_pde_metrics(), model_descriptions))
    assert "paper only: not built here" in md and "CIFAR-10 comparison" in md and "Low model footprint" in md


def test_pde_table_gives_an_accuracy_difference_only_at_the_posters_protocol(model_descriptions):
    from puppet.report.pde import pde_table

    t = pde_table(_pde_metrics(train_size=50_000, epochs=300), model_descriptions).set_index(["section", "label"])
    rg = t.loc[("CIFAR-10 comparison", "ResNet-Global")]
    assert rg["comparable"] and math.isclose(rg["top1_diff"], 60.0 - 91.93)
    assert math.isclose(t.loc[("Low model footprint", "ResNet-32"), "top1_c100_diff"], 65.0 - 68.6)


def test_pde_table_says_which_runs_are_missing(model_descriptions):
    from puppet.report.pde import pde_table

    only_c10 = _pde_metrics()
    only_c10 = only_c10[only_c10.dataset == "cifar10"]
    t = pde_table(only_c10, model_descriptions).set_index(["section", "label"])
    assert t.loc[("Low model footprint", "ResNet-Global"), "note"] == "CIFAR-100 not run"
    assert t.loc[("CIFAR-10 comparison", "ResNet-Global"), "note"] == ""


def test_no_difference_across_widths_and_below_chance_is_flagged(metrics, models_csv, tmp_path):
    df = pd.read_csv(metrics)
    df["max_channels"] = 32  # the quick profile's width, against the paper's 512
    df.loc[df.model == "alexnet", "top1"] = 5.0  # below CIFAR-10's 10% chance
    df.to_csv(tmp_path / "m.csv", index=False)
    write_tables(tmp_path / "m.csv", tmp_path / "out", models_csv)
    alex = pd.read_csv(tmp_path / "out" / "table2.csv").set_index("model").loc["alexnet"]
    assert math.isnan(alex["top1_diff"]) and math.isnan(alex["param_size_mb_diff"]) and alex["paper_top1"] == 65.86
    assert "width 32, paper 512: no Δ" in alex["note"] and "below chance (10%)" in alex["note"]
    md = (tmp_path / "out" / "tables.md").read_text()
    assert md.index("## Table 4") < md.index("## Table 5") < md.index("## Table 6")  # the paper's order
    assert "Speed (ms/img)" in md and "|---|---:|" in md  # milliseconds, numbers right-aligned
    tex = (tmp_path / "out" / "tables.tex").read_text()
    assert tex.count(r"\begin{table}") >= 6 and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"Top-1 (\%) ours" in tex and "65.86" in tex


def test_every_model_keeps_one_style_and_figures_say_what_they_show():
    from puppet.core.registry import list_models
    from puppet.report.figures import _label, describe_runs, model_style

    styles = {m: model_style(m) for m in list_models()}
    assert len(set(styles.values())) == len(styles)  # no two models look alike
    # another deployment of a model: the same colour and marker (drawn hollow), named in the legend
    assert _label(pd.Series({"model": "puppet_cnn", "deployment": "precomputed"})) == "puppet_cnn [precomputed]"
    assert _label(pd.Series({"model": "puppet_cnn", "deployment": "default"})) == "puppet_cnn"
    metrics = pd.DataFrame(
        {
            "status": "ok",
            "dataset": "cifar10",
            "model": ["alexnet", "alexnet", "resnet"],
            "seed": [0, 1, 0],
            "profile": "quick",
            "max_channels": 32,
            "epochs": [6, 6, 8],
        }
    )
    assert describe_runs(metrics, "cifar10") == "profile quick, max_channels 32, 6/8 epochs, 2 seeds"


def test_skipnet_table_and_tradeoff_figure(model_descriptions, tmp_path):
    """Every SkipNet configuration that ran gets a row per threshold rule (deployment) saying how it was
    built and trained; the gated share comes from the mean depth (1 + 2 x blocks run, the first block
    always runs); the figure draws the size-matched and the as-published runs in panels of their own."""
    import pandas as pd

    from puppet.report.figures import save
    from puppet.report.skipnet import plot_tradeoff, render, skipnet_table

    rows = [
        ("skipnet", "default", 40.0, 2.0e6, 1 + 2 * (1 + 3.5)),  # 3.5 of 7 gated blocks run
        ("skipnet38", "default", 41.0, 7.7e7, 1 + 2 * (1 + 8.5)),  # 8.5 of 17
        ("skipnet38", "fixed_0.5", 41.2, 8.5e7, 1 + 2 * (1 + 17)),  # every gated block runs
        ("skipnet38_alpha1e-2", "default", 40.5, 7.0e7, 1 + 2 * (1 + 6.8)),
        ("skipnet38_alpha1e-2", "fixed_0.5", 40.6, 8.0e7, 1 + 2 * (1 + 13.6)),
        ("skipnet_gumbel", "default", 34.0, 2.1e6, 1 + 2 * (1 + 7)),
        ("resnet", "default", 35.0, 2.3e6, float("nan")),  # not a SkipNet: no row
    ]
    metrics = pd.DataFrame(
        [
            {
                "dataset": "cifar10",
                "model": m,
                "deployment": d,
                "deployment_label": "calibrated" if d == "default" else "SkipNet's rule",
                "seed": 0,
                "status": "ok",
                "top1": t,
                "top5": 90.0,
                "macs": macs,
                "latency_s_per_img": 1e-3,
                "mean_depth": depth,
                "phases": "",
            }
            for m, d, t, macs, depth in rows
        ]
    )
    built = skipnet_table(metrics, model_descriptions)
    both = built.set_index(["model", "deployment"])
    assert list(both.index) == [
        ("skipnet", "default"),
        ("skipnet38", "default"),
        ("skipnet38", "fixed_0.5"),
        ("skipnet38_alpha1e-2", "default"),
        ("skipnet38_alpha1e-2", "fixed_0.5"),
        ("skipnet_gumbel", "default"),
    ]
    assert both.loc[("skipnet38", "fixed_0.5"), "blocks_executed"] == 100.0
    assert both.loc[("skipnet38", "fixed_0.5"), "label"] == "skipnet38 (SkipNet's rule)"
    table = built[built["deployment"] == "default"].set_index("model")
    assert table.loc["skipnet", "blocks_executed"] == 50.0 and table.loc["skipnet38", "blocks_executed"] == 50.0
    assert table.loc["skipnet38", "configuration"] == "as published"
    assert table.loc["skipnet38_alpha1e-2", "reward"] == "alpha 0.01"
    assert table.loc["skipnet_gumbel", "training"].startswith("ConvNet-AIG")
    assert table.loc["skipnet", "training"] == "SkipNet (SP then HRL)"
    text = render(table.reset_index())
    assert "skipnet38_alpha1e-2" in text and "| 40.50 |" in text
    fig = plot_tradeoff(built)
    dashed = [line for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1  # the alpha curve under SkipNet's fixed rule, beside the calibrated one
    assert [ax.get_title().split(",")[1].split(":")[0].strip() for ax in fig.axes] == ["size-matched", "as published"]
    paths = save(fig, tmp_path / "skipnet_tradeoff")
    assert all(p.stat().st_size > 0 for p in paths)


def test_the_mor_table_has_a_row_per_reduction_in_level_order():
    from puppet.report import engine
    from puppet.report.mor import TABLE

    rows = [("default", "full model", 80.0)] + [(f"pod_deim@{k}", f"POD-DEIM, k = {k}", 50.0 + k) for k in (16, 4, 8)]
    metrics = pd.DataFrame(
        [
            {"profile": "quick", "dataset": "fashion_mnist", "model": "node_conv", "seed": 0, "status": "ok",
             "error": "", "deployment": d, "deployment_label": label, "top1": top1, "macs": 1e6, "macs_ode": 5e5,
             "speedup_vs_default": 1.5, "throughput_speedup_vs_default": 2.0}
            for d, label, top1 in rows
        ]
    )  # fmt: skip
    frame = engine.build(TABLE, metrics, pd.DataFrame())
    assert list(frame["deployment"]) == ["default", "pod_deim@4", "pod_deim@8", "pod_deim@16"]  # 4 < 8 < 16
    assert list(frame["top1"]) == [80.0, 54.0, 58.0, 66.0] and frame["macs_ode_m"].iloc[0] == 0.5
    assert "node_conv (POD-DEIM, k = 4)" in engine.markdown(TABLE, frame)


def test_a_run_at_chance_level_is_flagged_in_its_row_and_in_the_tables(tmp_path, models_csv):
    """At chance: a top-1 that guessing reaches 1 time in 200 (50 test images of 10 classes: 20.9%)."""
    from puppet.report.collate import chance_bound

    bound = chance_bound(10, 50)
    assert bound == pytest.approx(100 * (0.1 + 2.576 * math.sqrt(0.1 * 0.9 / 50)))
    runs = [_run(tmp_path, "alexnet", 0, 15.0), _run(tmp_path, "alexnet", 1, 54.0), _run(tmp_path, "dfn", 0, 21.0)]
    df = collate(runs, tmp_path / "metrics.csv").set_index(["model", "seed"])
    assert df.loc[("alexnet", 0), "at_chance"] == True  # noqa: E712 (a pandas cell, not a bool)
    assert df.loc[("alexnet", 1), "at_chance"] == False and df.loc[("dfn", 0), "at_chance"] == False  # noqa: E712
    assert df.loc[("alexnet", 0), "chance_bound"] == pytest.approx(bound)
    write_tables(tmp_path / "metrics.csv", tmp_path / "out", models_csv)
    alex = pd.read_csv(tmp_path / "out" / "table2.csv").set_index("model").loc["alexnet"]
    assert f"at chance level: 1 of 2 runs at or below {bound:.1f}% top-1" in alex["note"]
    assert "at chance" in (tmp_path / "out" / "tables.md").read_text().split("## All runs")[1]


def test_as_published_sizes_show_the_paper_number_without_a_delta(model_descriptions):
    """An "as published" configuration is not the one built to reach the paper's Params Size: its row keeps
    the paper's number for reference, gives no Δ (DDFN-SW as published once read -285.78 MB) and says why;
    the size-matched row keeps its Δ."""
    from puppet.report.tables import AS_PUBLISHED_SIZE, model_sizes

    sizes = model_sizes(model_descriptions).set_index("model")
    published = sizes.loc["ddfn_sw_published"]
    assert published["paper_param_size_mb"] == 300.83 and pd.isna(published["param_size_mb_diff"])
    assert AS_PUBLISHED_SIZE in published["note"]
    matched = sizes.loc["ddfn_sw"]
    assert matched["param_size_mb_diff"] == pytest.approx(matched["param_size_mb"] - 300.83)
    assert AS_PUBLISHED_SIZE not in str(matched["note"])
    for model, row in sizes.iterrows():  # every as-published configuration, none other
        withheld = str(row["configuration"]).startswith("as published") and not pd.isna(row["paper_param_size_mb"])
        assert (AS_PUBLISHED_SIZE in str(row["note"])) == withheld, model


def test_all_runs_section_reads_like_a_table_a_person_wrote():
    from puppet.report.tables import runs_markdown

    frame = pd.DataFrame(
        [
            dict(dataset="cifar10", model="alexnet", seed=0, deployment="default", status="ok", top1=20.94, top5=77.88,
                 stored_params=13006, param_size_mb=0.05202, macs=2.178e6, latency_s_per_img=2.205e-4,
                 throughput_img_per_s=21810.0, train_time_s=3.643, at_chance=False, mean_depth=float("nan")),
            dict(dataset="cifar10", model="skipnet", seed=1, deployment="default", status="ok", top1=10.0, top5=50.0,
                 stored_params=68700, param_size_mb=0.27, macs=2.34e6, latency_s_per_img=1.09e-3,
                 throughput_img_per_s=900.0, train_time_s=60.0, at_chance=True, mean_depth=5.5),
        ]
    )  # fmt: skip
    text = runs_markdown(frame)
    header, _, first, second = text.splitlines()[2:6]
    assert "Top-1 (%)" in header and "MACs (M)" in header and "Latency (ms/img)" in header and "mean depth" in header
    assert "_" not in header  # no snake_case heading
    assert "| 13,006 |" in first and "| 2.18 |" in first and "| 0.221 |" in first and "| 21,810 |" in first
    assert "e+0" not in text and "| ok, at chance |" in second and "| 5.5 |" in second


def test_markers_that_would_cover_each_other_are_set_side_by_side():
    import matplotlib.pyplot as plt

    from puppet.report.figures import dodge

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_xscale("log")
    points = [(2314, 28.4), (2320, 28.6), (2330, 28.5), (40000, 45.0)]  # three piled up, one apart
    marks = [ax.errorbar([x], [y], marker="o", markersize=7, linestyle="none") for x, y in points]
    assert dodge(ax, marks) == 3
    fig.canvas.draw()
    shown = [m.lines[0].get_transform().transform(m.lines[0].get_xydata()[0]) for m in marks]
    xs = sorted(p[0] for p in shown[:3])
    assert min(b - a for a, b in zip(xs, xs[1:])) >= 8.9 * fig.dpi / 72  # a marker width apart
    assert shown[3] == pytest.approx(ax.transData.transform((40000, 45.0)))  # the lone point stays
    assert marks[0].lines[0].get_xydata()[0][0] == 2314  # the data are not changed, only where they are drawn
    plt.close(fig)
