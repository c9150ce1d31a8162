"""The conv block kind, piece by piece, in float64: shapes checked at validation, products and
their adjoints, ``outer`` against autograd, ``dense`` against the unit vectors, the max pooling's
need of states. Whole networks against their dense twins are in ``test_conv_reference.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from topo_ep.blocks import ConvBlock, Joined
from topo_ep.compiler import compile_topology
from topo_ep.errors import TopoEpError, TopologyError
from topo_ep.learn import make_method
from topo_ep.loader import loads_topology

TOPOLOGY = """
name: small_conv
input: {shape: [1, 10, 10]}
layers:
  - {name: h1, shape: [4, 8, 8], bias: true}
  - {name: h2, shape: [4, 2, 2], bias: true}
readout: {from: h2, size: 3}
edges:
  - {source: input, target: h1, block: {kind: conv, kernel: 3}}
  - {source: h1, target: h2, block: {kind: conv, kernel: 3, pool: {kind: POOL, size: 2}}}
  - {source: h2, target: h1, kind: feedback, gain: 0.5}
"""


def network(pool: str = "max"):
    spec = loads_topology(TOPOLOGY.replace("POOL", pool))
    return compile_topology(spec, seed=2, dtype=torch.float64)


def draw(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------------------- validation
def test_a_shape_alone_gives_the_size():
    spec = loads_topology(TOPOLOGY.replace("POOL", "max"))
    assert spec.input.size == 100 and spec.layer("h1").size == 256
    assert spec.layer("h2").size == 16


def test_a_5x5_conv_from_28x28_gives_24x24_and_a_mismatch_names_both_shapes():
    text = """name: m
input: {shape: [1, 28, 28]}
layers:
  - {name: h1, shape: [32, 12, 12]}
readout: {from: h1, size: 10}
edges:
  - {source: input, target: h1, block: {kind: conv, kernel: 5}}
