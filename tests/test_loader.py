"""Loading, dumping, overrides and YAML details of topology files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from topo_ep.errors import Location, TopologyError
from topo_ep.loader import dump_topology, load_topology, loads_topology, save_topology
from topo_ep.overrides import apply_overrides
from topo_ep.spec import (
    ACTIVATIONS,
    FEEDBACK_MODES,
    INITS,
    DynamicsSpec,
    EdgeSpec,
    InputSpec,
    LayerSpec,
    ReadoutSpec,
    TopologySpec,
)
from topo_ep.validate import spec_from_dict
from topo_ep.yaml_source import KEY_MARK, parse_yaml

TOPOLOGIES = Path(__file__).parent.parent / "topologies"
SHIPPED = sorted(TOPOLOGIES.glob("*.yaml"))

SMALL = """\
name: small
input: {size: 4}
layers:
  - {name: h1, size: 3}
  - {name: h2, size: 3}
readout: {from: h2, size: 2}
edges:
  - {source: input, target: h1}
  - {source: h1, target: h2}
  - {source: h2, target: h1, kind: feedback, gain: 0.1}
"""


def _error(text: str, overrides: tuple[str, ...] = ()) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        loads_topology(text, "t.yaml", overrides)
    return info.value


# -- shipped files ------------------------------------------------------------------------------


def test_ship_exactly_the_documented_topologies() -> None:
    assert {path.stem for path in SHIPPED} == {
        "fre_2x512",
        "fre_3x512",
        "chain_5x64",
        "chain_10x64",
        "res_10x64",
        "res_20x64",
        "agt_10x64",
        "quickstart",
        "sparse_2x1024",
        "conv_mnist",
    }


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_topology_round_trips(path: Path, tmp_path: Path) -> None:
    spec = load_topology(path)
    assert spec.name == path.stem
    again = loads_topology(dump_topology(spec))
    assert again == spec
    assert again.origin == spec.origin
    save_topology(spec, tmp_path / "copy.yaml")
    assert load_topology(tmp_path / "copy.yaml") == spec


def test_fre_2x512_matches_the_paper_settings() -> None:
    spec = load_topology(TOPOLOGIES / "fre_2x512.yaml")
    assert spec.input == InputSpec(784, mean=0.1307, std=0.3081, dataset="mnist")
    assert [(layer.name, layer.size, layer.activation) for layer in spec.layers] == [
        ("h1", 512, "tanh"),
        ("h2", 512, "tanh"),
    ]
    assert spec.readout == ReadoutSpec("h2", 10, "tied", False)
    feedback = spec.edge("h2", "h1", "feedback")
    assert feedback.gain == 0.01 and feedback.is_tied and not feedback.learned
    assert spec.dynamics == DynamicsSpec("synchronous", 10, 5, 0.0, spec.dynamics.check_every)
    training = spec.training
    assert (training.nudge, training.lr, training.batch_size, training.epochs) == (
        0.1,
        1e-3,
        500,
        50,
    )
    assert (training.optimizer, training.rule, training.nudging, training.error) == (
        "adam",
        "paper",
        "one-sided",
        "held",
    )


def test_fre_3x512_and_deep_step_counts() -> None:
    fre3 = load_topology(TOPOLOGIES / "fre_3x512.yaml")
    assert (len(fre3.layers), fre3.dynamics.free_steps, fre3.dynamics.nudged_steps) == (3, 18, 10)
    for stem, depth in [("chain_5x64", 5), ("chain_10x64", 10), ("res_10x64", 10),
                        ("res_20x64", 20), ("agt_10x64", 10)]:  # fmt: skip
        spec = load_topology(TOPOLOGIES / f"{stem}.yaml")
        assert len(spec.layers) == depth and {layer.size for layer in spec.layers} == {64}
        assert (spec.dynamics.free_steps, spec.dynamics.nudged_steps) == (10 * depth, 5 * depth)
        assert {edge.gain for edge in spec.edges if edge.kind == "feedback"} == {0.1}


def test_quickstart_settings() -> None:
    spec = load_topology(TOPOLOGIES / "quickstart.yaml")
    assert spec.input.size == 64 and spec.layer_names == ("h1", "h2")
    assert (spec.input.mean, spec.input.std) == (0.305, 0.376)  # the training split's own
    assert spec.dynamics == DynamicsSpec("sweep", 20, 10, 1e-4, 2)
    training = spec.training
    assert (training.lr, training.lr_schedule, training.batch_size, training.epochs) == (
        2e-3,
        "cosine",
        16,
        20,
    )
    assert training.nudging == "symmetric"


# -- hand-written round trips -------------------------------------------------------------------


def _unusual_spec() -> TopologySpec:
    return TopologySpec(
        name="1e3",
        description="yes: a 'quoted' #description\nover two lines, ünïcødé",
        input=InputSpec(5, mean=0.5, std=0.25),
        layers=(
            LayerSpec("a", 5, "hard_sigmoid", True),
            LayerSpec("b-2", 7, "identity", False),
            LayerSpec("_c", 5, "sigmoid", True),
        ),
        readout=ReadoutSpec("_c", 3, "random", True),
        edges=(
            EdgeSpec("input", "a", "forward", 1.0, None, False, "identity"),
            EdgeSpec("a", "b-2", "forward", 2.5, None, True, "zeros"),
            EdgeSpec("b-2", "_c", "forward"),
            EdgeSpec("a", "_c", "skip", 0.5, None, True, "identity"),
            EdgeSpec("b-2", "a", "feedback", 1e-5, "tied", False),
            EdgeSpec("_c", "a", "feedback", 0.0, "random", False, "identity"),
        ),
        dynamics=DynamicsSpec("sweep", 7, 3, 1e-7, 1),
        origin={"note": {"made": "by hand", "values": [1, 2.5, None]}},
    )


def test_hand_written_spec_round_trips() -> None:
    spec = _unusual_spec()
    assert spec_from_dict(spec.to_dict()) == spec
    text = dump_topology(spec)
    again = loads_topology(text)
    assert again == spec
    assert again.origin == spec.origin
    assert again.description == spec.description


def test_dump_is_readable_yaml() -> None:
    text = dump_topology(loads_topology(SMALL))
    assert "- {source: h2, target: h1, kind: feedback, gain: 0.1" in text
    assert "readout:\n  from: h2\n" in text


_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,6}", fullmatch=True).filter(
    lambda name: name not in ("input", "readout")
)
_GAINS = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


@st.composite
def _specs(draw: st.DrawFn) -> TopologySpec:
    names = draw(st.lists(_NAMES, min_size=1, max_size=5, unique=True))
    size = st.integers(1, 50)
    layers = tuple(
        LayerSpec(name, draw(size), draw(st.sampled_from(ACTIVATIONS)), draw(st.booleans()))
        for name in names
    )
    edges = [EdgeSpec("input", names[0], gain=draw(_GAINS))]
    for low, high in zip(names, names[1:], strict=False):
        edges.append(EdgeSpec(low, high, draw(st.sampled_from(["forward", "skip"]))))
    for i in range(len(names)):
        for j in range(i + 2, len(names)):
            if draw(st.booleans()):
                edges.append(EdgeSpec(names[i], names[j], "skip", draw(_GAINS)))
    for edge in list(edges):
        if edge.source != "input" and draw(st.booleans()):
            mode = draw(st.sampled_from(FEEDBACK_MODES))
            edges.append(EdgeSpec(edge.target, edge.source, "feedback", draw(_GAINS), mode, False))
    edges = [
        dataclasses.replace(
            edge,
            init=draw(st.sampled_from(INITS))
            if not edge.is_tied
            and layers_size(layers, edge.source) == layers_size(layers, edge.target)
            else edge.init,
        )
        for edge in edges
    ]
    order = draw(st.permutations(edges))
    return TopologySpec(
        name=draw(st.text(min_size=1, max_size=20).filter(str.strip)),
        description=draw(st.text(max_size=30)),
        input=InputSpec(layers[0].size),
        layers=layers,
        readout=ReadoutSpec(
            names[-1], draw(st.integers(2, 20)), draw(st.sampled_from(FEEDBACK_MODES))
        ),
        edges=tuple(order),
        dynamics=DynamicsSpec(tolerance=draw(st.floats(0, 1))),
    )


def layers_size(layers: tuple[LayerSpec, ...], name: str) -> int:
    return layers[0].size if name == "input" else next(x.size for x in layers if x.name == name)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_specs())
def test_random_valid_specs_round_trip(spec: TopologySpec) -> None:
    assert spec_from_dict(spec.to_dict()) == spec
    assert loads_topology(dump_topology(spec)) == spec


# -- YAML details --------------------------------------------------------------------------------


def test_positions_of_values_and_keys() -> None:
    data, positions = parse_yaml(SMALL, "s.yaml")
    assert data["edges"][2]["gain"] == 0.1
    assert positions[("edges", 2, "gain")] == Location("s.yaml", 10, 52)
    assert positions[("edges", 2, "gain", KEY_MARK)] == Location("s.yaml", 10, 46)
    assert positions[("layers", 1)] == Location("s.yaml", 5, 5)
    assert positions[()] == Location("s.yaml", 1, 1)


def test_yaml12_floats_and_timestamps() -> None:
    data, _ = parse_yaml("a: 1e-3\nb: 5E4\nc: '1e-3'\nd: 2024-01-02\ne: 0x1F\nf: 1_000\n", "x")
    assert data == {"a": 1e-3, "b": 5e4, "c": "1e-3", "d": "2024-01-02", "e": 31, "f": 1000}


def test_merge_keys_and_aliases_expand() -> None:
    text = (
        SMALL.replace(
            "  - {source: h2, target: h1, kind: feedback, gain: 0.1}\n",
            "  - &fb {source: h2, target: h1, kind: feedback, gain: 0.1}\n",
        )
        + "dynamics: &dyn {free_steps: 7}\ntraining:\n  <<: {lr: 0.5, epochs: 3}\n  lr: 0.25\n"
    )
    spec = loads_topology(text)
    assert spec.dynamics.free_steps == 7
    assert (spec.training.lr, spec.training.epochs) == (0.25, 3)


def test_error_falls_back_to_the_nearest_ancestor() -> None:
    data, positions = parse_yaml(SMALL, "s.yaml")
    del positions[("layers", 1, "size")]
    data["layers"][1]["size"] = -1
    with pytest.raises(TopologyError) as info:
        spec_from_dict(data, positions, "s.yaml")
    assert info.value.location == Location("s.yaml", 5, 5)
    assert info.value.field == "layers[1].size"


def test_dict_without_positions_names_the_dict() -> None:
    with pytest.raises(TopologyError) as info:
        spec_from_dict({"name": "x"})
    assert info.value.kind == "missing-key" and str(info.value.location) == "<dict>"


@pytest.mark.parametrize(
    ("old", "new", "kind", "needle"),
    [
        ("kind: feedback, gain: 0.1}", "kind: feedback, gain: 0.1, learned: true}", "tied-partner",
         "follows the weights"),
        ("kind: feedback, gain: 0.1}", "kind: feedback, gain: 0.1, init: zeros}", "invalid-value",
         "no weights of its own"),
        ("{source: h1, target: h2}", "{source: h2, target: h2}", "cycle", "itself"),
        ("source: h2, target: h1, kind: feedback", "source: input, target: h1, kind: feedback",
         "invalid-value", "only be the source"),
        ("{name: h1, size: 3}", "{name: readout, size: 3}", "duplicate", "reserved"),
        ("readout: {from: h2, size: 2}", "readout: {from: input, size: 2}", "missing-layer",
         "not the input"),
        ("readout: {from: h2, size: 2}", "readout: {from: h2, size: 1}", "absurd-number", "2 to"),
        ("{name: h1, size: 3}", "{name: 'h 1', size: 3}", "invalid-value", "letters, digits"),
        ("kind: feedback", "kind: feedbak", "invalid-value", "did you mean 'feedback'?"),
        ("{source: h1, target: h2}", "{source: h1, target: h2, learned: 1}", "type",
         "true or false"),
        ("name: small", "name: ''", "invalid-value", "empty"),
        ("name: small", "name: [a]", "type", "string"),
        ("readout: {from: h2, size: 2}", "readout: [h2]", "type", "readout with keys"),
    ],
)  # fmt: skip
def test_semantic_errors(old: str, new: str, kind: str, needle: str) -> None:
    assert old in SMALL
    error = _error(SMALL.replace(old, new, 1))
    assert error.kind == kind, error
    assert needle in error.message, error
    assert error.line is not None


def test_int_is_a_float_but_bool_is_not() -> None:
    assert loads_topology(SMALL + "training: {lr: 1}\n").training.lr == 1.0
    error = _error(SMALL + "training: {lr: true}\n")
    assert error.kind == "type" and error.field == "training.lr" and error.line == 11


# -- overrides ------------------------------------------------------------------------------------


def test_override_by_index_name_and_edge_key() -> None:
    spec = loads_topology(
        SMALL,
        overrides=[
            "layers.0.size=128",
            "layers.h2.activation=sigmoid",
            "edges.h2->h1:feedback.gain=0.05",
            "edges.h1->h2.gain=2",
            "training.lr=1e-3",
            "dynamics.schedule=sweep",
        ],
    )
    assert spec.layer("h1").size == 128
    assert spec.layer("h2").activation == "sigmoid"
    assert spec.edge("h2", "h1", "feedback").gain == 0.05
    assert spec.edge("h1", "h2", "forward").gain == 2.0
    assert spec.training.lr == 1e-3
    assert spec.dynamics.schedule == "sweep"


def test_apply_overrides_returns_a_new_dict() -> None:
    data, _ = parse_yaml(SMALL, "s")
    result = apply_overrides(data, ["layers.0.size=9"])
    assert result["layers"][0]["size"] == 9 and data["layers"][0]["size"] == 3


def test_feedback_gain_sets_every_feedback_edge() -> None:
    spec = load_topology(TOPOLOGIES / "res_10x64.yaml", overrides=["feedback_gain=0.02"])
    gains = {edge.gain for edge in spec.edges if edge.kind == "feedback"}
    assert gains == {0.02}
    assert {edge.gain for edge in spec.edges if edge.kind != "feedback"} == {1.0}


def test_generate_override_applies_before_expansion() -> None:
    spec = load_topology(
        TOPOLOGIES / "chain_10x64.yaml", overrides=["generate.depth=3", "layers.h3.size=32"]
    )
    assert spec.layer_names == ("h1", "h2", "h3")
    assert spec.layer("h3").size == 32 and spec.readout.source == "h3"
    assert spec.origin["generate"]["depth"] == 3


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("layers.0.size", "PATH=VALUE"),
        ("=3", "malformed"),
        ("layers..size=3", "malformed"),
        ("layers.5.size=3", "out of range"),
        ("layers.h11.size=3", "did you mean 'h1'?"),
        ("layers.x.size=3", "available: h1, h2"),
        ("name.first=x", "is a value"),
        ("generate.depth=3", "generate: block"),
        ("edges.0.gain=[1", "cannot read"),
        ("feedback_gain=1e400", "cannot read"),
    ],
)
def test_bad_overrides(override: str, needle: str) -> None:
    error = _error(SMALL, (override,))
    assert error.kind == "override", error
    assert needle in error.message
    assert error.location == Location("--set")


def test_invalid_override_value_points_at_set() -> None:
    error = _error(SMALL, ("layers.h1.size=-3",))
    assert (error.kind, error.field, str(error.location)) == ("absurd-number", "layers[0].size",
                                                             "--set")  # fmt: skip
    error = _error(SMALL, ("training.lrr=1",))
    assert error.kind == "unknown-key" and "did you mean 'lr'?" in error.message
    assert str(error.location) == "--set"
    error = _error(SMALL, ("feedback_gain=-1",))
    assert error.kind == "gain" and str(error.location) == "--set"


def test_feedback_gain_without_feedback_edges_is_an_error() -> None:
    text = SMALL.replace("  - {source: h2, target: h1, kind: feedback, gain: 0.1}\n", "")
    assert _error(text, ("feedback_gain=0.1",)).kind == "override"


@pytest.mark.parametrize("text", ["0 \x85", "a\x85b\u2028c", "x\ny ", " lead\r\n", "tab\there"])
def test_strings_with_yaml_line_breaks_round_trip(text):
    spec = loads_topology((TOPOLOGIES / "quickstart.yaml").read_text("utf-8"))
    changed = dataclasses.replace(spec, name=text, description=text)
    assert loads_topology(dump_topology(changed)) == changed
