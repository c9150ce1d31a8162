"""Gradient baselines (BPTT, implicit), gain compensation and ``topo-ep check-gradients``.

Everything is float64. The implicit gradient is checked against an independent dense solution
(tests/test_engine.py builds M, the fixed point and (I - M^T D)^{-1} by hand) and against BPTT
unrolled far enough to converge; EP is then checked against the implicit gradient. Property
versions over random topologies are in tests/test_gradient_properties.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from tests.helpers import build_as_found, declaration_order_weights
from tests.test_engine import _data, _true_gradients, _two_layer_net
from topo_ep.balance import gain_factors, no_energy_reason
from topo_ep.cli import build_parser, main
from topo_ep.compiler import compile_topology
from topo_ep.errors import DivergenceError, TopoEpError
from topo_ep.gradcheck import (
    CheckSettings,
    check_batch,
    check_gradients,
    one_minus_cosine,
    sign_agreement,
)
from topo_ep.learn import METHODS, make_method
from topo_ep.learn.bp import FeedforwardBackprop
from topo_ep.learn.bptt import BackpropThroughTime, bptt_gradients
from topo_ep.learn.ep import EquilibriumPropagation
from topo_ep.learn.implicit import (
    ImplicitDifferentiation,
    implicit_gradients,
    preactivations,
    solve_adjoint,
)
from topo_ep.loader import load_topology, save_topology
from topo_ep.spec import TopologySpec
from topo_ep.testing import NetworkCase
from topo_ep.validate import spec_from_dict

F64 = torch.float64


def by_name(tensors: dict) -> dict:
    """The same mapping keyed by each ParamKey's display name (``input->h1:forward``, ...)."""
    return {str(key): value for key, value in tensors.items()}


REPO = Path(__file__).resolve().parents[1]
TOPOLOGIES = REPO / "topologies"


def _spec(
    sizes=(5, 6, 5, 4, 4),
    gains=None,
    skips=(),
    feedback="tied",
    readout_feedback="tied",
    bias=False,
    input_skips=(),
    classes=3,
) -> TopologySpec:
    """input -> h1 -> ... -> hL with feedback (gain per link), optional skips ``(i, j, g)``."""
    n_in, *hidden = sizes
    names = [f"h{k + 1}" for k in range(len(hidden))]
    gains = gains if gains is not None else [0.2] * (len(hidden) - 1)
    edges: list[dict] = [{"source": "input", "target": "h1"}]
    for a, b, gain in zip(names[:-1], names[1:], gains, strict=True):
        edges.append({"source": a, "target": b})
        edges.append(
            {"source": b, "target": a, "kind": "feedback", "gain": gain, "feedback": feedback}
        )
    for low, high, gain in skips:
        edges.append({"source": names[low], "target": names[high], "kind": "skip"})
        edges.append(
            {
                "source": names[high],
                "target": names[low],
                "kind": "feedback",
                "gain": gain,
                "feedback": feedback,
            }
        )
    for k in input_skips:
        edges.append({"source": "input", "target": names[k], "kind": "skip"})
    return spec_from_dict(
        {
            "name": "test_net",
            "input": {"size": n_in},
            "layers": [
                {"name": n, "size": s, "bias": bias} for n, s in zip(names, hidden, strict=True)
            ],
            "readout": {"from": names[-1], "size": classes, "feedback": readout_feedback},
            "edges": edges,
        }
    )


