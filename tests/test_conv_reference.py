"""A conv network equals the dense network that it implies, in float64.

The dense twin is the same topology with every block dense, holding the matrices the conv blocks
imply (the blocks applied to unit vectors). Both must give the same free and nudged states, the
same EP updates and the same BP, BPTT and implicit gradients to 1e-12, with tied and with random
feedback, for average pooling and for max pooling at frozen argmax indices (one fixed index
pattern for every example, so that the max-pooled network is linear). A gradient G of a dense
twin's matrix is compared with the conv block's kernel gradient through the chain rule, d/dK
sum(A(K) * G), with A(K) built differentiably from the unit vectors. The readout is a ``pooled``
block (the paper's readout of the pooled top layer), whose tied transpose carries the nudge back
unpooled.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from topo_ep.blocks import ConvBlock, PooledBlock
from topo_ep.blocks.pooling import Pooling
from topo_ep.compiler import CompiledNetwork, compile_topology
from topo_ep.learn import make_method
from topo_ep.learn.bp import bp_gradients
from topo_ep.learn.bptt import bptt_gradients
from topo_ep.learn.implicit import implicit_gradients
from topo_ep.loader import loads_topology
from topo_ep.params import READOUT_WEIGHT, ParamKey
from topo_ep.spec import BlockSpec

TOL = 1e-12

TOPOLOGY = """
name: conv_reference
input: {shape: [1, 10, 10]}
layers:
  - {name: h1, shape: [4, 9, 9], bias: true}
  - {name: h2, shape: [4, 3, 3], bias: true}
readout:
  from: h2
  size: 3
  bias: true
  feedback: FEEDBACK
  block: {kind: pooled, pool: {kind: POOL, size: 2}}
edges:
  - {source: input, target: h1, block: {kind: conv, kernel: 2}}
  - {source: h1, target: h2, block: {kind: conv, kernel: 2, pool: {kind: POOL, size: 2}}}
  - {source: h2, target: h1, kind: feedback, feedback: FEEDBACK, gain: 0.4}
  - {source: input, target: h2, kind: skip, block: {kind: conv, kernel: 2, stride: 3}}
dynamics: {free_steps: 25, nudged_steps: 12}
training: {nudge: 0.2, error: ERROR, nudging: NUDGING, rule: RULE}
"""

CASES = [
    ("avg", "tied", "held", "one-sided", "paper"),
    ("avg", "random", "reread", "symmetric", "contrast"),
    ("max", "tied", "reread", "one-sided", "paper"),
    ("max", "tied", "held", "symmetric", "paper"),
    ("max", "random", "held", "symmetric", "contrast"),
]


def conv_network(pool, feedback, error, nudging, rule) -> CompiledNetwork:
    text = TOPOLOGY.replace("POOL", pool).replace("FEEDBACK", feedback).replace("ERROR", error)
    spec = loads_topology(text.replace("NUDGING", nudging).replace("RULE", rule))
    net = compile_topology(spec, seed=3, dtype=torch.float64)
    with torch.no_grad():  # biases start at zero: give them values so they matter
        for bias in net.biases.values():
            bias.copy_(torch.linspace(-0.3, 0.3, bias.numel(), dtype=torch.float64))
    return net


def freeze(monkeypatch) -> None:
    """Max pooling at one fixed argmax pattern: the pooling of a fixed random state, for every
    example and every call (the forward pool, the unpool and the gather alike)."""
    patterns: dict[tuple[int, ...], torch.Tensor] = {}

    def pattern(self: Pooling, batch: int) -> torch.Tensor:
        if self.shape not in patterns:
            generator = torch.Generator().manual_seed(11)
            state = torch.randn(1, *self.shape, generator=generator, dtype=torch.float64)
            patterns[self.shape] = F.max_pool2d(state, self.size, return_indices=True)[1]
        return patterns[self.shape].expand(batch, *patterns[self.shape].shape[1:])

    def indices(self: Pooling, state, why):
        assert state is not None, why  # the engine passes the states on every path
        return pattern(self, state.shape[0])

    def pool(self: Pooling, x):
        index = pattern(self, x.shape[0])
        return x.flatten(2).gather(2, index.flatten(2)).reshape(index.shape)

    monkeypatch.setattr(Pooling, "indices", indices)
    monkeypatch.setattr(Pooling, "pool", pool)


@pytest.fixture
def frozen_max(monkeypatch):
    freeze(monkeypatch)


def implied(block: ConvBlock | PooledBlock, grad: bool = False) -> torch.Tensor:
    """A (rows, cols) without the gain: the block applied to the unit vectors (differentiable
    in its parameter when ``grad``)."""
    with torch.set_grad_enabled(grad):
        return block.apply(torch.eye(block.cols, dtype=torch.float64)).t() / block.gain


def dense_twin(net: CompiledNetwork) -> CompiledNetwork:
    """The same topology with every block dense, holding the matrices the conv net implies."""
    spec = net.spec
    edges = tuple(e if e.is_tied else dataclasses.replace(e, block=BlockSpec()) for e in spec.edges)
    readout = dataclasses.replace(spec.readout, block=BlockSpec())
    twin = compile_topology(
        dataclasses.replace(spec, edges=edges, readout=readout), dtype=torch.float64
    )
    with torch.no_grad():
        for key, binding in net.bindings.items():
            if binding.tensor is None:
                continue
            block = net.edges[binding.tensor]
            matrix = implied(block) if isinstance(block, ConvBlock) else block.parameter
            twin.weight_of(key).copy_(matrix)
        for name, bias in net.biases.items():
            twin.biases[name].copy_(bias)
        twin.readout_weight.copy_(implied(net.head.block))
        twin.readout_bias.copy_(net.readout_bias)
        if net.readout_feedback is not None:
            twin.readout_feedback.copy_(net.readout_feedback)
    return twin


def as_conv_gradient(net: CompiledNetwork, key: ParamKey, dense: torch.Tensor) -> torch.Tensor:
    """The kernel gradient a dense twin's matrix gradient G implies: d/dK sum(A(K) * G)."""
    if key == READOUT_WEIGHT:
        block = net.head.block
    elif key.kind == "edge":
        block = net.block_of(key.name)
    else:
        return dense
    if not isinstance(block, (ConvBlock, PooledBlock)):
        return dense
    (grad,) = torch.autograd.grad((implied(block, grad=True) * dense).sum(), [block.weight])
    return grad


