"""Malformed topology files give one clear error line, exit code 2 and no traceback."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from topo_ep import cli
from topo_ep.errors import ERROR_KINDS, TopologyError
from topo_ep.loader import load_topology, loads_topology

BAD = Path(__file__).parent / "bad_inputs"
SHIPPED = sorted((Path(__file__).parent.parent / "topologies").glob("*.yaml"))

# file name -> (kind, line or None when the error concerns the whole file, field substring or None)
CASES: dict[str, tuple[str, int | None, str | None]] = {
    "yaml_syntax_unclosed_flow.yaml": ("yaml-syntax", 7, None),
    "yaml_syntax_tab_indent.yaml": ("yaml-syntax", 4, None),
    "yaml_syntax_two_documents.yaml": ("yaml-syntax", 12, None),
    "yaml_syntax_deep_nesting.yaml": ("yaml-syntax", 1, None),
    "type_size_string.yaml": ("type", 6, "layers[1].size"),
    "type_size_bool.yaml": ("type", 5, "layers[0].size"),
    "type_gain_string.yaml": ("type", 11, "edges[2].gain"),
    "type_layers_mapping.yaml": ("type", 5, "layers"),
    "type_python_tag.yaml": ("type", 2, "name"),
    "type_non_string_key.yaml": ("type", 7, "readout"),
    "type_empty_file.yaml": ("type", 1, None),
    "type_top_level_list.yaml": ("type", 2, None),
    "unknown_key_activaton.yaml": ("unknown-key", 6, "layers[1].activaton"),
    "unknown_key_top_level.yaml": ("unknown-key", 12, "trainig"),
    "unknown_key_generate.yaml": ("unknown-key", 8, "generate.probabilty"),
    "duplicate_key_gain.yaml": ("duplicate-key", 15, "edges[2].gain"),
    "absurd_int_5000_digits.yaml": ("absurd-number", 5, "layers[0].size"),
    "absurd_float_overflow.yaml": ("absurd-number", 11, "edges[2].gain"),
    "absurd_negative_size.yaml": ("absurd-number", 3, "input.size"),
    "absurd_zero_size.yaml": ("absurd-number", 6, "layers[1].size"),
    "absurd_huge_size.yaml": ("absurd-number", 5, "layers[0].size"),
    "absurd_huge_steps.yaml": ("absurd-number", 13, "dynamics.free_steps"),
    "absurd_zero_lr.yaml": ("absurd-number", 14, "training.lr"),
    "absurd_zero_input_std.yaml": ("absurd-number", 6, "input.std"),
    "absurd_generate_depth.yaml": ("absurd-number", 4, "generate.depth"),
    "invalid_activation.yaml": ("invalid-value", 5, "layers[0].activation"),
    "invalid_edge_to_input.yaml": ("invalid-value", 12, "edges[3].target"),
    "invalid_generate_with_layers.yaml": ("invalid-value", 4, "layers"),
    "invalid_agt_tied.yaml": ("invalid-value", 8, "generate.feedback"),
    "gain_nan.yaml": ("gain", 11, "edges[2].gain"),
    "gain_negative.yaml": ("gain", 11, "edges[2].gain"),
    "gain_infinite.yaml": ("gain", 10, "edges[1].gain"),
    "missing_layer_edge_target.yaml": ("missing-layer", 10, "edges[1].target"),
    "missing_layer_readout.yaml": ("missing-layer", 7, "readout.from"),
    "missing_key_layer_size.yaml": ("missing-key", 6, "layers[1]"),
    "missing_key_edges.yaml": ("missing-key", 2, None),
    "duplicate_layer_name.yaml": ("duplicate", 6, "layers[1].name"),
    "duplicate_layer_named_input.yaml": ("duplicate", 5, "layers[0].name"),
    "duplicate_edge.yaml": ("duplicate", 12, "edges[3]"),
    "tied_without_partner.yaml": ("tied-partner", 11, "edges[2]"),
    "tied_learned_feedback.yaml": ("tied-partner", 11, "edges[2].learned"),
    "tied_feedback_key_on_forward.yaml": ("tied-partner", 10, "edges[1].feedback"),
    "size_mismatch_identity.yaml": ("size-mismatch", 9, "edges[0].init"),
    "unreachable_readout.yaml": ("unreachable-readout", 7, "readout.from"),
    "cycle_forward.yaml": ("cycle", 14, "edges[4]"),
    "alias_bomb_billion_laughs.yaml": ("alias-bomb", 2, None),
    "alias_bomb_recursive.yaml": ("alias-bomb", 3, "input.inner"),
    "encoding_non_utf8.yaml": ("encoding", 3, None),
    "encoding_binary_nul.yaml": ("encoding", 5, None),
    "encoding_utf16.yaml": ("encoding", 1, None),
    "tied_edge_lr.yaml": ("tied-partner", 11, "edges[2].lr"),
    "absurd_negative_edge_lr.yaml": ("absurd-number", 12, "edges[1].lr"),
    "type_readout_lr_string.yaml": ("type", 9, "readout.lr"),
    "invalid_random_feedback_lr.yaml": ("invalid-value", 11, "edges[2].weight_decay"),
    "invalid_layer_lr_without_bias.yaml": ("invalid-value", 5, "layers[0].lr"),
    "unknown_key_edge_weight_decy.yaml": ("unknown-key", 8, "edges[0].weight_decy"),
    "directory.yaml": ("path", None, None),
    "does_not_exist.yaml": ("path", None, None),
}

# Hints the messages must carry, beyond kind, line and field.
HINTS = {
    "unknown_key_activaton.yaml": "did you mean 'activation'?",
    "unknown_key_top_level.yaml": "did you mean 'training'?",
    "unknown_key_generate.yaml": "did you mean 'probability'?",
    "invalid_activation.yaml": "tanh, hard_sigmoid, sigmoid, identity",
    "missing_layer_readout.yaml": "hidden2",
    "cycle_forward.yaml": "h1 -> h2 -> h3 -> h1",
    "duplicate_key_gain.yaml": "first on line 14",
    "directory.yaml": "is a directory",
    "does_not_exist.yaml": "looked for",
    "encoding_non_utf8.yaml": "byte offset 58",
    "tied_edge_lr.yaml": "set it on that forward or skip edge",
    "invalid_random_feedback_lr.yaml": "random feedback is a fixed matrix",
    "invalid_layer_lr_without_bias.yaml": "add 'bias: true'",
    "unknown_key_edge_weight_decy.yaml": "did you mean 'weight_decay'?",
}


def test_table_covers_every_fixture_and_many_kinds() -> None:
    on_disk = {path.name for path in BAD.iterdir()}
    assert on_disk == set(CASES) - {"does_not_exist.yaml"}
    assert len(CASES) >= 30
    kinds = {kind for kind, _, _ in CASES.values()}
    assert kinds <= set(ERROR_KINDS)
    assert len(kinds) >= 14


@pytest.mark.parametrize("name", sorted(CASES))
def test_validate_reports_kind_line_and_field(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kind, line, field = CASES[name]
    path = str(BAD / name)
    code = cli.main(["validate", path])
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert code == 2, output
    assert "Traceback" not in output
    assert captured.err.startswith("error: ")
    assert captured.err.count("\n") == 1, "one error line"
    assert f"[{kind}]" in captured.err
    if line is None:
        assert f"{path}: " in captured.err
        assert not re.search(re.escape(path) + r":\d", captured.err)
    else:
        assert re.search(re.escape(path) + f":{line}:\\d+: ", captured.err), captured.err
    if field is not None:
        assert f": {field}" in captured.err
    if name in HINTS:
        assert HINTS[name] in captured.err


@pytest.mark.parametrize("name", sorted(CASES))
def test_load_topology_raises_topology_error_with_location(name: str) -> None:
    kind, line, field = CASES[name]
    with pytest.raises(TopologyError) as info:
        load_topology(BAD / name)
    error = info.value
    assert error.kind == kind
    assert error.line == line
    if field is not None:
        assert error.field is not None and field in error.field


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_topologies_validate(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert ": ok (" in captured.out
    assert captured.err == ""


def test_bad_override_is_reported_at_set(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(SHIPPED[0].parent / "fre_2x512.yaml")
    assert cli.main(["validate", path, "--set", "layers.7.size=3"]) == 2
    err = capsys.readouterr().err
    assert "[override]" in err and err.startswith("error: --set: layers")
    assert cli.main(["validate", path, "--set", "training.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "--set: training.lr:" in err and "[absurd-number]" in err


def test_alias_bomb_work_is_bounded() -> None:
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in range(1, 12):
        refs = ", ".join([f"*a{level - 1}" if level > 1 else "*a"] * 10)
        text += f"a{level}: &a{level} [{refs}]\n"
    with pytest.raises(TopologyError) as info:
        loads_topology(text)
    assert info.value.kind == "alias-bomb"


def test_nul_in_text_is_an_encoding_error() -> None:
    with pytest.raises(TopologyError) as info:
        loads_topology("name: x\ninput:\x00 {}\n")
    assert info.value.kind == "encoding" and info.value.line == 2


def test_control_character_is_an_encoding_error() -> None:
    with pytest.raises(TopologyError) as info:
        loads_topology("name: x\n\x07\n")
    assert info.value.kind == "encoding" and info.value.line == 2


def test_big_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * (5 * 1024 * 1024) + b"\n")
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert info.value.kind == "path" and "MiB" in info.value.message


def test_unusable_path_is_a_path_error() -> None:
    with pytest.raises(TopologyError) as info:
        load_topology("x" * 5000)
    assert info.value.kind == "path"


def test_missing_path_suggests_yaml_suffix(tmp_path: Path) -> None:
    (tmp_path / "net.yaml").write_text("name: x\n")
    with pytest.raises(TopologyError) as info:
        load_topology(tmp_path / "net")
    assert info.value.kind == "path" and "net.yaml?" in info.value.message


# -- fuzzing ----------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["input", "h1", "h2", "forward", "feedback", "tied", "random", "identity"]),
)
_keys = st.one_of(
    st.sampled_from(
        [
            "name",
            "input",
            "layers",
            "readout",
            "edges",
            "size",
            "from",
            "source",
            "target",
            "kind",
            "gain",
            "feedback",
            "learned",
            "init",
            "generate",
            "family",
            "depth",
            "width",
            "dynamics",
            "training",
            "lr",
            "origin",
            "activation",
        ]
    ),
    st.text(max_size=8),
)
_trees = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=4)
    ),
    max_leaves=12,
)
_yamlish = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.sampled_from(list("abh12 :-[]{},&*!|>'\"\n\t#.e+%@`?~")), max_size=200),
)


def _only_topology_errors(action: Callable[[], object]) -> None:
    try:
        action()
    except TopologyError as error:
        assert error.kind in ERROR_KINDS
        assert str(error)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yamlish)
def test_fuzz_text_only_raises_topology_error(text: str) -> None:
    _only_topology_errors(lambda: loads_topology(text))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _trees, max_size=6))
def test_fuzz_nested_data_only_raises_topology_error(data: dict) -> None:
    text = yaml.safe_dump(data, allow_unicode=True)
    _only_topology_errors(lambda: loads_topology(text))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {
            "name": _scalars,
            "input": st.fixed_dictionaries({"size": _scalars}),
            "layers": st.lists(
                st.fixed_dictionaries({"name": _scalars, "size": _scalars}), max_size=3
            ),
            "readout": st.fixed_dictionaries({"from": _scalars, "size": _scalars}),
            "edges": st.lists(
                st.fixed_dictionaries(
                    {"source": _scalars, "target": _scalars},
                    optional={
                        "kind": _scalars,
                        "gain": _scalars,
                        "feedback": _scalars,
                        "learned": _scalars,
                        "init": _scalars,
                    },
                ),
                max_size=4,
            ),
        }
    ),
    st.lists(st.text(max_size=20), max_size=2),
)
def test_fuzz_near_valid_documents_and_overrides(data: dict, overrides: list[str]) -> None:
    text = yaml.safe_dump(data, allow_unicode=True)
    _only_topology_errors(lambda: loads_topology(text, overrides=overrides))
