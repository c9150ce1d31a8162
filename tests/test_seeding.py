"""Seeded initial weights depend on the seed and each tensor's own name, never on declaration
order; a network too large for memory is refused before anything is allocated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from topo_ep import compiler
from topo_ep.cli import main
from topo_ep.compiler import compile_topology, parameter_bytes
from topo_ep.errors import TopoEpError
from topo_ep.loader import load_topology

REPO = Path(__file__).resolve().parents[1]


def _weights(net) -> dict[str, torch.Tensor]:
    out = {str(key): tensor.detach() for key, tensor in net.learned_tensors().items()}
    for binding in net.bindings.values():
        if binding.tensor is not None and not binding.learned:
            out[binding.edge.key] = net.weight_of(binding.edge.key)
    if net.readout_feedback is not None:
        out["readout:feedback"] = net.readout_feedback
    return out


@pytest.mark.parametrize("name", ["agt_10x64", "res_10x64", "quickstart"])
def test_declaration_order_does_not_change_the_seeded_weights(name):
    spec = load_topology(REPO / "topologies" / f"{name}.yaml")
    reordered = dataclasses.replace(
        spec, layers=tuple(reversed(spec.layers)), edges=tuple(reversed(spec.edges))
    )
    a, b = _weights(compile_topology(spec, seed=3)), _weights(compile_topology(reordered, seed=3))
    assert a.keys() == b.keys() and len(a) >= 3
    assert all(torch.equal(a[key], b[key]) for key in a)
    other = _weights(compile_topology(spec, seed=4))
    assert all(not torch.equal(a[key], other[key]) for key in a)


def test_removing_an_edge_leaves_every_other_weight_unchanged():
    spec = load_topology(REPO / "topologies" / "agt_10x64.yaml")
    skip = next(edge for edge in spec.edges if edge.kind == "skip")
    fewer = dataclasses.replace(spec, edges=tuple(e for e in spec.edges if e != skip))
    a, b = _weights(compile_topology(spec, seed=0)), _weights(compile_topology(fewer, seed=0))
    assert set(a) - set(b) == {skip.key}
    assert all(torch.equal(a[key], b[key]) for key in b)


def test_a_network_too_large_for_memory_is_refused_before_allocation(monkeypatch, capsys):
    spec = load_topology(REPO / "topologies" / "quickstart.yaml")
    needed = parameter_bytes(spec, torch.float32)
    assert needed >= 4 * (64 * 128 + 128 * 128 + 128 * 10)
    monkeypatch.setattr(compiler, "available_memory", lambda: needed - 1)
    with pytest.raises(TopoEpError, match=f"needs {needed:,} bytes"):
        compile_topology(spec)
    monkeypatch.setattr(compiler, "available_memory", lambda: needed)
    compile_topology(spec)
    monkeypatch.undo()
    path = str(REPO / "topologies" / "quickstart.yaml")
    sizes = ["--set", "layers.0.size=1000000", "--set", "layers.1.size=1000000"]
    assert main(["compile", path, *sizes]) == 2
    err = capsys.readouterr().err
    assert "bytes" in err and "reduce the layer sizes" in err and "Traceback" not in err
