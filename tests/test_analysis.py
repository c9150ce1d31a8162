"""Analyses checked against exact theory.

- Chain with tied feedback of uniform gain g: D = diag(g^{k/2}) gives D M D^{-1} = sqrt(g) S,
  S symmetric and independent of g, so rho(M(g)) = sqrt(g) rho(M(1)) exactly.
- ARPACK (the large-network estimator) must agree with LAPACK on operators whose largest
  eigenvalues come as +-lambda pairs (bipartite layer graphs: chains, residual nets) and as
  complex pairs (random feedback) -- the cases where power iteration fails.
- tanh at s = 0 (zero input, no bias) has rho'(0) = 1, so the Jacobian there is M itself; the
  sweep's Jacobian is then the block Gauss-Seidel matrix of M, and for a chain (block
  tridiagonal, consistently ordered) Young's theorem gives rho(GS) = rho(Jacobi)^2.
- With the identity activation the tangent map is M itself, so the finite-time Lyapunov
  exponent tends to log rho(M), and the residual of a linear relaxation shrinks by rho per step.
- EP's symmetric contrast update on a balanced chain is (c_top^2 / c_j^2) dL/dW as the nudge
  goes to 0 (DESIGN): cosine 1 with the implicit gradient and norm ratio equal to the product
  of the gains.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import declaration_order_weights
from topo_ep import spectral
from topo_ep.analysis.backends import energy_per_sample, implicit_gradient
from topo_ep.analysis.balance import balance_report
from topo_ep.analysis.convergence import convergence_times
from topo_ep.analysis.energy_trace import energy_trace
from topo_ep.analysis.gradient_flow import gradient_flow, predicted_factors
from topo_ep.analysis.inputs import analysis_batch
from topo_ep.analysis.jacobian import jacobian_radii, jacobian_radius_at
from topo_ep.analysis.lyapunov import lyapunov_exponents
from topo_ep.analysis.operator import operator_spectrum, with_feedback_gain
from topo_ep.analysis.states import convergence_tolerance, free_fixed_point
from topo_ep.analysis.sweep import SweepSettings, parse_set_values, run_sweep
from topo_ep.analysis.tangent import step_with_tangent
from topo_ep.cli import main
from topo_ep.compiler import compile_topology
from topo_ep.data import load_dataset
from topo_ep.engine import step
from topo_ep.errors import TopoEpError
from topo_ep.loader import load_topology, loads_topology
from topo_ep.params import ParamKey
from topo_ep.spec import TopologySpec
from topo_ep.validate import spec_from_dict

F64 = torch.float64
REPO = Path(__file__).resolve().parents[1]


def network(
    sizes: tuple[int, ...],
    gain: float = 0.1,
    feedback: str = "tied",
    skips: tuple[tuple[int, int], ...] = (),
    activation: str = "tanh",
    n_in: int = 7,
    classes: int = 3,
    extra: dict | None = None,
) -> TopologySpec:
    """A chain h1..hL of ``sizes`` with feedback of ``gain``; ``skips`` (i, j), 1-based, add a
    skip hi -> hj with its feedback partner."""
    names = [f"h{k + 1}" for k in range(len(sizes))]
    edges: list[dict] = [{"source": "input", "target": "h1"}]
    pairs = list(zip(names[:-1], names[1:], strict=True))
    pairs += [(names[i - 1], names[j - 1]) for i, j in skips]
    for index, (a, b) in enumerate(pairs):
        kind = "forward" if index < len(names) - 1 else "skip"
        edges.append({"source": a, "target": b, "kind": kind})
        edges.append(
            {"source": b, "target": a, "kind": "feedback", "gain": gain, "feedback": feedback}
        )
    data = {
        "name": "net",
        "input": {"size": n_in},
        "layers": [
            {"name": n, "size": s, "activation": activation}
            for n, s in zip(names, sizes, strict=True)
        ],
        "readout": {"from": names[-1], "size": classes, "feedback": feedback},
        "edges": edges,
    }
    data.update(extra or {})
    return spec_from_dict(data)


def batch(spec: TopologySpec, size: int = 4, seed: int = 0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(size, spec.input.size, generator=gen, dtype=F64).to(dtype)
    y = torch.randint(0, spec.readout.size, (size,), generator=gen)
    return x, y


# ---------------------------------------------------------------------------- operator
@pytest.mark.parametrize("depth", [2, 3, 5, 10])
@pytest.mark.parametrize("gain", [0.001, 0.01, 0.1, 0.5, 2.0])
def test_chain_radius_scales_with_sqrt_gain(depth, gain):
    sizes = tuple(4 + (k % 3) for k in range(depth))
    net = compile_topology(network(sizes, gain=gain), seed=depth, dtype=F64)
    unit = with_feedback_gain(net, 1.0)
    radius = spectral.spectral_radius(net, method="exact")
    expected = math.sqrt(gain) * spectral.spectral_radius(unit, method="exact")
    assert radius == pytest.approx(expected, rel=1e-6)
    assert operator_spectrum(net).sqrt_gain_prediction == pytest.approx(radius, rel=1e-6)


def _has_plus_minus_pairs(values: np.ndarray) -> bool:
    """The spectrum is symmetric under lambda -> -lambda (bipartite coupling)."""
    a = np.sort_complex(np.round(values, 8))
    b = np.sort_complex(np.round(-values, 8))
    return bool(np.allclose(a, b, atol=1e-6))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "skips", [(), ((1, 4),), ((1, 4), (2, 5))], ids=["chain", "residual", "two-skips"]
)
def test_arpack_matches_exact_with_plus_minus_pairs(seed, skips):
    rng = np.random.default_rng(seed)
    sizes = tuple(int(v) for v in rng.integers(4, 12, size=5))
    spec = network(sizes, gain=float(rng.uniform(0.05, 2.0)), skips=skips)
    net = compile_topology(spec, seed=seed, dtype=F64)
    exact = spectral.eigenvalues(net)
    assert _has_plus_minus_pairs(exact)  # the top modulus is attained twice: +lambda and -lambda
    truth = float(np.abs(exact).max())
    assert spectral.spectral_radius(net, method="arpack") == pytest.approx(truth, rel=1e-8)
    top = spectral.spectrum(net, k=6, method="arpack")
    reference = np.sort(np.abs(exact))[::-1][:6]
    assert np.sort(np.abs(top))[::-1] == pytest.approx(reference, rel=1e-7)


@pytest.mark.parametrize("seed", range(6))
def test_arpack_matches_exact_with_complex_pairs(seed):
    rng = np.random.default_rng(100 + seed)
    sizes = tuple(int(v) for v in rng.integers(4, 10, size=4))
    spec = network(sizes, gain=float(rng.uniform(0.2, 3.0)), feedback="random", skips=((1, 3),))
    net = compile_topology(spec, seed=seed, dtype=F64)
    exact = spectral.eigenvalues(net)
    assert np.abs(exact.imag).max() > 1e-3  # random feedback: complex pairs
    truth = float(np.abs(exact).max())
    assert spectral.spectral_radius(net, method="arpack") == pytest.approx(truth, rel=1e-8)


def test_arpack_never_densifies(monkeypatch):
    net = compile_topology(network((30, 30, 30)), seed=0, dtype=F64)
    truth = spectral.spectral_radius(net, method="exact")

    def forbidden():
        raise AssertionError("hidden_operator() called by the ARPACK path")

    monkeypatch.setattr(net, "hidden_operator", forbidden)
    assert spectral.spectral_radius(net, method="arpack") == pytest.approx(truth, rel=1e-8)


def test_spectral_method_is_checked():
    net = compile_topology(network((4, 4)), dtype=F64)
    with pytest.raises(ValueError, match="unknown spectral method"):
        spectral.spectral_radius(net, method="power")


# ---------------------------------------------------------------------------- Jacobian
def _zero_fixed_point(net):
    """Zero input and no bias: s = 0 is the free fixed point and rho'(0) = 1 for tanh."""
    x = torch.zeros(1, net.spec.input.size, dtype=net.dtype)
    fixed = free_fixed_point(net, x)
    assert fixed.converged and all(float(s.abs().max()) == 0.0 for s in fixed.state)
    return x, fixed