"""
    with pytest.raises(TopologyError) as caught:
        loads_topology(text, filename="m.yaml")
    message = str(caught.value)
    assert "conv 5x5 stride 1 padding 0 from input [1, 28, 28] gives [32, 24, 24]" in message
    assert "but h1 declares [32, 12, 12]" in message and "m.yaml:7:40" in message
    assert caught.value.kind == "size-mismatch"
    assert loads_topology(text.replace("12, 12", "24, 24")).layer("h1").size == 32 * 24 * 24


@pytest.mark.parametrize(
    "change, words",
    [
        ("{name: h2, shape: [4, 2, 2], bias: true}", None),
        ("{name: h2, size: 16, bias: true}", "h2 has shape [16]"),
        ("{name: h2, shape: [4, 1, 1], bias: true}", "gives [4, 2, 2], but h2 declares [4, 1, 1]"),
    ],
)
def test_the_target_must_have_the_shape_the_conv_gives(change, words):
    text = TOPOLOGY.replace("POOL", "avg").replace(
        "{name: h2, shape: [4, 2, 2], bias: true}", change
    )
    if words is None:
        loads_topology(text)
        return
    with pytest.raises(TopologyError, match=words.replace("[", r"\[").replace("]", r"\]")):
        loads_topology(text)


def test_a_layer_without_size_or_shape_is_a_located_error():
    text = TOPOLOGY.replace("POOL", "max").replace("shape: [4, 2, 2], ", "")
    with pytest.raises(TopologyError, match="required key 'size' is missing") as caught:
        loads_topology(text, filename="t.yaml")
    assert caught.value.kind == "missing-key" and "t.yaml:6:" in str(caught.value)


def test_a_conv_spec_round_trips_through_its_dict():
    spec = loads_topology(TOPOLOGY.replace("POOL", "max"))
    again = loads_topology(__import__("yaml").safe_dump(spec.to_dict()))
    assert again == spec


# ---------------------------------------------------------------------------- products
@pytest.mark.parametrize("pool", ["avg", "max"])
def test_the_adjoint_is_the_transpose_of_the_map_at_the_state(pool):
    """<y, A_s x> = <A_s^T y, x> where A_s pools at the argmax of s (max) or averages (avg),
    for the owner and for its tied transpose."""
    net = network(pool)
    block, tied = net.block_of("h1->h2:forward"), net.block_of("h2->h1:feedback")
    state, x, y = draw(5, 256, seed=1), draw(5, 256, seed=2), draw(5, 16, seed=3)
    # A_s x: the forward map with the pooling at the argmax of s (= pool(s) at x = s).
    forward = block.pooled_forward(x, state, "test") * block.gain
    back = block.adjoint(y, Joined(state, None))
    torch.testing.assert_close((y * forward).sum(), (back * x).sum(), rtol=1e-12, atol=0)
    tied_out = tied.apply(y, Joined(None, state))
    torch.testing.assert_close(tied_out, back * tied.gain / block.gain, rtol=1e-12, atol=1e-15)
    tied_back = tied.adjoint(x, Joined(None, state))
    torch.testing.assert_close((tied_back * y).sum(), (tied_out * x).sum(), rtol=1e-12, atol=0)
    # at x = s the forward map is the block's own pooling
    torch.testing.assert_close(block.apply(state), block.pooled_forward(state, state, "t"))


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_outer_is_the_derivative_of_the_bilinear_form(pool):
    """outer(post, pre) = d/dK sum post . A(K) pre, for the owner and its tied transpose."""
    net = network(pool)
    block, tied = net.block_of("h1->h2:forward"), net.block_of("h2->h1:feedback")
    state, pre, post = draw(5, 256, seed=4), draw(5, 256, seed=5), draw(5, 16, seed=6)
    form = (post * block.forward_map(pre)).sum()
    (expected,) = torch.autograd.grad(form, [block.weight])
    torch.testing.assert_close(block.outer(post, pre), expected, rtol=1e-12, atol=1e-13)
    joined = Joined(None, state)
    form = (state * block.adjoint_map(post, state, "t")).sum()
    (expected,) = torch.autograd.grad(form, [block.weight])
    torch.testing.assert_close(tied.outer(state, post, joined), expected, rtol=1e-12, atol=1e-13)


def test_dense_is_the_matrix_of_the_map_for_average_pooling():
    net = network("avg")
    for key in ("input->h1:forward", "h1->h2:forward", "h2->h1:feedback"):
        block = net.block_of(key)
        matrix = block.dense()
        n = matrix.shape[1]
        columns = torch.stack(
            [block.apply(torch.eye(n, dtype=torch.float64)[i : i + 1])[0] for i in range(n)], 1
        )
        torch.testing.assert_close(matrix, columns, rtol=0, atol=1e-15)
        x = draw(3, n, seed=7)
        torch.testing.assert_close(block.apply(x), x @ matrix.t(), rtol=1e-12, atol=1e-13)
        y = draw(3, matrix.shape[0], seed=8)
        torch.testing.assert_close(block.adjoint(y), y @ matrix, rtol=1e-12, atol=1e-13)


def test_max_pooling_has_no_matrix_and_its_adjoints_need_the_states():
    net = network("max")
    block, tied = net.block_of("h1->h2:forward"), net.block_of("h2->h1:feedback")
    with pytest.raises(TopoEpError, match="no state-independent matrix"):
        block.dense()
    with pytest.raises(TopoEpError, match="no state-independent matrix"):
        tied.dense()
    y = draw(2, 16)
    with pytest.raises(TopoEpError, match="needs the current state of h1"):
        tied.apply(y)
    with pytest.raises(TopoEpError, match="needs the current state of h1"):
        tied.accumulate(draw(2, 256), y, joined=Joined(y, None))
    with pytest.raises(TopoEpError, match="needs the current state of h1"):
        block.adjoint(y)
    block.apply(draw(2, 256))  # the forward map pools its own operand


def test_summary_and_listing_name_the_kernel_and_the_pooling():
    net = network("max")
    info = net.block_of("h1->h2:forward").summary()
    assert info["kind"] == "conv" and info["kernel"] == "4x4x3x3" and info["pool"] == "max 2x2"
    assert info["stride"] == 1 and info["padding"] == 0 and info["entries"] == 144
    assert info["density"] == pytest.approx(144 / (16 * 256))
    assert "max 2x2-pool, 3x3 conv stride 1 padding 0" in net.describe()


def test_the_kernel_is_drawn_from_its_own_generator():
    first, second = network("max"), network("max")
    one = first.weight_of("h1->h2:forward")
    assert isinstance(first.block_of("h1->h2:forward"), ConvBlock)
    torch.testing.assert_close(one, second.weight_of("h1->h2:forward"), rtol=0, atol=0)
    # Glorot-uniform, the default: fan in C_in k^2 = 36, fan out C_out k^2 = 36
    assert one.abs().max() <= (6 / (36 + 36)) ** 0.5 and one.std() > 0.05


# ---------------------------------------------------------------------------- pooled readout
READOUT = (
    TOPOLOGY.replace(
        "readout: {from: h2, size: 3}",
        "readout: {from: h2, size: 3, block: {kind: pooled, pool: {kind: READ, size: 2}}}",
    )
    .replace("[4, 2, 2]", "[4, 4, 4]")
    .replace("kernel: 3, pool", "kernel: 1, pool")
)


def readout_network(pool: str):
    spec = loads_topology(READOUT.replace("POOL", "max").replace("READ", pool))
    return compile_topology(spec, seed=2, dtype=torch.float64)


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_the_pooled_readout_and_its_transpose_are_adjoint_at_the_state(pool):
    net = readout_network(pool)
    block, feedback = net.head.block, net.head.nudge_block
    state, error = draw(5, 64, seed=1), draw(5, 3, seed=2)
    logits = block.apply(state)
    grid = state.reshape(5, 4, 4, 4)
    pooled = F.max_pool2d(grid, 2) if pool == "max" else F.avg_pool2d(grid, 2)
    torch.testing.assert_close(logits, pooled.reshape(5, 16) @ block.weight.t())
    back = feedback.apply(error, Joined(None, state))
    # <error, A_s x> = <A_s^T error, x> for any x, A_s pooling at the argmax of s
    x = draw(5, 64, seed=3)
    forward = feedback.adjoint(x, Joined(None, state))
    torch.testing.assert_close((error * forward).sum(), (back * x).sum(), rtol=1e-12, atol=0)
    if pool == "max":  # the nudge lands on one unit per window: the argmax of the state
        index = F.max_pool2d(grid, 2, return_indices=True)[1]
        argmax = F.max_unpool2d(torch.ones_like(pooled), index, 2, output_size=(4, 4)) != 0
        landed = back.reshape(5, 4, 4, 4) != 0
        assert bool((landed <= argmax).all()) and int(argmax.sum()) == 5 * 16
        with pytest.raises(TopoEpError, match="needs the current state of h2"):
            feedback.apply(error)
        with pytest.raises(TopoEpError, match="no state-independent matrix"):
            net.nudge_matrix()
    else:
        torch.testing.assert_close(net.nudge_matrix(), block.dense(), rtol=0, atol=0)
    post = draw(5, 3, seed=4)
    (expected,) = torch.autograd.grad((post * block.apply(x)).sum(), [block.weight])
    torch.testing.assert_close(block.outer(post, x), expected, rtol=1e-12, atol=1e-14)
    (expected,) = torch.autograd.grad(
        (x * feedback.apply(post, Joined(None, state))).sum(), [block.weight]
    )
    got = feedback.outer(x, post, Joined(None, state))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_a_pooled_block_needs_a_channel_layer():
    text = READOUT.replace("POOL", "max").replace("READ", "max")
    text = text.replace("{name: h2, shape: [4, 4, 4], bias: true}", "{name: h2, size: 64}")
    text = text.replace("{kind: conv, kernel: 1, pool: {kind: max, size: 2}}", "{kind: dense}")
    with pytest.raises(TopologyError, match=r"h2 has shape \[64\]") as caught:
        loads_topology(text)
    assert caught.value.kind == "size-mismatch"


def test_ep_trains_through_the_max_pooled_readout_with_the_error_reread():
    """One EP step on the pooled readout with ``error: reread`` moves every learned tensor."""
    net = readout_network("max")
    spec = dataclasses.replace(
        net.spec, training=dataclasses.replace(net.spec.training, error="reread")
    )
    method = make_method("ep", spec)
    x = torch.rand(6, 100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = method.gradients(net, x, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert torch.isfinite(result.loss)
    for name, tensor in net.named_parameters():
        assert tensor.grad is not None and tensor.grad.abs().max() > 0, name


def test_the_argmax_is_taken_once_per_state_and_again_after_a_change(monkeypatch):
    """The forward pooling and the feedback's unpooling of one state share its argmax; a new
    state, or the same tensor changed in place, gets its own (in inference mode too)."""
    net = network("max")
    block, tied = net.block_of("h1->h2:forward"), net.block_of("h2->h1:feedback")
    calls = []
    original = F.max_pool2d

    def counted(*args, **kwargs):
        calls.append(kwargs.get("return_indices", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "max_pool2d", counted)
    state, y = draw(3, 256, seed=1), draw(3, 16, seed=2)
    block.apply(state)
    tied.apply(y, Joined(None, state))
    assert len(calls) == 1
    before = tied.apply(y, Joined(None, state))
    with torch.no_grad():
        state.neg_()
    after = tied.apply(y, Joined(None, state))
    assert len(calls) == 2 and not torch.equal(before, after)
    block.apply(state.clone())
    assert len(calls) == 3
    with torch.inference_mode():
        fresh = draw(3, 256, seed=1)
        torch.testing.assert_close(tied.apply(y, Joined(None, fresh)), before)
