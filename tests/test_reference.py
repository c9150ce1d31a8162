"""Faithfulness against an independent dense reference, for every shipped topology.

The reference never looks at the compiled blocks, the layout or ``hidden_operator()``: it reads
the STRUCTURE from the spec (layer order and sizes, edges, gains, tied partners, activations,
readout) and builds the whole hidden N x N matrix M and the input matrix B densely, with
offsets it computes itself. Only the parameter VALUES come from the compiled network, looked up
by edge key (``net.weight_of``), layer name (``net.biases``) or readout attribute; a sparse
edge's values are placed into its dense matrix here, at the mask its checkpoint stores
(``crow_indices``, ``col_indices``), and its gradient is compared at the mask. It then runs
the paper's dynamics in float64 with fixed step counts:

    input:   x' = (x - mean) / std                      the topology's input constants
    free:    s <- rho(M s + B x' + c)                   from s = 0, free_steps times
    readout: p = softmax(W_out s_top + b_out)
    nudged:  s <- rho(M s + B x' + c + nudge * e F)     from the free state, nudged_steps times,
             e = onehot(y) - p_free (held) or onehot(y) - p(s) (reread); F = W_out (tied) or
             the fixed random readout-feedback matrix, both (classes, top size)

and compares with :meth:`EquilibriumPropagation.phases` and the gradients it writes.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch

from topo_ep.balance import state_dependent_couplings
from topo_ep.compiler import CompiledNetwork, compile_topology
from topo_ep.learn.ep import EquilibriumPropagation
from topo_ep.loader import load_topology
from topo_ep.spec import TopologySpec
from topo_ep.validate import spec_from_dict

TOL = 1e-12
BATCH = 4
REPO = Path(__file__).resolve().parents[1]
#: Shipped topologies whose couplings max-pool (no fixed matrix, so no dense reference); their
#: blocks are checked against the dense matrices they imply at frozen indices in
#: tests/test_conv_reference.py.
MAX_POOLED = {"conv_mnist"}
TOPOLOGY_FILES = sorted(p for p in (REPO / "topologies").glob("*.yaml") if p.stem not in MAX_POOLED)

ACTIVATIONS = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": lambda h: h.clamp(0.0, 1.0),
    "identity": lambda h: h,
}


# ---------------------------------------------------------------------------- the reference
def stored_mask(net: CompiledNetwork, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(rows, cols) of a sparse edge's entries, in the order of its values, read from the
    state dict (CSR); ``None`` for a dense edge."""
    state = net.state_dict()
    prefix = f"edges.{key.replace('.', '_')}."
    if prefix + "crow_indices" not in state:
        return None
    crow, col = state[prefix + "crow_indices"], state[prefix + "col_indices"]
    return torch.repeat_interleave(torch.arange(crow.numel() - 1), crow.diff()), col


def edge_matrix(spec: TopologySpec, net: CompiledNetwork, key: str) -> torch.Tensor:
    """W of an owning edge, (target size, source size), from its stored values (and mask)."""
    value = net.weight_of(key).detach()
    mask = stored_mask(net, key)
    if mask is None:
        return value
    edge = next(e for e in spec.edges if e.key == key)
    matrix = torch.zeros(spec.size_of(edge.target), spec.size_of(edge.source), dtype=value.dtype)
    matrix[mask] = value
    return matrix