@pytest.mark.parametrize("feedback", ["tied", "random"])
def test_jacobian_at_zero_state_is_the_operator(feedback):
    net = compile_topology(network((6, 7, 5, 6), gain=0.7, feedback=feedback), seed=3, dtype=F64)
    x, fixed = _zero_fixed_point(net)
    radii = jacobian_radii(net, x, ("synchronous",), fixed_point=fixed)["synchronous"]
    assert radii.radii[0] == pytest.approx(spectral.spectral_radius(net), rel=1e-10)


def test_sweep_jacobian_of_a_chain_is_the_square_of_the_synchronous_one():
    net = compile_topology(network((6, 7, 5, 6, 4), gain=0.4), seed=1, dtype=F64)
    x, fixed = _zero_fixed_point(net)
    radii = jacobian_radii(net, x, ("synchronous", "sweep"), fixed_point=fixed)
    assert radii["sweep"].radii[0] == pytest.approx(radii["synchronous"].radii[0] ** 2, rel=1e-8)


def test_jacobian_radius_of_a_balanced_chain_never_exceeds_the_operator_radius():
    # M = C^-1 S C with S symmetric, so rho(D M) = rho(D^1/2 S D^1/2) <= ||S|| = rho(M)
    spec = network((8, 7, 9, 6), gain=0.6)
    net = compile_topology(spec, seed=5, dtype=F64)
    x, _ = batch(spec, size=8)
    radii = jacobian_radii(net, x, ("synchronous",))["synchronous"]
    assert radii.max <= spectral.spectral_radius(net) * (1 + 1e-12)


