"""Fuzzing in the suite, deterministic at a small example count (the derandomized profile):
byte mutations of every shipped topology, random ``--set`` overrides and checkpoints with
fields of the wrong type. Each input is either accepted or refused with topo-ep's own error;
no other exception escapes. ``TOPO_EP_HYPOTHESIS_PROFILE=explore`` draws new examples."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from topo_ep.checkpoint import save_atomic
from topo_ep.cli import main
from topo_ep.errors import TopoEpError, TopologyError
from topo_ep.loader import load_topology, loads_topology

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "topologies").glob("*.yaml"))
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))

#: Values of every type a hand edit or a junk option can produce.
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-3, 3), max_size=2),
)


@st.composite
def byte_mutations(draw: st.DrawFn) -> bytes:
    """A shipped topology's bytes with 1 to 4 bytes flipped, inserted or deleted."""
    raw = bytearray(draw(st.sampled_from(SHIPPED)).read_bytes())
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(raw) - 1))
        action = draw(st.sampled_from(("flip", "insert", "delete")))
        if action == "flip":
            raw[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            raw.insert(where, draw(st.integers(0, 255)))
        else:
            del raw[where]
    return bytes(raw)


@FUZZ
@given(byte_mutations())
def test_byte_mutations_of_shipped_topologies(tmp_path_factory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("mutated") / "topology.yaml"
    path.write_bytes(raw)
    with contextlib.suppress(TopologyError):
        load_topology(path)


def _paths(data: Any, prefix: str = "") -> list[str]:
    """Every dotted path of plain topology data (list items by index)."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = ((str(i), v) for i, v in enumerate(data))
    else:
        return [prefix] if prefix else []
    out = []
    for key, value in items:
        out += _paths(value, f"{prefix}.{key}" if prefix else str(key))
    return out


SHIPPED_PATHS = sorted({p for f in SHIPPED for p in _paths(load_topology(f).to_dict())})


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    return str(value)


@FUZZ
@given(
    st.sampled_from(SHIPPED),
    st.lists(
        st.tuples(
            st.one_of(
                st.sampled_from(SHIPPED_PATHS), st.just("feedback_gain"), st.text(max_size=8)
            ),
            JUNK.map(_yaml_scalar),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_random_set_overrides(path: Path, pairs: list[tuple[str, str]]) -> None:
    overrides = [f"{key}={value}" for key, value in pairs]
    with contextlib.suppress(TopologyError):
        loads_topology(path.read_text("utf-8"), str(path), overrides)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("run") / "run"
    argv = ["train", str(REPO / "topologies" / "quickstart.yaml"), "--epochs", "1"]
    argv += ["--limit", "64", "--set", "layers.h1.size=8", "--set", "layers.h2.size=8"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--quiet", "--out", str(out)]) == 0
    return torch.load(out / "checkpoint.pt", weights_only=True)


FIELDS = ("epoch", "method", "spec", "model", "settings", "optimizer", "metrics", "format")


@FUZZ
@given(st.sampled_from(FIELDS), st.one_of(st.none(), st.integers(0, 63)), JUNK)
def test_checkpoints_with_fields_of_the_wrong_type(
    tmp_path_factory, trained_checkpoint, field: str, inner: int | None, junk: Any
) -> None:
    """Replace a field (or, for mappings, one of its entries) with junk; `evaluate` either
    works or refuses it with exit code 1 or 2 and topo-ep's message, never a traceback."""
    payload = {k: v for k, v in trained_checkpoint.items()}
    target = payload.get(field)
    if inner is not None and isinstance(target, dict) and target:
        key = sorted(target, key=str)[inner % len(target)]
        payload[field] = {**target, key: junk}
    else:
        payload[field] = junk
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    try:
        save_atomic(payload, path)
    except (TypeError, ValueError, TopoEpError):  # torch.save refuses some junk
        return
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["evaluate", str(path), "--device", "cpu"])
    assert code in (0, 1, 2)
    assert "Traceback" not in err.getvalue()
