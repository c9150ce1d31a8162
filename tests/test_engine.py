"""Engine behaviour (schedules, step accounting, tolerances, divergence, devices) and the
relation of EP's updates to the true gradient, derived and checked in float64.

EP vs the true gradient (2-hidden-layer tanh chain x -> h1 -> h2 -> softmax, tied feedback
h2 -> h1 with gain g, tied readout feedback, error reread every step). The nudged fixed point

    s1 = tanh(W0 x + g W1^T s2),   s2 = tanh(W1 s1 + nudge W_out^T (y - p(s2)))

is a stationary point of F = (1/g)[sum G(s1) - s1.W0 x] + sum G(s2) - s2.W1 s1 + nudge C(s2),
with G' = atanh and C the cross-entropy. The EP theorem (implicit function theorem on
dF/ds = 0, symmetry of mixed second derivatives) gives dC(s^0)/dtheta = d/dnudge dF/dtheta:

    dL/dW0 = -(1/g) d/dnudge (s1 x^T),   dL/dW1 = -d/dnudge (s2 s1^T).

The symmetric contrast rule estimates d/dnudge by (.)(+nudge) - (.)(-nudge) over 2 nudge, so the
gradient topo-ep writes is g * dL/dW0 on the input edge and dL/dW1 on the top edge, with an
O(nudge^2) error: per-edge cosine 1 and norm ratio g and 1. The true gradient is computed
independently by implicit differentiation at the free fixed point s = tanh(M s + B x):
v = D (I - M^T D)^{-1} dL/ds with D = diag(tanh'(h)), dL/dtheta = v . dh/dtheta (s held).
On the input edge the one-sided paper rule coincides with the contrast rule (its source, x, is
clamped), so it has cosine 1 - O(nudge) there, held error or reread (same first derivative).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from topo_ep.compiler import compile_topology
from topo_ep.engine import (
    PhaseStats,
    effective_tolerance,
    relax,
    step,
)
from topo_ep.errors import DivergenceError, TopoEpError
from topo_ep.learn.ep import EquilibriumPropagation
from topo_ep.spec import TopologySpec
from topo_ep.validate import spec_from_dict

F64 = torch.float64


def chain(
    sizes=(6, 8, 7, 5),
    classes: int = 3,
    gain: float = 0.05,
    activation: str = "tanh",
) -> TopologySpec:
    """input -> h1 -> ... -> hL, tied feedback with ``gain``."""
    n_in, *hidden = sizes
    names = [f"h{k + 1}" for k in range(len(hidden))]
    edges = [{"source": "input", "target": "h1"}]
    for a, b in zip(names[:-1], names[1:], strict=True):
        edges.append({"source": a, "target": b})
        edges.append({"source": b, "target": a, "kind": "feedback", "gain": gain})
    return spec_from_dict(
        {
            "name": "chain",
            "input": {"size": n_in},
            "layers": [
                {"name": n, "size": s, "activation": activation}
                for n, s in zip(names, hidden, strict=True)
            ],
            "readout": {"from": names[-1], "size": classes},
            "edges": edges,
        }
    )


def _data(spec: TopologySpec, batch: int = 4, seed: int = 0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, spec.input.size, generator=gen, dtype=F64).to(dtype)
    y = torch.randint(0, spec.readout.size, (batch,), generator=gen)
    return x, y


def _free(net, x, schedule, max_steps, tolerance=0.0, check_every=5):
    drives = net.input_drive(x)
    start = net.layout.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    with torch.no_grad():
        return relax(net, start, drives, net.schedule(schedule), max_steps, tolerance, check_every)


def _fixed_point_defect(net, x, state) -> float:
    """max |s - rho(M s + drive)| per layer: how far ``state`` is from a fixed point."""
    drives = net.input_drive(x)
    worst = 0.0
    with torch.no_grad():
        for k in range(len(state)):
            h = net.preactivation(k, state, drives[k])
            worst = max(worst, (state[k] - net.activations[k].fn(h)).abs().max().item())
    return worst


# ---------------------------------------------------------------------------- schedules
def test_sweep_and_synchronous_reach_the_same_fixed_point():
    spec = chain(gain=0.05)
    net = compile_topology(spec, dtype=F64)
    x, y = _data(spec)
    results = {}
    for schedule in ("synchronous", "sweep"):
        method = EquilibriumPropagation(
            nudge=0.2,
            schedule=schedule,
            free_steps=500,
            nudged_steps=500,
            tolerance=1e-14,
            check_every=1,
        )
        phases = method.phases(net, x, y)
        assert phases.free_stats.converged and phases.nudged_stats[0].converged
        assert _fixed_point_defect(net, x, phases.free) < 1e-12
        results[schedule] = phases
    sync, sweep = results["synchronous"], results["sweep"]
    for a, b in zip(sync.free, sweep.free, strict=True):
        assert (a - b).abs().max() < 1e-10
    for a, b in zip(sync.nudged[0], sweep.nudged[0], strict=True):
        assert (a - b).abs().max() < 1e-10
    # the nudge moved the state, so the nudged comparison is not the free one again
    assert (sync.nudged[0][-1] - sync.free[-1]).abs().max() > 1e-4
    # with small feedback the sweep (Gauss-Seidel in feedforward order) is faster
    assert sweep.free_stats.steps < sync.free_stats.steps


def test_schedules_group_layers_as_documented():
    spec = chain()
    net = compile_topology(spec, dtype=F64)
    assert net.schedule("synchronous") == ((0, 1, 2),)
    assert net.schedule("sweep") == ((0,), (1,), (2,))
    with pytest.raises(ValueError, match="unknown schedule"):
        net.schedule("bogus")


def test_synchronous_step_uses_only_the_previous_state_and_sweep_the_newest():
    spec = chain(gain=0.3)
    net = compile_topology(spec, dtype=F64)
    x, _ = _data(spec)
    drives = net.input_drive(x)
    gen = torch.Generator().manual_seed(3)
    state = [torch.rand(4, n, generator=gen, dtype=F64) for n in net.layout.sizes]
    before = [s.clone() for s in state]
    sync = step(net, state, drives, net.schedule("synchronous"))
    for k in range(3):
        expected = torch.tanh(net.preactivation(k, before, drives[k]))
        assert torch.equal(sync[k], expected)
    sweep = step(net, state, drives, net.schedule("sweep"))
    newest = list(before)
    for k in range(3):
        newest[k] = torch.tanh(net.preactivation(k, newest, drives[k]))
    for a, b in zip(sweep, newest, strict=True):
        assert torch.equal(a, b)
    # step() returns a new list and leaves its input alone
    for a, b in zip(state, before, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- step accounting
@pytest.mark.parametrize("check_every", [1, 3, 7])
def test_tolerance_stops_early_at_a_check(check_every):
    spec = chain(gain=0.05)
    net = compile_topology(spec, dtype=F64)
    x, _ = _data(spec)
    tol = 1e-9
    state, stats = _free(net, x, "synchronous", 400, tol, check_every)
    assert isinstance(stats, PhaseStats)
    assert stats.converged
    assert stats.steps < 400
    assert stats.steps % check_every == 0
    assert stats.residual < tol
    # It stopped at the FIRST check below tolerance: the check before was not below it.
    if stats.steps > check_every:
        _, earlier = _free(net, x, "synchronous", stats.steps - check_every, tol, check_every)
        assert not earlier.converged
        assert earlier.residual >= tol
        assert earlier.steps == stats.steps - check_every


def test_step_limit_is_respected_when_not_converged():
    spec = chain(gain=0.05)
    net = compile_topology(spec, dtype=F64)
    x, _ = _data(spec)
    # 12 is not a multiple of check_every = 5: the last step is checked anyway
    _, stats = _free(net, x, "synchronous", 12, tolerance=1e-300, check_every=5)
    assert stats.steps == 12
    assert not stats.converged
    assert np.isfinite(stats.residual) and stats.residual > 0
    _, stats = _free(net, x, "synchronous", 3, tolerance=1e-300, check_every=5)
    assert (stats.steps, stats.converged) == (3, False)


def test_tolerance_zero_runs_exactly_max_steps():
    spec = chain(gain=0.05)
    net = compile_topology(spec, dtype=F64)
    x, _ = _data(spec)
    state, stats = _free(net, x, "synchronous", 60, tolerance=0.0, check_every=1)
    # converged long before (see the residual), but tolerance 0 never stops early
    assert stats.steps == 60
    assert not stats.converged
    assert stats.residual < 1e-12
    drives = net.input_drive(x)
    manual = net.layout.zeros(4, dtype=F64, device=x.device)
    for _ in range(60):
        manual = step(net, manual, drives, net.schedule("synchronous"))
    for a, b in zip(state, manual, strict=True):
        assert torch.equal(a, b)


def test_zero_steps_return_the_start_state():
    spec = chain()
    net = compile_topology(spec, dtype=F64)
    x, _ = _data(spec)
    start = [torch.full((4, n), 0.25, dtype=F64) for n in net.layout.sizes]
    out, stats = relax(net, start, net.input_drive(x), net.schedule("sweep"), 0, 1e-6)
    assert stats.steps == 0 and not stats.converged and np.isnan(stats.residual)
    for a, b in zip(out, start, strict=True):
        assert torch.equal(a, b)


def test_effective_tolerance_is_dtype_aware():
    eps32, eps64 = torch.finfo(torch.float32).eps, torch.finfo(F64).eps
    assert effective_tolerance(0.0, torch.float32) == 0.0
    assert effective_tolerance(-1.0, F64) == 0.0
    assert effective_tolerance(1e-12, torch.float32) == pytest.approx(16 * eps32)
    assert effective_tolerance(1e-12, F64) == pytest.approx(1e-12)
    assert effective_tolerance(1e-20, F64) == pytest.approx(16 * eps64)
    assert effective_tolerance(1e-3, torch.float32) == pytest.approx(1e-3)
    assert effective_tolerance(1e-6, torch.float16) == pytest.approx(
        16 * torch.finfo(torch.float16).eps
    )


def test_float32_relaxation_converges_with_a_tolerance_below_its_rounding_floor():
    spec = chain(gain=0.05)
    net = compile_topology(spec, dtype=torch.float32)
    x, _ = _data(spec, dtype=torch.float32)
    _, stats = _free(net, x, "synchronous", 300, tolerance=1e-12, check_every=1)
    assert stats.converged and stats.steps < 300
    assert stats.residual < 16 * torch.finfo(torch.float32).eps


# ---------------------------------------------------------------------------- divergence
def test_divergence_raises_with_spectral_radius_and_gains():
    spec = chain(sizes=(4, 6, 6, 6), gain=1000.0, activation="identity")
    net = compile_topology(spec, dtype=F64)
    x, _ = _data(spec)
    matrix = net.hidden_operator().numpy()
    radius = float(np.abs(np.linalg.eigvals(matrix)).max())
    assert radius > 10  # identity activation: the state grows like radius^t
    with pytest.raises(DivergenceError) as info:
        _free(net, x, "synchronous", 2000, tolerance=0.0)
    message = str(info.value)
    assert "spectral radius" in message
    assert f"{radius:.4g}" in message
    assert "1000" in message  # the feedback gains
    assert "step 2000" in message  # at tolerance 0 only the last step is checked
    assert isinstance(info.value, TopoEpError)  # the CLI reports it without a traceback


def test_divergence_is_found_at_the_first_check():
    spec = chain(sizes=(4, 6, 6, 6), gain=1000.0, activation="identity")
    net = compile_topology(spec, dtype=F64)
    x, _ = _data(spec)
    with pytest.raises(DivergenceError, match=r"step (\d+)") as info:
        _free(net, x, "synchronous", 2000, tolerance=1e-6, check_every=10)
    checked = int(str(info.value).split("step ")[1].split()[0])
    assert checked % 10 == 0 and checked < 2000


def test_infinite_input_raises_divergence_error():
    spec = chain(gain=0.1)
    net = compile_topology(spec, dtype=F64)
    x, y = _data(spec)
    x[0] = float("inf")  # inf * (weights of both signs) gives nan pre-activations
    method = EquilibriumPropagation(free_steps=5, nudged_steps=3)
    with pytest.raises(DivergenceError, match="spectral radius") as info:
        method.phases(net, x, y)
    assert "0.1" in str(info.value)


# ---------------------------------------------------------------------------- devices, dtypes
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device_name", DEVICES)
def test_relaxation_runs_on_any_torch_device(device_name):
    device = torch.device(device_name)
    spec = chain(gain=0.1)
    net = compile_topology(spec, dtype=F64, device=device)
    reference = compile_topology(spec, dtype=F64, device="cpu")
    x, y = _data(spec)
    method = EquilibriumPropagation(free_steps=20, nudged_steps=10, tolerance=1e-10)
    phases = method.phases(net, x.to(device), y.to(device))
    expected = method.phases(reference, x, y)
    for a, b in zip(
        phases.free + phases.nudged[0], expected.free + expected.nudged[0], strict=True
    ):
        assert a.device.type == device.type and a.dtype == F64
        assert (a.cpu() - b).abs().max() < 1e-10
    assert net.hidden_operator().device.type == device.type


def test_cast_after_compile_rebinds_blocks():
    spec = chain(gain=0.1)
    net = compile_topology(spec, dtype=torch.float32).to(F64)
    assert net.dtype == F64 and net.hidden_operator().dtype == F64
    x, y = _data(spec)
    phases = EquilibriumPropagation(free_steps=5, nudged_steps=3).phases(net, x, y)
    assert all(s.dtype == F64 for s in phases.free)
    # blocks (tied ones included) see in-place updates of the parameters they were bound to
    before = net.hidden_operator().clone()
    with torch.no_grad():
        net.weight_of("h1->h2:forward").mul_(2.0)
    after = net.hidden_operator()
    rows, cols = net.layout.slice("h1"), net.layout.slice("h2")
    assert torch.equal(after[rows, cols], 2.0 * before[rows, cols])  # tied feedback h2->h1
    rows, cols = net.layout.slice("h2"), net.layout.slice("h1")
    assert torch.equal(after[rows, cols], 2.0 * before[rows, cols])


# ---------------------------------------------------------------------------- EP vs gradient
GAIN = 0.1


def _two_layer_net():
    spec = chain(sizes=(6, 5, 4), classes=3, gain=GAIN)
    net = compile_topology(spec, seed=1, dtype=F64)
    with torch.no_grad():  # larger weights: a non-trivial, still contracting, fixed point
        for weight in net.weights.values():
            weight.mul_(1.5)
    return spec, net


def _true_gradients(net, x, y) -> dict[str, torch.Tensor]:
    """Gradient of the mean cross-entropy at the free fixed point, by implicit differentiation.

    Independent of topo-ep's engine: dense M, B built here, fixed point solved here.
    """
    w0 = net.weight_of("input->h1:forward").detach()
    w1 = net.weight_of("h1->h2:forward").detach()
    w_out = net.readout_weight.detach()
    n1, n2 = w1.shape[1], w1.shape[0]

    def preactivation(w0_, w1_, s):
        s1, s2 = s[:, :n1], s[:, n1:]
        return torch.cat([x @ w0_.t() + GAIN * s2 @ w1_, s1 @ w1_.t()], dim=1)

    s = torch.zeros(x.shape[0], n1 + n2, dtype=F64)
    for _ in range(2000):
        s = torch.tanh(preactivation(w0, w1, s))
    assert (s - torch.tanh(preactivation(w0, w1, s))).abs().max() < 1e-14
    h = preactivation(w0, w1, s)
    m = torch.zeros(n1 + n2, n1 + n2, dtype=F64)
    m[:n1, n1:] = GAIN * w1.t()
    m[n1:, :n1] = w1
    onehot = torch.nn.functional.one_hot(y, w_out.shape[0]).to(F64)
    p = torch.softmax(s[:, n1:] @ w_out.t(), -1)
    batch = x.shape[0]
    dl_ds = torch.zeros_like(s)
    dl_ds[:, n1:] = (p - onehot) @ w_out / batch
    d = 1 - torch.tanh(h) ** 2  # (batch, N)
    eye = torch.eye(n1 + n2, dtype=F64)
    # a = (I - D M)^{-T} dL/ds per example; v = D a
    lhs = eye - m.t().unsqueeze(0) * d.unsqueeze(1)  # (I - D M)^T = I - M^T D
    a = torch.linalg.solve(lhs, dl_ds.unsqueeze(-1)).squeeze(-1)
    v = d * a
    w0_, w1_ = w0.clone().requires_grad_(True), w1.clone().requires_grad_(True)
    (preactivation(w0_, w1_, s) * v).sum().backward()
    return {
        "input->h1:forward": w0_.grad,
        "h1->h2:forward": w1_.grad,
        "readout": (p - onehot).t() @ s[:, n1:] / batch,
    }


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


def _ep_gradients(net, x, y, **settings) -> dict[str, torch.Tensor]:
    method = EquilibriumPropagation(
        free_steps=400, nudged_steps=400, tolerance=1e-15, check_every=1, **settings
    )
    net.zero_grad(set_to_none=True)
    method.gradients(net, x, y)
    return {
        "input->h1:forward": net.weight_of("input->h1:forward").grad.clone(),
        "h1->h2:forward": net.weight_of("h1->h2:forward").grad.clone(),
        "readout": net.readout_weight.grad.clone(),
    }


def test_symmetric_contrast_ep_matches_implicit_gradient():
    _, net = _two_layer_net()
    x, y = _data(net.spec, batch=5, seed=2)
    true = _true_gradients(net, x, y)
    ep = _ep_gradients(net, x, y, nudge=1e-3, nudging="symmetric", rule="contrast", error="reread")
    for key in ("input->h1:forward", "h1->h2:forward"):
        assert true[key].norm() > 1e-4, key  # the gradient is not (near) zero
        assert 1 - _cosine(ep[key], true[key]) < 1e-6, key
    # norm = true norm times the product of feedback gains between the edge's target and the top
    assert ep["input->h1:forward"].norm() / true["input->h1:forward"].norm() == pytest.approx(
        GAIN, rel=1e-6
    )
    assert ep["h1->h2:forward"].norm() / true["h1->h2:forward"].norm() == pytest.approx(
        1.0, rel=1e-6
    )
    assert torch.allclose(ep["readout"], true["readout"], rtol=0, atol=1e-12)


def test_ep_estimate_improves_as_nudge_shrinks():
    """O(nudge^2) error of the symmetric estimate: 10x smaller nudge, ~100x smaller error."""
    _, net = _two_layer_net()
    x, y = _data(net.spec, batch=5, seed=2)
    key = "h1->h2:forward"
    true = _true_gradients(net, x, y)[key]
    errors = []
    for nudge in (0.1, 0.01):
        ep = _ep_gradients(
            net, x, y, nudge=nudge, nudging="symmetric", rule="contrast", error="reread"
        )[key]
        errors.append(float((ep - true).norm() / true.norm()))
    assert errors[1] < errors[0] / 30


@pytest.mark.parametrize("error", ["held", "reread"])
def test_one_sided_paper_rule_on_the_input_edge_is_aligned(error):
    _, net = _two_layer_net()
    x, y = _data(net.spec, batch=5, seed=2)
    key = "input->h1:forward"
    true = _true_gradients(net, x, y)[key]
    ep = _ep_gradients(net, x, y, nudge=1e-3, nudging="one-sided", rule="paper", error=error)
    assert _cosine(ep[key], true) > 1 - 1e-5
    assert float(ep[key].norm() / true.norm()) == pytest.approx(GAIN, rel=1e-2)


def test_one_sided_paper_rule_leaves_out_the_feedback_path_on_hidden_edges():
    """(s2^n - s2^0) s1^0^T misses the change of s1 through the feedback path: a small,
    nudge-independent bias (the symmetric contrast rule above has none)."""
    _, net = _two_layer_net()
    x, y = _data(net.spec, batch=5, seed=2)
    key = "h1->h2:forward"
    true = _true_gradients(net, x, y)[key]
    ep = _ep_gradients(net, x, y, nudge=1e-3, nudging="one-sided", rule="paper", error="reread")
    assert 1e-4 < 1 - _cosine(ep[key], true) < 0.05


def test_ep_method_settings_come_from_the_spec():
    spec = chain()
    spec = dataclasses.replace(
        spec,
        dynamics=dataclasses.replace(spec.dynamics, schedule="sweep", free_steps=7),
        training=dataclasses.replace(spec.training, nudge=0.3, error="reread"),
    )
    method = EquilibriumPropagation.from_spec(spec)
    assert (method.schedule, method.free_steps, method.nudge, method.error) == (
        "sweep",
        7,
        0.3,
        "reread",
    )