def test_jacobian_exact_and_arpack_agree_at_a_driven_fixed_point():
    spec = network((12, 10, 11), gain=0.3, feedback="random", skips=((1, 3),))
    net = compile_topology(spec, seed=2, dtype=F64)
    x, _ = batch(spec, size=3)
    fixed = free_fixed_point(net, x)
    for schedule in ("synchronous", "sweep"):
        for i in range(3):
            derivative = [d[i : i + 1] for d in fixed.derivative]
            exact = jacobian_radius_at(net, derivative, schedule, method="exact")
            arpack = jacobian_radius_at(net, derivative, schedule, method="arpack")
            assert arpack == pytest.approx(exact, rel=1e-8)
    result = jacobian_radii(net, x, ("synchronous",), fixed_point=fixed)["synchronous"]
    assert result.max < spectral.spectral_radius(net)  # |tanh'| < 1 away from 0 shrinks it
    assert result.locally_contracting and result.fraction_contracting == 1.0


# ---------------------------------------------------------------------------- trajectories
@pytest.mark.parametrize("schedule", ["synchronous", "sweep"])
def test_step_with_tangent_follows_the_engine_exactly(schedule):
    spec = network((5, 6, 4), gain=0.3, skips=((1, 3),))
    net = compile_topology(spec, seed=0, dtype=F64)
    x, _ = batch(spec)
    drives = net.input_drive(x)
    groups = net.schedule(schedule)
    state = net.layout.zeros(4, dtype=F64, device=net.device)
    tangent = [torch.ones_like(s) for s in state]
    with torch.no_grad():
        for _ in range(5):
            expected = step(net, state, drives, groups)
            state, tangent = step_with_tangent(net, state, tangent, drives, groups)
            for a, b in zip(state, expected, strict=True):
                assert torch.equal(a, b)


@pytest.mark.parametrize(("feedback", "gain"), [("tied", 0.1), ("random", 0.5)])
def test_lyapunov_exponent_of_a_linear_map_is_log_spectral_radius(feedback, gain):
    spec = network((5, 6, 5, 4), gain=gain, feedback=feedback, activation="identity")
    net = declaration_order_weights(compile_topology(spec, seed=4, dtype=F64), 4)
    radius = spectral.spectral_radius(net)
    assert radius < 1  # contracting
    x, _ = batch(spec, size=3)
    result = lyapunov_exponents(net, x, steps=600, seed=1)
    assert result.exponents == pytest.approx(np.full(3, math.log(radius)), abs=5e-3)
    assert result.fraction_positive == 0.0


def test_lyapunov_exponent_is_positive_for_an_expanding_linear_map():
    spec = network((5, 6, 5), gain=4.0, activation="identity")
    net = compile_topology(spec, seed=4, dtype=F64)
    radius = spectral.spectral_radius(net)
    assert radius > 1
    result = lyapunov_exponents(net, batch(spec, size=2)[0], steps=400)
    assert result.mean == pytest.approx(math.log(radius), abs=2e-2)


