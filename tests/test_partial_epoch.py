"""Mid-epoch checkpoints (``--checkpoint-minutes``, :mod:`topo_ep.partial_epoch`): a run stopped
inside an epoch resumes from the batch it reached and ends bit-identical to an uninterrupted run.

The in-process runs use quickstart.yaml shrunk to 16 units per layer on 200 digits (4 batches an
epoch), stopped by an exception raised at the trainer's test pause points; the last test kills
a ``topo-ep train`` process with SIGKILL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import topo_ep.train as train_module
from tests import hostile
from tests.helpers import assert_same_run, small_quickstart, without_seconds
from topo_ep import cli
from topo_ep.checkpoint import choose_resume_payload, load_checkpoint, save_atomic
from topo_ep.data import load_dataset
from topo_ep.distributed import DataParallel
from topo_ep.errors import CheckpointError, TopoEpError
from topo_ep.partial_epoch import PARTIAL_NAME, PartialEpoch, check_partial_entry
from topo_ep.rundir import RunDirError, prepare_run_dir
from topo_ep.spec import TopologySpec
from topo_ep.train import RunSettings, Trainer

LIMIT = 200
STEPS = ["dynamics.free_steps=40", "dynamics.nudged_steps=20"]


class Stopped(Exception):
    """Raised at a pause point, in place of a kill."""


def _spec(*overrides: str) -> TopologySpec:
    return small_quickstart(*STEPS, *overrides)


def _trainer(spec: TopologySpec, out: Path | None, minutes: float | None = 0.0) -> Trainer:
    settings = RunSettings(epochs=3, seed=0, device="cpu", dataset="digits", limit=LIMIT)
    data = load_dataset("digits", seed=0, limit=LIMIT)
    return Trainer(
        spec, data, settings, out, progress=False, log=lambda _: None, checkpoint_minutes=minutes
    )


def _stop_at(monkeypatch: pytest.MonkeyPatch, point: str, epoch: int, nth: int = 1) -> None:
    """Make the ``nth`` pause at ``point`` of ``epoch`` raise :class:`Stopped`."""
    seen = []

    def pause(name: str, at: int | None = None) -> None:
        if name == point and at == epoch:
            seen.append(name)
            if len(seen) == nth:
                raise Stopped(f"{point}@{epoch} #{nth}")

    monkeypatch.setattr(train_module, "pause_point", pause)


def _stopped_run(monkeypatch, spec, out: Path, point: str, epoch: int, nth: int = 1) -> None:
    trainer = _trainer(spec, out)
    if (out / "checkpoint.pt").exists() or (out / PARTIAL_NAME).exists():
        trainer.resume(out)
    _stop_at(monkeypatch, point, epoch, nth)
    with pytest.raises(Stopped):
        trainer.run()
    monkeypatch.undo()


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm-start"])
def test_stopped_mid_epoch_three_times_then_resumed_is_bit_identical(monkeypatch, tmp_path, warm):
    spec = _spec(*(["training.warm_start=true", "dynamics.tolerance=1e-4"] if warm else []))
    _trainer(spec, tmp_path / "full", minutes=None).run()
    reference = load_checkpoint(tmp_path / "full")
    out = tmp_path / "run"

    # inside epoch 1, after its second batch: no checkpoint.pt yet, only the epoch in progress
    _stopped_run(monkeypatch, spec, out, "after-partial", 1, nth=2)
    assert not (out / "checkpoint.pt").exists()
    mid = load_checkpoint(out / PARTIAL_NAME)
    assert (mid["epoch"], mid["partial"]["batches"], mid["metrics"]) == (1, 2, [])
    assert mid["partial"]["examples"] == 100
    assert mid["partial"]["warm_filled"] is (False if warm else None)
    if warm:  # the first epoch's free phases start at zero, resumed or not
        probe = _trainer(spec, None)
        probe.resume(out)
        assert probe.warm_starts is not None and probe.warm_starts.filled is False

    # resumed there: epoch 1 ends, then a stop after the first batch of epoch 2
    _stopped_run(monkeypatch, spec, out, "after-partial", 2)
    assert load_checkpoint(out)["epoch"] == 1
    mid = load_checkpoint(out / PARTIAL_NAME)
    assert (mid["epoch"], mid["partial"]["batches"], len(mid["metrics"])) == (2, 1, 1)
    assert without_seconds(mid["metrics"]) == without_seconds(reference["metrics"][:1])

    # resumed: epoch 2 saved whole, stopped before its metrics line and the partial's removal
    _stopped_run(monkeypatch, spec, out, "before-metrics", 2)
    assert load_checkpoint(out)["epoch"] == 2
    assert load_checkpoint(out / PARTIAL_NAME)["epoch"] == 2  # stale: epoch 2 is whole
    chosen, payload = choose_resume_payload(out)
    assert chosen == out / "checkpoint.pt" and "partial" not in payload

    resumed = _trainer(spec, out, minutes=None)
    resumed.resume(out)
    assert resumed.start_epoch == 3 and resumed.resumed_partial is None
    resumed.run()
    assert not (out / PARTIAL_NAME).exists()
    final = load_checkpoint(out)
    assert_same_run(reference, final)
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == final["metrics"]


def test_the_epoch_seconds_go_on_from_the_mid_epoch_checkpoint(monkeypatch, tmp_path):
    spec = _spec()
    out = tmp_path / "run"
    _stopped_run(monkeypatch, spec, out, "after-partial", 1, nth=3)
    saved = load_checkpoint(out / PARTIAL_NAME)["partial"]["seconds"]
    assert saved > 0
    trainer = _trainer(spec, out, minutes=None)
    trainer.resume(out)
    assert trainer.resumed_partial is not None and trainer.resumed_partial.seconds == saved
    metrics = trainer.run()
    assert metrics[0]["seconds"] > saved


def test_without_checkpoint_minutes_no_partial_file_is_written(monkeypatch, tmp_path):
    spec = _spec()
    written: list[int] = []
    trainer = _trainer(spec, tmp_path / "run", minutes=None)
    monkeypatch.setattr(trainer, "_save_partial", lambda epoch, partial: written.append(epoch))
    trainer.run()
    assert written == [] and not (tmp_path / "run" / PARTIAL_NAME).exists()
    # and with a period longer than the run, none either
    trainer = _trainer(spec, tmp_path / "run2", minutes=60.0)
    monkeypatch.setattr(trainer, "_save_partial", lambda epoch, partial: written.append(epoch))
    trainer.run()
    assert written == []


def test_a_mid_epoch_checkpoint_is_not_written_after_the_last_batch(monkeypatch, tmp_path):
    spec = _spec()
    batches: list[int] = []
    trainer = _trainer(spec, None)
    monkeypatch.setattr(
        trainer, "_save_partial", lambda epoch, partial: batches.append(partial.batches)
    )
    trainer.run()
    assert batches == [1, 2, 3] * 3  # 4 batches an epoch; the 4th ends the epoch


@pytest.mark.parametrize("minutes", [-1.0, float("nan"), float("inf")])
def test_bad_checkpoint_minutes_are_refused(tmp_path, minutes):
    with pytest.raises(TopoEpError, match="checkpoint minutes must be a finite number >= 0"):
        _trainer(_spec(), tmp_path / "run", minutes=minutes)


GOOD_ENTRY = PartialEpoch(2, 3.5, 40, 100, 80, 40, 0, 1.5).to_entry()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batches", 0, "'partial.batches' must be an integer >= 1"),
        ("correct", -1, "'partial.correct' must be an integer >= 0"),
        ("examples", 1.5, "'partial.examples' must be an integer >= 0"),
        ("free_steps", True, "'partial.free_steps' must be an integer >= 0"),
        ("loss", "x", "'partial.loss' must be a number"),
        ("seconds", float("nan"), "'partial.seconds' must be a finite number"),
        ("warm_filled", 1, "'partial.warm_filled' must be true, false or null"),
        ("momentum", 0.9, "'partial.momentum' is not a field of a mid-epoch checkpoint"),
    ],
)
def test_a_bad_partial_entry_names_its_field(field, value, message):
    check_partial_entry(GOOD_ENTRY, "ck.pt")  # the good one passes
    with pytest.raises(CheckpointError, match=message):
        check_partial_entry({**GOOD_ENTRY, field: value}, "ck.pt")
    missing = {k: v for k, v in GOOD_ENTRY.items() if k != "nudged_steps"}
    with pytest.raises(CheckpointError, match="'partial.nudged_steps' must be"):
        check_partial_entry(missing, "ck.pt")


def test_a_mid_epoch_checkpoint_holds_the_metrics_of_the_epochs_before_it(monkeypatch, tmp_path):
    spec = _spec()
    out = tmp_path / "run"
    _stopped_run(monkeypatch, spec, out, "after-partial", 2)
    payload = load_checkpoint(out / PARTIAL_NAME)
    payload["metrics"] = payload["metrics"] * 2  # two records before epoch 2
    save_atomic(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="holds 2 records but 1 epochs are finished"):
        load_checkpoint(tmp_path / "bad.pt")


def test_a_partial_checkpoint_with_more_batches_than_an_epoch_is_refused(monkeypatch, tmp_path):
    spec = _spec()
    out = tmp_path / "run"
    _stopped_run(monkeypatch, spec, out, "after-partial", 1)
    payload = load_checkpoint(out / PARTIAL_NAME)
    payload["partial"]["batches"] = 5
    save_atomic(payload, out / PARTIAL_NAME)
    trainer = _trainer(spec, out)
    trainer.resume(out)
    with pytest.raises(CheckpointError, match="has 5 batches done, but an epoch here has 4"):
        trainer.run()


def test_cli_kill_9_inside_an_epoch_then_resume_is_bit_identical(tmp_path):
    topology = hostile.tiny_topology(tmp_path)
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def args(out: Path, *extra: str) -> list[str]:
        return ["train", str(topology), "--limit", "40", "--epochs", "2", "--quiet",
                "--device", "cpu", "--out", str(out), *extra]  # fmt: skip

    reference = tmp_path / "reference"
    done = hostile.topo_ep(args(reference), env)
    assert done.wait(timeout=120) == 0, done.communicate()[1]

    run, flag = tmp_path / "run", tmp_path / "flag"
    pause = {**env, "TOPO_EP_TEST_PAUSE": f"after-partial@2={flag}"}
    process = hostile.topo_ep(args(run, "--checkpoint-minutes", "0"), pause)
    hostile.wait_for(flag, process)
    process.kill()
    process.communicate(timeout=60)
    assert load_checkpoint(run / PARTIAL_NAME)["partial"]["batches"] == 1

    assert cli.main(args(run, "--resume", "--checkpoint-minutes", "0")) == 0
    assert_same_run(load_checkpoint(reference), load_checkpoint(run))
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt",
        "config.yaml",
        "metrics.jsonl",
    ]


def test_a_run_directory_with_only_the_epoch_in_progress_can_be_resumed(monkeypatch, tmp_path):
    out = tmp_path / "run"
    _stopped_run(monkeypatch, _spec(), out, "after-partial", 1)
    assert sorted(p.name for p in out.iterdir()) == [PARTIAL_NAME, "config.yaml", "metrics.jsonl"]
    assert prepare_run_dir(out, resume=True, overwrite=False) is None
    with pytest.raises(RunDirError, match="is not empty .*checkpoint.partial.pt"):
        prepare_run_dir(out, resume=False, overwrite=False)
    (out / PARTIAL_NAME).unlink()
    with pytest.raises(
        RunDirError, match=r"has no checkpoint.pt \(nor checkpoint.partial.pt\) to continue from"
    ):
        prepare_run_dir(out, resume=True, overwrite=False)


def test_a_data_parallel_run_refuses_checkpoint_minutes(tmp_path):
    settings = RunSettings(epochs=1, seed=0, device="cpu", dataset="digits", limit=LIMIT)
    data = load_dataset("digits", seed=0, limit=LIMIT)
    ranks = DataParallel(rank=0, world_size=2, backend="gloo")
    with pytest.raises(TopoEpError, match="a data-parallel run saves whole epochs"):
        Trainer(_spec(), data, settings, tmp_path, parallel=ranks, checkpoint_minutes=5.0)