def batch(size: int = 5):
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(size, 100, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, 3, (size,), generator=generator)


def assert_close(actual, expected, what):
    error = (actual - expected).abs().max().item()
    assert error <= TOL * max(1.0, expected.abs().max().item()), f"{what}: max error {error:.3g}"


def check(net: CompiledNetwork) -> None:
    twin = dense_twin(net)
    x, y = batch()
    method = make_method("ep", net.spec)
    ours, theirs = method.estimate(net, x, y), method.estimate(twin, x, y)
    for k in range(len(net.layout.names)):
        assert_close(ours.phases.free[k], theirs.phases.free[k], f"free state {k}")
        for sign, (a, b) in enumerate(zip(ours.phases.nudged, theirs.phases.nudged, strict=True)):
            assert_close(a[k], b[k], f"nudged state {k} (phase {sign})")
    assert ours.phases.free[0].abs().max() > 0.05  # the states are not trivially zero
    assert set(ours.grads) == set(theirs.grads)
    for key, value in ours.grads.items():
        assert_close(value, as_conv_gradient(net, key, theirs.grads[key]), f"EP {key}")
    baselines = {
        "BP": lambda n: bp_gradients(n, x, y)[0],
        "BPTT": lambda n: bptt_gradients(n, x, y, steps=8)[0],
        "implicit": lambda n: implicit_gradients(n, x, y, free_steps=300, tolerance=1e-13).grads,
    }
    for name, gradients in baselines.items():
        ours_grads, theirs_grads = gradients(net), gradients(twin)
        for key, value in ours_grads.items():
            expected = as_conv_gradient(net, key, theirs_grads[key])
            assert_close(value, expected, f"{name} {key}")


@pytest.mark.parametrize("case", [c for c in CASES if c[0] == "avg"], ids=str)
def test_an_average_pooled_conv_net_equals_its_dense_matrix(case):
    net = conv_network(*case)
    block = net.block_of("h1->h2:forward")
    torch.testing.assert_close(block.dense(), implied(block) * block.gain, rtol=0, atol=0)
    check(net)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] == "max"], ids=str)
def test_a_max_pooled_conv_net_at_frozen_indices_equals_its_dense_matrix(case, frozen_max):
    check(conv_network(*case))


def test_without_frozen_indices_the_max_pooled_net_is_not_that_matrix():
    """The frozen-index comparison tests something: at the states' own argmax the network
    differs from the matrix of a fixed index pattern."""
    net = conv_network("max", "tied", "held", "one-sided", "paper")
    x, _ = batch()
    drives = net.input_drive(x)
    free, _ = make_method("ep", net.spec)._free(net, drives)
    with pytest.MonkeyPatch.context() as patch:
        freeze(patch)
        frozen, _ = make_method("ep", net.spec)._free(net, net.input_drive(x))
    assert (free[1] - frozen[1]).abs().max() > 1e-3
