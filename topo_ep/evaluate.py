"""Evaluate a saved model: accuracy and loss on the validation and test splits.

The checkpoint is checked first (:func:`topo_ep.checkpoint.load_checkpoint`); one whose weights
hold NaN or infinite values is refused rather than reported as "loss nan". An empty split is
reported as n/a, not as accuracy 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from topo_ep.checkpoint import check_finite, checkpoint_file, load_checkpoint
from topo_ep.compiler import compile_topology
from topo_ep.data import check_compatible, load_dataset, val_fraction_for
from topo_ep.errors import CheckpointError
from topo_ep.learn import make_method
from topo_ep.registry import UnknownNameError
from topo_ep.train import DTYPES, dataset_on, evaluate_split, format_accuracy, resolve_device
from topo_ep.validate import spec_from_dict


@dataclass(frozen=True)
class EvaluationReport:
    """Loss and accuracy of one checkpoint on one dataset."""

    checkpoint: str
    topology: str
    method: str
    epoch: int
    dataset: str
    val_loss: float | None
    val_acc: float | None
    test_loss: float | None
    test_acc: float | None

    def format(self) -> str:
        """One line: the checkpoint, its topology, method and epoch, and both splits."""

        def split(acc: float | None, loss: float | None) -> str:
            if acc is None or loss is None:
                return format_accuracy(None)
            return f"{acc:.4f} (loss {loss:.4f})"

        return (
            f"{self.checkpoint}: {self.topology} [{self.method}], epoch {self.epoch}, "
            f"{self.dataset}: val acc {split(self.val_acc, self.val_loss)}, "
            f"test acc {split(self.test_acc, self.test_loss)}"
        )


def evaluate_checkpoint(
    path: str | Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    batch_size: int = 2000,
) -> EvaluationReport:
    """Rebuild the network a checkpoint was trained as and evaluate it with its method.

    Raises
    ------
    CheckpointError
        For a checkpoint that cannot be read, holds non-finite weights or weights that do not
        fit its stored topology.
    """
    payload = load_checkpoint(path)
    check_finite(payload, checkpoint_file(path))
    spec = spec_from_dict(payload["spec"], filename=f"{path} (stored topology)")
    settings = payload.get("settings", {})
    dataset_name = dataset or settings.get("dataset", "digits")
    dtype = DTYPES.get(settings.get("dtype", "float32"), torch.float32)
    target = resolve_device(device)
    net = compile_topology(
        spec, seed=0, dtype=dtype, device=target, feedback_scale=payload.get("feedback_scale")
    )
    try:
        net.load_state_dict(payload["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: weights do not fit the stored topology ({first})") from None
    # the splits it was trained with: no validation split after --validation none
    trained_on = dataset_name == settings.get("dataset", "digits")
    validation = settings.get("validation", "holdout") if trained_on else "holdout"
    data = load_dataset(
        dataset_name,
        data_dir or settings.get("data_dir"),
        val_fraction=val_fraction_for(validation),
    )
    check_compatible(data, spec.input.size, spec.readout.size, None)
    data = dataset_on(data, target)
    try:
        method = make_method(payload["method"], spec)
    except UnknownNameError as exc:
        raise CheckpointError(f"{path}: field 'method': {exc}") from None
    val_loss, val_acc = evaluate_split(method, net, data.val, batch_size)
    test_loss, test_acc = evaluate_split(method, net, data.test, batch_size)
    return EvaluationReport(
        str(path),
        spec.name,
        payload["method"],
        int(payload["epoch"]),
        dataset_name,
        val_loss,
        val_acc,
        test_loss,
        test_acc,
    )
