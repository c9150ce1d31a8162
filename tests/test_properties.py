"""Property tests over random topologies (:mod:`topo_ep.testing`), float64.

Each property runs on ``EXAMPLES`` (or the number given in its settings) Hypothesis examples
of depth 1 to 6, widths 2 to 6, even and odd skips, tied and random feedback, balanced and
unbalanced gains, weak and strong coupling:

- energy: never rises under ``colour`` on balanced topologies, free phase and nudged phase
  with the held error (per step, relative to |E|, 1e-12); its gradient is the fixed-point
  equation; it equals the dense rescaled form with a symmetric A;
- balance: the verdict is confirmed by the dense operator (symmetric after rescaling, or the
  named cycle really fails); the colouring has no coupling inside a group;
- fixed points: synchronous, sweep and colour reach the same fixed point on contracting
  networks;
- compiler: the operator equals the dense matrix assembled from the spec, under any
  declaration order of layers and edges;
- round trip: spec -> YAML -> spec, spec -> networkx -> spec;
- validator: mutated YAML of valid specs is accepted or raises TopologyError, nothing else.
"""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_energy import dense, dense_energy
from topo_ep import graph_io
from topo_ep.balance import analyse_balance
from topo_ep.compiler import CompiledNetwork, compile_topology
from topo_ep.energy import Energy, energy_trace, held_nudge_term
from topo_ep.engine import relax
from topo_ep.errors import ERROR_KINDS, TopologyError
from topo_ep.loader import dump_topology, loads_topology
from topo_ep.schedules import SCHEDULES
from topo_ep.testing import (
    NetworkCase,
    inputs,
    networks,
    reorderings,
    states,
    topologies,
    yaml_mutations,
)
from topo_ep.validate import spec_from_dict

F64 = torch.float64
EXAMPLES = 60
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Per-step tolerance on an energy rise, relative to |E|.
RISE_TOL = 1e-12
ENERGY_ACTIVATIONS = ("tanh", "sigmoid", "hard_sigmoid")


def _largest_relative_rise(trace: torch.Tensor) -> float:
    """max over steps and samples of (E_{t+1} - E_t) / max(|E_t|, |E_{t+1}|)."""
    rise = trace[1:] - trace[:-1]
    scale = torch.maximum(trace[1:].abs(), trace[:-1].abs()).clamp(min=1e-300)
    return float((rise / scale).max())


# ---------------------------------------------------------------------------- energy
balanced_networks = networks(
    topologies(balanced=True, activations=ENERGY_ACTIVATIONS),
    weight_scale=st.floats(0.5, 3.0),
)


@PROPERTY
@given(balanced_networks, st.data())
def test_energy_never_rises_under_colour_in_the_free_phase(case: NetworkCase, data) -> None:
    net = case.build()
    x, _ = data.draw(inputs(case.spec, scale=2.0))
    drives = Energy(net).drives(x)
    schedule = net.schedule("colour")
    trace, _ = energy_trace(net, drives, schedule, 25)
    assert torch.isfinite(trace).all()
    assert _largest_relative_rise(trace) <= RISE_TOL
    # from an arbitrary reachable state, saturated entries included, too
    start = data.draw(states(case.spec, x.shape[0], saturated=True))
    start = [start[[layer.name for layer in case.spec.layers].index(n)] for n in net.layout.names]
    trace, _ = energy_trace(net, drives, schedule, 10, start=start)
    assert torch.isfinite(trace).all()
    assert _largest_relative_rise(trace) <= RISE_TOL


@PROPERTY
@given(balanced_networks, st.data())
def test_energy_never_rises_under_colour_in_the_nudged_phase(case: NetworkCase, data) -> None:
    net = case.build()
    x, y = data.draw(inputs(case.spec, scale=2.0))
    energy_of = Energy(net)
    schedule = net.schedule("colour")
    _, free = energy_trace(net, energy_of.drives(x), schedule, 40)
    nudge = data.draw(st.sampled_from([-1.0, 1.0])) * data.draw(st.floats(1e-3, 2.0))
    term = held_nudge_term(net, free, y, nudge)
    trace, _ = energy_trace(net, energy_of.drives(x, term), schedule, 25, start=free)
    assert torch.isfinite(trace).all()
    assert _largest_relative_rise(trace) <= RISE_TOL


