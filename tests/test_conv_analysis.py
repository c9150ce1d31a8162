"""Analysis of conv networks: average pooling keeps the block linear (energy, spectral radius
and check-gradients apply unchanged); max pooling has no energy and no fixed operator, and the
analyses say so in words without crashing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from topo_ep.analysis.run import AnalysisOptions, analyse
from topo_ep.analysis.tangent import operator_rows
from topo_ep.balance import analyse_balance, state_dependent_couplings
from topo_ep.compiler import compile_topology
from topo_ep.energy import Energy
from topo_ep.errors import TopoEpError, TopologyError
from topo_ep.gradcheck import CheckSettings, check_gradients
from topo_ep.loader import load_topology, loads_topology
from topo_ep.spectral import spectral_radius

REPO = Path(__file__).resolve().parents[1]

#: A small balanced tanh conv net on the 8x8 digits (1x8x8 -> 4x6x6 -> avg-pool, 4x2x2).
SMALL = """
name: conv_small
input: {shape: [1, 8, 8], dataset: digits}
layers:
  - {name: h1, shape: [4, 6, 6]}
  - {name: h2, shape: [4, 2, 2]}
readout: {from: h2, size: 10}
edges:
  - {source: input, target: h1, block: {kind: conv, kernel: 3}}
  - {source: h1, target: h2, block: {kind: conv, kernel: 2, pool: {kind: POOL, size: 2}}}
  - {source: h2, target: h1, kind: feedback, gain: 0.5}
"""


def small(pool: str):
    return loads_topology(SMALL.replace("POOL", pool))


def test_check_gradients_passes_on_a_small_average_pooled_conv_net():
    """Symmetric contrast EP at nudge 1e-3 in float64 matches the implicit gradient."""
    spec = small("avg")
    assert analyse_balance(spec).balanced
    check = check_gradients(spec, CheckSettings(batch=4))
    assert check.converged and check.passed, check.format()
    assert check.energy_reason is None
    assert [row.name for row in check.rows] == ["input->h1:forward", "h1->h2:forward", "readout"]
    assert all(row.one_minus_cos < 1e-9 for row in check.rows)


def test_the_average_pooled_net_has_an_energy_and_a_matrix_free_radius():
    net = compile_topology(small("avg"), dtype=torch.float64)
    exact = spectral_radius(net, "exact")
    assert abs(spectral_radius(net, "arpack") - exact) < 1e-8 * max(exact, 1.0)
    x = torch.rand(3, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    energy_of = Energy(net)
    state = net.layout.zeros(3, dtype=torch.float64, device="cpu")
    assert torch.isfinite(energy_of(state, energy_of.drives(x))).all()


def test_max_pooling_has_no_energy_and_says_why():
    spec = small("max")
    balance = analyse_balance(spec)
    assert not balance.balanced
    assert "h1->h2:forward max-pools its source" in balance.reason
    assert "state-dependent pooling" in balance.reason
    assert state_dependent_couplings(spec) == (
        "h1->h2:forward max-pools its source (the pooling picks the argmax of the current state)",
    )
    shipped = analyse_balance(load_topology(REPO / "topologies" / "conv_mnist.yaml"))
    assert not shipped.balanced and "state-dependent pooling" in shipped.reason


def test_check_gradients_on_a_max_pooled_net_reports_in_words():
    spec = small("max")
    check = check_gradients(spec, CheckSettings(batch=2, max_steps=60))
    assert "state-dependent pooling" in (check.energy_reason or "")
    text = check.format()
    assert "state-dependent pooling" in text


def test_analyse_a_max_pooled_net_reports_convergence_and_gradient_flow_only():
    net = compile_topology(small("max"), dtype=torch.float64)
    x = torch.rand(2, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    options = AnalysisOptions(
        schedules=("synchronous",), convergence_steps=30, float64_control=False
    )
    result = analyse(net, x, torch.tensor([1, 2]), options)
    assert result.operator is None and not result.jacobian and not result.lyapunov
    assert any("no fixed operator" in note for note in result.notes)
    assert result.convergence["synchronous"].max_steps == 30
    assert result.gradient_flow is not None and not result.energy
    assert "h1" in {layer.layer for layer in result.gradient_flow.layers}


def test_a_gain_from_a_spectral_radius_is_refused_for_max_pooling():
    text = SMALL.replace("POOL", "max") + "feedback_gain: {spectral_radius: 0.5}\n"
    with pytest.raises(TopologyError, match="depends on the state and has no spectral radius"):
        loads_topology(text)
    loads_topology(SMALL.replace("POOL", "avg") + "feedback_gain: {spectral_radius: 0.5}\n")


def test_the_tangent_map_refuses_a_max_pooled_net():
    """Applying the blocks to a tangent vector would pool at the tangent's argmax: refused."""
    net = compile_topology(small("max"), dtype=torch.float64)
    vector = net.layout.zeros(1, dtype=torch.float64, device="cpu")
    with pytest.raises(TopoEpError, match="depends on the state"):
        operator_rows(net, 0, vector)
    operator_rows(compile_topology(small("avg"), dtype=torch.float64), 0, vector)
