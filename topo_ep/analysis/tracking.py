"""Gradient flow tracked over the epochs of a training run.

:func:`train_with_flow` runs a :class:`~topo_ep.train.Trainer` and, after every finished epoch,
measures :func:`~topo_ep.analysis.gradient_flow.gradient_flow` of the current network on a fixed
batch. Each epoch's record is appended to ``flow.jsonl`` in the run folder, so a run resumed from
its checkpoint keeps the records of the epochs before the interruption.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import Tensor

from topo_ep.analysis.gradient_flow import gradient_flow
from topo_ep.train import Trainer

#: File of the per-epoch records in the run folder.
FLOW_FILE = "flow.jsonl"


def flow_record(trainer: Trainer, x: Tensor, y: Tensor, implicit: bool = True) -> dict[str, Any]:
    """The gradient flow of the trainer's current network on (x, y), with the epoch number."""
    epoch = int(trainer.metrics[-1]["epoch"]) if trainer.metrics else 0
    flow = gradient_flow(trainer.net, x, y, implicit=implicit)
    record = asdict(flow)
    record["epoch"] = epoch
    return record


def read_flow(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run folder (empty when there are none)."""
    path = Path(run_dir) / FLOW_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def train_with_flow(
    trainer: Trainer, x: Tensor, y: Tensor, implicit: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the trainer's remaining epochs, measuring the gradient flow after each (and before
    the first, as epoch 0, for a run that starts fresh).

    Returns the epoch metrics and the flow records of every epoch so far.
    """
    if trainer.out_dir is None:
        raise ValueError("train_with_flow needs a trainer with an out_dir")
    trainer.out_dir.mkdir(parents=True, exist_ok=True)
    path = trainer.out_dir / FLOW_FILE
    done = {record["epoch"] for record in read_flow(trainer.out_dir)}
    kept = [r for r in read_flow(trainer.out_dir) if r["epoch"] <= len(trainer.metrics)]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def append(record: dict[str, Any]) -> None:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    if not trainer.metrics and 0 not in done:
        append(flow_record(trainer, x, y, implicit))
    log = trainer.log

    def after_epoch(line: str) -> None:
        log(line)
        append(flow_record(trainer, x, y, implicit))

    trainer.log = after_epoch
    try:
        metrics = trainer.run()
    finally:
        trainer.log = log
    return metrics, read_flow(trainer.out_dir)
