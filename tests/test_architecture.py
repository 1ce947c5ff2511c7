"""The shape of the code: what may name what, and how large a module may grow.

* Deployments (``puppet.core.protocols.Deploys``) are named only by the model family that defines
  them: the measure path, the collation, the tables, the figures, the CLI and the workflow select
  rows by the ``deployment`` key and never name one, nor a model-name prefix, in their code.
* No module of the package is over ``MAX_LINES`` lines, but for the ones listed in
  ``OVER_MAX_LINES`` (each to be split; the list only shrinks: a listed file that fits fails too,
  so the list stays true).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from puppet import create_model, list_models
from puppet.core.protocols import DEFAULT_DEPLOYMENT, DeployContext, Deploys

ROOT = Path(__file__).resolve().parents[1]
# The code that measures, collates and reports: it must not know any deployment or model by name.
GENERIC = [
    *sorted((ROOT / "puppet" / "core").glob("*.py")),
    *sorted((ROOT / "puppet" / "report").glob("*.py")),
    ROOT / "puppet" / "cli.py",
]
WORKFLOW = [ROOT / "workflow" / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
MAX_LINES = 500
OVER_MAX_LINES: set[str] = set()  # none today


def _deployment_names() -> set[str]:
    names = set()
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name, max_channels=8)
        if isinstance(model, Deploys):
            names |= set(model.deployments(DeployContext())) - {DEFAULT_DEPLOYMENT}
    return names


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every string constant in a Python file but its docstrings (prose)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def _workflow_strings(path: Path) -> list[tuple[int, str]]:
    """Quoted strings on the non-comment lines of a Snakemake file (not Python: no AST)."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        out += [(i, m.group(2)) for m in re.finditer(r"(['\"])(.*?)\1", code)]
    return out


def _names_it(value: str, name: str) -> bool:
    """A string that is a deployment's name, or uses it as a column or key prefix/suffix."""
    return value == name or re.search(rf"(^|[^A-Za-z]){re.escape(name)}_|_{re.escape(name)}($|[^A-Za-z])", value)


PREFIX_TESTS = ("startswith", "endswith", "removeprefix", "removesuffix")


def _prefix_tests(path: Path) -> list[tuple[int, str]]:
    """(line, argument) of every ``.startswith("...")``-like call with a constant argument."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in PREFIX_TESTS:
            for arg in node.args:
                values = arg.elts if isinstance(arg, ast.Tuple) else [arg]
                constants = [v.value for v in values if isinstance(v, ast.Constant)]
                out += [(node.lineno, v) for v in constants if isinstance(v, str)]
    return out


def test_only_the_defining_code_names_a_deployment_or_a_model_prefix():
    names = _deployment_names()
    assert names, "no model declares a deployment: the check would pass vacuously"
    models = list_models()
    offences = []
    for path in GENERIC + WORKFLOW:
        strings = _code_strings(path) if path.suffix == ".py" else _workflow_strings(path)
        for line, value in strings:
            hits = [n for n in names if _names_it(value, n)]
            if hits:
                offences.append(f"{path.relative_to(ROOT)}:{line}: {value[:60]!r} names deployment(s) {hits}")
        for line, value in _prefix_tests(path) if path.suffix == ".py" else []:
            if any(m.startswith(value) and m != value for m in models):  # rows picked by a model-name prefix
                offences.append(f"{path.relative_to(ROOT)}:{line}: selects models by the prefix {value!r}")
    assert not offences, "\n".join(offences)


def test_the_check_finds_a_deployment_or_a_prefix_named_in_code(tmp_path):
    """The check itself: a column prefix and an exact name are found, prose in a docstring is not;
    so is a model-name prefix test."""
    source = tmp_path / "x.py"
    source.write_text(
        '"""Measured precomputed as well."""\nCOLS = ["precomputed_top1", "a"]\nMODE = "precomputed"\n'
        'PUPPETS = [m for m in MODELS if m.startswith(("puppet_", "x"))]\n'
    )
    hits = [(line, v) for line, v in _code_strings(source) if _names_it(v, "precomputed")]
    assert sorted(line for line, _ in hits) == [2, 3]
    assert _prefix_tests(source) == [(4, "puppet_"), (4, "x")]


@pytest.mark.parametrize("path", sorted((ROOT / "puppet").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_too_long_to_read(path):
    name = str(path.relative_to(ROOT))
    lines = len(path.read_text().splitlines())
    if name in OVER_MAX_LINES:
        assert lines > MAX_LINES, f"{name} now fits in {MAX_LINES} lines: take it off OVER_MAX_LINES"
    else:
        assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES}): split it"


def _package_imports(path: Path) -> set[str]:
    """The ``puppet.*`` modules ``path`` imports, at the top or inside a function (not for type
    checkers only: ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("puppet"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # from puppet.report import engine
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("puppet"))
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle of ``graph`` (module -> modules it imports), each as the path that closes it."""
    cycles, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycles.append(path[path.index(node) :] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*path, node])
        done.add(node)

    for start in sorted(graph):
        visit(start, [])
    return cycles


def test_the_package_has_no_import_cycle():
    """Not even through an import inside a function: a module that needs another's helper and is
    needed by it is one module, or the helper belongs to a third (the report's engine)."""
    modules = {}
    for path in sorted((ROOT / "puppet").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {name: {m for m in _package_imports(path) if m in modules and m != name} for name, path in modules.items()}
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}  # its package
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
