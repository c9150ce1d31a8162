"""The generate: shorthand (chain, residual, agt)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from topo_ep.errors import TopologyError
from topo_ep.generate import expand_generate
from topo_ep.loader import dump_topology, load_topology, loads_topology
from topo_ep.spec import TopologySpec

TOPOLOGIES = Path(__file__).parent.parent / "topologies"


def _generate(**block: object) -> TopologySpec:
    lines = ["name: g", "input: {size: 6}", "generate:"]
    lines += [f"  {key}: {value}" for key, value in block.items()]
    return loads_topology("\n".join(lines) + "\n", "g.yaml")


def _pairs(spec: TopologySpec, kind: str) -> list[tuple[int, int]]:
    return [
        (int(edge.source[1:]), int(edge.target[1:]))
        for edge in spec.edges
        if edge.kind == kind and edge.source != "input"
    ]


def test_chain_layers_and_edges() -> None:
    spec = _generate(family="chain", depth=4, width=8, gain=0.2, activation="sigmoid")
    assert spec.layer_names == ("h1", "h2", "h3", "h4")
    assert {(layer.size, layer.activation) for layer in spec.layers} == {(8, "sigmoid")}
    assert spec.edges[0].source == "input" and spec.edges[0].target == "h1"
    assert _pairs(spec, "forward") == [(1, 2), (2, 3), (3, 4)]
    assert _pairs(spec, "feedback") == [(2, 1), (3, 2), (4, 3)]
    assert {edge.gain for edge in spec.edges if edge.kind == "forward"} == {1.0}
    feedback = [edge for edge in spec.edges if edge.kind == "feedback"]
    assert {(edge.gain, edge.feedback, edge.learned) for edge in feedback} == {(0.2, "tied", False)}
    assert spec.readout.source == "h4" and spec.readout.size == 10
    assert spec.readout.feedback == "tied"
    assert _pairs(spec, "skip") == []


def test_chain_random_feedback_and_readout_defaults() -> None:
    text = (
        "name: g\ninput: {size: 6}\ngenerate: {family: chain, depth: 2, width: 3, "
        "feedback: random}\nreadout: {size: 4}\n"
    )
    spec = loads_topology(text)
    assert spec.edge("h2", "h1", "feedback").feedback == "random"
    assert (spec.readout.source, spec.readout.size, spec.readout.feedback) == ("h2", 4, "random")


def test_residual_10_skips_every_three() -> None:
    spec = load_topology(TOPOLOGIES / "res_10x64.yaml")
    assert _pairs(spec, "skip") == [(1, 4), (4, 7), (7, 10)]
    assert set(_pairs(spec, "feedback")) >= {(4, 1), (7, 4), (10, 7)}
    skips = [edge for edge in spec.edges if edge.kind == "skip"]
    assert all(edge.learned and edge.gain == 1.0 for edge in skips)
    assert spec.edge("h4", "h1", "feedback").gain == 0.1
    assert len(spec.edges) == 1 + 2 * 9 + 2 * 3


def test_residual_20_skips() -> None:
    spec = load_topology(TOPOLOGIES / "res_20x64.yaml")
    assert _pairs(spec, "skip") == [(1, 4), (4, 7), (7, 10), (10, 13), (13, 16), (16, 19)]
    feedback = set(_pairs(spec, "feedback"))
    assert {(high, low) for low, high in _pairs(spec, "skip")} <= feedback
    assert len(feedback) == 19 + 6


def test_residual_other_spacing() -> None:
    spec = _generate(family="residual", depth=7, width=3, skip_every=2)
    assert _pairs(spec, "skip") == [(1, 3), (3, 5), (5, 7)]


def _agt_reference(depth: int, probability: float, seed: int) -> list[tuple[int, int]]:
    """Links in the documented order: i outer, j inner, one draw per non-adjacent pair."""
    rng = random.Random(seed)
    links = []
    for i in range(1, depth + 1):
        for j in range(1, depth + 1):
            if abs(i - j) > 1 and rng.random() < probability:
                links.append((i, j))
    return links


def test_agt_follows_the_documented_draw_order() -> None:
    spec = _generate(family="agt", depth=8, width=3, probability=0.3, seed=7)
    links = _agt_reference(8, 0.3, 7)
    assert _pairs(spec, "skip") == [(i, j) for i, j in links if i < j]
    feedback = set(_pairs(spec, "feedback"))
    chain = {(k + 1, k) for k in range(1, 8)}
    expected = chain | {(j, i) for i, j in links if i < j} | {(i, j) for i, j in links if i > j}
    assert feedback == expected
    assert len(_pairs(spec, "feedback")) == len(feedback), "no duplicate feedback edges"


def test_agt_directed_links_add_only_the_drawn_edges() -> None:
    """links: directed (the authors' AGT): the same draws, a skip without a feedback partner,
    every drawn downward pair a feedback edge of its own."""
    spec = _generate(family="agt", depth=8, width=3, probability=0.3, seed=7, links="directed")
    links = _agt_reference(8, 0.3, 7)
    assert _pairs(spec, "skip") == [(i, j) for i, j in links if i < j]
    chain = {(k + 1, k) for k in range(1, 8)}
    assert set(_pairs(spec, "feedback")) == chain | {(i, j) for i, j in links if i > j}
    paired = _generate(family="agt", depth=8, width=3, probability=0.3, seed=7)
    partners_only = {(j, i) for i, j in links if i < j} - {(i, j) for i, j in links if i > j}
    assert partners_only, "the draw must hold a skip whose reverse pair was not drawn"
    assert len(paired.edges) - len(spec.edges) == len(partners_only)


def test_agt_is_deterministic_and_seed_dependent() -> None:
    first = _generate(family="agt", depth=10, width=4, seed=3)
    again = _generate(family="agt", depth=10, width=4, seed=3)
    other = _generate(family="agt", depth=10, width=4, seed=4)
    assert first == again
    assert first.edges != other.edges


def test_agt_feedback_is_fixed_random_and_skips_are_learned() -> None:
    spec = _generate(family="agt", depth=6, width=4, probability=1.0, gain=0.05)
    for edge in spec.edges:
        if edge.kind == "feedback":
            assert (edge.feedback, edge.learned, edge.gain) == ("random", False, 0.05)
        else:
            assert edge.learned and edge.feedback is None
    depth = 6
    non_adjacent_pairs = (depth - 1) * (depth - 2) // 2
    assert len(_pairs(spec, "skip")) == non_adjacent_pairs
    assert len(_pairs(spec, "feedback")) == (depth - 1) + non_adjacent_pairs
    assert spec.readout.feedback == "random"


def test_agt_probability_zero_is_the_chain() -> None:
    agt = _generate(family="agt", depth=5, width=4, probability=0)
    chain = _generate(family="chain", depth=5, width=4, feedback="random")
    assert agt.edges == chain.edges


def test_shipped_agt_is_pinned() -> None:
    spec = load_topology(TOPOLOGIES / "agt_10x64.yaml")
    assert _pairs(spec, "skip") == [(i, j) for i, j in _agt_reference(10, 0.2, 0) if i < j]
    assert len(spec.edges) == 29


def test_origin_records_the_completed_block_and_survives_dump() -> None:
    spec = load_topology(TOPOLOGIES / "res_10x64.yaml")
    assert spec.origin == {
        "generate": {
            "family": "residual",
            "depth": 10,
            "width": 64,
            "gain": 0.1,
            "activation": "tanh",
            "feedback": "tied",
            "skip_every": 3,
        }
    }
    text = dump_topology(spec)
    assert "generate:" in text and "origin:" in text
    assert loads_topology(text).origin == spec.origin


def test_expand_generate_leaves_other_data_alone() -> None:
    data = {"name": "x", "input": {"size": 3}}
    assert expand_generate(data) == data and expand_generate(data) is not data
    out = expand_generate({"name": "x", "generate": {"family": "chain", "depth": 2, "width": 3}})
    assert "generate" not in out and [layer["name"] for layer in out["layers"]] == ["h1", "h2"]


@pytest.mark.parametrize(
    ("extra", "kind", "field"),
    [
        ("  family: tree\n  depth: 3\n  width: 4\n", "invalid-value", "generate.family"),
        ("  family: chain\n  depth: 3\n", "missing-key", "generate"),
        ("  family: chain\n  depth: 3\n  width: 4\n  skip_every: 2\n", "unknown-key",
         "generate.skip_every"),
        ("  family: residual\n  depth: 3\n  width: 4\n  skip_every: 1\n", "absurd-number",
         "generate.skip_every"),
        ("  family: agt\n  depth: 3\n  width: 4\n  probability: 1.5\n", "absurd-number",
         "generate.probability"),
        ("  family: chain\n  depth: 3\n  width: 4\n  gain: -1\n", "gain", "generate.gain"),
        ("  family: chain\n  depth: 3000\n  width: 4\n", "absurd-number", "generate.depth"),
        ("  family: chain\n  depth: 3\n  width: 4.5\n", "type", "generate.width"),
    ],
)  # fmt: skip
def test_generate_errors_point_into_the_block(extra: str, kind: str, field: str) -> None:
    text = "name: g\ninput: {size: 6}\ngenerate:\n" + extra
    with pytest.raises(TopologyError) as info:
        loads_topology(text, "g.yaml")
    error = info.value
    assert (error.kind, error.field) == (kind, field), error
    assert error.line is not None and error.line >= 3


def test_generated_readout_errors_still_validate() -> None:
    text = "name: g\ninput: {size: 6}\ngenerate: {family: chain, depth: 2, width: 3}\n"
    with pytest.raises(TopologyError) as info:
        loads_topology(text + "readout: {from: h9}\n", "g.yaml")
    assert info.value.kind == "missing-layer" and info.value.line == 4


def test_generate_respects_the_edge_bound_of_declared_edges() -> None:
    """agt, depth 1000, probability 1 made 999,001 edges and took 84 s to validate; it is now
    refused while generating, at the generate node."""
    from topo_ep import generate
    from topo_ep.fields import MAX_EDGES

    block = "{family: agt, depth: 1000, width: 2, probability: 1}"
    text = f"name: big\ninput: {{size: 4}}\ngenerate: {block}\n"
    with pytest.raises(TopologyError, match=f"more than {MAX_EDGES} edges") as info:
        loads_topology(text, "g.yaml")
    settings = {"family": "agt", "depth": 1000, "gain": 0.1, "feedback": "random"}
    with pytest.raises(generate.TooManyEdges):  # stops as soon as the bound is passed
        generate.generate_edges({**settings, "probability": 1.0, "seed": 0}, most=100)
    assert info.value.kind == "absurd-number" and info.value.location.line == 3


def test_declared_lists_have_the_same_bounds() -> None:
    from topo_ep.fields import MAX_EDGES, MAX_LAYERS
    from topo_ep.validate import spec_from_dict

    base = {"name": "x", "input": {"size": 2}, "readout": {"from": "h1", "size": 2}}
    layers = [{"name": f"h{k}", "size": 1} for k in range(1, MAX_LAYERS + 2)]
    with pytest.raises(TopologyError, match=f"more than the {MAX_LAYERS} allowed"):
        spec_from_dict({**base, "layers": layers, "edges": []})
    edges = [{"source": "input", "target": "h1"}] * (MAX_EDGES + 1)
    with pytest.raises(TopologyError, match=f"more than the {MAX_EDGES} allowed"):
        spec_from_dict({**base, "layers": [{"name": "h1", "size": 1}], "edges": edges})
