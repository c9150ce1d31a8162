"""Sparse edges: a sparse block and a dense block holding the same masked weights give the same
network, on every backend, to 1e-12 in float64.

For chain, residual and AGT topologies that mix sparse and dense edges (tied and random
feedback, a sparse input edge with local wiring, a sparse readout), the sparse network and its
dense twin (every block dense, each holding its sparse partner's masked matrix) must agree on
the free and nudged states, the EP updates, the BP / BPTT / implicit gradients (the sparse
values' gradient is the dense gradient read at the mask), the spectral radius (exact and
ARPACK on the matrix-free operator) and the energy. The torch-sparse backend is an optional
extra; its cases skip, saying so, when the package is not installed.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from topo_ep import spectral
from topo_ep.blocks import SparseBlock, dispatch
from topo_ep.blocks.dispatch import torch_sparse_available
from topo_ep.compiler import CompiledNetwork, compile_topology
from topo_ep.energy import Energy
from topo_ep.learn import make_method
from topo_ep.learn.ep import EquilibriumPropagation
from topo_ep.loader import loads_topology
from topo_ep.params import ParamKey
from topo_ep.spec import BlockSpec, TopologySpec

TOL = 1e-12

NEEDS_TORCH_SPARSE = pytest.mark.skipif(
    not torch_sparse_available(),
    reason="torch-sparse is not installed (optional extra: pip install 'topo-ep[sparse]', "
    "see DEVELOPERS.md)",
)
BACKENDS = [
    "dense",
    "torch.sparse",
    pytest.param("torch-sparse", marks=NEEDS_TORCH_SPARSE),
    "auto",
]

CHAIN = """
name: chain
input: {size: 12, shape: [3, 4]}
layers:
  - {name: h1, size: 16, shape: [4, 4]}
  - {name: h2, size: 16}
  - {name: h3, size: 12, shape: [3, 4]}
readout: {from: h3, size: 5, block: {kind: sparse, density: 0.6, backend: BACKEND}}
edges:
  - {source: input, target: h1,
     block: {kind: sparse, pattern: local, radius: 1.5, backend: BACKEND}}
  - {source: h1, target: h2, block: {kind: sparse, density: 0.3, seed: 2, backend: BACKEND}}
  - {source: h2, target: h1, kind: feedback, gain: 0.2}
  - {source: h2, target: h3}
  - {source: h3, target: h2, kind: feedback, gain: 0.2}
dynamics: {schedule: synchronous, free_steps: 60, nudged_steps: 40, tolerance: 1e-13}
training: {nudging: symmetric, rule: contrast, nudge: 0.05}
"""

# Residual: a sparse skip h1 -> h4 with tied feedback; gains balanced around the cycle, so it
# has an energy.
RESIDUAL = """
name: residual
input: {size: 10}
layers:
  - {name: h1, size: 12, shape: [3, 4]}
  - {name: h2, size: 12}
  - {name: h3, size: 12}
  - {name: h4, size: 12, shape: [3, 4]}
readout: {from: h4, size: 4}
edges:
  - {source: input, target: h1}
  - {source: h1, target: h2, block: {kind: sparse, density: 0.4, seed: 1, backend: BACKEND}}
  - {source: h2, target: h3}
  - {source: h3, target: h4, block: {kind: sparse, density: 0.25, backend: BACKEND}}
  - {source: h1, target: h4, kind: skip,
     block: {kind: sparse, pattern: local, radius: 1.2, backend: BACKEND}}
  - {source: h2, target: h1, kind: feedback, gain: 0.3}
  - {source: h3, target: h2, kind: feedback, gain: 0.3}
  - {source: h4, target: h3, kind: feedback, gain: 0.3}
  - {source: h4, target: h1, kind: feedback, gain: 0.027}
dynamics: {schedule: sweep, free_steps: 80, nudged_steps: 60, tolerance: 1e-13}
training: {nudging: one-sided, rule: paper, nudge: 0.1}
"""

# AGT: asymmetric, every feedback fixed random (two of them sparse), a sparse forward link.
AGT = """
name: agt
input: {size: 10}
layers:
  - {name: h1, size: 14}
  - {name: h2, size: 14}
  - {name: h3, size: 14}
readout: {from: h3, size: 4, feedback: random}
edges:
  - {source: input, target: h1, block: {kind: sparse, density: 0.5, backend: BACKEND}}
  - {source: h1, target: h2}
  - {source: h2, target: h3, block: {kind: sparse, density: 0.3, seed: 4, backend: BACKEND}}
  - {source: h1, target: h3, kind: skip, block: {kind: sparse, density: 0.2, backend: BACKEND}}
  - {source: h2, target: h1, kind: feedback, feedback: random, gain: 0.1,
     block: {kind: sparse, density: 0.4, backend: BACKEND}}
  - {source: h3, target: h2, kind: feedback, feedback: random, gain: 0.1}
  - {source: h3, target: h1, kind: feedback, feedback: random, gain: 0.05,
     block: {kind: sparse, density: 0.3, backend: BACKEND}}
