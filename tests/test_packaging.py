"""pyproject.toml and environment.yml name the same packages; the README keeps its promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r): r.replace(" ", "") for r in pip if not r.startswith("-e")}
    assert listed == wanted


def test_ptflops_is_pinned():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.fullmatch(r"ptflops==[\d.]+", d.split("#")[0].strip()) for d in deps)


def test_readme_first_screen_has_the_two_commands():
    head = "\n".join((REPO / "README.md").read_text().splitlines()[:40])
    assert "snakemake --cores all tables" in head
    assert "pytest" in head
    assert "results/" in head


# Imports of another library's private modules (a leading underscore in the module path), each
# with the reason it is needed. A new one fails test_private_imports_are_declared until it is
# listed here and tested below.
PRIVATE_IMPORTS = {
    "timm.models._efficientnet_blocks": "MobileNet-v1's DepthwiseSeparableConv; timm has no public equivalent",
    "torch.utils._python_dispatch": "TorchDispatchMode, the CPU memory tracker's hook (no public home)",
    "torch.utils._pytree": "tree_flatten, used with TorchDispatchMode (no public home in torch)",
}


def test_private_imports_are_declared():
    found = set()
    for path in list((REPO / "puppet").rglob("*.py")) + list((REPO / "baselines").rglob("*.py")):
        for module in re.findall(r"^\s*(?:from|import)\s+([\w.]+)", path.read_text(), flags=re.M):
            if module.split(".")[0] not in ("puppet", "baselines") and any(
                p.startswith("_") for p in module.split(".")[1:]
            ):
                found.add(module)
    assert found == set(PRIVATE_IMPORTS)


def _bound(package: str) -> tuple[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    req = next(d.split("#")[0].strip() for d in deps if _name(d) == package)
    return re.search(r">=([\d.]+)", req).group(1), re.search(r"<([\d.]+)", req).group(1)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def test_timm_private_block_is_within_the_tested_bound():
    """The installed timm is inside the declared range, and its private block still has the
    structure the MobileNet-v1 baseline relies on (names of its layers = checkpoint keys)."""
    import timm
    import torch.nn as nn
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv

    low, high = _bound("timm")
    assert _version(low) <= _version(timm.__version__) < _version(high)
    block = DepthwiseSeparableConv(8, 16, stride=1, noskip=True, pw_act=True, act_layer=nn.ReLU6)
    weights = [k for k in block.state_dict() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert weights == ["conv_dw.weight", "bn1.weight", "bn1.bias", "conv_pw.weight", "bn2.weight", "bn2.bias"]
    assert block.conv_dw.groups == 8 and block.conv_pw.kernel_size == (1, 1)


def test_make_divisible_is_torchvision_rounding():
    """MobileNet-v2 widths use timm's public make_divisible: the rounding torchvision's model uses."""
    from timm.layers import make_divisible

    assert [make_divisible(v, 8) for v in (32, 16 * 1.4, 24 * 1.4, 1280, 96 * 1.4, 3)] == [32, 24, 32, 1280, 136, 8]


def test_readme_is_a_landing_page():
    """The README stays short: the reference lives in docs/ (mkdocs)."""
    assert len((REPO / "README.md").read_bytes()) < 10_000


def test_docs_and_code_cite_nothing_outside_the_repository():
    """A reader of the docs or the code never needs a file that is not in the repository."""
    paths = [
        REPO / "README.md",
        *(REPO / "docs").rglob("*.md"),
        *(REPO / "puppet").rglob("*.py"),
        *(REPO / "baselines").rglob("*.py"),
    ]
    for path in paths:
        text = path.read_text()
        for pattern in ("../shared", "shared/spec", "shared/data"):
            assert pattern not in text, f"{path.relative_to(REPO)} cites {pattern}"


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "bench").glob("*.py")))
def test_every_benchmark_script_starts(script):
    """``--help`` imports the script and builds its parser: a moved module breaks it here, not on a GPU."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]


def test_readme_baseline_sizes_are_the_models(model_descriptions):
    """The README's "Baselines: configurations and sizes" table: every model it names is registered, and
    its two numbers are that model's stored size at 512 channels and the paper's Params Size, as
    ``results/sizes.csv`` computes them (so the README cannot drift from the code)."""
    import re

    from puppet.report.tables import model_sizes

    text = (REPO / "README.md").read_text()
    section = text.split("## Baselines: configurations and sizes", 1)[1].split("\n## ", 1)[0]
    sizes = model_sizes(model_descriptions).set_index("model")
    rows = [line for line in section.splitlines() if line.startswith("|") and "`" in line]
    assert len(rows) >= 17, "the table lists every baseline of Tables 1 and 2 and each configuration"
    for line in rows:
        model = re.search(r"`([a-z0-9_.-]+)`", line).group(1)
        ours, paper = (float(c) for c in line.rstrip(" |").split("|")[-2:])
        assert model in sizes.index, f"README names {model}, which is not registered"
        assert ours == round(sizes.loc[model, "param_size_mb"], 2), f"{model}: README says {ours} MB"
        assert paper == sizes.loc[model, "paper_param_size_mb"], f"{model}: README's paper size {paper}"
        configuration = sizes.loc[model, "configuration"]
        if configuration:
            assert configuration.split(":")[0] in line, f"{model}: README should say it is {configuration}"


def test_the_licence_pyproject_names_is_shipped():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