def _net(spec: TopologySpec, seed: int = 0, scale: float = 1.0):
    """Compiled in float64 with every hidden-to-hidden weight times ``scale``; biases random."""
    net = declaration_order_weights(compile_topology(spec, seed=seed, dtype=F64), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for binding in net.bindings.values():
            if binding.tensor is not None and binding.edge.source != "input":
                net.weight_of(binding.edge.key).mul_(scale)
        for bias in net.biases.values():
            bias.copy_(torch.rand(bias.shape, generator=gen, dtype=F64) - 0.5)
    return net


def _batch(spec: TopologySpec, batch: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, spec.input.size, generator=gen, dtype=F64) * 2 - 1
    y = torch.randint(0, spec.readout.size, (batch,), generator=gen)
    return x, y


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# Unbalanced skip (feedback gain 0.2 where balance needs 0.2^3), random feedback with a random
# readout matrix, biases and an input skip: the implicit gradient must not depend on symmetry.
NETWORKS = {
    "balanced_chain": dict(gains=[0.1, 0.3, 0.2]),
    "unbalanced_skip": dict(skips=[(0, 3, 0.2)], bias=True),
    "random_feedback": dict(
        feedback="random", readout_feedback="random", skips=[(0, 2, 0.3)], input_skips=[2]
    ),
}


# ---------------------------------------------------------------------------- implicit, BPTT
@pytest.mark.parametrize("schedule", ["synchronous", "sweep"])
def test_implicit_matches_the_independent_dense_solution(schedule):
    _, net = _two_layer_net()
    x, y = _data(net.spec, batch=5, seed=2)
    true = _true_gradients(net, x, y)
    result = implicit_gradients(net, x, y, schedule=schedule, free_steps=2000, tolerance=1e-300)
    assert result.free_stats.converged and result.adjoint_stats.converged
    for key in ("input->h1:forward", "h1->h2:forward", "readout"):
        assert true[key].norm() > 1e-3
        assert _relative(by_name(result.grads)[key], true[key]) < 1e-12, key


@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("schedule", ["synchronous", "sweep"])
def test_implicit_matches_bptt_with_many_steps(name, schedule):
    spec = _spec(**NETWORKS[name])
    net = _net(spec, seed=3, scale=1.5)
    x, y = _batch(spec, seed=4)
    result = implicit_gradients(net, x, y, schedule=schedule, free_steps=3000, tolerance=1e-300)
    assert result.free_stats.converged and result.adjoint_stats.converged
    # unrolled 4x as long as the relaxation needed to converge to 16 eps
    steps = 4 * result.free_stats.steps + 20
    bptt, _, stats = bptt_gradients(net, x, y, schedule=schedule, steps=steps)
    assert stats.steps == steps
    assert set(bptt) == set(result.grads) == set(net.learned_tensors())
    for key, grad in result.grads.items():
        assert grad.norm() > 1e-6, key  # every tensor carries a real gradient
        assert _relative(bptt[key], grad) < 1e-10, key


def test_bptt_converges_to_the_implicit_gradient_as_steps_grow():
    spec = _spec(**NETWORKS["unbalanced_skip"])
    net = _net(spec, seed=5, scale=1.5)
    x, y = _batch(spec, seed=6)
    true = implicit_gradients(net, x, y, free_steps=3000, tolerance=1e-300).grads
    key = "input->h1:forward"
    errors = []
    for steps in (5, 20, 80, 320):
        bptt, _, _ = bptt_gradients(net, x, y, steps=steps)
        errors.append(_relative(by_name(bptt)[key], by_name(true)[key]))
    assert errors[0] > 1e-3  # a short unroll is a different gradient (of a different map)
    assert all(b < a / 3 for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-8


def test_sweep_adjoint_is_backprop_after_one_pass_without_feedback():
    spec = spec_from_dict(
        {
            "name": "ff",
            "input": {"size": 4},
            "layers": [{"name": "h1", "size": 5}, {"name": "h2", "size": 3}],
            "readout": {"from": "h2", "size": 3},
            "edges": [
                {"source": "input", "target": "h1"},
                {"source": "h1", "target": "h2"},
                {"source": "input", "target": "h2", "kind": "skip"},
            ],
        }
    )
    net = _net(spec, seed=2)
    x, y = _batch(spec, seed=1)
    result = implicit_gradients(
        net, x, y, schedule="sweep", free_steps=1, tolerance=0.0, adjoint_steps=1
    )
    net.zero_grad(set_to_none=True)
    FeedforwardBackprop().gradients(net, x, y)
    for key, tensor in net.learned_tensors().items():
        assert torch.allclose(result.grads[key], tensor.grad, rtol=1e-13, atol=1e-16), key


def test_adjoint_iteration_solves_the_transposed_linear_system():
    spec = _spec(**NETWORKS["random_feedback"])
    net = _net(spec, seed=7, scale=1.5)
    x, y = _batch(spec, batch=2, seed=8)
    result = implicit_gradients(net, x, y, free_steps=3000, tolerance=1e-300)
    drives = net.input_drive(x)
    with torch.no_grad():
        h = torch.cat(preactivations(net, result.free, drives), dim=1)
        d = 1 - torch.tanh(h) ** 2
        m = net.hidden_operator()
        source = torch.zeros_like(h)
        top = net.layout.slice(spec.readout.source)
        p = torch.softmax(net.readout_logits(result.free[net.top]), -1)
        onehot = torch.nn.functional.one_hot(y, spec.readout.size).to(F64)
        source[:, top] = (p - onehot) @ net.readout_weight / x.shape[0]
        eye = torch.eye(m.shape[0], dtype=F64)
        for b in range(x.shape[0]):
            expected = torch.linalg.solve(eye - m.t() * d[b], source[b])
            got = torch.cat([a[b] for a in result.adjoint])
            assert torch.allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_adjoint_divergence_raises():
    spec = _spec(sizes=(3, 4, 4, 4), gains=[50.0, 50.0])
    net = _net(spec, scale=3.0)
    derivatives = [torch.ones(2, n, dtype=F64) for n in net.layout.sizes]
    source = [torch.ones(2, n, dtype=F64) for n in net.layout.sizes]
    with pytest.raises(DivergenceError, match="adjoint"):
        solve_adjoint(net, derivatives, source, ((0, 1, 2),), 5000, tolerance=1e-12)


# ---------------------------------------------------------------------------- methods
def test_bptt_and_implicit_are_registered_training_methods():
    assert {"ep", "bp", "bptt", "implicit"} <= set(METHODS.names())
    spec = _spec(**NETWORKS["unbalanced_skip"])
    bptt = make_method("bptt", spec)
    implicit = make_method("implicit", spec)
    assert isinstance(bptt, BackpropThroughTime) and bptt.name == "bptt"
    assert isinstance(implicit, ImplicitDifferentiation) and implicit.name == "implicit"
    assert bptt.free_steps == spec.dynamics.free_steps
    assert implicit.schedule == spec.dynamics.schedule
    with pytest.raises(ValueError, match="bptt"):
        make_method("nope", spec)
    parser = build_parser()
    for method in ("bptt", "implicit"):
        assert parser.parse_args(["train", "f.yaml", "--method", method]).method == method


@pytest.mark.parametrize("method_name", ["bptt", "implicit"])
def test_methods_write_grad_of_every_learned_tensor(method_name):
    spec = _spec(**NETWORKS["unbalanced_skip"])
    net = _net(spec, seed=1)
    x, y = _batch(spec, seed=2)
    if method_name == "bptt":
        method = BackpropThroughTime(free_steps=25)
        expected, _, _ = bptt_gradients(net, x, y, steps=25)
    else:
        method = ImplicitDifferentiation(free_steps=500, tolerance=1e-13)
        expected = implicit_gradients(net, x, y, free_steps=500, tolerance=1e-13).grads
    for tensor in net.parameters():
        tensor.grad = torch.full_like(tensor, 7.0)  # stale values must be replaced
    result = method.gradients(net, x, y)
    for key, tensor in net.learned_tensors().items():
        assert torch.equal(tensor.grad, expected[key]), key
    logits = method.logits(net, x)
    assert logits.shape == (4, spec.readout.size)
    loss = torch.nn.functional.cross_entropy(logits, y)
    assert float(result.loss) == pytest.approx(float(loss), rel=1e-9)
    assert int(result.correct) == int((logits.argmax(-1) == y).sum())


@pytest.mark.parametrize("method", ["bptt", "implicit"])
def test_training_with_the_gradient_baselines_lowers_the_loss(method, tmp_path):
    out = tmp_path / method
    code = main(
        [
            "train",
            str(TOPOLOGIES / "quickstart.yaml"),
            "--method",
            method,
            "--limit",
            "200",
            "--epochs",
            "3",
            "--quiet",
            "--out",
            str(out),
            "--set",
            "layers.h1.size=16",
            "--set",
            "layers.h2.size=16",
        ]
    )
    assert code == 0
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    metrics = [json.loads(line) for line in lines]
    assert len(metrics) == 3
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[-1]["val_acc"] > 0.3  # 10 classes: chance is 0.1


# ---------------------------------------------------------------------------- gain factors
def test_gain_factors_are_products_of_gains_on_a_chain():
    spec = _spec(gains=[0.1, 0.3, 0.2])
    factors = gain_factors(spec)
    assert factors == pytest.approx({"h1": 0.1 * 0.3 * 0.2, "h2": 0.3 * 0.2, "h3": 0.2, "h4": 1})
    # a balanced skip h1 <-> h4 carries the product of the chain's gains
    balanced = _spec(gains=[0.1, 0.3, 0.2], skips=[(0, 3, 0.1 * 0.3 * 0.2)])
    assert gain_factors(balanced) == pytest.approx(factors)
    assert no_energy_reason(balanced) is None


@pytest.mark.parametrize("name", ["unbalanced_skip", "random_feedback"])
def test_no_gain_factor_without_energy(name):
    spec = _spec(**NETWORKS[name])
    assert gain_factors(spec) is None
    reason = no_energy_reason(spec)
    assert reason and ("cycle" in reason or "random" in reason)
    asked = dataclasses.replace(
        spec, training=dataclasses.replace(spec.training, gain_compensated=True)
    )
    with pytest.raises(TopoEpError, match="gain compensation needs an energy") as info:
        EquilibriumPropagation.from_spec(asked)
    assert reason in str(info.value)
    net = _net(spec)
    x, y = _batch(spec)
    phases = EquilibriumPropagation(free_steps=5, nudged_steps=3).phases(net, x, y)
    with pytest.raises(TopoEpError, match="gain compensation"):
        EquilibriumPropagation(gain_compensated=True).updates(net, phases)


def test_gain_compensation_makes_ep_an_estimate_of_the_gradient_in_norm():
    spec = _spec(gains=[0.1, 0.3, 0.2], bias=True)
    settings = dict(nudge=1e-3, nudging="symmetric", rule="contrast", error="reread")
    settings.update(free_steps=3000, nudged_steps=3000, tolerance=1e-300, check_every=1)
    x, y = _batch(spec, seed=3)
    true = implicit_gradients(_net(spec, seed=2), x, y, free_steps=3000, tolerance=1e-300).grads
    factors = gain_factors(spec)
    grads = {}
    for compensated in (False, True):
        net = _net(spec, seed=2)
        EquilibriumPropagation(gain_compensated=compensated, **settings).gradients(net, x, y)
        grads[compensated] = {k: t.grad.clone() for k, t in net.learned_tensors().items()}
    assert set(true) == set(grads[False]) == set(grads[True])
    assert {key.kind for key in true} == {"edge", "bias", "readout"}
    for key in true:
        factor = 1.0 if key.is_readout else factors[key.target]
        raw = float(grads[False][key].norm() / true[key].norm())
        compensated = float(grads[True][key].norm() / true[key].norm())
        assert raw == pytest.approx(factor, rel=1e-5), key
        assert compensated == pytest.approx(1.0, rel=1e-5), key
        assert _relative(grads[True][key], true[key]) < 1e-5, key
    assert factors["h1"] == pytest.approx(0.006)  # the raw input-edge update is 166x too small


def test_gain_compensated_training_spec_is_accepted_on_balanced_topologies():
    spec = load_topology(TOPOLOGIES / "fre_2x512.yaml", ["training.gain_compensated=true"])
    method = make_method("ep", spec)
    assert method.gain_compensated
    with pytest.raises(TopoEpError, match="no energy"):
        make_method(
            "ep", load_topology(TOPOLOGIES / "agt_10x64.yaml", ["training.gain_compensated=true"])
        )


# ---------------------------------------------------------------------------- check helpers
def test_one_minus_cosine_is_accurate_far_below_epsilon():
    a = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    for angle in (1e-3, 1e-6, 1e-9):
        b = torch.tensor([math.cos(angle), math.sin(angle), 0.0], dtype=F64) * 3.0
        assert one_minus_cosine(a, b) == pytest.approx(1 - math.cos(angle), rel=1e-6)
        assert one_minus_cosine(a, b) == pytest.approx(angle**2 / 2, rel=1e-6)
    assert one_minus_cosine(a, -a) == pytest.approx(2.0)
    assert math.isnan(one_minus_cosine(a, torch.zeros(3, dtype=F64)))
    assert one_minus_cosine(torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64)) == 0.0
    assert sign_agreement(
        torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([2.0, 1.0, 3.0, -1.0])
    ) == pytest.approx(0.5)


def test_check_uses_the_ep_gradient_training_writes():
    spec = _spec(gains=[0.1, 0.3, 0.2])
    settings = CheckSettings(nudge=1e-2, nudging="one-sided", rule="paper", error="held")
    result = check_gradients(spec, settings)
    net = compile_topology(spec, seed=0, dtype=F64)
    x, y = check_batch(spec, 16, 0, F64)
    EquilibriumPropagation(
        nudge=1e-2,
        nudging="one-sided",
        rule="paper",
        error="held",
        free_steps=20000,
        nudged_steps=20000,
        tolerance=1e-300,
    ).gradients(net, x, y)
    tensors = by_name(net.learned_tensors())
    assert [row.name for row in result.rows] == list(tensors)
    for row in result.rows:
        assert row.ep_norm == pytest.approx(float(tensors[row.name].grad.norm()), rel=1e-9)


def test_held_and_reread_errors_agree_to_first_order():
    """held nudges with the linearised cost <dC/ds(s0), s>: same first derivative in the nudge
    (both pass at 1e-3), different second-order terms (different numbers at 0.1)."""
    spec = _spec(gains=[0.1, 0.3, 0.2])
    results = {}
    for error in ("held", "reread"):
        for nudge in (1e-3, 1e-1):
            results[error, nudge] = check_gradients(spec, CheckSettings(nudge=nudge, error=error))
    for error in ("held", "reread"):
        assert results[error, 1e-3].passed
        assert max(r.one_minus_cos for r in results[error, 1e-3].rows) < 1e-12
    held = results["held", 1e-1].row("h1->h2:forward")
    reread = results["reread", 1e-1].row("h1->h2:forward")
    assert held.one_minus_cos != pytest.approx(reread.one_minus_cos, rel=1e-2)


def test_strong_coupling_bias_is_second_order_in_the_nudge():
    """A chain with every gain 1 (found by the strong-coupling property test, seed 1): the
    ratio misses c_top^2 / c_j^2 = 1 by 1.4e-4 at nudge 1e-3 on the top edge. That is the
    O(nudge^2) bias of the symmetric estimate with a large constant, not a defect: the miss
    falls 100x per decade of nudge."""
    spec = _spec(sizes=(2, 4, 2, 2, 2, 2, 2), gains=[1.0] * 5, classes=2)
    net_args = dict(seed=0, scale=0.5)
    x = torch.tensor([[0.9401060036131061, 0.4156397287995759]], dtype=F64)
    y = torch.tensor([1])
    misses = []
    for nudge in (1e-2, 1e-3, 1e-4):
        net = declaration_order_weights(compile_topology(spec, seed=0, dtype=F64), 0)
        with torch.no_grad():
            for binding in net.learned_bindings():
                if binding.edge.source != "input":
                    net.weight_of(binding.edge.key).mul_(net_args["scale"])
        result = check_gradients(
            spec, CheckSettings(nudge=nudge, schedule="sweep"), net=net, data=(x, y)
        )
        misses.append(abs(result.row("h5->h6:forward").norm_ratio - 1.0))
    assert 1e-4 < misses[1] < 2e-4
    assert misses[0] / misses[1] == pytest.approx(100, rel=0.1)
    assert misses[1] / misses[2] == pytest.approx(100, rel=0.1)


def _assert_fall_is_short_while_nudge_0_1_is_not_perturbative(
    spec, case: NetworkCase, data
) -> list[float]:
    """Worst 1 - cos at nudge 0.1, 0.01, 0.001 (sweep). Asserts the shape both kept nets share:
    nudge 0.1 moves some layer by more than 10 % of its norm and the fall to 0.01 is 100-1000x;
    from 0.01, which moves no layer by more than 10 %, the O(nudge^2) law holds (> 5000x) and
    the default check passes. The property test measures the fall from 0.01 on such nets."""
    worst, signals = [], []
    for nudge in (1e-1, 1e-2, 1e-3):
        result = check_gradients(
            spec, CheckSettings(nudge=nudge, schedule="sweep"), net=build_as_found(case), data=data
        )
        assert result.converged and result.free_steps <= 250
        assert gain_factors(spec) is not None
        worst.append(max(row.one_minus_cos for row in result.rows))
        signals.append(max(row.signal for row in result.rows if row.target != "readout"))
    assert signals[0] > 0.1 >= signals[1]
    assert 100 < worst[0] / worst[1] < 1000
    assert worst[1] / worst[2] > 5000
    assert worst[2] < 1e-8
    return worst


def test_strong_coupling_nudge_0_1_is_outside_the_asymptotic_regime():
    """Gains 1.70 / 1.68 and weights x1.5 (found by the strong-coupling property test): at
    nudge 0.1 the worst 1 - cos is 2.9e-3 and falls only ~180x to nudge 0.01; one decade lower
    the O(nudge^2) law holds (~10^4x to nudge 0.001, where the default check passes)."""
    spec = spec_from_dict(
        {
            "name": "strong",
            "input": {"size": 4},
            "layers": [
                {"name": "h1", "size": 5, "bias": True},
                {"name": "h2", "size": 5, "bias": True},
            ],
            "readout": {"from": "h2", "size": 3},
            "edges": [
                {"source": "input", "target": "h1"},
                {"source": "h1", "target": "h2", "gain": 1.7031095757206969},
                {"source": "h2", "target": "h1", "kind": "feedback", "gain": 1.6827483426748402},
            ],
        }
    )
    case = NetworkCase(spec, seed=94124, weight_scale=1.5)
    x = torch.tensor(
        [[-0.2908, -0.9917, 0.1946, -0.9671], [-0.0514, -0.3951, -0.0669, 0.2683]], dtype=F64
    )
    worst = _assert_fall_is_short_while_nudge_0_1_is_not_perturbative(
        spec, case, (x, torch.tensor([0, 2]))
    )
    assert worst[0] > 1e-3


def test_strong_coupling_fall_from_nudge_0_1_misses_1000x_on_a_net_that_settles_in_130_steps():
    """Found by the strong-coupling property test with random draws: gains 1.25 / 1.25,
    weights x1.25, 130 free steps. Nudge 0.1 moves h2 by half its norm, and the worst 1 - cos
    falls only ~440x to nudge 0.01; from 0.01 (signal 0.057) it falls ~10^4x."""
    spec = spec_from_dict(
        {
            "name": "balanced_strong_2",
            "input": {"size": 5},
            "layers": [{"name": "h1", "size": 3}, {"name": "h2", "size": 2}],
            "readout": {"from": "h2", "size": 3},
            "edges": [
                {"source": "input", "target": "h1"},
                {"source": "h1", "target": "h2", "gain": 1.25},
                {"source": "h2", "target": "h1", "kind": "feedback", "gain": 1.25},
            ],
        }
    )
    case = NetworkCase(spec, seed=6836733, weight_scale=1.25)
    x = torch.tensor(
        [
            [0.5646, 0.9859, 0.2490, -0.5886, 0.5535],
            [-0.7910, -0.5819, 0.0700, -0.7763, -0.4359],
            [0.3397, 0.3712, -0.6267, 0.7606, 0.7186],
        ],
        dtype=F64,
    )
    _assert_fall_is_short_while_nudge_0_1_is_not_perturbative(
        spec, case, (x, torch.tensor([1, 2, 0]))
    )


def test_strong_coupling_ratio_bias_constant_near_3700_on_a_net_that_settles_in_185_steps():
    """Found by the strong-coupling property test with random draws: a 3-layer net with skips
    and gains up to 2.56 that settles in 185 free steps. The input->h1 ratio misses its
    prediction by 3.7e-3 at nudge 1e-3, and by 3.7e-5 and 3.6e-7 at 1e-4 and 1e-5: the
    O(nudge^2) bias with a constant near 3700. The property checks such nets one decade lower."""
    gains = {("h1", "h2"): 1.3038645426580242, ("h2", "h3"): 2.5625053804559963}
    back = {("h1", "h2"): 1.2966216024589272, ("h2", "h3"): 2.5621452747374285}
    edges = [{"source": "input", "target": "h1"}]
    for (low, high), gain in gains.items():
        edges.append({"source": low, "target": high, "gain": gain})
        edges.append({"source": high, "target": low, "kind": "feedback", "gain": back[low, high]})
    edges += [
        {"source": "h1", "target": "h3", "kind": "skip", "gain": 1.9563050985721062},
        {"source": "h3", "target": "h1", "kind": "feedback", "gain": 1.9451644747810979},
        {"source": "input", "target": "h2", "kind": "skip"},
        {"source": "input", "target": "h3", "kind": "skip"},
    ]
    sizes = {"h1": 2, "h2": 6, "h3": 2}
    spec = spec_from_dict(
        {
            "name": "balanced_strong_3",
            "input": {"size": 2},
            "layers": [{"name": n, "size": k, "bias": True} for n, k in sizes.items()],
            "readout": {"from": "h3", "size": 3},
            "edges": edges,
        }
    )
    case = NetworkCase(spec, seed=80791, weight_scale=0.76171875)
    x = torch.tensor([[0.6808, 0.9381], [0.9564, 0.6643]], dtype=F64)
    misses = []
    for nudge in (1e-3, 1e-4, 1e-5):
        result = check_gradients(
            spec,
            CheckSettings(nudge=nudge, schedule="sweep"),
            net=build_as_found(case),
            data=(x, torch.tensor([1, 2])),
        )
        assert result.converged and result.free_steps <= 200
        row = result.row("input->h1:forward")
        misses.append(abs(row.norm_ratio / row.predicted_ratio - 1))
    assert 3e-3 < misses[0] < 5e-3
    assert misses[0] / misses[1] == pytest.approx(100, rel=0.05)
    assert misses[1] / misses[2] == pytest.approx(100, rel=0.05)


# ---------------------------------------------------------------------------- CLI
def _check(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["check-gradients", *args])
    return code, capsys.readouterr().out


def _table(out: str) -> dict[str, list[str]]:
    lines = out.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("edge "))
    rows = {}
    for line in lines[start + 1 :]:
        if not line or line.startswith(("passed", "FAILED")):
            break
        parts = line.split()
        rows[parts[0]] = parts[1:]
    return rows


