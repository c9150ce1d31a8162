"""``training.error: accumulated`` and ``training.readout_error: nudged``: the nudge and the
readout update of the authors' graph code, float64.

The authors' code for their residual and AGT nets (``models_LN_G.py``, ``backward_EP``) holds the
free-phase output error e^0 = y - p(s_top^0) and, inside the nudged step loop, adds
nudge * e^0 B_f to the top layer's input drive once more before every step, so the synchronous
nudged phase is

    s_{t+1} = rho(M s_t + b + (t + 1) * nudge * e^0 B_f),   t = 0 .. K - 1,   s_0 = s^0.

The reference below writes that loop out with :func:`topo_ep.engine.step` and explicit drives;
the learner must give the same states to the last bit, for the synchronous schedule and for a
schedule of several groups (where every group of a step sees the same t).

The same code's readout update reads the output error at the nudged phase's last state:
dW_out = (p(s_top^K) - y)^T s_top^0 / batch, where the exact cross-entropy gradient has
p(s_top^0).
"""

from __future__ import annotations

import pytest
import torch

from topo_ep.compiler import compile_topology
from topo_ep.engine import step
from topo_ep.errors import TopoEpError, TopologyError
from topo_ep.gradcheck import CheckSettings
from topo_ep.learn.ep import EquilibriumPropagation
from topo_ep.loader import loads_topology
from topo_ep.params import READOUT_WEIGHT

F64 = torch.float64

TOPOLOGY = """
name: res
input: {size: 6}
layers:
  - {name: h1, size: 5}
  - {name: h2, size: 4}
  - {name: h3, size: 5}
readout: {from: h3, size: 3}
edges:
  - {source: input, target: h1}
  - {source: h1, target: h2}
  - {source: h2, target: h3}
  - {source: h1, target: h3, kind: skip}
  - {source: h2, target: h1, kind: feedback, gain: 0.3}
  - {source: h3, target: h2, kind: feedback, gain: 0.3}
  - {source: h3, target: h1, kind: feedback, gain: 0.3}
training: {error: accumulated}
"""


def setting():
    spec = loads_topology(TOPOLOGY)
    net = compile_topology(spec, seed=1, dtype=F64)
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(7, 6, generator=generator, dtype=F64)
    y = torch.randint(0, 3, (7,), generator=generator)
    return net, x, y


def reference_nudged(net, free, drives, nudge_drive, groups, steps):
    """The authors' loop: the top layer's drive grows by ``nudge_drive`` before every step."""
    state, top = list(free), net.top
    accumulated = torch.zeros_like(drives[top])
    for _ in range(steps):
        accumulated = accumulated + nudge_drive
        stepped = list(drives)
        stepped[top] = drives[top] + accumulated
        state = step(net, state, stepped, groups)
    return state


@pytest.mark.parametrize("schedule", ["synchronous", "sweep"])
def test_the_nudge_drive_grows_by_one_nudge_per_step(schedule):
    net, x, y = setting()
    method = EquilibriumPropagation(
        nudge=0.2, error="accumulated", schedule=schedule, free_steps=30, nudged_steps=9
    )
    phases = method.phases(net, x, y)
    drives = net.input_drive(x)
    target = torch.nn.functional.one_hot(y, 3).to(F64)
    error = target - torch.softmax(net.readout_logits(phases.free[net.top]), dim=-1)
    nudge_drive = 0.2 * (error @ net.readout_weight)  # B_f e^0, tied: W_out^T e^0 as a row
    groups = net.schedule(schedule)
    if schedule == "sweep":
        assert len(groups) > 1
    expected = reference_nudged(net, phases.free, drives, nudge_drive, groups, 9)
    for got, want in zip(phases.nudged[0], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)
    assert phases.nudged_stats[0].steps == 9


def test_one_accumulated_step_is_the_held_nudge_and_more_steps_are_not():
    net, x, y = setting()

    def nudged(error, steps):
        method = EquilibriumPropagation(error=error, free_steps=30, nudged_steps=steps)
        return method.phases(net, x, y).nudged[0]

    for a, b in zip(nudged("accumulated", 1), nudged("held", 1), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    top = net.top
    free = EquilibriumPropagation(free_steps=30).phases(net, x, y).free[top]
    held = (nudged("held", 12)[top] - free).norm()
    accumulated = (nudged("accumulated", 12)[top] - free).norm()
    assert accumulated > 3 * held  # by the last step the drive is 12 nudges


def refusal(text: str) -> str:
    """The message of the TopologyError that loading ``text`` as res.yaml raises."""
    with pytest.raises(TopologyError) as caught:
        loads_topology(text, filename="res.yaml")
    return str(caught.value)


def test_accumulated_needs_the_fixed_nudged_step_count():
    text = TOPOLOGY.replace(
        "training: {error: accumulated}",
        "dynamics: {tolerance: 1e-6}\ntraining: {error: accumulated}",
    )
    message = refusal(text)
    assert "res.yaml:" in message and "training.error" in message
    assert "nudged_tolerance: 0" in message
    fixed = text.replace("tolerance: 1e-6}", "tolerance: 1e-6, nudged_tolerance: 0}")
    method = EquilibriumPropagation.from_spec(loads_topology(fixed))
    assert method.error == "accumulated" and method.nudged_phase_tolerance == 0
    with pytest.raises(TopoEpError, match="no fixed point"):
        EquilibriumPropagation(error="accumulated", tolerance=1e-6)


def test_check_gradients_refuses_accumulated():
    with pytest.raises(ValueError, match="error must be one of"):
        CheckSettings(error="accumulated")


def test_the_readout_can_read_its_error_at_the_nudged_state():
    net, x, y = setting()
    settings = {"error": "accumulated", "free_steps": 30, "nudged_steps": 6}
    free = EquilibriumPropagation(**settings).estimate(net, x, y)
    nudged = EquilibriumPropagation(readout_error="nudged", **settings).estimate(net, x, y)
    top = net.top
    target = torch.nn.functional.one_hot(y, 3).to(F64)
    for estimate, state in ((free, free.phases.free[top]), (nudged, nudged.phases.nudged[0][top])):
        error = torch.softmax(net.readout_logits(state), dim=-1) - target
        expected = error.T @ estimate.phases.free[top] / 7
        torch.testing.assert_close(estimate.grads[READOUT_WEIGHT], expected, rtol=1e-13, atol=0)
    assert not torch.allclose(free.grads[READOUT_WEIGHT], nudged.grads[READOUT_WEIGHT])
    for key, value in free.grads.items():  # every other update is the same
        if key != READOUT_WEIGHT:
            torch.testing.assert_close(nudged.grads[key], value, rtol=0, atol=0)
    assert nudged.result.loss == free.result.loss  # the loss stays the free state's


def test_readout_error_nudged_needs_one_nudged_phase():
    text = TOPOLOGY.replace(
        "training: {error: accumulated}",
        "training: {error: accumulated, nudging: symmetric, readout_error: nudged}",
    )
    message = refusal(text)
    assert "res.yaml:" in message and "training.readout_error" in message
    one_sided = loads_topology(text.replace("nudging: symmetric, ", ""))
    assert one_sided.training.readout_error == "nudged"
    with pytest.raises(TopoEpError, match="one-sided"):
        EquilibriumPropagation(readout_error="nudged", nudging="symmetric")