def test_convergence_rate_of_a_linear_relaxation_is_the_spectral_radius():
    spec = network((5, 6, 5, 4), gain=0.5, feedback="random", activation="identity")
    net = declaration_order_weights(compile_topology(spec, seed=4, dtype=F64), 4)
    radius = spectral.spectral_radius(net)
    x, _ = batch(spec, size=3)
    result = convergence_times(net, x, "synchronous", max_steps=2000)
    assert result.fraction_converged == 1.0
    assert result.rates == pytest.approx(np.full(3, radius), rel=0.05)
    # the residual stays below the tolerance from the reported time on, for 3 steps
    for i, time in enumerate(result.times.astype(int)):
        trace = result.residuals[:, i]
        assert np.all(trace[time - 1 : time + 2] < result.tolerance)
        assert trace[time - 2] >= result.tolerance or time == 1


def test_convergence_tolerance_is_dtype_aware():
    assert convergence_tolerance(F64) == 1e-6
    assert convergence_tolerance(torch.float32) == pytest.approx(16 * 2.0**-23)
    spec = network((6, 5), gain=0.05)
    net = compile_topology(spec, seed=0, dtype=torch.float32)
    result = convergence_times(net, batch(spec, dtype=torch.float32)[0], "sweep")
    assert result.fraction_converged == 1.0 and result.tolerance > 1e-6


def test_convergence_reports_unconverged_samples_as_nan():
    spec = network((5, 6, 5), gain=4.0, activation="identity")
    net = compile_topology(spec, seed=4, dtype=F64)
    result = convergence_times(net, batch(spec, size=2)[0], "synchronous", max_steps=30)
    assert np.all(np.isnan(result.times)) and result.fraction_converged == 0.0


# ---------------------------------------------------------------------------- gradient flow
def test_ep_contrast_update_is_the_gradient_scaled_by_the_product_of_gains():
    extra = {
        "dynamics": {"free_steps": 400, "nudged_steps": 400, "tolerance": 1e-13},
        "training": {"nudge": 1e-4, "nudging": "symmetric", "rule": "contrast", "error": "reread"},
    }
    spec = network((6, 5, 4), gain=0.1, extra=extra)
    net = compile_topology(spec, seed=0, dtype=F64)
    x, y = batch(spec, size=5)
    flow = gradient_flow(net, x, y)
    assert flow.factor_basis == "balance"
    for row in flow.edges:
        assert row.cos_implicit == pytest.approx(1.0, abs=1e-6)
        assert row.norm_ratio == pytest.approx(row.predicted_factor, rel=1e-4)
    assert [row.predicted_factor for row in flow.edges] == pytest.approx([0.01, 0.1, 1.0])
    rms = [row.rms for row in flow.layers]
    assert rms[0] < rms[1] < rms[2]


def test_gradient_flow_says_when_no_implicit_gradient_exists():
    spec = network((5, 6, 5), gain=4.0, activation="identity")  # expanding: no fixed point
    net = compile_topology(spec, seed=4, dtype=F64)
    x, y = batch(spec, size=2)
    flow = gradient_flow(net, x, y)
    assert "implicit gradient unavailable" in flow.implicit_note
    assert all(math.isnan(row.cos_implicit) for row in flow.edges)
    assert all(math.isfinite(row.cos_bp) for row in flow.edges)


def _vjp_implicit_gradient(net, x, y, steps: int = 3000) -> dict[ParamKey, torch.Tensor]:
    """An independent implicit gradient: lambda = g + J^T lambda by vector-Jacobian products of
    one synchronous step F at s*, then dL/dW = lambda . dF/dW (autograd, no adjoint blocks)."""
    fixed = free_fixed_point(net, x, max_steps=steps)
    assert fixed.converged
    groups = net.schedule("synchronous")
    params = {ParamKey.edge(b.edge): net.weights[b.tensor] for b in net.learned_bindings()}
    with torch.enable_grad():
        held = [s.detach().requires_grad_(True) for s in fixed.state]
        loss = torch.nn.functional.cross_entropy(net.readout_logits(held[net.top]), y)
        g = list(torch.autograd.grad(loss, held, allow_unused=True))
        g = [torch.zeros_like(h) if t is None else t for h, t in zip(held, g, strict=True)]
        image = step(net, held, net.input_drive(x), groups)
        adjoint = [t.clone() for t in g]
        for _ in range(steps):
            pulled = torch.autograd.grad(image, held, adjoint, retain_graph=True)
            adjoint = [a + b for a, b in zip(g, pulled, strict=True)]
        found = torch.autograd.grad(image, list(params.values()), adjoint, allow_unused=True)
    return {
        name: torch.zeros_like(p) if grad is None else grad
        for (name, p), grad in zip(params.items(), found, strict=True)
    }