def test_check_gradients_passes_on_a_balanced_topology(capsys):
    code, out = _check(capsys, str(TOPOLOGIES / "fre_2x512.yaml"))
    assert code == 0
    assert out.startswith("gradient check fre_2x512: rule contrast, nudging symmetric, nudge 0.001")
    assert "energy: yes" in out and "converged" in out and "passed" in out
    header = next(line for line in out.splitlines() if line.startswith("edge"))
    for column in ("1 - cos", "norm ratio", "predicted", "sign agree", "signal", "result"):
        assert column in header
    rows = _table(out)
    assert set(rows) == {"input->h1:forward", "h1->h2:forward", "readout"}
    angle, ratio, predicted, signs, _, verdict = rows["input->h1:forward"]
    assert float(angle) < 1e-12 and verdict == "ok"
    assert float(ratio) == pytest.approx(0.01, rel=1e-4)  # the feedback gain h2 -> h1
    assert float(predicted) == pytest.approx(0.01)
    assert float(signs) == 1.0
    code, out = _check(capsys, str(TOPOLOGIES / "fre_2x512.yaml"), "--gain-compensated")
    assert code == 0 and "gain-compensated" in out.splitlines()[0]
    assert float(_table(out)["input->h1:forward"][1]) == pytest.approx(1.0, rel=1e-4)


