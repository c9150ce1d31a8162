"""The float64 control of EP's update once per epoch (:mod:`topo_ep.precision_check`)."""

from __future__ import annotations

import warnings

import pytest
import torch

from topo_ep.compiler import compile_topology, recompiled
from topo_ep.data import load_dataset
from topo_ep.loader import loads_topology
from topo_ep.precision_check import (
    AGREEMENT,
    disagreeing,
    disagreement_message,
    float64_agreement,
    update_cosine,
)
from topo_ep.train import RunSettings, Trainer

#: A 6-layer chain with feedback gain 0.01: the contrast of layer k is about 0.01 ** (6 - k) of
#: the top's, below float32's rounding in the lowest layers, far above float64's.
DEEP_CHAIN = """
name: deep_tiny
input: {size: 64, dataset: digits}
generate: {family: chain, depth: 6, width: 16, gain: 0.01}
readout: {size: 10}
dynamics: {schedule: sweep, free_steps: 30, nudged_steps: 30, tolerance: 0}
training: {nudge: 0.1, optimizer: adam, lr: 1e-3, batch_size: 100, epochs: 2}
"""


def _net(gain: float, dtype: torch.dtype = torch.float32):
    spec = loads_topology(DEEP_CHAIN, "deep_tiny.yaml", overrides=[f"generate.gain={gain}"])
    return compile_topology(spec, seed=0, dtype=dtype)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("digits")
    return data.train.x[:64], data.train.y[:64]


def test_recompiled_copies_the_weights_into_the_new_dtype() -> None:
    net = _net(0.01)
    other = recompiled(net, torch.float64)
    assert other.dtype == torch.float64
    for key, value in net.state_dict().items():
        torch.testing.assert_close(other.state_dict()[key], value.double(), rtol=0, atol=0)


def test_small_gains_in_float32_change_the_lowest_updates(batch) -> None:
    cosines = float64_agreement(_net(0.01), *batch)
    assert cosines["input->h1:forward"] < AGREEMENT and cosines["h1->h2:forward"] < AGREEMENT
    assert cosines["h5->h6:forward"] > 0.999 and cosines["readout"] > 0.999


def test_an_update_rounded_to_zero_is_the_worst_disagreement_not_a_missing_signal() -> None:
    # Found on an AVX-512 CPU: there the 6-layer chain's float32 update of input->h1 came out
    # exactly zero (its float64 update did not), and the cosine was NaN, which `disagreeing`
    # leaves out as "no signal": the check missed the worst case. Fixed: 0 when only the
    # update is zero, NaN only when the float64 control is zero.
    control = torch.tensor([[1e-12, -3e-12], [2e-12, 0.0]], dtype=torch.float64)
    zero = torch.zeros(2, 2)
    assert update_cosine(zero, control) == 0.0
    assert disagreeing({"lost": update_cosine(zero, control)}) == [("lost", 0.0)]
    assert torch.isnan(torch.tensor(update_cosine(control.float(), torch.zeros(2, 2))))
    assert torch.isnan(torch.tensor(update_cosine(zero, torch.zeros(2, 2))))
    assert update_cosine(control.float(), control) == pytest.approx(1.0, abs=1e-6)
    assert update_cosine(-control, control) == pytest.approx(-1.0, abs=1e-12)


def test_larger_gains_in_float32_agree_with_float64(batch) -> None:
    cosines = float64_agreement(_net(0.5), *batch)
    assert min(cosines.values()) > 0.999 and disagreeing(cosines) == []


def test_disagreeing_leaves_out_zero_updates_and_the_message_names_the_tensors() -> None:
    found = disagreeing({"a": 0.5, "b": float("nan"), "c": 0.95, "d": -0.2})
    assert found == [("a", 0.5), ("d", -0.2)]
    message = disagreement_message(4, found, "float32")
    assert message.startswith("epoch 4: float32 rounding changes EP's update of 2 tensor(s)")
    assert "a (0.50), d (-0.20)" in message and "--dtype float64" in message


def _warnings(dtype: str, gain: float = 0.01) -> list[str]:
    spec = loads_topology(DEEP_CHAIN, "deep_tiny.yaml", overrides=[f"generate.gain={gain}"])
    settings = RunSettings(epochs=2, device="cpu", dtype=dtype, dataset="digits", limit=200)
    trainer = Trainer(
        spec, load_dataset("digits", limit=200), settings, progress=False, log=lambda _: None
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.run()
    return [str(w.message) for w in caught if "float64 control" in str(w.message)]


def test_training_warns_at_the_first_epoch_with_the_tensors_concerned() -> None:
    messages = _warnings("float32")
    assert messages and messages[0].startswith("epoch 1: float32 rounding changes")
    assert "h1->h2:forward (" in messages[0] and "h5->h6:forward" not in messages[0]
    assert all(message.startswith("epoch 2") for message in messages[1:])  # only new tensors


def test_training_in_float64_or_with_larger_gains_does_not_warn() -> None:
    assert _warnings("float64") == []
    assert _warnings("float32", gain=0.5) == []