@PROPERTY
@given(networks(topologies(balanced=True)), st.data())
def test_energy_gradient_is_the_fixed_point_equation(case: NetworkCase, data) -> None:
    """dE/ds_k = c_k^2 (atanh(s_k) - h_k) for tanh layers (autograd against the formula)."""
    net = case.build()
    x, _ = data.draw(inputs(case.spec))
    energy_of = Energy(net)
    drives = energy_of.drives(x)
    order = [layer.name for layer in case.spec.layers]
    drawn = data.draw(states(case.spec, x.shape[0]))
    state = [drawn[order.index(n)].requires_grad_(True) for n in net.layout.names]
    energy_of(state, drives).sum().backward()
    plain = [s.detach() for s in state]
    for k, s in enumerate(state):
        h = net.preactivation(k, plain, drives[k]).detach()
        expected = energy_of.weights[k] * (torch.atanh(plain[k]) - h)
        scale = float(expected.abs().max()) + energy_of.weights[k]
        assert float((s.grad - expected).abs().max()) <= 1e-11 * scale


@PROPERTY
@given(networks(topologies(balanced=True, activations=ENERGY_ACTIVATIONS)), st.data())
def test_energy_equals_the_dense_rescaled_form(case: NetworkCase, data) -> None:
    net = case.build()
    x, y = data.draw(inputs(case.spec))
    order = [layer.name for layer in case.spec.layers]
    drawn = data.draw(states(case.spec, x.shape[0]))
    state = [drawn[order.index(n)] for n in net.layout.names]
    term = held_nudge_term(net, state, y, data.draw(st.floats(-1.0, 1.0)))
    scales = analyse_balance(case.spec).scales
    for nudge_term in (None, term):
        ours = Energy(net)(state, Energy(net).drives(x, nudge_term))
        expected = dense_energy(case.spec, net, scales, state, x, nudge_term)
        magnitude = Energy(net).terms(state, Energy(net).drives(x, nudge_term)).magnitude
        assert ((ours - expected).abs() <= 1e-12 * magnitude.clamp(min=1.0)).all()


# ---------------------------------------------------------------------------- balance
def _blocks(spec, net):
    slices, m, _, _ = dense(spec, net)
    return lambda a, b: m[slices[a], slices[b]]  # the block carrying b into a


@PROPERTY
@given(
    networks(
        st.one_of(
            topologies(activations=ENERGY_ACTIVATIONS),
            # tied feedback only: unbalanced through the gains (or a one-way coupling)
            topologies(feedback=("tied",), balanced=False, min_depth=3),
        )
    )
)
def test_the_balance_verdict_is_confirmed_by_the_dense_operator(case: NetworkCase) -> None:
    spec, net = case.spec, case.build()
    balance = analyse_balance(spec)
    assert balance.balanced == spec.name.startswith("balanced")  # as the strategy built it
    block = _blocks(spec, net)
    if balance.balanced:
        # w_k M_kj = w_j M_jk^T for every pair: A = C M C^{-1} is symmetric
        scales = balance.scales
        for a in spec.layer_names:
            for b in spec.layer_names:
                lhs = scales[a] ** 2 * block(a, b)
                rhs = scales[b] ** 2 * block(b, a).t()
                assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-15)
        return
    cycle = balance.breaking_cycle
    assert cycle is not None and balance.edges and balance.mismatch != 1.0
    # No positive w with w_Y M_YX = w_X M_XY^T on every pair of the cycle: either a pair is not
    # proportional, or the ratios multiply to the reported mismatch, not to 1.
    product = 1.0
    for i, here in enumerate(cycle):
        there = cycle[(i + 1) % len(cycle)]
        up, down = block(there, here), block(here, there).t()  # here into there, and back
        if up.norm() == 0 or down.norm() == 0:
            assert up.norm() + down.norm() > 0
            return
        ratio = float((up * down).sum() / (up * up).sum())
        if not torch.allclose(down, ratio * up, rtol=1e-9, atol=1e-14):
            return
        product *= ratio
    assert len(cycle) > 2
    assert not math.isclose(product, 1.0, rel_tol=1e-6)
    assert math.isclose(1.0 / product, balance.mismatch, rel_tol=1e-9)


@PROPERTY
@given(networks(topologies()))
def test_colour_groups_have_no_coupling_inside(case: NetworkCase) -> None:
    spec, net = case.spec, case.build()
    groups = net.schedule("colour")
    assert sorted(k for group in groups for k in group) == list(range(len(spec.layers)))
    block = _blocks(spec, net)
    for group in groups:
        names = [net.layout.names[k] for k in group]
        for a in names:
            for b in names:
                if a != b:
                    assert float(block(a, b).abs().max()) == 0.0, (a, b)
        for edge in spec.edges:
            assert not (edge.source in names and edge.target in names), edge.key


# ---------------------------------------------------------------------------- fixed points
def _contract(spec, net: CompiledNetwork, limit: float = 0.7) -> float:
    """Scale the hidden weights so that max_k sum_j ||M_kj||_2 <= limit; returns that bound.

    Then every schedule (any grouping, any order) is a contraction in the block max-norm
    ||s|| = max_k ||s_k||_2, so there is one fixed point and every schedule reaches it.
    """
    block = _blocks(spec, net)
    bound = max(
        sum(float(torch.linalg.matrix_norm(block(a, b), 2)) for b in spec.layer_names)
        for a in spec.layer_names
    )
    if bound > limit:
        with torch.no_grad():
            for key, binding in net.bindings.items():
                if binding.tensor is not None and binding.edge.source != "input":
                    net.weight_of(key).mul_(limit / bound)
        bound = limit
    return bound