dynamics: {schedule: synchronous, free_steps: 80, nudged_steps: 60, tolerance: 1e-13}
training: {nudging: symmetric, rule: paper, error: reread, nudge: 0.05}
"""

TOPOLOGIES = {"chain": CHAIN, "residual": RESIDUAL, "agt": AGT}


@pytest.fixture(params=dispatch.UPDATES)
def update(request, monkeypatch):
    """Run the test with each update kernel (``sampled``, ``masked-dense``) at every density:
    the dispatch rule would otherwise pick one by density."""
    monkeypatch.setitem(
        dispatch.SAMPLED_UPDATE_UP_TO, "cpu", 1.0 if request.param == "sampled" else 0.0
    )
    return request.param


def sparse_spec(name: str, backend: str) -> TopologySpec:
    return loads_topology(TOPOLOGIES[name].replace("BACKEND", backend), f"{name}.yaml")


def dense_twin(spec: TopologySpec) -> TopologySpec:
    """The same topology with every block dense."""
    edges = tuple(dataclasses.replace(e, block=BlockSpec()) for e in spec.edges)
    readout = dataclasses.replace(spec.readout, block=BlockSpec())
    return dataclasses.replace(spec, edges=edges, readout=readout)


def masked(block) -> torch.Tensor:
    """The matrix a block holds (the masked dense matrix of a sparse one), without the gain."""
    if isinstance(block, SparseBlock):
        return block.masked_dense(block.values).detach()
    return block.parameter.detach()


def pair(name: str, backend: str) -> tuple[CompiledNetwork, CompiledNetwork]:
    """The sparse network (float64, seed 0) and its dense twin holding the same matrices."""
    sparse = compile_topology(sparse_spec(name, backend), dtype=torch.float64)
    dense = compile_topology(dense_twin(sparse.spec), dtype=torch.float64)
    with torch.no_grad():
        for key, binding in sparse.bindings.items():
            if binding.tensor is not None:
                dense.weight_of(key).copy_(masked(sparse.edges[binding.tensor]))
        dense.readout_weight.copy_(masked(sparse.head.block))
        if sparse.readout_feedback is not None:
            dense.readout_feedback.copy_(sparse.readout_feedback)
    return sparse, dense


def batch(net: CompiledNetwork, size: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(size, net.spec.input.size, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, net.spec.readout.size, (size,), generator=generator)


def at_mask(sparse: CompiledNetwork, key: ParamKey, dense_value: torch.Tensor) -> torch.Tensor:
    """A dense network's tensor read where the sparse network stores values."""
    if key.kind == "edge":
        block = sparse.edges[sparse.bindings[key.name].tensor]
    elif key.kind == "readout":
        block = sparse.head.block
    else:
        return dense_value
    if isinstance(block, SparseBlock):
        return dense_value.reshape(-1)[block.flat_indices]
    return dense_value


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, what
    gap = float((a - b).detach().abs().max()) if a.numel() else 0.0
    assert gap <= TOL, f"{what}: max |difference| {gap:.3g} > {TOL:g}"


def sparse_edge_count(net: CompiledNetwork) -> int:
    return sum(isinstance(block, SparseBlock) for block in net.edges.values())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_free_and_nudged_states_and_ep_updates_agree(name, backend, update):
    sparse, dense = pair(name, backend)
    assert all(b.plan().update == update for b in sparse.edges.values() if hasattr(b, "plan"))
    assert sparse_edge_count(sparse) >= 2
    x, y = batch(sparse)
    method = EquilibriumPropagation.from_spec(sparse.spec)
    a, b = method.estimate(sparse, x, y), method.estimate(dense, x, y)
    for k, layer in enumerate(sparse.layout.names):
        assert_close(a.phases.free[k], b.phases.free[k], f"free state of {layer}")
        for phase, (s, d) in enumerate(zip(a.phases.nudged, b.phases.nudged, strict=True)):
            assert_close(s[k], d[k], f"nudged state {phase} of {layer}")
    assert a.grads.keys() == b.grads.keys()
    for key, value in a.grads.items():
        assert_close(value, at_mask(sparse, key, b.grads[key]), f"EP update of {key}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(TOPOLOGIES))
@pytest.mark.parametrize("method", ["bp", "bptt", "implicit"])
def test_autograd_gradients_agree(name, backend, method, update):
    """BP, BPTT and implicit differentiation run through the sparse products' autograd."""
    sparse, dense = pair(name, backend)
    x, y = batch(sparse)
    learner = make_method(method, sparse.spec)
    for net in (sparse, dense):
        net.zero_grad(set_to_none=True)
        learner.gradients(net, x, y)
    dense_tensors = dense.learned_tensors()
    for key, tensor in sparse.learned_tensors().items():
        assert tensor.grad is not None, f"{method} wrote no gradient for {key}"
        expected = at_mask(sparse, key, dense_tensors[key].grad)
        assert_close(tensor.grad, expected, f"{method} gradient of {key}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_spectral_radius_agrees(name, backend):
    sparse, dense = pair(name, backend)
    for method in ("exact", "arpack"):
        a = spectral.spectral_radius(sparse, method=method)
        b = spectral.spectral_radius(dense, method=method)
        assert abs(a - b) <= TOL * max(1.0, b), (method, a, b)
    assert_close(sparse.hidden_operator(), dense.hidden_operator(), "hidden operator")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["chain", "residual"])
def test_energy_agrees(name, backend):
    sparse, dense = pair(name, backend)
    assert sparse.balance.balanced
    x, _ = batch(sparse)
    method = EquilibriumPropagation.from_spec(sparse.spec)
    free, _ = method.free_phase(sparse, x)
    a = Energy(sparse)(free, Energy(sparse).drives(x))
    b = Energy(dense)(free, Energy(dense).drives(x))
    assert_close(a, b, "energy")
