"""Evaluate a saved model: accuracy and loss on the validation and test splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from topo_ep.checkpoint import load_checkpoint
from topo_ep.compiler import compile_topology
from topo_ep.data import check_compatible, load_dataset
from topo_ep.errors import CheckpointError
from topo_ep.learn import make_method
from topo_ep.train import DTYPES, dataset_on, evaluate_split, resolve_device
from topo_ep.validate import spec_from_dict


@dataclass(frozen=True)
class EvaluationReport:
    """Loss and accuracy of one checkpoint on one dataset."""

    checkpoint: str
    topology: str
    method: str
    epoch: int
    dataset: str
    val_loss: float
    val_acc: float
    test_loss: float
    test_acc: float

    def format(self) -> str:
        return (
            f"{self.checkpoint}: {self.topology} [{self.method}], epoch {self.epoch}, "
            f"{self.dataset}: val acc {self.val_acc:.4f} (loss {self.val_loss:.4f}), "
            f"test acc {self.test_acc:.4f} (loss {self.test_loss:.4f})"
        )


def evaluate_checkpoint(
    path: str | Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    batch_size: int = 2000,
) -> EvaluationReport:
    """Rebuild the network a checkpoint was trained as and evaluate it with its method."""
    payload = load_checkpoint(path)
    spec = spec_from_dict(payload["spec"], filename=f"{path} (stored topology)")
    settings = payload.get("settings", {})
    dataset_name = dataset or settings.get("dataset", "digits")
    dtype = DTYPES.get(settings.get("dtype", "float32"), torch.float32)
    target = resolve_device(device)
    net = compile_topology(spec, seed=0, dtype=dtype, device=target)
    try:
        net.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored topology ({exc})") from exc
    data = load_dataset(dataset_name, data_dir or settings.get("data_dir"))
    check_compatible(data, spec.input.size, spec.readout.size, None)
    data = dataset_on(data, target)
    method = make_method(payload["method"], spec)
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
