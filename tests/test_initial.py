"""Initial distributions (``init:`` on an edge and on the readout), in float64: the same uniform
draw u for every bound, so a Glorot-uniform and a fan-in-uniform tensor of one seed differ by
the ratio of their half-widths exactly; the fan counts of every block kind; the readout's
``init`` and its refusal of ``identity``; the shipped conv net's kernels drawn as before; a
bias's ``bias_init`` (PyTorch's default bound for the weights it joins) and its refusals.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from topo_ep.compiler import compile_topology
from topo_ep.errors import TopologyError
from topo_ep.graph_io import from_graph, to_graph
from topo_ep.initial import tensor_generator, uniform_init
from topo_ep.loader import dump_topology, load_topology, loads_topology

TOPOLOGY = """
name: inits
input: {shape: [2, 6, 6]}
layers:
  - {name: h1, shape: [3, 4, 4]}
  - {name: h2, size: 12}
  - {name: h3, size: 9}
readout: {from: h3, size: 5, INIT_READOUT}
edges:
  - {source: input, target: h1, init: INIT, block: {kind: conv, kernel: 3}}
  - {source: h1, target: h2, init: INIT, block: {kind: pooled, pool: {kind: avg, size: 2}}}
  - {source: h2, target: h3, init: INIT}
  - {source: h2, target: h3, kind: skip, init: INIT,
     block: {kind: sparse, density: 0.5, backend: dense}}
"""


def network(init: str, readout: str = "glorot_uniform", seed: int = 4):
    text = TOPOLOGY.replace("INIT_READOUT", f"init: {readout}").replace("INIT", init)
    return compile_topology(loads_topology(text), seed=seed, dtype=torch.float64)


def test_uniform_init_draws_in_the_half_width_of_each_rule():
    fans = (300.0, 100.0)
    glorot = uniform_init("glorot_uniform", (200, 300), fans, tensor_generator(0, "w"))
    fan_in = uniform_init("fan_in_uniform", (200, 300), fans, tensor_generator(0, "w"))
    glorot_half_width, fan_in_half_width = math.sqrt(6 / 400), 1 / math.sqrt(300)
    assert glorot.abs().max() <= glorot_half_width
    assert glorot.abs().max() > 0.999 * glorot_half_width  # 60 000 draws reach the edge
    assert fan_in.abs().max() <= fan_in_half_width
    assert fan_in.abs().max() > 0.999 * fan_in_half_width
    assert abs(fan_in.mean()) < 0.01 * fan_in_half_width
    torch.testing.assert_close(fan_in, glorot * (fan_in_half_width / glorot_half_width))
    zeros = uniform_init("zeros", (2, 3), fans, tensor_generator(0, "w"))
    assert zeros.dtype == torch.float64 and not zeros.any()
    with pytest.raises(ValueError, match="unknown init 'he'.*fan_in_uniform"):
        uniform_init("he", (2, 3), fans, tensor_generator(0, "w"))


def test_every_block_kind_scales_the_same_draw_by_its_own_fans():
    glorot, fan_in = network("glorot_uniform"), network("fan_in_uniform")
    mask_entries = glorot.weight_of("h2->h3:skip").numel()  # values at the mask
    fans = {  # edge: (fan in, fan out)
        "input->h1:forward": (2 * 9, 3 * 9),  # C_in k^2, C_out k^2
        "h1->h2:forward": (3 * 2 * 2, 12),  # the pooled source, the target
        "h2->h3:forward": (12, 9),
        "h2->h3:skip": (mask_entries / 9, mask_entries / 12),  # mean row, mean column count
    }
    for key, (fan_in_count, fan_out_count) in fans.items():
        ratio = (1 / math.sqrt(fan_in_count)) / math.sqrt(6 / (fan_in_count + fan_out_count))
        drawn_glorot, drawn_fan_in = glorot.weight_of(key), fan_in.weight_of(key)
        assert drawn_glorot.abs().max() > 0, key
        torch.testing.assert_close(drawn_fan_in, drawn_glorot * ratio, msg=key)
    zeros = network("zeros")
    assert not any(zeros.weight_of(key).any() for key in fans)


def test_the_readout_declares_its_own_init():
    glorot = network("glorot_uniform")
    fan_in = network("glorot_uniform", readout="fan_in_uniform")
    ratio = (1 / math.sqrt(9)) / math.sqrt(6 / (9 + 5))
    torch.testing.assert_close(fan_in.readout_weight, glorot.readout_weight * ratio)
    for key in ("h2->h3:forward", "input->h1:forward"):  # the edges keep theirs
        assert torch.equal(fan_in.weight_of(key), glorot.weight_of(key))
    assert not network("glorot_uniform", readout="zeros").readout_weight.any()
    random = loads_topology(
        TOPOLOGY.replace("INIT_READOUT", "init: zeros, feedback: random").replace(
            "INIT", "glorot_uniform"
        )
    )
    feedback = compile_topology(random, seed=4, dtype=torch.float64).readout_feedback
    assert feedback.abs().max() > 0  # a random B_f stays Glorot-uniform


def test_the_readout_refuses_identity_naming_the_line_and_field():
    text = TOPOLOGY.replace("INIT_READOUT", "init: identity").replace("INIT", "glorot_uniform")
    with pytest.raises(TopologyError) as caught:
        loads_topology(text, filename="inits.yaml")
    message = str(caught.value)
    assert "inits.yaml:8:" in message and "readout.init" in message
    assert "fan_in_uniform" in message


@pytest.mark.parametrize(
    "source, block, what",
    [
        ("{shape: [2, 4, 4]}", "{kind: conv, kernel: 1}", "a conv kernel"),
        ("{shape: [1, 8, 4]}", "{kind: pooled, pool: {kind: max, size: 2}}", "a pooled block"),
        ("{size: 32}", "{kind: sparse, density: 0.5}", "a sparse block"),
    ],
)
def test_identity_is_refused_on_a_kind_without_one(source, block, what):
    text = f"""name: m
