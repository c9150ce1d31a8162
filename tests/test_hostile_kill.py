"""kill -9 at five moments of one training, each followed by ``--resume``: the final weights,
optimizer state and metrics are bit-identical to an uninterrupted run, and no temporary or
lock file is left.

The kills are placed with the test-only pause hook (:mod:`topo_ep.testhooks`), never with a
timer: the trainer creates a flag file at the chosen point and sleeps; the test waits for the
flag and kills. One kill lands during a checkpoint write, between the temporary file and its
rename.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import hostile
from tests.helpers import assert_same_run
from topo_ep import cli
from topo_ep.checkpoint import load_checkpoint

EPOCHS = 4
#: The same thread count in the test process (see conftest) and in the trainers it starts.
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

#: (pause point, what the run directory holds after the kill: checkpoint epoch, metrics lines)
KILLS = [
    ("mid-epoch@2", 1, 1),  # inside epoch 2, after its first optimizer step
    ("before-rename@2", 1, 1),  # the checkpoint of epoch 2 written to a temporary file
    ("before-metrics@2", 2, 1),  # checkpoint 2 renamed, its metrics line not yet written
    ("resumed@3", 2, 2),  # the checkpoint loaded by --resume, epoch 3 not begun
    ("after-epoch@3", 3, 3),  # epoch 3 committed
]


def _args(topology: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(topology),
        "--limit",
        "40",
        "--epochs",
        str(EPOCHS),
        "--quiet",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


def _kill_at(topology: Path, out: Path, point: str, flag: Path, resume: bool) -> None:
    extra = ["--resume"] if resume else []
    env = {**ENV, "TOPO_EP_TEST_PAUSE": f"{point}={flag}"}
    process = hostile.topo_ep(_args(topology, out, *extra), env)
    hostile.wait_for(flag, process)
    process.kill()  # SIGKILL: no handler, no cleanup
    process.communicate(timeout=60)
    assert process.returncode == -9


def _records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_kill_9_at_five_moments_then_resume_is_bit_identical(tmp_path: Path) -> None:
    topology = hostile.tiny_topology(tmp_path)
    reference = tmp_path / "reference"
    process = hostile.topo_ep(_args(topology, reference), ENV)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr

    run = tmp_path / "run"
    for index, (point, epoch, lines) in enumerate(KILLS):
        flag = tmp_path / f"flag{index}"
        _kill_at(topology, run, point, flag, resume=index > 0)
        assert load_checkpoint(run)["epoch"] == epoch, point
        assert len(_records(run)) == lines, point
        temps = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
        if point.startswith("before-rename"):
            assert len(temps) == 1 and temps[0].startswith(".checkpoint.pt."), temps
        else:
            assert temps == [], (point, temps)  # the resumed trainer removed the stale one

    assert cli.main(_args(topology, run, "--resume")) == 0

    final, expected = load_checkpoint(run), load_checkpoint(reference)
    assert final["epoch"] == EPOCHS
    assert_same_run(final, expected)
    assert _records(run) == final["metrics"]
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt",
        "config.yaml",
        "metrics.jsonl",
    ]
