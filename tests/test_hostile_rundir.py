"""Run directories, checkpoints and interruptions, unit by unit: the lock, moving a run aside,
atomic writes, the order of an epoch's writes, signals held back, seeds and resume checks."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from tests import hostile
from topo_ep.checkpoint import load_checkpoint
from topo_ep.data import load_dataset
from topo_ep.errors import CheckpointError
from topo_ep.interrupts import Terminated, signals_deferred, sigterm_raises
from topo_ep.loader import load_topology
from topo_ep.rundir import (
    LOCK_NAME,
    RunDirError,
    RunLock,
    move_aside,
    prepare_run_dir,
    remove_stale_temps,
    write_text_atomic,
)
from topo_ep.train import RunSettings, Trainer, epoch_generator, resume_differences


def _trainer(tmp_path: Path, out: Path | None, **settings: object) -> Trainer:
    spec = load_topology(hostile.tiny_topology(tmp_path))
    run = RunSettings(**{"epochs": 1, "device": "cpu", "limit": 20, **settings})
    data = load_dataset("digits", limit=20)
    return Trainer(spec, data, run, out_dir=out, progress=False, log=lambda _: None)


def test_lock_is_exclusive_and_removed_on_release(tmp_path: Path) -> None:
    with RunLock(tmp_path) as lock:
        assert lock.held and (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(
            RunDirError, match=f"in use by another topo-ep training \\(pid {os.getpid()}\\)"
        ):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path).acquire().release()  # free again


def test_trainer_takes_the_lock_itself(tmp_path: Path) -> None:
    """Trainers made by code (sweeps, scripts) lock their run directory too."""
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out), pytest.raises(RunDirError, match="in use"):
        _trainer(tmp_path, out).run()
    _trainer(tmp_path, out).run()
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "config.yaml",
        "metrics.jsonl",
    ]


def test_checkpoint_is_written_before_the_metrics_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed checkpoint write leaves metrics.jsonl without the epoch's line: the metrics
    never run ahead of the checkpoint."""
    import topo_ep.train as train_module

    out = tmp_path / "run"

    def fail(payload: object, path: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_module, "save_atomic", fail)
    with pytest.raises(OSError):
        _trainer(tmp_path, out).run()
    assert (out / "metrics.jsonl").read_text() == ""
    assert not (out / "checkpoint.pt").exists() and not (out / LOCK_NAME).exists()


def test_move_aside_twice_in_one_second_gives_two_directories(tmp_path: Path) -> None:
    run = tmp_path / "run"
    targets = []
    for text in ("first", "second"):
        hostile.write(run / "metrics.jsonl", text)
        targets.append(move_aside(run, [run / "metrics.jsonl"]))
    assert targets[0] != targets[1]
    assert [(t / "metrics.jsonl").read_text() for t in targets] == ["first", "second"]
    assert list(run.iterdir()) == []


def test_a_run_that_finished_no_epoch_is_not_data(tmp_path: Path) -> None:
    """config.yaml and an empty metrics.jsonl (a run stopped in its first epoch) do not block a
    new run; a metrics line does."""
    run = tmp_path / "run"
    hostile.write(run / "config.yaml", "x: 1\n")
    hostile.write(run / "metrics.jsonl", "")
    hostile.write(run / ".checkpoint.pt.x1.tmp", "half")
    assert prepare_run_dir(run, resume=False, overwrite=False) is None
    hostile.write(run / "metrics.jsonl", '{"epoch": 1}\n')
    with pytest.raises(RunDirError, match="not empty"):
        prepare_run_dir(run, resume=False, overwrite=False)


def test_stale_temporary_files_are_removed_but_not_others(tmp_path: Path) -> None:
    names = [".checkpoint.pt.a1.tmp", ".metrics.jsonl.b2.tmp", ".config.yaml.c3.tmp"]
    names.append(".topo-ep-probe.d4.tmp")
    for name in [*names, "notes.tmp", ".other.x.tmp", "checkpoint.pt"]:
        hostile.write(tmp_path / name, "x")
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.x.tmp",
        "checkpoint.pt",
        "notes.tmp",
    ]


def test_write_text_atomic_keeps_the_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = hostile.write(tmp_path / "config.yaml", "old\n")

    def fail(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        write_text_atomic(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


@pytest.fixture
def default_sigint():
    """SIGINT raising KeyboardInterrupt in this process, as in a terminal, even when the suite
    was started in the background (which leaves SIGINT ignored); restored afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_signals_are_held_back_until_the_block_ends(default_sigint) -> None:
    done = []
    with pytest.raises(Terminated), sigterm_raises(), signals_deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("after the signal")
    assert done == ["after the signal"]
    with pytest.raises(KeyboardInterrupt), signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("after Ctrl-C")
    assert done[-1] == "after Ctrl-C"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_raises():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_epoch_generator_takes_every_seed_and_keeps_small_ones() -> None:
    for seed in (0, 7, 10**12):
        old = torch.Generator().manual_seed(seed * 1_000_003 + 3)
        assert torch.equal(
            torch.randperm(20, generator=old),
            torch.randperm(20, generator=epoch_generator(seed, 3)),
        )
    first = torch.randperm(20, generator=epoch_generator(2**63 - 1, 1))
    assert not torch.equal(first, torch.randperm(20, generator=epoch_generator(2**63 - 2, 1)))


def test_resume_differences_name_each_setting_and_field(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, tmp_path / "run")
    trainer.run()
    payload = load_checkpoint(tmp_path / "run")
    spec = trainer.spec
    changed = dataclasses.replace(
        spec,
        training=dataclasses.replace(spec.training, lr=1e-3, epochs=9),
        dynamics=dataclasses.replace(spec.dynamics, execution="cuda-graph", free_steps=7),
    )
    settings = RunSettings(epochs=5, device="cpu", limit=30, seed=2, dtype="float64", data_dir="/x")
    differences = resume_differences(payload, changed, settings)
    assert differences == [
        "--seed: 0 in the checkpoint, 2 now",
        "--dtype: 'float32' in the checkpoint, 'float64' now",
        "--limit: 20 in the checkpoint, 30 now",
        f"topology dynamics.free_steps: {spec.dynamics.free_steps} in the checkpoint, 7 now",
        "topology training.lr: 0.002 in the checkpoint, 0.001 now",
    ]  # training.epochs and dynamics.execution may change


def test_resume_refuses_a_checkpoint_without_optimizer_state(tmp_path: Path) -> None:
    _trainer(tmp_path, tmp_path / "run").run()
    path = tmp_path / "run" / "checkpoint.pt"

    def drop(payload: dict) -> None:
        del payload["optimizer"]

    hostile.mutated_checkpoint(path, path, drop)
    trainer = _trainer(tmp_path, tmp_path / "run", epochs=2)
    with pytest.raises(CheckpointError, match="no 'optimizer'"):
        trainer.resume(tmp_path / "run")


def test_resumed_metrics_file_is_never_emptied(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _trainer(tmp_path, out).run()
    trainer = _trainer(tmp_path, out, epochs=1)
    trainer.resume(out)
    trainer.run()  # no epoch left: rewrites metrics.jsonl from the checkpoint
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records == load_checkpoint(out)["metrics"] and len(records) == 1