def test_check_gradients_negative_control_fails(capsys, tmp_path):
    """The paper's one-sided rule leaves out the feedback path: on a chain with gain 0.3 it
    fails the default threshold on every hidden-to-hidden edge (measured 1 - cos 0.03 to 0.06,
    cosine 0.94 to 0.97), while symmetric contrast EP passes on the same network."""
    path = tmp_path / "chain.yaml"
    save_topology(load_topology(TOPOLOGIES / "chain_5x64.yaml", ["feedback_gain=0.3"]), path)
    fast = ("--schedule", "sweep", "--batch", "8")  # same fixed point, half the steps
    code, out = _check(capsys, str(path), "--rule", "paper", "--nudging", "one-sided", *fast)
    assert code == 1
    assert "FAILED: 4 of 6 tensors fail 1 - cos <= 1e-06" in out
    rows = _table(out)
    hidden = [key for key in rows if key.startswith("h")]
    assert len(hidden) == 4
    errors = [float(rows[key][0]) for key in hidden]
    assert all(rows[key][-1] == "FAIL" for key in hidden)
    assert min(errors) > 0.02 and max(errors) < 0.1, errors  # cosine 0.90 .. 0.98
    assert rows["input->h1:forward"][-1] == "ok"  # no feedback path into the clamped input
    code, out = _check(capsys, str(path), *fast)
    assert code == 0, out


