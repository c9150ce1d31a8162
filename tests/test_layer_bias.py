"""Per-channel biases: a ``[C, H, W]`` layer with ``bias: true`` learns one bias per channel.

The bias b (C,) is broadcast over the H x W positions of its channel; EP's update of b is the
per-unit contrast summed over the batch and over each channel's positions, and BP's gradient is
autograd's through the broadcast. Checked in float64 against the per-unit computation.
"""

from __future__ import annotations

import torch

from topo_ep.compiler import compile_topology
from topo_ep.learn import make_method
from topo_ep.learn.base import autograd_gradients
from topo_ep.learn.bp import feedforward_state
from topo_ep.loader import loads_topology
from topo_ep.params import ParamKey

TOPOLOGY = """
name: channel_bias
input: {size: 6}
layers:
  - {name: h1, size: 18, shape: [2, 3, 3], bias: true}
  - {name: h2, size: 5, bias: true}
readout: {from: h2, size: 3}
edges:
  - {source: input, target: h1}
  - {source: h1, target: h2}
  - {source: h2, target: h1, kind: feedback, gain: 0.5}
dynamics: {free_steps: 30, nudged_steps: 30}
training: {nudge: 0.1}
"""


def network():
    net = compile_topology(loads_topology(TOPOLOGY), seed=1, dtype=torch.float64)
    with torch.no_grad():
        net.biases["h1"].copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
        net.biases["h2"].copy_(torch.linspace(-0.2, 0.2, 5, dtype=torch.float64))
    return net


def logits_with_graph(net, x):
    return net.readout_logits(feedforward_state(net, x)[net.top])


def batch():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4, 6, generator=generator, dtype=torch.float64)
    return x, torch.tensor([0, 1, 2, 1])


def test_a_channel_layer_has_one_bias_per_channel_and_a_line_one_per_unit():
    net = network()
    assert net.biases["h1"].shape == (2,) and net.biases["h2"].shape == (5,)
    x, _ = batch()
    drive = net.input_drive(x)[0]
    without = x @ net.weight_of("input->h1:forward").t()
    expected = torch.tensor([0.3] * 9 + [-0.2] * 9, dtype=torch.float64)
    torch.testing.assert_close(drive - without, expected.expand(4, 18), rtol=0, atol=1e-15)


def test_ep_update_of_a_channel_bias_sums_each_channels_positions():
    net = network()
    method = make_method("ep", net.spec)
    x, y = batch()
    phases = method.phases(net, x, y)
    updates = method.updates(net, phases)
    contrast = phases.nudged[0][0] - phases.free[0]
    per_unit = contrast.sum(dim=0)
    expected = torch.stack([per_unit[:9].sum(), per_unit[9:].sum()])
    torch.testing.assert_close(updates[ParamKey.bias("h1")], expected, rtol=0, atol=1e-15)
    h2 = phases.nudged[0][1] - phases.free[1]
    torch.testing.assert_close(updates[ParamKey.bias("h2")], h2.sum(dim=0), rtol=0, atol=1e-15)


def test_bp_gradient_of_a_channel_bias_is_the_per_unit_gradient_summed_per_channel():
    """Autograd through the broadcast equals the per-unit gradient of an equal network whose
    h1 bias is a free per-unit vector, summed per channel."""
    net = network()
    x, y = batch()
    loss = torch.nn.functional.cross_entropy(logits_with_graph(net, x), y)
    got = autograd_gradients(net, loss)[ParamKey.bias("h1")]
    per_unit = net.bias_of("h1").vector().detach().clone().requires_grad_(True)
    original = net.bias_of

    class Free:
        def expand(self, rows):
            return per_unit.expand(rows, 18)

    net.bias_of = lambda name: Free() if name == "h1" else original(name)  # type: ignore[method-assign]
    loss = torch.nn.functional.cross_entropy(logits_with_graph(net, x), y)
    (grad,) = torch.autograd.grad(loss, [per_unit])
    torch.testing.assert_close(got, grad.reshape(2, 9).sum(dim=1), rtol=0, atol=1e-14)
