"""The relaxation's in-place paths give the bits of the out-of-place ones.

A layer's blocks after the first add into its pre-activation in place (``accumulate_``), the
activation is applied in place to a pre-activation the step created (``Activation.fn_``), the
convergence checks form the layers' differences with ``_foreach`` ops, and the EP update is
scaled in place. Each is compared here, bit for bit, with the plain formula it replaces; the
drive, the states and the phases are checked untouched.
"""

from __future__ import annotations

import math

import pytest
import torch

from topo_ep.activations import get_activation
from topo_ep.blocks import DenseBlock, Joined, in_place_accumulator
from topo_ep.compiler import compile_topology
from topo_ep.engine import (
    bounded_state_criterion,
    bounded_states,
    contrast_criterion,
    state_change,
    state_criterion,
    state_criterion_for,
    step,
)
from topo_ep.learn.ep import EquilibriumPropagation
from topo_ep.loader import loads_topology
from topo_ep.spec import ACTIVATIONS, INPUT
from topo_ep.validate import spec_from_dict

DTYPES = (torch.float32, torch.float64)

RESIDUAL = """
name: residual_small
input: {size: 7}
generate: {family: residual, depth: 5, width: 6, gain: 0.2, skip_every: 2}
readout: {size: 3}
"""


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (so -0.0 differs from 0.0, and NaNs compare)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    as_int = torch.int64 if a.dtype == torch.float64 else torch.int32
    return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))


