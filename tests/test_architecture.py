"""The package's import structure: no import circles and no upward imports.

Every module of ``topo_ep`` sits in one layer; a module may import modules of its own layer or of
a lower one, never of a higher one, and the import graph (module-level and function-level imports
alike) has no cycle. A new module must be given its layer here. The graph is read from the source
with ``ast``, so nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "topo_ep"

#: Layers from the bottom up: data flows YAML -> spec -> graph -> compiled network -> engine ->
#: learner -> analysis, and the command line sits on top.
LAYERS: tuple[tuple[str, ...], ...] = (
    # vocabulary: no behaviour beyond plain data and tensors
    (
        "",
        "errors",
        "spec",
        "layout",
        "activations",
        "params",
        "initial",
        "testhooks",
        "interrupts",
        "partial_epoch",
    ),
    # reading and writing files
    ("yaml_source", "fields", "registry", "cifar", "data", "checkpoint", "rundir"),
    # questions about the declared graph
    ("graph", "schedules", "balance", "generate", "block_schema"),
    # the schema and the load path
    ("validate", "graph_io", "overrides", "loader"),
    # block kinds: storage, products, tied transposes and EP's bilinear primitive
    (
        "blocks",
        "blocks.base",
        "blocks.dispatch",
        "blocks.masks",
        "blocks.dense",
        "blocks.sparse",
        "blocks.readout",
        "blocks.bias",
        "blocks.pooling",
        "blocks.conv",
        "blocks.pooled",
    ),
    # compiling into tensors and block operators, and their spectrum
    ("compiler", "spectral", "eigen", "gain_radius"),
    # relaxation
    ("engine", "energy", "fixed_points", "chunks"),
    # learners
    (
        "learn",
        "learn.base",
        "learn.registry",
        "learn.ep",
        "learn.bp",
        "learn.bptt",
        "learn.implicit",
    ),
    # runs, checks and analyses
    (
        "param_groups",
        "warm_start",
        "precision_check",
        "train",
        "distributed",
        "evaluate",
        "gradcheck",
        "testing",
        "bench",
    ),
    (
        "analysis",
        "analysis.tangent",
        "analysis.states",
        "analysis.backends",
        "analysis.balance",
        "analysis.convergence",
        "analysis.drawing",
        "analysis.energy_trace",
        "analysis.gradient_flow",
        "analysis.inputs",
        "analysis.jacobian",
        "analysis.lyapunov",
        "analysis.operator",
        "analysis.plots",
        "analysis.report",
        "analysis.run",
        "analysis.sweep",
        "analysis.tracking",
    ),
    # the command line
    ("cli", "__main__"),
)
RANK = {f"topo_ep.{name}".rstrip("."): rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> nx.DiGraph:
    """Module -> imported module, for every import of a topo_ep module anywhere in a file.

    ``from topo_ep.x import y`` counts as importing ``topo_ep.x`` and, when ``y`` is itself a
    module, ``topo_ep.x.y``. The implicit import of a module's parent package is not counted.
    """
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        tree = ast.parse(path.read_text("utf-8"), str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph.add_edge(name, target, line=node.lineno)
    return graph


def test_every_module_has_a_layer():
    missing = sorted(set(_modules()) - set(RANK))
    assert not missing, f"give these modules a layer in LAYERS: {missing}"
    stale = sorted(set(RANK) - set(_modules()))
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_there_are_no_import_circles():
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], f"import circles: {cycles}"


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    upward = [
        f"{source}:{graph.edges[source, target]['line']} imports {target}"
        for source, target in graph.edges
        if RANK[target] > RANK[source]
    ]
    assert upward == [], "upward imports:\n" + "\n".join(upward)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("topo_ep.generate", "topo_ep.validate"),
        ("topo_ep.graph", "topo_ep.validate"),
        ("topo_ep.learn.base", "topo_ep.learn.ep"),
        ("topo_ep.engine", "topo_ep.graph"),
    ],
)
def test_the_circles_of_the_house_issue_are_gone(source, target):
    """generate <-> validate, graph <-> validate and learn/base <-> the learners were circles;
    the engine read the spec's graph to build schedules."""
    assert not import_graph().has_edge(source, target)


def test_the_scanner_sees_function_level_imports():
    """The scanner is not blind to lazy imports (a circle hidden in a function still counts)."""
    assert import_graph().has_edge("topo_ep.cli", "topo_ep.train")  # imported inside _cmd_train


def test_every_local_module_is_loaded_before_any_test_runs():
    """Hypothesis draws constants from the local modules in ``sys.modules``; conftest loads
    them all up front, so the examples do not depend on which tests ran first."""
    import sys

    from tests.conftest import local_module_names

    names = local_module_names()
    assert "topo_ep.analysis.sweep" in names and "tests.test_properties" in names
    assert [name for name in names if name not in sys.modules] == []
