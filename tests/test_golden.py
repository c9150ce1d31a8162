"""Faithfulness: the engine reproduces the paper authors' own code (``shared/golden``) to 1e-12.

Golden conventions: row vectors, h = s @ W with W of shape (n_in, n_out); topo-ep stores W as
(n_out, n_in), so every golden matrix enters transposed. The authors' updates are
``grad = s_pre^T (s_free - s_nudged) / batch`` (the optimizer subtracts them); topo-ep writes
``.grad = -dW / (nudge * batch)`` with dW = (s^n - s^0)^T s_pre, i.e. golden^T / nudge.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import golden_path
from topo_ep.compiler import compile_topology
from topo_ep.learn.ep import EquilibriumPropagation
from topo_ep.spec import (
    DynamicsSpec,
    EdgeSpec,
    InputSpec,
    LayerSpec,
    ReadoutSpec,
    TopologySpec,
)

TOL = 1e-12


def _load(name: str) -> dict[str, np.ndarray]:
    path = golden_path(name)
    if path is None:
        pytest.skip("shared/golden is not available")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _layered_spec(gain: float, steps: tuple[int, int]) -> TopologySpec:
    layers = tuple(LayerSpec(f"h{k}", 16) for k in (1, 2, 3))
    edges = [EdgeSpec("input", "h1", "forward")]
    for k in (1, 2):
        edges.append(EdgeSpec(f"h{k}", f"h{k + 1}", "forward"))
        edges.append(EdgeSpec(f"h{k + 1}", f"h{k}", "feedback", gain=gain, feedback="tied"))
    return TopologySpec(
        name="golden_layered",
        input=InputSpec(20),
        layers=layers,
        readout=ReadoutSpec("h3", 10),
        edges=tuple(edges),
        dynamics=DynamicsSpec("synchronous", steps[0], steps[1], 0.0, 5),
    )


def _set(net, key: str, golden_matrix: np.ndarray) -> None:
    with torch.no_grad():
        net.weight_of(key).copy_(torch.from_numpy(golden_matrix.T))


def test_layered_free_nudged_readout_and_updates_match_golden():
    g = _load("layered_3x16")
    gain, nudge = float(g["feedback_gain"]), float(g["nudge"])
    spec = _layered_spec(gain, (int(g["free_steps"]), int(g["nudged_steps"])))
    net = compile_topology(spec, dtype=torch.float64)
    _set(net, "input->h1:forward", g["W0"])
    _set(net, "h1->h2:forward", g["W1"])
    _set(net, "h2->h3:forward", g["W2"])
    with torch.no_grad():
        net.readout_weight.copy_(torch.from_numpy(g["W3"].T))
    x = torch.from_numpy(g["x"])
    y = torch.from_numpy(g["labels"])

    method = EquilibriumPropagation(
        nudge=nudge,
        free_steps=int(g["free_steps"]),
        nudged_steps=int(g["nudged_steps"]),
    )
    phases = method.phases(net, x, y)
    free = net.layout.flatten(phases.free).numpy()
    nudged = net.layout.flatten(phases.nudged[0]).numpy()
    assert phases.free_stats.steps == int(g["free_steps"])
    assert phases.nudged_stats[0].steps == int(g["nudged_steps"])
    np.testing.assert_allclose(free, g["free_state"], rtol=0, atol=TOL)
    np.testing.assert_allclose(nudged, g["nudged_state"], rtol=0, atol=TOL)
    readout = torch.softmax(phases.logits, dim=-1).numpy()
    np.testing.assert_allclose(readout, g["readout"], rtol=0, atol=TOL)
    # The nudged phase moved the state: the comparison above is not trivially zero.
    assert np.abs(nudged - free).max() > 1e-4

    method.gradients(net, x, y)
    grads = {
        "W0": net.weights["input->h1:forward"].grad,
        "W1": net.weights["h1->h2:forward"].grad,
        "W2": net.weights["h2->h3:forward"].grad,
    }
    for name, grad in grads.items():
        np.testing.assert_allclose(grad.numpy().T * nudge, g[f"grad_{name}"], rtol=0, atol=TOL)
    np.testing.assert_allclose(net.readout_weight.grad.numpy().T, g["grad_W3"], rtol=0, atol=TOL)


def test_residual_free_state_matches_golden():
    g = _load("residual_7x8")
    gain = float(g["feedback_gain"])
    connectivity = g["connectivity"]
    hidden = range(1, 8)
    layers = tuple(LayerSpec(f"h{k}", 8) for k in hidden)
    edges = [EdgeSpec("input", "h1", "forward")]
    for i in hidden:
        for j in hidden:
            if i < j and connectivity[i, j]:
                kind = "forward" if j == i + 1 else "skip"
                edges.append(EdgeSpec(f"h{i}", f"h{j}", kind))
                edges.append(EdgeSpec(f"h{j}", f"h{i}", "feedback", gain=gain, feedback="tied"))
    spec = TopologySpec(
        name="golden_residual",
        input=InputSpec(20),
        layers=layers,
        readout=ReadoutSpec("h7", 10),
        edges=tuple(edges),
        dynamics=DynamicsSpec("synchronous", int(g["free_steps"]), 0, 0.0, 5),
    )
    assert sum(e.kind == "skip" for e in spec.edges) == 2
    net = compile_topology(spec, dtype=torch.float64)
    for edge in spec.edges:
        if edge.kind == "feedback":
            continue
        i = 0 if edge.source == "input" else int(edge.source[1:])
        j = int(edge.target[1:])
        _set(net, edge.key, g[f"W_{i}_{j}"])
    with torch.no_grad():
        net.readout_weight.copy_(torch.from_numpy(g["W_7_8"].T))
    method = EquilibriumPropagation(free_steps=int(g["free_steps"]))
    free, stats = method.free_phase(net, torch.from_numpy(g["x"]))
    assert stats.steps == int(g["free_steps"])
    np.testing.assert_allclose(net.layout.flatten(free).numpy(), g["free_state"], atol=TOL, rtol=0)
    readout = net.readout(free).detach().numpy()
    np.testing.assert_allclose(readout, g["readout"], rtol=0, atol=TOL)