class DenseReference:
    """M, B, bias, activations and readout of a spec, assembled without the compiler's help."""

    def __init__(self, spec: TopologySpec, net: CompiledNetwork) -> None:
        self.spec = spec
        self.slices: dict[str, slice] = {}
        offset = 0
        for layer in spec.layers:
            self.slices[layer.name] = slice(offset, offset + layer.size)
            offset += layer.size
        n, n_in = offset, spec.input.size
        self.n = n
        self.M = torch.zeros(n, n, dtype=torch.float64)
        self.B = torch.zeros(n, n_in, dtype=torch.float64)
        self.c = torch.zeros(n, dtype=torch.float64)
        for edge in spec.edges:
            if edge.kind == "feedback" and edge.feedback == "tied":
                partners = [
                    other
                    for other in spec.edges
                    if other.kind in ("forward", "skip")
                    and (other.source, other.target) == (edge.target, edge.source)
                ]
                assert len(partners) == 1, edge.key
                weight = edge_matrix(spec, net, partners[0].key).t()
                # The tied edge uses its partner's tensor itself, not a copy.
                assert net.weight_of(edge.key) is net.weight_of(partners[0].key)
            else:
                weight = edge_matrix(spec, net, edge.key)
            rows = self.slices[edge.target]
            assert weight.shape == (spec.layer(edge.target).size, spec.size_of(edge.source))
            if edge.source == "input":
                self.B[rows] += edge.gain * weight
            else:
                self.M[rows, self.slices[edge.source]] += edge.gain * weight
        for layer in spec.layers:
            if layer.bias:
                self.c[self.slices[layer.name]] = net.biases[layer.name].detach()
        self.top = self.slices[spec.readout.source]
        self.w_out = net.readout_weight.detach()
        self.b_out = (
            net.readout_bias.detach()
            if spec.readout.bias
            else torch.zeros(spec.readout.size, dtype=torch.float64)
        )
        if spec.readout.feedback == "random":
            assert net.readout_feedback is not None
            self.feedback = net.readout_feedback.detach()
            assert not torch.equal(self.feedback, self.w_out)
        else:
            assert net.readout_feedback is None
            self.feedback = self.w_out
        self.order = self._feedforward_order()

    def _feedforward_order(self) -> list[str]:
        """Kahn's algorithm on forward/skip edges; ties broken by declaration position."""
        names = [layer.name for layer in self.spec.layers]
        preds = {name: set() for name in names}
        for edge in self.spec.edges:
            if edge.kind in ("forward", "skip") and edge.source != "input":
                preds[edge.target].add(edge.source)
        order: list[str] = []
        while len(order) < len(names):
            ready = [n for n in names if n not in order and preds[n] <= set(order)]
            order.append(ready[0])
        return order

    def activate(self, h: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
        out = h.clone()
        for layer in self.spec.layers:
            if names is None or layer.name in names:
                sl = self.slices[layer.name]
                out[:, sl] = ACTIVATIONS[layer.activation](h[:, sl])
        return out

    def logits(self, s: torch.Tensor) -> torch.Tensor:
        return s[:, self.top] @ self.w_out.t() + self.b_out

    def relax(
        self,
        s: torch.Tensor,
        x: torch.Tensor,
        steps: int,
        schedule: str,
        nudge: float = 0.0,
        onehot: torch.Tensor | None = None,
        held: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``steps`` steps; ``held`` is the held error, otherwise (nudge != 0) it is reread."""
        drive = x @ self.B.t() + self.c
        for _ in range(steps):
            if schedule == "synchronous":
                h = s @ self.M.t() + drive
                if nudge:
                    error = held if held is not None else onehot - torch.softmax(self.logits(s), -1)
                    h[:, self.top] += nudge * error @ self.feedback
                s = self.activate(h)
            else:  # sweep: one layer at a time in feedforward order, Gauss-Seidel
                s = s.clone()
                for name in self.order:
                    sl = self.slices[name]
                    h = s @ self.M[sl].t() + drive[:, sl]
                    if nudge and sl == self.top:
                        error = (
                            held if held is not None else onehot - torch.softmax(self.logits(s), -1)
                        )
                        h = h + nudge * error @ self.feedback
                    full = torch.zeros_like(s)
                    full[:, sl] = h
                    s[:, sl] = self.activate(full, [name])[:, sl]
        return s

    def phases(self, x, y, method: EquilibriumPropagation):
        onehot = torch.nn.functional.one_hot(y, self.spec.readout.size).to(torch.float64)
        s0 = torch.zeros(x.shape[0], self.n, dtype=torch.float64)
        free = self.relax(s0, x, method.free_steps, method.schedule)
        p_free = torch.softmax(self.logits(free), -1)
        held = onehot - p_free if method.error == "held" else None
        signs = (1.0,) if method.nudging == "one-sided" else (1.0, -1.0)
        nudged = [
            self.relax(
                free, x, method.nudged_steps, method.schedule, sign * method.nudge, onehot, held
            )
            for sign in signs
        ]
        return free, nudged, p_free, onehot


def expected_gradients(ref: DenseReference, x, free, nudged, p_free, onehot, method):
    """The documented updates, from reference states: .grad = -dW / (nudge * batch)."""
    spec, batch = ref.spec, x.shape[0]
    if method.nudging == "one-sided":
        plus, minus, factor = nudged[0], free, 1.0
    else:
        plus, minus, factor = nudged[0], nudged[1], 0.5
    grads: dict[str, torch.Tensor] = {}
    for edge in spec.edges:
        if not edge.learned:
            continue
        dst = ref.slices[edge.target]
        if edge.source == "input":
            a_src = b_src = f_src = x
        else:
            src = ref.slices[edge.source]
            a_src, b_src, f_src = plus[:, src], minus[:, src], free[:, src]
        if method.rule == "paper":
            delta = (plus[:, dst] - minus[:, dst]).t() @ f_src
        else:
            delta = plus[:, dst].t() @ a_src - minus[:, dst].t() @ b_src
        grads[edge.key] = -edge.gain * factor * delta / (method.nudge * batch)
    for layer in spec.layers:
        if layer.bias:
            sl = ref.slices[layer.name]
            grads["bias:" + layer.name] = (
                -factor * (plus[:, sl] - minus[:, sl]).sum(0) / (method.nudge * batch)
            )
    error = (p_free - onehot) / batch
    grads["readout"] = error.t() @ free[:, ref.top]
    if spec.readout.bias:
        grads["readout_bias"] = error.sum(0)
    return grads


# ---------------------------------------------------------------------------- inputs
def _inputs(spec: TopologySpec, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(BATCH, spec.input.size, generator=gen, dtype=torch.float64)
    y = torch.randint(0, spec.readout.size, (BATCH,), generator=gen)
    return x, y


MIXED = {
    "name": "mixed",
    "input": {"size": 12},
    # declared out of feedforward order on purpose (feedforward order is a, b, c, d)
    "layers": [
        {"name": "c", "size": 6, "activation": "hard_sigmoid"},
        {"name": "a", "size": 7, "activation": "tanh", "bias": True},
        {"name": "d", "size": 4, "activation": "tanh", "bias": True},
        {"name": "b", "size": 5, "activation": "sigmoid", "bias": True},
    ],
    "readout": {"from": "d", "size": 3, "feedback": "random", "bias": True},
    "edges": [
        {"source": "c", "target": "d"},
        {"source": "input", "target": "a"},
        {"source": "d", "target": "c", "kind": "feedback", "gain": 0.25},
        {"source": "a", "target": "b", "gain": 0.9},
        {"source": "input", "target": "c", "kind": "skip", "gain": 0.7},
        {"source": "b", "target": "a", "kind": "feedback", "feedback": "tied", "gain": 0.2},
        {"source": "b", "target": "c"},
        {"source": "a", "target": "c", "kind": "skip"},
        {"source": "c", "target": "b", "kind": "feedback", "feedback": "random", "gain": 0.3},
        {"source": "c", "target": "a", "kind": "feedback", "gain": 0.15},
        {"source": "b", "target": "d", "kind": "skip", "learned": False},
        {"source": "d", "target": "b", "kind": "feedback", "gain": 0.2},
        {"source": "d", "target": "a", "kind": "feedback", "feedback": "random", "gain": 0.1},
    ],
    "dynamics": {"schedule": "synchronous", "free_steps": 30, "nudged_steps": 15},
    "training": {"nudge": 0.5},
}


def mixed_spec() -> TopologySpec:
    return spec_from_dict(MIXED)


def _compile(spec: TopologySpec, seed: int = 0) -> CompiledNetwork:
    net = compile_topology(spec, seed=seed, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # biases start at zero: give them values so they matter
        for bias in net.biases.values():
            bias.copy_(torch.randn(bias.shape, generator=gen, dtype=torch.float64) * 0.5)
        if net.readout_bias is not None:
            net.readout_bias.copy_(
                torch.randn(net.readout_bias.shape, generator=gen, dtype=torch.float64)
            )
    return net


def _method(spec: TopologySpec, **changes) -> EquilibriumPropagation:
    base = EquilibriumPropagation.from_spec(spec)
    return dataclasses.replace(base, **{"schedule": "synchronous", "tolerance": 0.0, **changes})


def _flat(net: CompiledNetwork, ref: DenseReference, state: list[torch.Tensor]) -> torch.Tensor:
    """Library state (per-layer list) arranged in the reference's layout, by layer name."""
    out = torch.zeros(state[0].shape[0], ref.n, dtype=torch.float64)
    for name, sl in ref.slices.items():
        out[:, sl] = state[net.layout.index(name)]
    return out


def _assert_close(actual, expected, what: str, tol: float = TOL) -> None:
    diff = (actual - expected).abs().max().item()
    assert diff <= tol, f"{what}: max |difference| {diff:.3g} > {tol:g}"


def _standardised(spec: TopologySpec, x: torch.Tensor) -> torch.Tensor:
    """x' = (x - mean) / std with the topology's declared input constants."""
    return (x - spec.input.mean) / spec.input.std


def _check_phases_and_gradients(spec: TopologySpec, method: EquilibriumPropagation) -> None:
    net = _compile(spec)
    ref = DenseReference(spec, net)
    x, y = _inputs(spec)
    seen = _standardised(spec, x)  # the network gets the raw x and prepares it itself
    free, nudged, p_free, onehot = ref.phases(seen, y, method)

    phases = method.phases(net, x, y)
    assert phases.free_stats.steps == method.free_steps
    assert all(s.steps == method.nudged_steps for s in phases.nudged_stats)
    assert len(phases.nudged) == len(nudged)
    _assert_close(_flat(net, ref, phases.free), free, "free state")
    # flatten() must follow declaration order, the layout the reference assumed
    _assert_close(net.layout.flatten(phases.free), free, "flattened free state")
    _assert_close(torch.softmax(phases.logits, -1), p_free, "free readout")
    for k, state in enumerate(nudged):
        _assert_close(_flat(net, ref, phases.nudged[k]), state, f"nudged state {k}")
        # non-trivial: the nudge moved the top layer
        assert (state[:, ref.top] - free[:, ref.top]).abs().max() > 1e-6

    expected = expected_gradients(ref, seen, free, nudged, p_free, onehot, method)
    net.zero_grad(set_to_none=True)
    method.gradients(net, x, y)
    got: dict[str, torch.Tensor] = {}
    for edge in spec.edges:
        if edge.learned:
            got[edge.key] = net.weight_of(edge.key).grad
        elif edge.kind != "feedback" or edge.feedback == "random":
            assert net.weight_of(edge.key).grad is None, edge.key  # fixed: never trained
    for layer in spec.layers:
        if layer.bias:
            got["bias:" + layer.name] = net.biases[layer.name].grad
    got["readout"] = net.readout_weight.grad
    if spec.readout.bias:
        got["readout_bias"] = net.readout_bias.grad
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] is not None, key
        mask = stored_mask(net, key) if "->" in key else None
        if mask is not None:  # a sparse edge learns its values only: the gradient at the mask
            value = value[mask]
        scale = max(1.0, value.abs().max().item())
        _assert_close(got[key], value, f"gradient of {key}", 1e-10 * scale)


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize("path", TOPOLOGY_FILES, ids=lambda p: p.stem)
def test_shipped_topology_matches_dense_reference(path):
    spec = load_topology(path)
    _check_phases_and_gradients(spec, _method(spec))


@pytest.mark.parametrize("path", TOPOLOGY_FILES, ids=lambda p: p.stem)
def test_shipped_topology_operator_equals_reference_matrix(path):
    spec = load_topology(path)
    net = _compile(spec)
    ref = DenseReference(spec, net)
    operator = net.hidden_operator()
    assert operator.shape == (ref.n, ref.n)
    assert torch.equal(operator, ref.M)
    # the operator is not empty: every hidden-to-hidden edge left a block
    assert ref.M.abs().sum() > 0


def test_shipped_topologies_are_all_covered():
    for name in MAX_POOLED:  # left out only because they have no fixed matrix
        assert state_dependent_couplings(load_topology(REPO / "topologies" / f"{name}.yaml"))
    names = {p.stem for p in TOPOLOGY_FILES}
    assert {"fre_2x512", "fre_3x512", "agt_10x64", "quickstart"} <= names
    agt = load_topology(REPO / "topologies" / "agt_10x64.yaml")
    assert agt.readout.feedback == "random"
    assert any(e.kind == "feedback" and e.feedback == "random" for e in agt.edges)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"schedule": "sweep"},
        {"error": "reread"},
        {"nudging": "symmetric", "rule": "contrast"},
        {"nudging": "symmetric", "rule": "paper", "error": "reread", "schedule": "sweep"},
        {"rule": "contrast", "schedule": "sweep"},
    ],
    ids=lambda c: "-".join(f"{v}" for v in c.values()) or "default",
)
def test_mixed_topology_with_biases_matches_dense_reference(changes):
    """Biases, mixed activations, skips (input skip too), tied feedback onto a skip and onto a
    fixed (learned: false) skip, random feedback with and without a forward partner, a forward
    gain != 1, random readout feedback with a readout bias, and layers declared out of order."""
    spec = mixed_spec()
    assert DenseReference(spec, _compile(spec)).order == ["a", "b", "c", "d"]
    _check_phases_and_gradients(spec, _method(spec, **changes))


