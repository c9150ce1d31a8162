"""Energy, balance and the ``colour`` schedule: hand-written cases and the regression that
catches a wrong colouring.

The energy is checked against a dense form written here from the spec alone (own offsets, own
M and B, own potentials in the textbook form), in the rescaled variables u_k = c_k s_k:

    E(u) = sum_k c_k^2 sum_i G_k(u_ki / c_k) - 1/2 u^T A u - b'^T u,
    A_kj = (c_k / c_j) M_kj,  b'_k = c_k d_k,

where A must come out symmetric: that is what the scales c_k from :func:`analyse_balance` claim.

Regression (DESIGN section 1): 3 hidden layers, gains 1, tied feedback, a 1<->3 skip with its
weights x3. The layer graph is a triangle, so the colouring has three groups. Updating layers 1
and 3 together (the even/odd split of a chain) raised the energy by 5.8 in one step in DESIGN's
measurement; here (width 8, seed 7) by 9.5. Print the traces with
``python -m pytest tests/test_energy.py -k trace -s``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from tests.helpers import build_as_found
from topo_ep import graph
from topo_ep.activations import get_activation
from topo_ep.balance import analyse_balance, energy_scales, is_balanced
from topo_ep.cli import main
from topo_ep.compiler import CompiledNetwork, compile_topology
from topo_ep.energy import (
    Energy,
    NoEnergyError,
    energy,
    energy_trace,
    held_nudge_term,
)
from topo_ep.errors import TopoEpError
from topo_ep.learn.ep import EquilibriumPropagation
from topo_ep.loader import load_topology, loads_topology
from topo_ep.spec import TopologySpec
from topo_ep.testing import NetworkCase
from topo_ep.validate import spec_from_dict

F64 = torch.float64
TOPOLOGIES = Path(__file__).resolve().parents[1] / "topologies"


def make_spec(
    edges: list[dict], sizes: dict[str, int], top: str, n_in: int = 4, **layer_options
) -> TopologySpec:
    layers = [{"name": name, "size": size, **layer_options} for name, size in sizes.items()]
    return spec_from_dict(
        {
            "name": "t",
            "input": {"size": n_in},
            "layers": layers,
            "readout": {"from": top, "size": 3},
            "edges": [{"source": "input", "target": next(iter(sizes))}, *edges],
        }
    )


def fwd(a: str, b: str, gain: float = 1.0, kind: str = "forward") -> dict:
    return {"source": a, "target": b, "kind": kind, "gain": gain}


def back(a: str, b: str, gain: float, mode: str = "tied") -> dict:
    return {"source": a, "target": b, "kind": "feedback", "gain": gain, "feedback": mode}


def chain3(g12: float = 0.1, g23: float = 0.1, skip: float | None = None) -> TopologySpec:
    edges = [fwd("h1", "h2"), back("h2", "h1", g12), fwd("h2", "h3"), back("h3", "h2", g23)]
    if skip is not None:
        edges += [fwd("h1", "h3", kind="skip"), back("h3", "h1", skip)]
    return make_spec(edges, {"h1": 4, "h2": 4, "h3": 4}, "h3")


# ---------------------------------------------------------------------------- dense reference
def dense(spec: TopologySpec, net: CompiledNetwork):
    """Slices, M, B and bias assembled from the spec (weights looked up by edge key)."""
    slices, offset = {}, 0
    for layer in spec.layers:
        slices[layer.name] = slice(offset, offset + layer.size)
        offset += layer.size
    m = torch.zeros(offset, offset, dtype=F64)
    b = torch.zeros(offset, spec.input.size, dtype=F64)
    bias = torch.zeros(offset, dtype=F64)
    for edge in spec.edges:
        if edge.is_tied:
            partner = next(
                e
                for e in spec.edges
                if e.kind in ("forward", "skip")
                and (e.source, e.target) == (edge.target, edge.source)
            )
            weight = net.weight_of(partner.key).detach().t()
        else:
            weight = net.weight_of(edge.key).detach()
        rows = slices[edge.target]
        if edge.source == "input":
            b[rows] += edge.gain * weight
        else:
            m[rows, slices[edge.source]] += edge.gain * weight
    for layer in spec.layers:
        if layer.bias:
            bias[slices[layer.name]] = net.biases[layer.name].detach()
    return slices, m, b, bias


def textbook_potential(activation: str, s: torch.Tensor) -> torch.Tensor:
    """G with G' = rho^{-1}, in the textbook form (valid strictly inside the range)."""
    if activation == "tanh":
        return s * torch.atanh(s) + 0.5 * torch.log(1 - s * s)
    if activation == "sigmoid":
        return s * torch.log(s) + (1 - s) * torch.log(1 - s)
    return 0.5 * s * s  # identity; hard_sigmoid on [0, 1]


