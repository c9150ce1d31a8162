"""The warning for layers whose EP signal is below the dtype's rounding
(:mod:`topo_ep.signal_resolution`)."""

from __future__ import annotations

import warnings

import pytest
import torch

from topo_ep.data import load_dataset
from topo_ep.loader import loads_topology
from topo_ep.signal_resolution import (
    RESOLUTION_UNITS,
    contrast_ratios,
    unresolved_layers,
    unresolved_message,
)
from topo_ep.train import RunSettings, Trainer

#: A 6-layer chain with feedback gain 0.01: the signal of layer k is about 0.01 ** (6 - k) of
#: the top's, far below float32's rounding in the lowest layers, well above float64's.
DEEP_CHAIN = """
name: deep_tiny
input: {size: 64, dataset: digits}
generate: {family: chain, depth: 6, width: 16, gain: 0.01}
readout: {size: 10}
dynamics: {schedule: sweep, free_steps: 30, nudged_steps: 30, tolerance: 0}
training: {nudge: 0.1, optimizer: adam, lr: 1e-3, batch_size: 100, epochs: 2}
"""


def test_contrast_ratio_is_the_relative_rms_difference_per_layer() -> None:
    after = [torch.tensor([[3.0, 4.0]]), torch.zeros(1, 3), torch.ones(2, 2)]
    before = [torch.tensor([[3.0, 4.5]]), torch.zeros(1, 3), torch.ones(2, 2)]
    ratios = contrast_ratios(after, before)
    torch.testing.assert_close(ratios, torch.tensor([0.1, 0.0, 0.0]))


def test_unresolved_layers_are_those_below_the_threshold_but_not_zero() -> None:
    eps = torch.finfo(torch.float32).eps
    units = [0.5, 0.0, RESOLUTION_UNITS - 1, 2 * RESOLUTION_UNITS]
    ratios = torch.tensor([u * eps for u in units])
    found = unresolved_layers(ratios, ["h1", "h2", "h3", "h4"], torch.float32)
    assert [name for name, _ in found] == ["h1", "h3"]
    assert found[0][1] == pytest.approx(0.5, rel=1e-6)
    assert unresolved_layers(ratios, ["h1", "h2", "h3", "h4"], torch.float64) == []
    message = unresolved_message(3, found, "float32")
    assert "epoch 3" in message and "h1 (0.5)" in message and "--dtype float64" in message


def _train(dtype: str) -> list[str]:
    spec = loads_topology(DEEP_CHAIN, "deep_tiny.yaml")
    settings = RunSettings(epochs=2, device="cpu", dtype=dtype, dataset="digits", limit=200)
    dataset = load_dataset("digits", limit=200)
    trainer = Trainer(spec, dataset, settings, progress=False, log=lambda _: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.run()
    return [str(w.message) for w in caught if "rounding units" in str(w.message)]


def test_a_deep_chain_in_float32_warns_once_and_names_its_lowest_layers() -> None:
    (message,) = _train("float32")  # epoch 1 only: epoch 2 has the same layers
    assert message.startswith("epoch 1: the EP signal of ")
    assert "h1 (" in message and "h2 (" in message and "h6 (" not in message


def test_the_same_chain_in_float64_does_not_warn() -> None:
    assert _train("float64") == []
