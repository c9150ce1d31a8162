"""Warm starts (``training.warm_start``, :mod:`topo_ep.warm_start`): one free state per training
example starts that example's next free phase.

The runs use quickstart.yaml shrunk to 16 units per layer on 200 digits (as tests/test_train.py),
with the residual read every step (``check_every: 1``) so that step counts are exact.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import topo_ep.warm_start as warm_module
from tests.helpers import small_quickstart
from topo_ep.checkpoint import load_checkpoint
from topo_ep.data import load_dataset
from topo_ep.errors import CheckpointError, TopoEpError, TopologyError
from topo_ep.layout import Layout
from topo_ep.loader import dump_topology, loads_topology
from topo_ep.spec import TopologySpec
from topo_ep.train import RunSettings, Trainer
from topo_ep.warm_start import WarmStarts, warm_state_bytes

REPO = Path(__file__).resolve().parents[1]
LIMIT = 200
STEPS = ["dynamics.check_every=1", "dynamics.free_steps=60", "dynamics.nudged_steps=30"]


def _spec(*overrides: str) -> TopologySpec:
    return small_quickstart(*STEPS, *overrides)


def _trainer(spec: TopologySpec, epochs: int, out: Path | None = None, **settings) -> Trainer:
    run = RunSettings(
        epochs=epochs, seed=0, device="cpu", dataset="digits", limit=LIMIT, **settings
    )
    data = load_dataset("digits", seed=0, limit=LIMIT)
    return Trainer(spec, data, run, out_dir=out, progress=False, log=lambda _: None)


# ------------------------------------------------------------------------------ the field
def test_warm_start_with_fixed_step_counts_is_refused_with_its_location():
    text = (REPO / "topologies" / "quickstart.yaml").read_text(encoding="utf-8")
    text = text.replace("  epochs: 20", "  epochs: 20\n  warm_start: true")
    loads_topology(text, "q.yaml")  # tolerance 1e-4: accepted
    with pytest.raises(TopologyError, match=r"q\.yaml:\d+:\d+: training\.warm_start: .*tolerance"):
        loads_topology(text, "q.yaml", overrides=["dynamics.tolerance=0"])


def test_warm_start_must_be_a_boolean():
    with pytest.raises(TopologyError, match=r"training\.warm_start.*expected true or false"):
        _spec("training.warm_start=1")


def test_warm_start_is_absent_from_the_dict_when_off_and_round_trips_when_on():
    off = _spec()
    assert off.training.warm_start is False
    assert "warm_start" not in off.to_dict()["training"]  # old checkpoints resume unchanged
    on = _spec("training.warm_start=true")
    assert on.to_dict()["training"]["warm_start"] is True
    assert loads_topology(dump_topology(on), "dumped.yaml") == on


def test_warm_start_is_refused_for_a_method_without_a_free_phase_to_start():
    with pytest.raises(TopoEpError, match="training.warm_start applies to --method ep"):
        _trainer(_spec("training.warm_start=true"), 1, method="bp")


def test_a_table_that_does_not_fit_in_memory_is_refused_before_it_is_allocated(monkeypatch):
    monkeypatch.setattr(warm_module, "available_memory", lambda: 1000)
    with pytest.raises(TopoEpError, match=r"warm_start keeps one free state.*--limit"):
        _trainer(_spec("training.warm_start=true"), 1)


def test_the_memory_needed_is_one_row_of_the_hidden_size_per_example():
    # fre_2x512 on MNIST's 55 000 training examples, float32: 55 000 x 1024 x 4 bytes
    assert warm_state_bytes(55_000, 1024, torch.float32) == 55_000 * 1024 * 4 + 55_000
    assert warm_state_bytes(10, 4, torch.float64, ranks=2) == 2 * 10 * 4 * 8 + 10


# ------------------------------------------------------------------------------ the table
def test_rows_follow_the_example_index_and_ranks_merge_their_rows():
    """Rows are stored and read by dataset index; two 'ranks' that each wrote other rows end
    with the same table, each row the value its writer stored, unwritten rows unchanged."""
    layout = Layout(("a", "b"), (2, 3))
    ranks = [WarmStarts(layout, 6, torch.float64, torch.device("cpu")) for _ in range(2)]
    old = torch.arange(30, dtype=torch.float64).reshape(6, 5)
    for table in ranks:
        table.load_state_dict(old.clone(), "test")
    assert torch.equal(torch.cat(ranks[0].start(torch.tensor([4, 1])), dim=1), old[[4, 1]])
    written = {0: torch.tensor([5, 0]), 1: torch.tensor([2])}
    values = {r: -torch.rand(len(i), 5, dtype=torch.float64) for r, i in written.items()}
    for r, table in enumerate(ranks):
        table.store(written[r], layout.unflatten(values[r]))

    # what each rank holds before the merge; the fake all-reduce sums the ranks' tensors
    snapshots = [(t.states.clone(), t.written.clone()) for t in ranks]

    def sum_over_ranks(tensor: torch.Tensor, what: str) -> torch.Tensor:
        parts = [
            torch.where(written_rows.unsqueeze(1), states, 0.0)
            if tensor.dim() == 2
            else written_rows.to(torch.int32)
            for states, written_rows in snapshots
        ]
        tensor.copy_(parts[0] + parts[1])
        return tensor

    merged = []
    for table in ranks:
        table.end_epoch(sum_over_ranks)
        merged.append(table.states)
    expected = old.clone()
    expected[[5, 0]] = values[0]
    expected[2] = values[1]
    for table in merged:
        assert torch.equal(table, expected)
    assert not ranks[0].written.any()


def test_the_first_epoch_and_an_empty_shard_start_from_zero():
    table = WarmStarts(Layout(("a",), (2,)), 4, torch.float32, torch.device("cpu"))
    assert table.start(torch.tensor([0, 1])) is None  # no epoch stored yet
    table.end_epoch()
    assert table.start(torch.tensor([], dtype=torch.int64)) is None
    assert table.start(torch.tensor([3]))[0].shape == (1, 2)


# ------------------------------------------------------------------------------ training
def test_first_epoch_is_unchanged_and_frozen_weights_restart_at_their_fixed_points():
    """Epoch 1 starts from zero: the same bits with warm starts on or off. With weights that
    (almost) do not move, every example's stored state is its fixed point, so epoch 2's free
    phase stops after one step, against the cold start's full count: this fails if a row were
    read for another example than the one that stored it."""
    frozen = ["training.lr=1e-12", "dynamics.tolerance=1e-5"]
    warm = _trainer(_spec("training.warm_start=true", *frozen), 2)
    cold = _trainer(_spec(*frozen), 2)
    warm_metrics, cold_metrics = warm.run(), cold.run()
    first = {k: v for k, v in warm_metrics[0].items() if k != "seconds"}
    assert first == {k: v for k, v in cold_metrics[0].items() if k != "seconds"}
    assert cold_metrics[1]["free_steps"] >= 5
    assert warm_metrics[1]["free_steps"] == 1.0
    assert warm_metrics[1]["nudged_steps"] == cold_metrics[1]["nudged_steps"]


def test_a_resumed_warm_started_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    spec = _spec("training.warm_start=true")
    full = _trainer(spec, 3, tmp_path / "full")
    full.run()
    _trainer(spec, 1, tmp_path / "part").run()
    resumed = _trainer(spec, 3, tmp_path / "part")
    resumed.resume(tmp_path / "part" / "checkpoint.pt")
    resumed.run()
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    assert a["warm_states"].shape == (len(full.dataset.train), 32)  # examples x (16 + 16)
    assert torch.equal(a["warm_states"], b["warm_states"])
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key

    def without_seconds(metrics: list[dict]) -> list[dict]:
        return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics]

    assert len(a["metrics"]) == 3
    assert without_seconds(a["metrics"]) == without_seconds(b["metrics"])
    # and the warm starts did change the run: epoch 2 of a cold run differs
    cold_spec = dataclasses.replace(
        spec, training=dataclasses.replace(spec.training, warm_start=False)
    )
    cold_metrics = _trainer(cold_spec, 2).run()
    assert cold_metrics[1]["train_loss"] != a["metrics"][1]["train_loss"]


def test_a_checkpoint_without_its_warm_starts_is_refused(tmp_path):
    spec = _spec("training.warm_start=true")
    _trainer(spec, 1, tmp_path / "run").run()
    payload = load_checkpoint(tmp_path / "run")
    payload["warm_states"] = payload["warm_states"][:3]
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"warm starts have shape \(3, 32\)"):
        _trainer(spec, 2).resume(tmp_path / "bad.pt")
