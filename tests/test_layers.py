"""Layers import one way: every import in kon_ray/ and analysis/ (lazy ones included), read with ast.

Low to high: config and results, data, model, losses, evaluation, backbone, run identity and
checkpoint, training, distributed, studies, saved runs (export, predict), bench, analysis, cli. A
module imports only its own layer or lower ones, and no modules import each other in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS: tuple[tuple[str, ...], ...] = (
    ("kon_ray", "kon_ray.config", "kon_ray.overrides", "kon_ray.settings", "kon_ray.results",
     "kon_ray.paper", "kon_ray.console", "kon_ray.faults"),
    ("kon_ray.data",),
    ("kon_ray.model",),
    ("kon_ray.losses",),
    ("kon_ray.evaluation", "kon_ray.baseline"),
    ("kon_ray.backbone", "kon_ray.run_identity", "kon_ray.checkpoint"),
    ("kon_ray.training",),
    ("kon_ray.distributed", "kon_ray.train_reports"),
    ("kon_ray.studies",),
    ("kon_ray.saved_run", "kon_ray.predict"),
    ("kon_ray.bench",),
    ("analysis",),
    ("kon_ray.cli",),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for d in ("kon_ray", "analysis") for p in sorted((ROOT / d).rglob("*.py"))}


def layer(module: str) -> int:
    """The layer of ``module``: that of the longest prefix named in LAYERS (the package ``kon_ray``
    itself names only its ``__init__``, so that a new module must be placed)."""
    prefixes = [p for names in LAYERS for p in names
                if module == p or (p != "kon_ray" and module.startswith(p + "."))]  # fmt: skip
    assert prefixes, f"{module}: not in LAYERS; add it to its layer"
    best = max(prefixes, key=len)
    return next(i for i, names in enumerate(LAYERS) if best in names)


def imports(module: str) -> set[str]:
    """Project modules that ``module`` imports anywhere (``from a import b``: ``a.b`` if that is a module)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer(module)  # a new top-level module must be placed in LAYERS


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module: str) -> None:
    upward = sorted(name for name in GRAPH[module] if layer(name) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports higher layers: {upward}"


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports in ``graph`` (depth-first search for a back edge), or None."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for name in sorted(graph[module]):
            if state.get(name) == "open":
                return [*path[path.index(name) :], name]
            if name not in state and (circle := visit(name, [*path, name])):
                return circle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module, [module])):
            return circle
    return None


def test_no_import_circle() -> None:
    circle = find_circle(GRAPH)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_checker_sees_imports_layers_and_circles() -> None:
    """The rules fail where they should (guards against a checker that reads nothing)."""
    assert "kon_ray.studies.folder" in GRAPH["kon_ray.studies.table"]
    assert "kon_ray.training" in GRAPH["kon_ray.bench.common"]  # lazy and TYPE_CHECKING imports count
    assert layer("kon_ray.bench.common") > layer("kon_ray.training.fit") > layer("kon_ray.checkpoint")
    assert layer("analysis.report") > layer("kon_ray.studies.study") > layer("kon_ray.paper")
    with pytest.raises(AssertionError, match="not in LAYERS"):
        layer("kon_ray.new_module")
    old = {**GRAPH, "kon_ray.studies.tune": GRAPH["kon_ray.studies.tune"] | {"kon_ray.studies.table"},
           "kon_ray.studies.table": GRAPH["kon_ray.studies.table"] | {"kon_ray.studies.tune"}}  # fmt: skip
    assert set(find_circle(old) or ()) == {"kon_ray.studies.table", "kon_ray.studies.tune"}