def test_check_gradients_without_energy_reports_na(capsys):
    code, out = _check(capsys, str(TOPOLOGIES / "res_10x64.yaml"), "--batch", "2")
    assert code == 1
    assert "energy: no energy: the gains do not balance around the cycle" in out
    assert "predicted ratio: n/a" in out
    rows = _table(out)
    assert all(rows[key][2] == "n/a" for key in rows if key != "readout")
    assert len(rows) == 14
    code, out = _check(
        capsys, str(TOPOLOGIES / "res_10x64.yaml"), "--batch", "2", "--max-angle", "2"
    )
    assert code == 0 and "passed" in out  # every 1 - cos is at most 2


def test_check_gradients_errors(capsys):
    capsys.readouterr()
    code = main(["check-gradients", str(TOPOLOGIES / "agt_10x64.yaml"), "--gain-compensated"])
    err = capsys.readouterr().err
    assert code == 2 and "gain compensation needs an energy" in err and "random" in err
    assert main(["check-gradients", str(TOPOLOGIES / "fre_2x512.yaml"), "--nudge", "0"]) == 2
    with pytest.raises(SystemExit) as exited:  # argparse: the schedule registry's names
        main(["check-gradients", str(TOPOLOGIES / "fre_2x512.yaml"), "--schedule", "x"])
    assert exited.value.code == 2
    assert main(["check-gradients", str(TOPOLOGIES / "fre_2x512.yaml"), "--tolerance", "0"]) == 2
    code, out = _check(
        capsys, str(TOPOLOGIES / "fre_2x512.yaml"), "--max-steps", "2", "--set", "layers.h1.size=8"
    )
    assert code == 1 and "NOT CONVERGED" in out


