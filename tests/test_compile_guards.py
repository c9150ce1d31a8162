"""Values the validator accepts but a dtype cannot hold are refused when compiling, with the
field named; a non-finite operator is refused by the spectral analysis, not by LAPACK."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from topo_ep import spectral
from topo_ep.cli import main
from topo_ep.compiler import compile_topology
from topo_ep.errors import TopoEpError
from topo_ep.loader import load_topology

QUICKSTART = Path(__file__).resolve().parents[1] / "topologies" / "quickstart.yaml"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("feedback_gain=1e308", "edges[2].gain (h2->h1:feedback) = 1e+308"),
        ("training.nudge=1e39", "training.nudge = 1e+39"),
        ("input.std=1e-39", "1 / input.std"),
    ],
)
def test_scalars_beyond_float32_are_refused_with_the_field(override, field):
    spec = load_topology(QUICKSTART, [override])
    with pytest.raises(TopoEpError, match="beyond what float32 holds") as info:
        compile_topology(spec)
    assert field in str(info.value)
    compile_topology(spec, dtype=torch.float64)  # float64 holds it


@pytest.mark.parametrize("command", ["train", "analyze", "check-gradients"])
def test_commands_with_a_gain_of_1e308_exit_2_without_a_traceback(command, tmp_path, capsys):
    argv = [command, str(QUICKSTART), "--set", "feedback_gain=1e308"]
    if command != "check-gradients":
        argv += ["--out", str(tmp_path / "out")]
    if command == "check-gradients":
        argv += ["--dtype", "float32"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "beyond what float32 holds" in captured.err
    assert "Traceback" not in captured.out + captured.err


def test_a_non_finite_operator_is_named_not_passed_to_lapack():
    net = compile_topology(load_topology(QUICKSTART), dtype=torch.float64)
    with torch.no_grad():
        net.weight_of("h1->h2:forward")[0, 0] = float("inf")
    with pytest.raises(TopoEpError, match="non-finite entries"):
        spectral.spectral_radius(net, method="exact")