def test_implicit_gradient_matches_an_independent_vector_jacobian_solution():
    spec = network((6, 5, 4), gain=0.2, feedback="random", skips=((1, 3),))
    net = compile_topology(spec, seed=1, dtype=F64)
    x, y = batch(spec, size=4)
    a, b = implicit_gradient(net, x, y), _vjp_implicit_gradient(net, x, y, steps=300)
    assert set(b) == {key for key in a if key.kind == "edge"} and len(b) == 4
    for name in b:
        assert torch.allclose(a[name], b[name], rtol=1e-7, atol=1e-12)


def test_predicted_factors_follow_the_strongest_feedback_path():
    chain, _ = predicted_factors(load_topology(REPO / "topologies" / "chain_10x64.yaml"))
    residual, basis = predicted_factors(load_topology(REPO / "topologies" / "res_10x64.yaml"))
    assert chain["h1"] == pytest.approx(1e-9) and chain["h10"] == 1.0
    assert basis == "strongest path"
    # h10 -> h7 -> h4 -> h1 along skip feedback: 0.1^3 instead of the chain's 0.1^9; h2 is
    # reached from h1 by its forward edge (gain 1), h5 from h4
    assert residual["h1"] == pytest.approx(1e-3) and residual["h2"] == pytest.approx(1e-3)
    assert residual["h5"] == pytest.approx(1e-2) and residual["h9"] == pytest.approx(0.1)


# ---------------------------------------------------------------------------- energy, balance
def test_energy_never_rises_under_the_sweep_and_is_stationary_at_the_fixed_point():
    spec = loads_topology(
        "name: b\ninput: {size: 7}\ngenerate: {family: chain, depth: 4, width: 6, gain: 0.8}\n"
        "readout: {size: 3}\n"
    )
    net = compile_topology(spec, seed=2, dtype=F64)
    x, _ = batch(spec, size=6)
    trace = energy_trace(net, x, 60, "sweep")
    assert trace.largest_rise <= 1e-12
    assert trace.mean[-1] < trace.mean[0]
    fixed = free_fixed_point(net, x)
    drives = net.input_drive(x)
    state = [s.clone().requires_grad_(True) for s in fixed.state]
    with torch.enable_grad():
        total = energy_per_sample(net, state, drives).sum()
        grads = torch.autograd.grad(total, state)
    assert max(float(g.abs().max()) for g in grads) < 1e-8


def test_balance_report_names_what_breaks_the_energy():
    residual = balance_report(load_topology(REPO / "topologies" / "res_10x64.yaml"))
    agt = balance_report(load_topology(REPO / "topologies" / "agt_10x64.yaml"))
    fre = balance_report(load_topology(REPO / "topologies" / "fre_2x512.yaml"))
    assert fre.balanced and fre.scales["h2"] == pytest.approx(0.1)
    assert not residual.balanced and "h4" in residual.reason
    assert not agt.balanced and "random" in agt.reason


# ---------------------------------------------------------------------------- command line
def test_parse_set_values():
    assert parse_set_values("feedback_gain=0.01, 0.1,1") == ("feedback_gain", ("0.01", "0.1", "1"))
    with pytest.raises(TopoEpError):
        parse_set_values("feedback_gain")
    with pytest.raises(TopoEpError):
        parse_set_values("feedback_gain=")