@PROPERTY
@given(
    networks(topologies(activations=("tanh", "sigmoid", "hard_sigmoid", "identity"))),
    st.data(),
)
def test_all_schedules_reach_the_same_fixed_point_on_contracting_networks(
    case: NetworkCase, data
) -> None:
    net = case.build()
    _contract(case.spec, net)
    x, _ = data.draw(inputs(case.spec, scale=2.0))
    drives = net.input_drive(x)
    results = {}
    for name in SCHEDULES.names():
        start = net.layout.zeros(x.shape[0], dtype=F64, device="cpu")
        with torch.no_grad():
            state, stats = relax(net, start, drives, net.schedule(name), 3000, 1e-15, 1)
        assert stats.converged, (name, stats)
        results[name] = torch.cat(state, dim=1)
    reference = results["synchronous"]
    for name, value in results.items():
        assert torch.allclose(value, reference, rtol=0, atol=1e-12), name
    # and it is a fixed point
    state = net.layout.unflatten(reference)
    for k, layer in enumerate(state):
        h = net.preactivation(k, state, drives[k])
        assert torch.allclose(net.activations[k].fn(h), layer, rtol=0, atol=1e-13)


# ---------------------------------------------------------------------------- compiler
@PROPERTY
@given(networks(topologies(activations=("tanh", "sigmoid", "identity"))), st.data())
def test_operator_equals_the_dense_matrix_under_any_declaration_order(
    case: NetworkCase, data
) -> None:
    spec = case.spec
    net = case.build()
    shuffled = data.draw(reorderings(spec))
    other = compile_topology(shuffled, seed=case.seed + 1, dtype=F64)
    with torch.no_grad():  # same values, looked up by edge key / layer name
        for key, binding in net.bindings.items():
            if binding.tensor is not None:
                other.weight_of(key).copy_(net.weight_of(key))
        for name, bias in net.biases.items():
            value = torch.randn_like(bias)
            bias.copy_(value)
            other.biases[name].copy_(value)
    x, _ = data.draw(inputs(spec))
    drawn = data.draw(states(spec, x.shape[0]))
    by_name = {layer.name: s for layer, s in zip(spec.layers, drawn, strict=True)}
    for compiled in (net, other):
        slices, m, b, bias = dense(shuffled, compiled)
        flat = torch.cat([by_name[layer.name] for layer in shuffled.layers], dim=1)
        expected = flat @ m.t() + x @ b.t() + bias
        state = [by_name[name] for name in compiled.layout.names]
        drives = compiled.input_drive(x)
        for k, name in enumerate(compiled.layout.names):
            h = compiled.preactivation(k, state, drives[k])
            assert torch.allclose(h, expected[:, slices[name]], rtol=1e-13, atol=1e-13)
        operator = compiled.hidden_operator()
        for a in spec.layer_names:
            for c in spec.layer_names:
                got = operator[compiled.layout.slice(a), compiled.layout.slice(c)]
                assert torch.allclose(got, m[slices[a], slices[c]], rtol=1e-15, atol=1e-15)


# ---------------------------------------------------------------------------- round trip
@settings(PROPERTY, max_examples=80)
@given(topologies(activations=("tanh", "sigmoid", "hard_sigmoid", "identity")), st.data())
def test_spec_yaml_spec_round_trip(spec, data) -> None:
    item = data.draw(reorderings(spec))  # any declaration order, the drawn one included
    assert loads_topology(dump_topology(item)) == item
    assert spec_from_dict(item.to_dict()) == item
    plain = item.to_dict()
    assert (
        graph_io.from_graph(graph_io.to_graph(item), None, plain["dynamics"], plain["training"])
        == item
    )


# ---------------------------------------------------------------------------- validator
@settings(PROPERTY, max_examples=80)
@given(topologies(), st.data())
def test_validator_raises_only_topology_errors_on_mutated_yaml(spec, data) -> None:
    texts = (
        data.draw(yaml_mutations(spec)),  # any mutations, cut or spliced text
        data.draw(yaml_mutations(spec, 1, ("near-miss",), cut=False)),  # one plausible slip
    )
    for text in texts:
        try:
            loaded = loads_topology(text, filename="mutated.yaml")
        except TopologyError as error:
            assert error.kind in ERROR_KINDS and str(error)
            continue
        assert loads_topology(dump_topology(loaded)) == loaded