def _residual(dtype: torch.dtype, seed: int = 0):
    net = compile_topology(loads_topology(RESIDUAL), seed=seed, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(9, 7, generator=gen, dtype=torch.float64).to(dtype)
    return net, x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tied", [False, True])
def test_dense_accumulate_in_place_has_the_bits_of_accumulate(dtype, tied):
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(37, 53, generator=gen, dtype=torch.float64).to(dtype)
    block = DenseBlock("a", "b", weight, gain=0.3)
    if tied:
        block = block.transpose("b", "a", 0.07)
    rows_in, rows_out = (37, 53) if tied else (53, 37)
    x = torch.randn(11, rows_in, generator=gen, dtype=torch.float64).to(dtype)
    acc = torch.randn(11, rows_out, generator=gen, dtype=torch.float64).to(dtype)
    expected = block.accumulate(acc, x, 0.5)
    owned = acc.clone()
    result = block.accumulate_(owned, x, 0.5)
    assert result is owned
    assert _same_bits(result, expected)
    assert in_place_accumulator(block) == block.accumulate_


def test_a_kind_without_accumulate_in_place_is_called_through_accumulate():
    class OutOfPlaceOnly:
        def accumulate(self, acc, x, scale=1.0, joined=None):
            return acc + x

    block = OutOfPlaceOnly()
    assert in_place_accumulator(block) == block.accumulate


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_in_place_has_the_bits_of_the_activation(name, dtype):
    """Lengths that are and are not multiples of the vector width (the kernels' tails)."""
    activation = get_activation(name)
    gen = torch.Generator().manual_seed(5)
    for shape in [(500, 64), (7, 13), (3, 1)]:
        h = (4 * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)
        h[0, 0] = -0.0
        expected = activation.fn(h)
        owned = h.clone()
        result = activation.fn_(owned)
        assert result.data_ptr() == owned.data_ptr()
        assert _same_bits(result, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_preactivation_equals_the_chain_of_accumulates_and_modifies_nothing(dtype):
    """Layers with 2 to 4 incoming blocks (skips): h_k = drive + sum of accumulates."""
    net, x = _residual(dtype)
    drives = net.input_drive(x)
    gen = torch.Generator().manual_seed(1)
    state = [
        torch.rand(9, n, generator=gen, dtype=torch.float64).to(dtype) for n in net.layout.sizes
    ]
    kept_state = [s.clone() for s in state]
    kept_drives = [d.clone() for d in drives]
    assert max(len(incoming) for incoming in net.incoming) >= 3
    with torch.no_grad():
        for k in range(len(state)):
            expected = drives[k]
            for source, block in net.incoming[k]:
                joined = Joined(state[source], state[k])
                expected = block.accumulate(expected, state[source], joined=joined)
            assert _same_bits(net.preactivation(k, state, drives[k]), expected)
    for a, b in zip(state + drives, kept_state + kept_drives, strict=True):
        assert _same_bits(a, b)


def test_a_layer_without_hidden_inputs_keeps_its_drive():
    """h1 has no hidden-to-hidden block: its pre-activation is the drive itself, which the
    step must not overwrite with the activation."""
    spec = spec_from_dict(
        {
            "name": "feedforward",
            "input": {"size": 4},
            "layers": [{"name": "h1", "size": 5}, {"name": "h2", "size": 3}],
            "readout": {"from": "h2", "size": 2},
            "edges": [{"source": "input", "target": "h1"}, {"source": "h1", "target": "h2"}],
        }
    )
    net = compile_topology(spec, seed=0, dtype=torch.float64)
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    drives = net.input_drive(x)
    kept = [d.clone() for d in drives]
    start = net.layout.zeros(6, dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for schedule in ("synchronous", "sweep"):
            state = step(net, start, drives, net.schedule(schedule))
            assert torch.equal(state[0], torch.tanh(kept[0]))
            assert state[0].data_ptr() != drives[0].data_ptr()
    for a, b in zip(drives, kept, strict=True):
        assert _same_bits(a, b)
    assert all(torch.count_nonzero(s) == 0 for s in start)


def _reference_state_change(new, old):
    """The criterion's formula, one layer at a time (the code before the _foreach ops)."""
    change = torch.stack(
        [(a - b).flatten(1).abs().amax(dim=1) for a, b in zip(new, old, strict=True)]
    )
    size = torch.stack([a.flatten(1).abs().amax(dim=1) for a in new])
    return change.amax(dim=0) / size.amax(dim=0).clamp(min=1.0)


def _reference_contrast(new, old, free, tolerance):
    eps = torch.finfo(new[0].dtype).eps
    layers = []
    for current, previous, reference in zip(new, old, free, strict=True):
        current, previous, reference = (t.flatten(1) for t in (current, previous, reference))
        floor = 16.0 * eps * math.sqrt(current.shape[1])
        change = torch.linalg.vector_norm(current - previous, dim=1)
        contrast = torch.linalg.vector_norm(current - reference, dim=1)
        layers.append(change / torch.clamp(tolerance * contrast, min=floor))
    states = _reference_state_change(new, old).amax() / tolerance
    return torch.maximum(torch.stack(layers).amax(), states)


def _states(dtype, scale=1.0, seed=0, shapes=((9, 6), (9, 2, 3), (9, 5))):
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [0.5, 30.0])
def test_the_criteria_have_the_bits_of_their_formulas(dtype, scale):
    """Bounded and large states, a layer with a shape; the inputs are left untouched."""
    new, old, free = (_states(dtype, scale, seed) for seed in (0, 1, 2))
    old = [a + 1e-3 * b for a, b in zip(new, old, strict=True)]
    kept = [t.clone() for t in new + old + free]
    assert _same_bits(state_change(new, old), _reference_state_change(new, old))
    assert _same_bits(
        state_criterion(new, old, 1e-4), _reference_state_change(new, old).amax() / 1e-4
    )
    value = contrast_criterion(free)(new, old, 1e-3)
    assert _same_bits(value, _reference_contrast(new, old, free, 1e-3))
    for a, b in zip(new + old + free, kept, strict=True):
        assert _same_bits(a, b)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_the_criteria_stay_non_finite_on_a_non_finite_state(bad):
    new, old, free = (_states(torch.float64, 1.0, seed) for seed in (0, 1, 2))
    new[1][4, 0, 2] = bad
    assert not math.isfinite(float(state_criterion(new, old, 1e-4)))
    assert not math.isfinite(float(contrast_criterion(free)(new, old, 1e-3)))


def _reference_updates(net, phases, method):
    """dW and db of the module docstring, out of place, one product per edge."""
    plus, minus = phases.nudged[0], phases.free
    factor = 1.0
    if method.nudging == "symmetric":
        plus, minus, factor = phases.nudged[0], phases.nudged[1], 0.5
    out = {}
    for binding in net.learned_bindings():
        edge = binding.edge
        block = net.blocks[binding.block]
        dst = net.layout.index(edge.target)
        src = None if edge.source == INPUT else net.layout.index(edge.source)
        pre = {
            "plus": phases.inputs if src is None else plus[src],
            "minus": phases.inputs if src is None else minus[src],
            "free": phases.inputs if src is None else phases.free[src],
        }
        if method.rule == "paper":
            post = plus[dst] - minus[dst]
            delta = block.outer(post, pre["free"], Joined(pre["free"], phases.free[dst]))
        else:
            delta = block.outer(plus[dst], pre["plus"], Joined(pre["plus"], plus[dst]))
            delta = delta - block.outer(minus[dst], pre["minus"], Joined(pre["minus"], minus[dst]))
        out[edge.key] = delta * (factor * edge.gain)
    for name in net.biases:
        k = net.layout.index(name)
        out[name] = net.bias_of(name).outer(plus[k] - minus[k]) * factor
    return out


@pytest.mark.parametrize(
    ("nudging", "rule"), [("one-sided", "paper"), ("symmetric", "paper"), ("symmetric", "contrast")]
)
def test_the_ep_update_has_the_bits_of_its_formula(nudging, rule):
    """A residual net (gains 1 and 0.2) and a net with biases, one of them per channel."""
    for net, x in [_residual(torch.float64), _biased()]:
        method = EquilibriumPropagation(nudging=nudging, rule=rule, free_steps=6, nudged_steps=4)
        y = torch.arange(x.shape[0]) % net.spec.readout.size
        phases = method.phases(net, x, y)
        kept = [t.clone() for t in phases.free + [s for n in phases.nudged for s in n]]
        expected = _reference_updates(net, phases, method)
        updates = method.updates(net, phases)
        got = {key.name: value for key, value in updates.items()}
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert _same_bits(got[name], value), name
        after = phases.free + [s for n in phases.nudged for s in n]
        assert all(_same_bits(a, b) for a, b in zip(after, kept, strict=True))


BIASED = """
name: biased
input: {size: 6}
layers:
  - {name: h1, size: 18, shape: [2, 3, 3], bias: true}
  - {name: h2, size: 5, bias: true}
readout: {from: h2, size: 3}
edges:
  - {source: input, target: h1}
  - {source: h1, target: h2}
  - {source: h2, target: h1, kind: feedback, gain: 0.5}
"""


def _biased():
    """Per-channel and per-unit biases (nonzero), a gain 0.5 feedback."""
    net = compile_topology(loads_topology(BIASED), seed=2, dtype=torch.float64)
    with torch.no_grad():
        net.biases["h1"].copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
        net.biases["h2"].copy_(torch.linspace(-0.2, 0.2, 5, dtype=torch.float64))
    x = torch.rand(8, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return net, x


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_bounded_criteria_give_the_values_of_the_full_ones_on_bounded_states(dtype):
    """States in [-1, 1] (tanh of anything, exact +-1 included): the denominator is 1."""
    new, old, free = ([torch.tanh(3 * s) for s in _states(dtype, 1.0, seed)] for seed in (0, 1, 2))
    new[0][0, 0] = 1.0
    new[2][3, 1] = -1.0
    assert _same_bits(state_change(new, old, bounded=True), state_change(new, old))
    assert _same_bits(bounded_state_criterion(new, old, 1e-4), state_criterion(new, old, 1e-4))
    bounded, full = contrast_criterion(free, bounded=True), contrast_criterion(free)
    assert _same_bits(bounded(new, old, 1e-3), full(new, old, 1e-3))


def test_states_count_as_bounded_only_when_every_layer_is_updated_by_a_bounded_activation():
    net, _ = _residual(torch.float64)
    assert bounded_states(net, net.schedule("sweep"))
    assert bounded_states(net, net.schedule("synchronous"))
    assert state_criterion_for(net, net.schedule("sweep")) is bounded_state_criterion
    partial = net.schedule("sweep")[1:]  # the first layer keeps its start state
    assert not bounded_states(net, partial)
    assert state_criterion_for(net, partial) is state_criterion
    spec = spec_from_dict(
        {
            "name": "one_linear_layer",
            "input": {"size": 4},
            "layers": [
                {"name": "h1", "size": 5},
                {"name": "h2", "size": 3, "activation": "identity"},
            ],
            "readout": {"from": "h2", "size": 2},
            "edges": [{"source": "input", "target": "h1"}, {"source": "h1", "target": "h2"}],
        }
    )
    linear = compile_topology(spec, seed=0, dtype=torch.float64)
    assert not bounded_states(linear, linear.schedule("sweep"))
    assert state_criterion_for(linear, linear.schedule("sweep")) is state_criterion


@pytest.mark.parametrize("bounded", [False, True])
def test_the_contrast_test_after_the_first_step_reuses_the_change(bounded, monkeypatch):
    """``old`` is s^0 itself (a check after the first nudged step): one set of differences
    instead of two, and the same value as with a copy of s^0."""
    free = [torch.tanh(s) for s in _states(torch.float64, 2.0, 0)]
    new = [torch.tanh(s) for s in _states(torch.float64, 2.0, 1)]
    criterion = contrast_criterion(free, bounded=bounded)
    calls = []
    original = torch._foreach_sub

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_sub", counted)
    reused = criterion(new, list(free), 1e-3)
    assert len(calls) == 1
    computed = criterion(new, [s.clone() for s in free], 1e-3)
    assert len(calls) == 3
    assert _same_bits(reused, computed)
    assert _same_bits(reused, _reference_contrast(new, free, free, 1e-3))
