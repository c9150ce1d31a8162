"""The README's Python example runs as written (from the repository root)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text("utf-8"), re.S)


def test_readme_has_a_python_example():
    assert BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_example_runs(index, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})
    out = capsys.readouterr().out
    assert "parameters:" in out  # net.describe() printed the compiled network


def test_readme_example_feeds_the_network_standardised_inputs(monkeypatch):
    """quickstart.yaml declares input mean 0.305 and std 0.376; the example passes raw digits,
    and the network standardises them itself: its first-batch drive is the standardised one,
    and EP's input-edge update reads the standardised batch too."""
    import torch

    monkeypatch.chdir(REPO)
    names: dict = {}
    exec(compile(BLOCKS[0], "README.md python block 0", "exec"), names)
    net, spec, x, y = names["net"], names["spec"], names["x"], names["y"]
    assert spec.input.standardised and (spec.input.mean, spec.input.std) == (0.305, 0.376)
    seen = (x - 0.305) / 0.376
    edge = next(edge for edge in spec.edges if edge.source == "input")
    weight = net.weight_of(edge.key).detach()
    drives = net.input_drive(x)
    expected = edge.gain * seen @ weight.t()
    assert torch.allclose(drives[net.layout.index(edge.target)], expected, atol=1e-6)
    raw = edge.gain * x @ weight.t()
    assert not torch.allclose(drives[net.layout.index(edge.target)], raw, atol=1e-2)

    method = names["method"]
    estimate = method.estimate(net, x, y)
    phases = estimate.phases
    assert torch.equal(phases.inputs, net.prepare_input(x))
    k = net.layout.index(edge.target)
    assert (method.nudging, method.rule) == ("symmetric", "paper")
    delta = 0.5 * (phases.nudged[0][k] - phases.nudged[1][k]).t() @ seen
    manual = -edge.gain * delta / (method.nudge * x.shape[0])
    key = next(key for key in estimate.grads if str(key) == edge.key)
    assert torch.allclose(estimate.grads[key], manual, atol=1e-6)
