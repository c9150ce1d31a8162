"""Graph view and graph queries."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import networkx as nx
import pytest

from topo_ep import balance, graph, graph_io
from topo_ep.errors import TopologyError
from topo_ep.loader import dump_topology, load_topology, loads_topology
from topo_ep.spec import EdgeSpec, TopologySpec

TOPOLOGIES = Path(__file__).parent.parent / "topologies"
SHIPPED = sorted(TOPOLOGIES.glob("*.yaml"))


def _spec(layers: str, edges: list[str], readout: str) -> TopologySpec:
    lines = ["name: t", "input: {size: 4}", "layers:"]
    lines += [f"  - {{name: {name}, size: 4}}" for name in layers.split()]
    lines += [f"readout: {{from: {readout}, size: 2}}", "edges:"]
    lines += [f"  - {{{edge}}}" for edge in edges]
    return loads_topology("\n".join(lines) + "\n")


def _chain(depth: int, gain: float = 0.1) -> TopologySpec:
    text = (
        f"name: c\ninput: {{size: 4}}\n"
        f"generate: {{family: chain, depth: {depth}, width: 4, gain: {gain}}}\n"
    )
    return loads_topology(text)


def test_to_graph_nodes_and_edges() -> None:
    spec = load_topology(TOPOLOGIES / "fre_2x512.yaml")
    g = graph_io.to_graph(spec)
    assert isinstance(g, nx.MultiDiGraph)
    assert list(g.nodes) == ["input", "h1", "h2", "readout"]
    assert g.nodes["input"] == {
        "role": "input",
        "size": 784,
        "mean": 0.1307,
        "std": 0.3081,
        "dataset": "mnist",
    }
    assert g.nodes["h1"] == {"role": "hidden", "size": 512, "activation": "tanh", "bias": False}
    assert g.nodes["readout"]["size"] == 10 and g.nodes["readout"]["feedback"] == "tied"
    assert g.edges["h2", "h1", "feedback"] == {
        "gain": 0.01,
        "feedback": "tied",
        "learned": False,
        "init": "glorot_uniform",
    }
    assert g.has_edge("h2", "readout", "readout")
    assert g.number_of_edges() == len(spec.edges) + 1
    assert g.graph["name"] == "fre_2x512"


def test_multigraph_keeps_parallel_kinds() -> None:
    spec = _spec(
        "a b",
        [
            "source: input, target: a",
            "source: a, target: b",
            "source: a, target: b, kind: skip, gain: 0.5",
            "source: b, target: a, kind: feedback",
        ],
        "b",
    )
    g = graph_io.to_graph(spec)
    assert set(g["a"]["b"]) == {"forward", "skip"}
    assert g.edges["a", "b", "skip"]["gain"] == 0.5


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_from_graph_inverts_to_graph(path: Path) -> None:
    spec = load_topology(path)
    back = graph_io.from_graph(
        graph_io.to_graph(spec),
        dynamics=dataclasses.asdict(spec.dynamics),
        training=dataclasses.asdict(spec.training),
    )
    assert back == spec
    assert back.origin == spec.origin


def test_user_built_graph_exports_to_yaml() -> None:
    g = nx.MultiDiGraph(name="handmade")
    g.add_node("input", size=16)
    g.add_node("low", size=8)
    g.add_node("high", size=8, activation="sigmoid")
    g.add_node("readout", size=3)
    g.add_edge("input", "low")
    g.add_edge("low", "high")
    g.add_edge("high", "low", key="feedback", gain=0.05, feedback="random")
    g.add_edge("input", "high", kind="skip", gain=0.5)
    g.add_edge("high", "readout")
    spec = graph_io.from_graph(g, training={"lr": 0.01})
    assert spec.name == "handmade"
    assert spec.layer_names == ("low", "high")
    assert spec.edge("high", "low", "feedback").feedback == "random"
    assert spec.edge("input", "high", "skip").gain == 0.5
    assert spec.training.lr == 0.01
    assert loads_topology(dump_topology(spec)) == spec


def test_from_graph_validates() -> None:
    g = nx.DiGraph()
    g.add_node("input", size=4)
    g.add_node("h", size=4)
    g.add_node("readout", size=2)
    g.add_edge("h", "readout")
    with pytest.raises(TopologyError) as info:
        graph_io.from_graph(g)
    assert info.value.kind == "unreachable-readout"
    g.add_edge("input", "h", gain=-1.0)
    with pytest.raises(TopologyError) as info:
        graph_io.from_graph(g)
    assert info.value.kind == "gain" and info.value.field == "edges[0].gain"


def test_feedforward_order_uses_edges_then_declaration_order() -> None:
    spec = _spec(
        "top b a mid",
        [
            "source: input, target: b",
            "source: input, target: a",
            "source: a, target: mid",
            "source: b, target: mid",
            "source: mid, target: top",
            "source: top, target: mid, kind: feedback",
        ],
        "top",
    )
    assert graph.feedforward_order(spec) == ["b", "a", "mid", "top"]


def test_feedforward_order_of_residual_net() -> None:
    spec = load_topology(TOPOLOGIES / "res_20x64.yaml")
    assert graph.feedforward_order(spec) == [f"h{k}" for k in range(1, 21)]


def test_reachability_and_edge_queries() -> None:
    spec = _spec(
        "h1 h2 stray",
        [
            "source: input, target: h1",
            "source: h1, target: h2",
            "source: h2, target: h1, kind: feedback",
            "source: stray, target: h2, kind: feedback, feedback: random",
        ],
        "h2",
    )
    assert graph.reachable_from_input(spec) == {"h1", "h2"}
    assert [edge.key for edge in graph.feedback_edges(spec)] == [
        "h2->h1:feedback",
        "stray->h2:feedback",
    ]
    assert [edge.key for edge in graph.forward_edges(spec)] == [
        "input->h1:forward",
        "h1->h2:forward",
    ]
    assert len(graph.learned_edges(spec)) == 2
    assert [edge.key for edge in graph.incoming(spec, "h2")] == [
        "h1->h2:forward",
        "stray->h2:feedback",
    ]


def test_find_forward_cycle() -> None:
    edges = [
        EdgeSpec("input", "a"),
        EdgeSpec("a", "b"),
        EdgeSpec("b", "c", "skip"),
        EdgeSpec("c", "a"),
        EdgeSpec("c", "b", "feedback", feedback="random", learned=False),
    ]
    cycle = graph.find_forward_cycle(["a", "b", "c"], edges)
    assert cycle is not None
    assert {edge.key for edge in cycle} == {"a->b:forward", "b->c:skip", "c->a:forward"}
    assert graph.find_forward_cycle(["a", "b", "c"], edges[:3] + edges[4:]) is None


def test_update_groups() -> None:
    assert graph.update_groups(_chain(5)) == [["h1", "h3", "h5"], ["h2", "h4"]]
    triangle = _spec(
        "a b c",
        [
            "source: input, target: a",
            "source: a, target: b",
            "source: b, target: c",
            "source: a, target: c, kind: skip",
        ],
        "c",
    )
    assert graph.update_groups(triangle) == [["a"], ["b"], ["c"]]
    res = load_topology(TOPOLOGIES / "res_10x64.yaml")
    groups = graph.update_groups(res)
    links = graph.neighbours(res)
    for group in groups:
        assert not any(links[name] & set(group) for name in group)
    assert sorted(name for group in groups for name in group) == sorted(res.layer_names)


def test_energy_scales_of_a_chain() -> None:
    spec = dataclasses.replace(
        _chain(3),
        edges=tuple(
            dataclasses.replace(edge, gain=0.25) if edge.key == "h3->h2:feedback" else edge
            for edge in _chain(3).edges
        ),
    )
    scales = balance.energy_scales(spec)
    assert scales is not None
    assert scales["h1"] == 1.0
    assert math.isclose(scales["h2"], math.sqrt(0.1))
    assert math.isclose(scales["h3"], math.sqrt(0.1) * 0.5)
    assert balance.is_balanced(spec)


def test_energy_balance_with_skips() -> None:
    # A skip 1->3 with feedback gain 0.01 matches the chain's product 0.1 * 0.1: balanced.
    edges = [
        "source: input, target: h1",
        "source: h1, target: h2",
        "source: h2, target: h3",
        "source: h2, target: h1, kind: feedback, gain: 0.1",
        "source: h3, target: h2, kind: feedback, gain: 0.1",
        "source: h1, target: h3, kind: skip",
    ]
    balanced = _spec(
        "h1 h2 h3", edges + ["source: h3, target: h1, kind: feedback, gain: 0.01"], "h3"
    )
    assert balance.is_balanced(balanced)
    # The paper's residual nets scale every feedback by the same gain: no energy.
    unbalanced = _spec(
        "h1 h2 h3", edges + ["source: h3, target: h1, kind: feedback, gain: 0.1"], "h3"
    )
    assert balance.energy_scales(unbalanced) is None
    assert not balance.is_balanced(load_topology(TOPOLOGIES / "res_10x64.yaml"))
    assert balance.is_balanced(load_topology(TOPOLOGIES / "chain_10x64.yaml"))


def test_random_or_missing_feedback_has_no_energy() -> None:
    assert not balance.is_balanced(load_topology(TOPOLOGIES / "agt_10x64.yaml"))
    no_feedback = _spec("h1 h2", ["source: input, target: h1", "source: h1, target: h2"], "h2")
    assert balance.energy_scales(no_feedback) is None
    single = _spec("h1", ["source: input, target: h1"], "h1")
    assert balance.energy_scales(single) == {"h1": 1.0}