input: {source}
layers:
  - {{name: h1, shape: [2, 4, 4]}}
readout: {{from: h1, size: 3}}
edges:
  - {{source: input, target: h1, init: identity, block: {block}}}
"""
    with pytest.raises(TopologyError) as caught:
        loads_topology(text, filename="m.yaml")
    message = str(caught.value)
    assert f"identity needs a dense block; {what}" in message and "m.yaml:7:" in message
    assert "glorot_uniform, fan_in_uniform or zeros" in message
    loads_topology(text.replace("init: identity", "init: fan_in_uniform"))


def test_the_shipped_conv_net_draws_its_kernels_uniform_in_one_over_root_fan_in():
    """conv_mnist.yaml declares ``init: fan_in_uniform`` (PyTorch's ``nn.Conv2d`` default):
    each kernel is (2 u - 1) / sqrt(C_in k^2) with u from the tensor's own generator."""
    net = compile_topology(load_topology("topologies/conv_mnist.yaml"), seed=3, dtype=torch.float64)
    for key, shape in (
        ("input->h1:forward", (32, 1, 5, 5)),
        ("h1->h2:forward", (64, 32, 5, 5)),
    ):
        u = torch.rand(shape, generator=tensor_generator(3, key), dtype=torch.float64)
        expected = (u * 2 - 1) * (1 / math.sqrt(shape[1] * 25))
        assert torch.equal(net.weight_of(key), expected), key


def biased(bias_init: str, seed: int = 4):
    """TOPOLOGY with a bias on every layer and on the readout, all drawn by ``bias_init``."""
    text = TOPOLOGY.replace("INIT_READOUT", f"bias: true, bias_init: {bias_init}")
    text = text.replace("INIT", "glorot_uniform")
    for layer in ("h1", "h2", "h3"):
        text = text.replace(
            f"{{name: {layer},", f"{{name: {layer}, bias: true, bias_init: {bias_init},"
        )
    return compile_topology(loads_topology(text), seed=seed, dtype=torch.float64)


def test_a_fan_in_uniform_bias_is_pytorchs_default_for_the_weights_it_joins():
    """b = (2 u - 1) / sqrt(fan in), u from the bias's own generator: the fan in of a conv
    (C_in k^2), of a pooled block (the pooled size), of two edges into one layer (summed: a
    dense edge's columns and a sparse block's mean row count), and of W_out for the readout."""
    net = biased("fan_in_uniform")
    mask_entries = net.weight_of("h2->h3:skip").numel()
    fans = {"bias:h1": 2 * 9, "bias:h2": 3 * 2 * 2, "bias:h3": 12 + mask_entries / 9}
    drawn = {f"bias:{name}": value for name, value in net.biases.items()}
    drawn["readout:bias"] = net.readout_bias
    fans["readout:bias"] = 9
    shapes = {"bias:h1": (3,), "bias:h2": (12,), "bias:h3": (9,), "readout:bias": (5,)}
    assert set(drawn) == set(fans)
    for name, fan_in in fans.items():
        u = torch.rand(shapes[name], generator=tensor_generator(4, name), dtype=torch.float64)
        torch.testing.assert_close(drawn[name], (u * 2 - 1) / math.sqrt(fan_in), msg=name)
    zeros = biased("zeros")
    assert not any(value.any() for value in zeros.biases.values())
    assert not zeros.readout_bias.any()
    for key in ("input->h1:forward", "h2->h3:skip"):  # the weights do not change
        assert torch.equal(zeros.weight_of(key), net.weight_of(key))


@pytest.mark.parametrize(
    "layers, readout, where, why",
    [
        (
            "{name: h1, size: 4, bias_init: fan_in_uniform}",
            "{from: h1, size: 3}",
            "m.yaml:4:",
            "layers[0].bias_init",
        ),
        (
            "{name: h1, size: 4}",
            "{from: h1, size: 3, bias_init: fan_in_uniform}",
            "m.yaml:5:",
            "readout.bias_init",
        ),
    ],
)
def test_bias_init_without_a_bias_is_refused_naming_the_line_and_field(layers, readout, where, why):
    text = f"""name: m
input: {{size: 6}}
layers:
  - {layers}
readout: {readout}
edges:
  - {{source: input, target: h1}}
"""
    with pytest.raises(TopologyError) as caught:
        loads_topology(text, filename="m.yaml")
    message = str(caught.value)
    assert where in message and why in message and "bias: true" in message


def test_a_fan_in_uniform_bias_needs_an_edge_that_feeds_the_layer():
    text = """name: m
input: {size: 6}
layers:
  - {name: h1, size: 4}
  - {name: h2, size: 4, bias: true, bias_init: fan_in_uniform}
readout: {from: h1, size: 3}
edges:
  - {source: input, target: h1}
  - {source: h2, target: h1, kind: feedback, feedback: random}
"""
    with pytest.raises(TopologyError) as caught:
        loads_topology(text, filename="m.yaml")
    message = str(caught.value)
    assert "m.yaml:5:" in message and "layers[1].bias_init" in message
    assert "forward and skip edges into 'h2'" in message
    loads_topology(text.replace("bias_init: fan_in_uniform", "bias_init: zeros"))


def test_declared_initial_values_survive_the_yaml_and_graph_round_trips():
    """``bias_init`` (layers, readout) and the readout's ``init`` come back from the YAML dump
    and from networkx; at their defaults they are left out of the mapping, as before they
    existed (so older runs' config.yaml files compare equal on --resume)."""
    text = TOPOLOGY.replace(
        "INIT_READOUT", "init: fan_in_uniform, bias: true, bias_init: fan_in_uniform"
    ).replace("INIT", "glorot_uniform")
    spec = loads_topology(
        text.replace("{name: h1,", "{name: h1, bias: true, bias_init: fan_in_uniform,")
    )
    assert spec.layer("h1").bias_init == "fan_in_uniform"
    assert loads_topology(dump_topology(spec)) == spec
    back = from_graph(
        to_graph(spec),
        dynamics=dataclasses.asdict(spec.dynamics),
        training=dataclasses.asdict(spec.training),
    )
    assert back == spec
    default = TOPOLOGY.replace("INIT_READOUT", "bias: true").replace("INIT", "zeros")
    plain = loads_topology(default.replace("{name: h1,", "{name: h1, bias: true,")).to_dict()
    assert "bias_init" not in plain["readout"] and "bias_init" not in plain["layers"][0]