def dense_energy(spec, net, scales, state, x, nudge_term=None) -> torch.Tensor:
    """E(u) in the rescaled variables, from the dense M; asserts A is symmetric."""
    slices, m, b, bias = dense(spec, net)
    c = torch.ones(m.shape[0], dtype=F64)
    for name, sl in slices.items():
        c[sl] = scales[name]
    a = c[:, None] * m / c[None, :]
    assert torch.allclose(a, a.t(), rtol=0, atol=1e-12 * max(1.0, float(a.abs().max())))
    s = torch.cat([state[net.layout.index(layer.name)] for layer in spec.layers], dim=1)
    d = x @ b.t() + bias
    if nudge_term is not None:
        d[:, slices[spec.readout.source]] += nudge_term
    u = c * s
    total = -0.5 * ((u @ a) * u).sum(1) - ((c * d) * u).sum(1)
    for layer in spec.layers:
        sl = slices[layer.name]
        g = textbook_potential(layer.activation, u[:, sl] / c[sl])
        total = total + (c[sl] ** 2 * g).sum(1)
    return total


def random_state(net: CompiledNetwork, batch: int, seed: int, low=-0.9, high=0.9):
    gen = torch.Generator().manual_seed(seed)
    return [
        low + (high - low) * torch.rand(batch, n, generator=gen, dtype=F64)
        for n in net.layout.sizes
    ]


# ---------------------------------------------------------------------------- balance
def test_a_chain_always_balances_with_scales_from_the_gains():
    spec = chain3(0.1, 0.25)
    balance = analyse_balance(spec)
    assert balance.balanced and balance.breaking_cycle is None and balance.cycles == 0
    assert balance.scales == pytest.approx(
        {"h1": 1.0, "h2": math.sqrt(0.1), "h3": math.sqrt(0.025)}
    )
    assert "no cycles" in balance.reason
    assert energy_scales(spec) == balance.scales and is_balanced(spec)


def test_a_balanced_skip_and_an_unbalanced_one_named_with_its_cycle():
    balanced = analyse_balance(chain3(0.1, 0.1, skip=0.01))
    assert balanced.balanced and balanced.cycles == 1
    assert "1 independent cycle" in balanced.reason
    unbalanced = analyse_balance(chain3(0.1, 0.1, skip=0.1))
    assert not unbalanced.balanced and unbalanced.scales is None
    assert unbalanced.breaking_cycle == ["h1", "h2", "h3"]
    # one way round: h1 into h2 (1), h2 into h3 (1), h3 into h1 (skip feedback 0.1);
    # the other way: h1 into h3 (skip 1), h3 into h2 (0.1), h2 into h1 (0.1)
    assert unbalanced.mismatch == pytest.approx(0.1 / 0.01)
    assert "h1 -> h2 -> h3 -> h1" in unbalanced.reason
    assert "gain 0.01 on h3->h1:feedback would balance it" in unbalanced.reason
    assert set(unbalanced.edges) == {
        "h1->h2:forward",
        "h2->h1:feedback",
        "h2->h3:forward",
        "h3->h2:feedback",
        "h1->h3:skip",
        "h3->h1:feedback",
    }


def test_the_papers_residual_net_has_no_energy_and_says_which_cycle():
    balance = analyse_balance(load_topology(TOPOLOGIES / "res_10x64.yaml"))
    assert not balance.balanced
    assert balance.breaking_cycle == ["h1", "h2", "h3", "h4"]
    assert balance.mismatch == pytest.approx(100.0)
    assert "multiply to 0.1 (1 * 1 * 1 * 0.1)" in balance.reason
    assert "the other way round to 0.001 (1 * 0.1 * 0.1 * 0.1)" in balance.reason