def test_strong_coupling_ratio_misses_1e_4_on_a_net_that_settles_in_150_steps():
    """Found by the strong-coupling property test in CI: a balanced 4-layer net (forward gains
    1.8-3, weights x1.25) that settles in 150 sweeps, is perturbative (largest signal 6.6e-3)
    and has 1 - cos <= 2.1e-10 at nudge 1e-3, yet its raw norm ratios miss c_top^2 / c_j^2 by
    up to 4.2e-4. The miss is the O(nudge^2) bias with a constant near 400: it falls 100x per
    decade of nudge. So the strong-coupling property asserts the ratio to 1e-3, not 1e-4."""
    gains = {
        ("h1", "h2"): (3.0, 2.2198373336967325),
        ("h2", "h3"): (2.8007565555864518, 2.800756555586452),
        ("h3", "h4"): (1.836168937556738, 0.5806476011530781),
        ("h1", "h3"): (1.9960454911270504, 1.4769654336536189),
        ("h1", "h4"): (2.0465530359631314, 0.47887581071122143),
    }
    edges = [{"source": "input", "target": "h1"}]
    for (low, high), (forward, feedback) in gains.items():
        kind = "forward" if int(high[1:]) - int(low[1:]) == 1 else "skip"
        edges.append({"source": low, "target": high, "kind": kind, "gain": forward})
        edges.append({"source": high, "target": low, "kind": "feedback", "gain": feedback})
    edges += [{"source": "input", "target": t, "kind": "skip"} for t in ("h3", "h4")]
    spec = spec_from_dict(
        {
            "name": "balanced_strong_4",
            "input": {"size": 2},
            "layers": [{"name": f"h{k}", "size": 2, "bias": k in (2, 3)} for k in range(1, 5)],
            "readout": {"from": "h4", "size": 4},
            "edges": edges,
            "dynamics": {"schedule": "colour"},
        }
    )
    case = NetworkCase(spec, seed=18533, weight_scale=1.25)
    x = torch.tensor([[0.0403, -0.9106]], dtype=F64)
    y = torch.tensor([2])
    misses = []
    for nudge in (1e-2, 1e-3, 1e-4):
        result = check_gradients(
            spec,
            CheckSettings(nudge=nudge, schedule="sweep"),
            net=build_as_found(case),
            data=(x, y),
        )
        assert result.converged and result.energy_reason is None
        misses.append(max(abs(r.norm_ratio / r.predicted_ratio - 1) for r in result.rows))
        if nudge == 1e-3:
            assert result.free_steps <= 200 and max(r.one_minus_cos for r in result.rows) < 1e-9
    assert 1e-4 < misses[1] < 1e-3
    assert misses[0] / misses[1] == pytest.approx(100, rel=0.2)
    assert misses[1] / misses[2] == pytest.approx(100, rel=0.2)