def _small_topology(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(
        "name: small\ninput: {size: 64}\n"
        "generate: {family: chain, depth: 2, width: 12, gain: 0.1}\n"
        "readout: {size: 10}\n"
        "dynamics: {free_steps: 12, nudged_steps: 6}\n"
        "training: {batch_size: 50}\n",
        encoding="utf-8",
    )
    return path


def test_analyze_command_writes_report_json_and_plots(tmp_path, capsys):
    topology = _small_topology(tmp_path)
    out = tmp_path / "report"
    code = main(["analyze", str(topology), "--batch", "6", "--out", str(out), "--max-steps", "200"])
    assert code == 0, capsys.readouterr().err
    report = (out / "report.md").read_text(encoding="utf-8")
    for name in (
        "topology",
        "eigenvalues",
        "jacobian",
        "residuals",
        "layer_signal",
        "edge_cosines",
        "energy",
    ):
        assert (out / f"{name}.png").is_file()
        assert f"({name}.png)" in report
    assert "Has an energy" in report and "locally contracting" in report
    data = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    assert data["batch"] == 6
    assert data["operator"]["radius"] == pytest.approx(
        spectral.spectral_radius(compile_topology(load_topology(topology), seed=0)), rel=1e-6
    )
    assert set(data["convergence"]) >= {"synchronous", "sweep"}
    assert len(data["gradient_flow"]["edges"]) == 2
    # float32 by default: each EP update against its float64 recomputation, per tensor
    agreement = data["float64_agreement"]
    assert set(agreement) >= {edge["edge"] for edge in data["gradient_flow"]["edges"]}
    assert min(agreement.values()) > 0.999  # a shallow net: float32 keeps EP's update
    assert "cos(EP float32, EP float64)" in report


def test_sweep_command_writes_table_and_plots_and_resumes(tmp_path, capsys):
    topology = _small_topology(tmp_path)
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        str(topology),
        "--set-values",
        "feedback_gain=0.05,0.5",
        "--seeds",
        "2",
        "--train-epochs",
        "1",
        "--limit",
        "100",
        "--batch",
        "4",
        "--out",
        str(out),
        "--max-steps",
        "200",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    lines = (out / "sweep.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + 4
    header = lines[0].split(",")
    assert {"value", "seed", "spectral_radius", "test_acc", "lyapunov_mean"} <= set(header)
    table = (out / "sweep.md").read_text(encoding="utf-8")
    assert "| feedback_gain |" in table and "[" in table
    for name in ("spectral_radius", "test_acc", "convergence_median"):
        assert (out / f"{name}.png").is_file()
    settings = SweepSettings(
        file=str(topology),
        path="feedback_gain",
        values=("0.05", "0.5"),
        seeds=2,
        train_epochs=1,
        limit=100,
        batch=4,
        convergence_steps=200,
        out=str(out),
    )
    said: list[str] = []
    rows = run_sweep(settings, log=said.append)
    assert sum("reused" in line for line in said) == 4 and len(rows) == 4


def test_gradient_flow_is_tracked_over_epochs_and_survives_a_resume(tmp_path):
    from topo_ep.analysis.tracking import read_flow, train_with_flow
    from topo_ep.data import load_dataset
    from topo_ep.train import RunSettings, Trainer

    spec = load_topology(_small_topology(tmp_path))
    data = load_dataset("digits", limit=100)
    x, y = data.test.x[:4], data.test.y[:4]
    run = tmp_path / "run"
    settings = RunSettings(epochs=1, device="cpu", limit=100)
    metrics, flows = train_with_flow(Trainer(spec, data, settings, run, progress=False), x, y)
    assert [r["epoch"] for r in flows] == [0, 1] and len(metrics) == 1
    trainer = Trainer(spec, data, RunSettings(epochs=2, device="cpu", limit=100), run, False)
    trainer.resume(run)
    metrics, flows = train_with_flow(trainer, x, y)
    assert [r["epoch"] for r in flows] == [0, 1, 2] and len(metrics) == 2
    assert read_flow(run) == flows
    assert all(len(r["layers"]) == 2 and len(r["edges"]) == 2 for r in flows)


def test_analysis_batch_is_raw_and_the_network_standardises_it():
    spec = load_topology(
        REPO / "topologies" / "quickstart.yaml", overrides=["input.mean=0.3", "input.std=0.4"]
    )
    net = compile_topology(spec, dtype=F64)
    x, y, described = analysis_batch(net, "digits", None, 8)
    raw = load_dataset("digits").test
    assert torch.equal(x, raw.x[:8].double())  # standardised once, by the network only
    assert torch.allclose(net.prepare_input(x), ((raw.x[:8] - 0.3) / 0.4).double())
    assert torch.equal(y, raw.y[:8])
    assert "standardised as (x - 0.3) / 0.4" in described