def test_random_feedback_is_a_one_way_coupling():
    balance = analyse_balance(load_topology(TOPOLOGIES / "agt_10x64.yaml"))
    assert not balance.balanced and balance.breaking_cycle == ["h1", "h2"]
    assert balance.mismatch == math.inf
    assert "h2->h1:feedback is random feedback" in balance.reason
    assert "one-way" in balance.reason


def test_zero_gains():
    # feedback gain 0: h2 sees h1, h1 does not see h2: feedforward there, no energy
    spec = chain3(0.0, 0.1)
    balance = analyse_balance(spec)
    assert not balance.balanced and balance.breaking_cycle == ["h1", "h2"]
    assert (
        balance.mismatch == math.inf
        and "its feedback gain is 0 (h2->h1:feedback)" in balance.reason
    )
    # forward gain 0 with feedback: one-way downwards
    spec = make_spec(
        [fwd("h1", "h2", 0.0), back("h2", "h1", 0.1), fwd("input", "h2", kind="skip")],
        {"h1": 3, "h2": 3},
        "h2",
    )
    balance = analyse_balance(spec)
    assert not balance.balanced and balance.mismatch == 0.0 and "has gain 0" in balance.reason
    # both gains 0: no coupling at all; the two layers are separate parts, each with c = 1
    spec = make_spec(
        [fwd("h1", "h2", 0.0), back("h2", "h1", 0.0), fwd("input", "h2", kind="skip")],
        {"h1": 3, "h2": 3},
        "h2",
    )
    balance = analyse_balance(spec)
    assert balance.balanced and balance.scales == {"h1": 1.0, "h2": 1.0}
    # ... and the energy of the decoupled layers still descends under colour
    net = compile_topology(spec, seed=1, dtype=F64)
    x = torch.rand(2, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    trace, _ = energy_trace(net, Energy(net).drives(x), net.schedule("colour"), 5)
    assert (trace[1:] - trace[:-1]).max() <= 1e-12


def test_parallel_couplings_are_not_collapsed():
    # forward and skip h1->h2 side by side; the tied feedback transposes the forward weights,
    # so the skip is one-way (a 2-cycle a simple graph would hide)
    edges = [fwd("h1", "h2"), fwd("h1", "h2", 0.5, kind="skip"), back("h2", "h1", 0.1)]
    balance = analyse_balance(make_spec(edges, {"h1": 3, "h2": 3}, "h2"))
    assert not balance.balanced and balance.breaking_cycle == ["h1", "h2"]
    assert balance.edges == ("h1->h2:skip",)
    edges[1] = fwd("h1", "h2", 0.0, kind="skip")  # a zero-gain skip couples nothing
    assert analyse_balance(make_spec(edges, {"h1": 3, "h2": 3}, "h2")).balanced
    # random feedback h1->h2 beside the tied pair: one-way too
    edges = [fwd("h1", "h2"), back("h2", "h1", 0.1), back("h1", "h2", 0.2, "random")]
    balance = analyse_balance(make_spec(edges, {"h1": 3, "h2": 3}, "h2"))
    assert not balance.balanced and balance.edges == ("h1->h2:feedback",)


def test_missing_feedback_and_a_single_layer():
    assert not analyse_balance(make_spec([fwd("h1", "h2")], {"h1": 2, "h2": 2}, "h2")).balanced
    single = analyse_balance(make_spec([], {"h1": 2}, "h1"))
    assert single.balanced and single.scales == {"h1": 1.0}
    assert "no couplings" in single.reason


# ---------------------------------------------------------------------------- colouring
def test_update_groups_are_a_proper_colouring():
    assert graph.update_groups(chain3()) == [["h1", "h3"], ["h2"]]
    # an even-length skip joins two layers of the same parity: the triangle needs 3 colours
    assert graph.update_groups(chain3(skip=0.01)) == [["h1"], ["h2"], ["h3"]]
    for name in ("res_10x64", "agt_10x64", "res_20x64"):
        spec = load_topology(TOPOLOGIES / f"{name}.yaml")
        groups = graph.update_groups(spec)
        assert sorted(n for group in groups for n in group) == sorted(spec.layer_names)
        for group in groups:
            for edge in spec.edges:
                assert not (edge.source in group and edge.target in group), (name, edge.key)


def test_colour_schedule_in_the_engine_and_the_spec():
    spec = chain3(skip=0.01)
    net = compile_topology(spec, dtype=F64)
    assert net.schedule("colour") == ((0,), (1,), (2,))
    with pytest.raises(ValueError, match="one of synchronous, sweep, colour"):
        net.schedule("even-odd")
    text = (
        "name: c\ninput: {size: 4}\ngenerate: {family: residual, depth: 7, width: 3}\n"
        "dynamics: {schedule: colour, free_steps: 30, nudged_steps: 10}\n"
    )
    spec = loads_topology(text)
    assert spec.dynamics.schedule == "colour"
    net = compile_topology(spec, dtype=F64)
    groups = net.schedule("colour")
    assert sorted(k for group in groups for k in group) == list(range(7))
    method = EquilibriumPropagation.from_spec(spec)
    x = torch.rand(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    phases = method.phases(net, x, torch.tensor([0, 1, 2]))
    assert phases.free_stats.steps == 30


# ---------------------------------------------------------------------------- energy
def test_energy_equals_the_dense_rescaled_form():
    spec = make_spec(
        [
            fwd("h1", "h2", 1.5),
            back("h2", "h1", 0.3),
            fwd("h2", "h3", 0.7),
            back("h3", "h2", 0.07),
            fwd("h1", "h3", 2.0, kind="skip"),
            back("h3", "h1", 2.0 * 0.2 * 0.1),
            fwd("input", "h3", kind="skip"),
        ],
        {"h1": 3, "h2": 5, "h3": 4},
        "h3",
        bias=True,
    )
    net = compile_topology(spec, seed=3, dtype=F64)
    with torch.no_grad():
        for bias in net.biases.values():
            bias.uniform_(-0.5, 0.5)
    balance = analyse_balance(spec)
    assert balance.balanced
    x = torch.rand(4, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    state = random_state(net, 4, seed=2)
    nudge = torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
    for term in (None, nudge):
        ours = energy(net, state, x, term)
        assert ours.shape == (4,)
        expected = dense_energy(spec, net, balance.scales, state, x, term)
        assert torch.allclose(ours, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["sigmoid", "hard_sigmoid", "identity"])
def test_energy_of_other_activations(activation):
    spec = make_spec(
        [fwd("h1", "h2"), back("h2", "h1", 0.2)], {"h1": 3, "h2": 4}, "h2", activation=activation
    )
    net = compile_topology(spec, seed=0, dtype=F64)
    x = torch.rand(2, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    state = random_state(net, 2, seed=4, low=0.05, high=0.95)
    expected = dense_energy(spec, net, analyse_balance(spec).scales, state, x)
    assert torch.allclose(energy(net, state, x), expected, rtol=1e-12, atol=1e-12)
    trace, _ = energy_trace(net, Energy(net).drives(x), net.schedule("colour"), 10)
    assert ((trace[1:] - trace[:-1]) <= 1e-12 * trace.abs()[:-1].clamp(min=1)).all()


def test_energy_is_finite_at_saturated_tanh_states():
    assert torch.tanh(torch.tensor(19.5, dtype=F64)) == 1.0
    spec = chain3()
    net = compile_topology(spec, dtype=F64)
    x = torch.full((1, 4), 30.0, dtype=F64)
    state = [torch.tensor([[1.0, -1.0, 0.5, 1.0]], dtype=F64) for _ in range(3)]
    value = energy(net, state, x)
    assert torch.isfinite(value).all()
    # the textbook form is NaN there
    s = torch.tensor(1.0, dtype=F64)
    assert torch.isnan(s * torch.atanh(s) + 0.5 * torch.log(1 - s * s))
    # G(+-1) = ln 2, the limit of the textbook form
    assert float(net.activations[0].potential(torch.tensor([1.0, -1.0], dtype=F64)).sum()) == (
        pytest.approx(2 * math.log(2), rel=1e-15)
    )
    # a relaxation driven into saturation keeps a finite energy
    trace, final = energy_trace(net, Energy(net).drives(x * 10), net.schedule("colour"), 8)
    assert any((layer.abs() == 1.0).any() for layer in final)
    assert torch.isfinite(trace).all()


def test_no_energy_raises_with_the_breaking_cycle():
    spec = chain3(0.1, 0.1, skip=0.1)
    net = compile_topology(spec, dtype=F64)
    with pytest.raises(NoEnergyError, match=r"h1 -> h2 -> h3 -> h1") as info:
        Energy(net)
    assert isinstance(info.value, TopoEpError)
    assert info.value.balance.breaking_cycle == ["h1", "h2", "h3"]


def test_energy_gradient_is_the_fixed_point_equation():
    """dE/ds_k = c_k^2 (atanh(s_k) - h_k): zero exactly at the fixed points of the dynamics."""
    spec = chain3(0.2, 0.05, skip=0.01)
    net = compile_topology(spec, seed=5, dtype=F64)
    x = torch.rand(3, 4, dtype=F64, generator=torch.Generator().manual_seed(6))
    energy_of = Energy(net)
    drives = energy_of.drives(x)
    state = [s.requires_grad_(True) for s in random_state(net, 3, seed=7)]
    energy_of(state, drives).sum().backward()
    for k, s in enumerate(state):
        h = net.preactivation(k, [t.detach() for t in state], drives[k]).detach()
        expected = energy_of.weights[k] * (torch.atanh(s.detach()) - h)
        assert torch.allclose(s.grad, expected, rtol=1e-12, atol=1e-14)


def test_the_held_nudge_term_is_the_one_ep_uses():
    """EP's nudged fixed point (held error) is a stationary point of the nudged energy."""
    spec = chain3(0.2, 0.1)
    net = compile_topology(spec, seed=2, dtype=F64)
    x = torch.rand(3, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2, 1])
    method = EquilibriumPropagation(
        nudge=0.5, error="held", schedule="colour", free_steps=500, nudged_steps=500,
        tolerance=1e-15, check_every=1,
    )  # fmt: skip
    phases = method.phases(net, x, y)
    assert phases.nudged_stats[0].converged
    term = held_nudge_term(net, phases.free, y, 0.5)
    energy_of = Energy(net)
    drives = energy_of.drives(x, term)
    state = [s.clone().requires_grad_(True) for s in phases.nudged[0]]
    energy_of(state, drives).sum().backward()
    assert max(float(s.grad.abs().max()) for s in state) < 1e-12
    # and it is not a stationary point of the free energy (the nudge moved it)
    state = [s.clone().requires_grad_(True) for s in phases.nudged[0]]
    energy_of(state, energy_of.drives(x)).sum().backward()
    assert max(float(s.grad.abs().max()) for s in state) > 1e-4


# ---------------------------------------------------------------------------- regression
def counterexample() -> tuple[NetworkCase, torch.Tensor]:
    """DESIGN's strong-coupling case: gains 1, tied feedback, a 1<->3 skip with weights x3."""
    spec = make_spec(
        [
            fwd("h1", "h2"),
            back("h2", "h1", 1.0),
            fwd("h2", "h3"),
            back("h3", "h2", 1.0),
            fwd("h1", "h3", kind="skip"),
            back("h3", "h1", 1.0),
        ],
        {"h1": 8, "h2": 8, "h3": 8},
        "h3",
        n_in=8,
    )
    case = NetworkCase(spec, seed=7, edge_scales=(("h1->h3:skip", 3.0),))
    x = torch.rand(1, 8, generator=torch.Generator().manual_seed(7), dtype=F64) * 2 - 1
    return case, x


EVEN_ODD = ((0, 2), (1,))  # {h1, h3}, {h2}: the even/odd split of a chain


def traces(steps: int = 12):
    case, x = counterexample()
    net = build_as_found(case)
    drives = Energy(net).drives(x)
    colour, _ = energy_trace(net, drives, net.schedule("colour"), steps)
    even_odd, _ = energy_trace(net, drives, EVEN_ODD, steps)
    return net, colour[:, 0], even_odd[:, 0]


def test_wrong_colouring_raises_the_energy_and_colour_does_not():
    net, colour, even_odd = traces()
    assert analyse_balance(net.spec).balanced  # gains 1 everywhere: balanced
    assert net.schedule("colour") == ((0,), (1,), (2,))
    # the even/odd grouping has an edge inside a group
    assert "h1->h3:skip" in net.bindings
    rise_colour = (colour[1:] - colour[:-1]) / colour[:-1].abs().clamp(min=1.0)
    assert float(rise_colour.max()) <= 1e-12
    rises = even_odd[1:] - even_odd[:-1]
    assert float(rises.max()) > 1.0  # measured 9.49 at step 4
    # the weights x3 matter: without them even/odd happens to descend on this draw
    plain = build_as_found(NetworkCase(net.spec, seed=7))
    _, x = counterexample()
    trace, _ = energy_trace(plain, Energy(plain).drives(x), EVEN_ODD, 12)
    assert float((trace[1:] - trace[:-1]).max()) <= 1e-9


def test_energy_trace_colour_vs_even_odd(capsys):
    """Prints the table in docs/energy.md (run with -s)."""
    _, colour, even_odd = traces()
    lines = ["| step | E, colour {h1},{h2},{h3} | E, even/odd {h1,h3},{h2} |", "|---|---|---|"]
    for t, (a, b) in enumerate(zip(colour.tolist(), even_odd.tolist(), strict=True)):
        rise = b - even_odd[t - 1].item() if t else 0.0
        mark = f" (rise {rise:+.3f})" if rise > 0 else ""
        lines.append(f"| {t} | {a:.6f} | {b:.6f}{mark} |")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert all(colour[t + 1] <= colour[t] + 1e-12 for t in range(len(colour) - 1))
    assert any(even_odd[t + 1] > even_odd[t] for t in range(len(even_odd) - 1))


# ---------------------------------------------------------------------------- CLI
def _compile_output(capsys, name: str) -> str:
    capsys.readouterr()
    assert main(["compile", str(TOPOLOGIES / f"{name}.yaml")]) == 0
    return capsys.readouterr().out


def test_compile_says_whether_there_is_an_energy(capsys):
    out = _compile_output(capsys, "fre_2x512")
    assert re.search(r"^energy: yes; .*scales c_k: h1 1, h2 0\.1$", out, re.M)
    out = _compile_output(capsys, "res_10x64")
    line = next(line for line in out.splitlines() if line.startswith("energy:"))
    assert line.startswith("energy: none; the gains do not balance around the cycle ")
    assert "h1 -> h2 -> h3 -> h4 -> h1" in line
    out = _compile_output(capsys, "agt_10x64")
    assert re.search(r"^energy: none; h1->h2:forward .* one-way", out, re.M)


# ---------------------------------------------------------------------------- found by a draw
# The colour-descent property (test_properties) failed in one test order with a relative energy
# rise of 0.498, from a saturated start, on a net with hard_sigmoid layers and a biased tanh
# layer. Hunting with random draws found many such nets; this is one. Explanation: samples 2
# and 3 relax to s = 0 (h1 is hard_sigmoid and its drive is negative), where E ~ s^2 -> 1e-18.
# The tanh potential was computed as 1/2 [(1+s) ln(1+s) + (1-s) ln(1-s)], whose two O(s) terms
# cancel with an absolute error of about eps, so near s = 0 E was rounding noise and "rose"
# by 2e-18 against |E| ~ 1e-21. Neither the colour update nor the energy's formula was wrong:
# its evaluation was. G now uses s atanh(s) + 1/2 log1p(-s^2) for |s| < 1/2 (a few eps relative).
FOUND_YAML = """
name: found_near_zero
input: {size: 4}
layers:
- {name: h1, size: 3, activation: hard_sigmoid}
- {name: h2, size: 2, activation: tanh, bias: true}
- {name: h3, size: 2, activation: hard_sigmoid}
- {name: h4, size: 6, activation: tanh}
readout: {from: h4, size: 3}
edges:
- {source: input, target: h1}
- {source: h1, target: h2, gain: 1.2442001064117814}
- {source: h2, target: h1, kind: feedback, gain: 0.022745247160463885}
- {source: h2, target: h3, gain: 1.1478383166351647}
- {source: h3, target: h2, kind: feedback, gain: 0.27068571432388844}
- {source: h3, target: h4, gain: 1.2233057128674527}
- {source: h4, target: h3, kind: feedback, gain: 0.03572316747284592}
- {source: h1, target: h4, kind: skip, gain: 1.1}
- {source: h4, target: h1, kind: feedback, gain: 0.00013848179529735844}
- {source: h2, target: h4, kind: skip, gain: 1.2233057128674527}
- {source: h4, target: h2, kind: feedback, gain: 0.008424314613965516}
"""
FOUND_X = [
    [1.5173951940622574, -0.6662305413969638, 0.7934325487166207, 1.201747046441075],
    [1.0040916021612487, -0.5095551401204417, 0.9216967646249383, -1.2933349307945656],
    [-0.7489870820414422, -0.7706795082618796, 0.9191671671348605, -1.8401507577248957],
]
FOUND_START = [
    [
        [0.0, 0.43265654446975177, 0.0],
        [0.440368263786831, 0.23283243937819342, 1.0],
        [0.7506127509104411, 0.27302707489781675, 0.6904197759123896],
    ],
    [[1.0, 0.44520072118644705], [-1.0, -0.8949762214414192], [-0.026440496397564406, -1.0]],
    [[1.0, 0.8428005723559527], [1.0, 0.5730277714425345], [0.4066190443804998, 0.0]],
    [
        [-1.0, -0.43783241263737116, 1.0, 1.0, -1.0, 0.07273697269063817],
        [0.7805698815882156, 1.0, 1.0, 0.7767077603926991, 1.0, 0.20117045608303719],
        [1.0, -0.5781973417624688, 1.0, 1.0, 0.45960747153587533, -0.07170376567350689],
    ],
]


def _xlogy_tanh_potential(s: torch.Tensor) -> torch.Tensor:
    """The old evaluation of G for tanh (accurate only far from 0)."""
    one = torch.ones_like(s)
    return 0.5 * (torch.xlogy(one + s, one + s) + torch.xlogy(one - s, one - s))


def test_found_colour_energy_near_zero_states_never_rises():
    spec = loads_topology(FOUND_YAML, "found.yaml")
    net = NetworkCase(spec, seed=0, weight_scale=0.5).build()
    x = torch.tensor(FOUND_X, dtype=F64)
    start = [torch.tensor(s, dtype=F64) for s in FOUND_START]
    drives = Energy(net).drives(x)
    trace, final = energy_trace(net, drives, net.schedule("colour"), 10, start=start)
    assert float(trace[-1, 1:].abs().max()) < 1e-15  # samples 2 and 3 relax to s ~ 0
    assert float(max(s[1:].abs().max() for s in final)) < 1e-6
    rise = trace[1:] - trace[:-1]
    scale = torch.maximum(trace[1:].abs(), trace[:-1].abs()).clamp(min=1e-300)
    assert float((rise / scale).max()) <= 1e-12
    # the old evaluation of G is noise there: off by far more than the value itself
    tanh_layer = final[net.layout.index("h4")][1:]
    old, new = _xlogy_tanh_potential(tanh_layer), get_activation("tanh").potential(tanh_layer)
    assert float((old - new).abs().max()) > float(new.abs().max())


def test_tanh_potential_is_accurate_near_zero_and_finite_at_one():
    G = get_activation("tanh").potential
    mpmath = pytest.importorskip("mpmath")  # ships with torch's sympy
    mpmath.mp.dps = 40
    values = [1e-12, -1e-9, 1e-5, 1e-3, 0.1, -0.3, 0.49, 0.5 - 1e-15, 0.5, 0.5 + 1e-15, 0.7, -0.999]
    exact = [float(v * mpmath.atanh(v) + mpmath.log(1 - mpmath.mpf(v) ** 2) / 2) for v in values]
    s = torch.tensor(values, dtype=F64)
    eps = torch.finfo(F64).eps
    assert torch.allclose(G(s), torch.tensor(exact, dtype=F64), rtol=4 * eps, atol=0)
    ends = G(torch.tensor([-1.0, 1.0], dtype=F64))
    assert torch.allclose(ends, torch.full((2,), math.log(2.0), dtype=F64), rtol=1e-15, atol=0)
    s = torch.tensor([1e-9, 0.2, 0.9], dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(G(s).sum(), s)  # G'(s) = atanh(s)
    assert torch.allclose(grad, torch.atanh(s.detach()), rtol=1e-12, atol=0)