def test_mixed_topology_operator_and_input_matrix():
    spec = mixed_spec()
    net = _compile(spec)
    ref = DenseReference(spec, net)
    assert torch.equal(net.hidden_operator(), ref.M)
    x, _ = _inputs(spec)
    drives = net.input_drive(x)
    for name, sl in ref.slices.items():
        expected = _standardised(spec, x) @ ref.B[sl].t() + ref.c[sl]
        _assert_close(drives[net.layout.index(name)], expected, f"input drive of {name}")


def _permuted(spec: TopologySpec, seed: int) -> TopologySpec:
    rng = random.Random(seed)
    layers, edges = list(spec.layers), list(spec.edges)
    for _ in range(10):  # make sure the permutation actually changes the layer order
        rng.shuffle(layers)
        if len(layers) == 1 or layers != list(spec.layers):
            break
    rng.shuffle(edges)
    return dataclasses.replace(spec, layers=tuple(layers), edges=tuple(edges))


def _copy_by_key(source: CompiledNetwork, target: CompiledNetwork, spec: TopologySpec) -> None:
    with torch.no_grad():
        for edge in spec.edges:
            if not edge.is_tied:
                target.weight_of(edge.key).copy_(source.weight_of(edge.key))
        for name, bias in source.biases.items():
            target.biases[name].copy_(bias)
        target.readout_weight.copy_(source.readout_weight)
        if source.readout_bias is not None:
            target.readout_bias.copy_(source.readout_bias)
        if source.readout_feedback is not None:
            target.readout_feedback.copy_(source.readout_feedback)


