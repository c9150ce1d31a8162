"""What check-gradients and analyze conclude, and how they say it: a nudge-aware verdict, a
divergence reported as not converged (exit 1), several fixed points named, and a Lyapunov
horizon too short to tell chaos from a slow transient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from topo_ep.analysis.convergence import ConvergenceTimes
from topo_ep.analysis.lyapunov import LyapunovExponents
from topo_ep.analysis.report import _horizon_too_short
from topo_ep.cli import main
from topo_ep.compiler import compile_topology
from topo_ep.fixed_points import fixed_point_split, settled_states
from topo_ep.gradcheck import CheckSettings, check_gradients
from topo_ep.loader import load_topology, loads_topology
from topo_ep.schedules import SCHEDULES

REPO = Path(__file__).resolve().parents[1]
F64 = torch.float64
QUICKSTART = REPO / "topologies" / "quickstart.yaml"

BISTABLE = """
name: bistable
input: {size: 2}
layers: [{name: h1, size: 1}, {name: h2, size: 1}]
readout: {from: h2, size: 2}
edges:
- {source: input, target: h1}
- {source: input, target: h2, kind: skip}
- {source: h1, target: h2}
- {source: h2, target: h1, kind: feedback, gain: 1.0}
"""


def _bistable(monkeypatch):
    """s1 = tanh(x1 + 3 s2), s2 = tanh(x2 + 3 s1): two stable fixed points for x = (0.5, -1).
    Updating h1 first (sweep) reaches the positive one, h2 first (a top-down schedule,
    registered for the test) the negative one."""
    monkeypatch.setitem(
        SCHEDULES._entries, "top-down", lambda spec: tuple((n,) for n in reversed(spec.layer_names))
    )
    net = compile_topology(loads_topology(BISTABLE), dtype=F64)
    with torch.no_grad():
        net.weight_of("input->h1:forward").copy_(torch.tensor([[1.0, 0.0]]))
        net.weight_of("input->h2:skip").copy_(torch.tensor([[0.0, 1.0]]))
        net.weight_of("h1->h2:forward").copy_(torch.tensor([[3.0]]))
    x = torch.tensor([[0.5, -1.0], [0.5, -2.0]], dtype=F64)
    return net, x


def test_schedules_that_settle_apart_are_named(monkeypatch):
    net, x = _bistable(monkeypatch)
    states = settled_states(net, net.input_drive(x), ["sweep", "top-down"], 2000, 1e-12)
    assert all(stats.converged for _, stats in states.values())
    split = fixed_point_split(states)
    assert split is not None and split.samples == (0,)  # sample 1 has one fixed point only
    assert split.distance > 1.0 and "several fixed points" in split.describe()
    same = settled_states(net, net.input_drive(x[1:]), ["sweep", "top-down"], 2000, 1e-12)
    assert fixed_point_split(same) is None


def test_check_gradients_warns_of_several_fixed_points(monkeypatch):
    net, x = _bistable(monkeypatch)
    y = torch.tensor([0, 1])
    result = check_gradients(
        net.spec, CheckSettings(schedule="sweep", max_steps=2000), net=net, data=(x, y)
    )
    assert result.fixed_points is not None and "sweep and top-down" in result.fixed_points
    assert "warning: several fixed points" in result.format()


def test_a_divergent_relaxation_is_not_converged_with_exit_code_1(tmp_path, capsys):
    """A linear net that expands (identity activation, gain 4): no fixed point exists."""
    text = QUICKSTART.read_text("utf-8")
    path = tmp_path / "expanding.yaml"
    path.write_text(text, "utf-8")
    args = ["--set", "layers.h1.activation=identity", "--set", "layers.h2.activation=identity"]
    args += ["--set", "feedback_gain=4", "--set", "layers.h1.size=8", "--set", "layers.h2.size=8"]
    code = main(["check-gradients", str(path), "--max-steps", "2000", *args])
    captured = capsys.readouterr()
    assert code == 1
    assert "NOT CONVERGED" in captured.out and "non-finite" in captured.out
    assert "Traceback" not in captured.out + captured.err


def test_the_verdict_scales_with_the_expected_order_in_the_nudge():
    settings = CheckSettings(nudge=1e-3)
    assert settings.order == 2 and settings.threshold == pytest.approx(1e-6)
    assert CheckSettings(nudge=3e-3).threshold == pytest.approx(1e-6 * 3**4)
    assert CheckSettings(nudge=1e-4).threshold == pytest.approx(1e-6)  # never tighter
    one_sided = CheckSettings(nudge=3e-3, nudging="one-sided")
    assert one_sided.order == 1 and one_sided.threshold == pytest.approx(1e-6 * 3**2)
    assert CheckSettings(nudge=0.1).tests_order and not CheckSettings(nudge=3e-3).tests_order


def test_a_correct_estimate_passes_at_nudge_0_1_and_a_biased_one_fails():
    """At nudge 0.3 a fixed threshold fails correct symmetric EP (its O(nudge^2) bias: 1 - cos
    1.5e-5); the order test passes it: 1 - cos falls 10^4-fold to nudge 0.03, as O(nudge^4)
    predicts. The
    paper's one-sided rule leaves out the feedback path's share, a bias that does not vanish
    with the nudge: its 1 - cos on the hidden edge barely falls, and it fails."""
    spec = load_topology(QUICKSTART, ["layers.h1.size=16", "layers.h2.size=16"])
    symmetric = check_gradients(spec, CheckSettings(nudge=0.3, batch=8))
    assert symmetric.passed and symmetric.settings.tests_order
    row = symmetric.row("h1->h2:forward")
    assert row.one_minus_cos > 1e-6  # a fixed 1e-6 threshold would have failed it
    assert row.one_minus_cos / row.one_minus_cos_small > 3000
    assert "order test" in symmetric.format()
    biased = check_gradients(
        spec, CheckSettings(nudge=0.3, batch=8, nudging="one-sided", rule="paper")
    )
    assert not biased.passed
    row = biased.row("h1->h2:forward")
    assert not row.passed and row.one_minus_cos / row.one_minus_cos_small < 10


def test_a_lyapunov_horizon_shorter_than_the_settling_time_is_called_too_short():
    exponents = LyapunovExponents("synchronous", 40, np.array([0.2, 0.1, -0.3, 0.05]))
    times = ConvergenceTimes(
        "synchronous",
        1e-6,
        1000,
        np.array([120.0, 300.0, 20.0, np.nan]),  # two positive samples settle late
        np.full(4, np.nan),
        np.zeros((0, 4)),
    )
    warning = _horizon_too_short(exponents, times)
    assert "2 of the 3 samples with lambda_T > 0 do settle" in warning
    assert "T = 40 steps" in warning and "--lyapunov-steps 840" in warning  # 4 x the median
    settled_early = ConvergenceTimes(
        "synchronous", 1e-6, 1000, np.array([30.0, 35.0, 20.0, np.nan]), *([None] * 2)
    )
    assert _horizon_too_short(exponents, settled_early) == ""
    contracting = LyapunovExponents("synchronous", 40, np.array([-0.2, -0.1]))
    assert _horizon_too_short(contracting, times) == ""


def test_analyze_says_when_schedules_settle_apart(monkeypatch):
    from topo_ep.analysis.report import _convergence_lines
    from topo_ep.analysis.run import AnalysisOptions, analyse

    net, x = _bistable(monkeypatch)
    options = AnalysisOptions(
        parts=("convergence",), schedules=("sweep", "top-down"), convergence_steps=500
    )
    result = analyse(net, x, torch.tensor([0, 1]), options)
    assert result.fixed_points is not None and "sweep and top-down" in result.fixed_points
    assert result.to_dict()["fixed_points"] == result.fixed_points
    assert any("several fixed points" in line for line in _convergence_lines(result))


def test_the_command_line_restores_the_subnormal_setting(tmp_path):
    """main() flushes subnormals while a command runs (a relaxation in the subnormal range
    was 18x slower) and puts the process-wide setting back for in-process callers."""
    tiny = torch.tensor(1e-300, dtype=F64)
    assert float(tiny * 1e-10) != 0.0
    assert main(["compile", str(QUICKSTART)]) == 0
    assert float(tiny * 1e-10) != 0.0
