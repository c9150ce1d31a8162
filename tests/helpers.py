"""Shared helpers for the test suite: where the shared reference data lives, the weight draw
that the suite's fixed counterexamples were found with, a small quickstart network, and the
comparison of two finished runs."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from topo_ep.compiler import CompiledNetwork, glorot_uniform
from topo_ep.loader import loads_topology
from topo_ep.spec import TopologySpec

_REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """The ``shared/`` folder beside the checkout (or ``$TOPO_EP_SHARED``), if present."""
    candidates = [os.environ.get("TOPO_EP_SHARED"), _REPO.parent / "shared", _REPO / "shared"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def golden_path(name: str) -> Path | None:
    """Path of the golden vectors ``<name>.npz``: the copy in ``tests/golden`` (taken verbatim
    from ``shared/golden``), or ``None`` when absent."""
    path = _REPO / "tests" / "golden" / f"{name}.npz"
    return path if path.is_file() else None


def mnist_dir() -> Path | None:
    """``shared/data/mnist`` (or ``$TOPO_EP_MNIST_DIR``), if present."""
    env = os.environ.get("TOPO_EP_MNIST_DIR")
    if env and Path(env).is_dir():
        return Path(env)
    base = shared_dir()
    if base is None:
        return None
    path = base / "data" / "mnist"
    return path if path.is_dir() else None


def declaration_order_weights(net: CompiledNetwork, seed: int) -> CompiledNetwork:
    """Redraw ``net``'s initial weights as topo-ep drew them before the per-tensor generators:
    one generator seeded with ``seed``, every owned edge weight in declaration order, then the
    readout, then the random readout feedback (Glorot-uniform in float64; ``init: identity``
    and ``zeros`` edges draw nothing).

    Tests whose networks were found by a random search under that draw (fixed
    counterexamples, nets tuned to settle in a given number of steps) keep their exact weights
    with it; what they assert does not depend on how the weights were drawn.
    """
    generator = torch.Generator().manual_seed(int(seed))
    spec = net.spec
    with torch.no_grad():
        for edge in spec.edges:
            if edge.is_tied or edge.init != "glorot_uniform":
                continue
            rows, cols = spec.size_of(edge.target), spec.size_of(edge.source)
            net.weight_of(edge.key).copy_(glorot_uniform(rows, cols, generator))
        shape = net.readout_weight.shape
        net.readout_weight.copy_(glorot_uniform(*shape, generator))
        if net.readout_feedback is not None:
            net.readout_feedback.copy_(glorot_uniform(*shape, generator))
    return net


def build_as_found(case) -> CompiledNetwork:
    """A :class:`topo_ep.testing.NetworkCase` in float64 with the weights it was found with
    (:func:`declaration_order_weights`), then scaled as the case says."""
    from topo_ep.compiler import compile_topology

    net = compile_topology(case.spec, seed=case.seed, dtype=torch.float64)
    return case.scaled(declaration_order_weights(net, case.seed))


def small_quickstart(*overrides: str) -> TopologySpec:
    """``topologies/quickstart.yaml`` with 16 units per hidden layer and batches of 50, then
    ``overrides`` (``--set`` strings: the step counts and whatever the test varies)."""
    text = (_REPO / "topologies" / "quickstart.yaml").read_text(encoding="utf-8")
    shrunk = ["layers.h1.size=16", "layers.h2.size=16", "training.batch_size=50"]
    return loads_topology(text, "quickstart.yaml", overrides=[*shrunk, *overrides])


def without_seconds(records: list[dict]) -> list[dict]:
    """Metrics records without their ``seconds`` (the one field a resumed run may change)."""
    return [{key: value for key, value in record.items() if key != "seconds"} for record in records]


def assert_same_run(actual: dict, expected: dict) -> None:
    """Assert that two checkpoint payloads hold the same run, bit for bit: the epoch, every
    weight, every optimizer state, the metrics but their seconds, and the warm-start table."""
    assert actual["epoch"] == expected["epoch"]
    assert actual["model"].keys() == expected["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(actual["model"][name], tensor), name
    assert actual["optimizer"]["state"].keys() == expected["optimizer"]["state"].keys()
    for index, state in expected["optimizer"]["state"].items():
        for name, value in state.items():
            other = actual["optimizer"]["state"][index][name]
            assert torch.equal(torch.as_tensor(other), torch.as_tensor(value)), (index, name)
    assert without_seconds(actual["metrics"]) == without_seconds(expected["metrics"])
    assert ("warm_states" in actual) == ("warm_states" in expected)
    if "warm_states" in expected:
        assert torch.equal(actual["warm_states"], expected["warm_states"])