@pytest.mark.parametrize(
    "path", [*TOPOLOGY_FILES, "mixed"], ids=lambda p: p if isinstance(p, str) else p.stem
)
def test_declaration_order_does_not_change_the_network(path):
    spec = mixed_spec() if path == "mixed" else load_topology(path)
    permuted = _permuted(spec, seed=7)
    assert permuted.layer_names != spec.layer_names or len(spec.layers) == 1
    net, pnet = _compile(spec), _compile(permuted, seed=3)
    _copy_by_key(net, pnet, spec)
    ref, pref = DenseReference(spec, net), DenseReference(permuted, pnet)
    # the compiled operator follows the permuted spec's own layout...
    assert torch.equal(pnet.hidden_operator(), pref.M)
    # ...and is the original operator with rows and columns permuted
    index = torch.cat([torch.arange(ref.n)[ref.slices[name]] for name in permuted.layer_names])
    assert torch.equal(pnet.hidden_operator(), net.hidden_operator()[index][:, index])
    # same dynamics, layer by layer (the block summation order may differ: rounding only)
    x, y = _inputs(spec)
    for schedule in ("synchronous", "sweep"):
        method = _method(spec, schedule=schedule, free_steps=12, nudged_steps=6)
        a, b = method.phases(net, x, y), method.phases(pnet, x, y)
        for name in spec.layer_names:
            i, j = net.layout.index(name), pnet.layout.index(name)
            _assert_close(b.free[j], a.free[i], f"{schedule} free {name}")
            _assert_close(b.nudged[0][j], a.nudged[0][i], f"{schedule} nudged {name}")
