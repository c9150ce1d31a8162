"""Training runs: epochs of a method over a dataset, with metrics, config and checkpoints.

A run directory holds

- ``metrics.jsonl``: one JSON line per epoch (``epoch``, ``train_loss``, ``train_acc``,
  ``val_acc``, ``test_acc``, ``seconds``, ``free_steps``, ``nudged_steps``; accuracies are
  fractions in [0, 1], step counts are means over the epoch's batches);
- ``config.yaml``: the fully resolved topology, the run settings and the package versions;
- ``checkpoint.pt``: model, optimizer and metrics after the last finished epoch, written
  atomically.

The shuffling order of epoch e comes from a generator seeded with (seed, e) alone, so a run
resumed from its checkpoint ends bit-identical to an uninterrupted one on the CPU.
"""

from __future__ import annotations

import json
import math
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from topo_ep import __version__
from topo_ep.checkpoint import load_checkpoint, save_atomic
from topo_ep.compiler import CompiledNetwork, compile_topology
from topo_ep.data import Dataset, Split, iterate_batches
from topo_ep.errors import CheckpointError, TopoEpError
from topo_ep.learn import Method, make_method
from topo_ep.spec import TopologySpec

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class RunSettings:
    """Settings of a training run that are not part of the topology."""

    method: str = "ep"
    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    dataset: str = "digits"
    data_dir: str | None = None
    limit: int | None = None
    eval_batch_size: int = 2000
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TopoEpError("--device cuda was asked for, but torch sees no CUDA device")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise TopoEpError(f"unknown device {name!r}; expected auto, cpu or cuda[:N]")
    return torch.device(name)


def make_optimizer(net: CompiledNetwork, spec: TopologySpec) -> torch.optim.Optimizer:
    """The optimizer named in ``training.optimizer`` over every learned tensor."""
    t = spec.training
    params = list(net.parameters())
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay)


def epoch_learning_rate(spec: TopologySpec, epoch: int, epochs: int) -> float:
    """Learning rate of ``epoch`` (1-based, of ``epochs``): constant, or
    lr (1 + cos(pi (e-1) / E)) / 2 for ``lr_schedule: cosine``."""
    t = spec.training
    if t.lr_schedule == "cosine":
        return t.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    return t.lr


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling generator of one epoch; depends only on (seed, epoch)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


def evaluate_split(
    method: Method, net: CompiledNetwork, split: Split, batch_size: int
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) of ``method``'s prediction on a split."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=net.device)
    correct = torch.zeros((), dtype=torch.int64, device=net.device)
    for x, y in iterate_batches(split, batch_size, None, shuffle=False):
        logits = method.logits(net, x.to(net.dtype))
        loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(dim=-1) == y).sum()
    n = max(1, len(split.y))
    return float(loss_sum) / n, int(correct) / n


def dataset_on(dataset: Dataset, device: torch.device) -> Dataset:
    """The dataset with every split moved to ``device`` once."""

    def move(split: Split) -> Split:
        return Split(split.x.to(device), split.y.to(device))

    return replace(
        dataset, train=move(dataset.train), val=move(dataset.val), test=move(dataset.test)
    )


def package_versions() -> dict[str, str]:
    """Versions of topo-ep, Python and the numerical libraries, for ``config.yaml``."""
    import networkx
    import numpy
    import scipy

    return {
        "topo-ep": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "networkx": networkx.__version__,
    }


def write_config(path: Path, spec: TopologySpec, settings: RunSettings) -> None:
    """Write the resolved topology, the run settings and the package versions as YAML."""
    document = {
        "topology": spec.to_dict(),
        "run": asdict(settings),
        "versions": package_versions(),
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


@dataclass
class EpochTotals:
    """Running sums over the batches of one epoch."""

    loss: torch.Tensor
    correct: torch.Tensor
    examples: int = 0
    batches: int = 0
    free_steps: int = 0
    nudged_steps: int = 0
    unconverged: int = 0


class Trainer:
    """Runs epochs of one method on one compiled network and writes the run directory.

    Parameters
    ----------
    spec
        The resolved topology (overrides applied).
    dataset
        The data, already checked against the topology.
    settings
        Method, epochs, seed, device and dtype.
    out_dir
        The run directory (created if needed); ``None`` writes nothing.
    progress
        Show a tqdm progress bar.
    """

    def __init__(
        self,
        spec: TopologySpec,
        dataset: Dataset,
        settings: RunSettings,
        out_dir: str | Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.log = log
        self.device = resolve_device(settings.device)
        self.dtype = DTYPES[settings.dtype]
        self.dataset = dataset_on(dataset, self.device)
        torch.manual_seed(settings.seed)
        self.net = compile_topology(spec, seed=settings.seed, dtype=self.dtype, device=self.device)
        self.method = make_method(settings.method, spec)
        self.optimizer = make_optimizer(self.net, spec)
        self.metrics: list[dict[str, Any]] = []
        self.start_epoch = 1

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self, epoch: int) -> dict[str, Any]:
        return {
            "format": 1,
            "epoch": epoch,
            "spec": self.spec.to_dict(),
            "method": self.settings.method,
            "settings": asdict(self.settings),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "metrics": self.metrics,
            "versions": package_versions(),
        }

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint of the same topology and method."""
        payload = load_checkpoint(path)
        if payload["spec"] != self.spec.to_dict():
            raise CheckpointError(
                f"{path}: the checkpoint was written for a different topology or settings; "
                "resume with the same file and --set options"
            )
        if payload["method"] != self.settings.method:
            raise CheckpointError(
                f"{path}: the checkpoint was trained with --method {payload['method']}"
            )
        self.net.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.metrics = list(payload["metrics"])
        self.start_epoch = int(payload["epoch"]) + 1

    # ------------------------------------------------------------------ epochs
    def train_epoch(self, epoch: int) -> EpochTotals:
        """One pass over the training split; returns the running sums."""
        from tqdm.auto import tqdm

        net, split = self.net, self.dataset.train
        batch_size = self.spec.training.batch_size
        totals = EpochTotals(
            loss=torch.zeros((), dtype=torch.float64, device=self.device),
            correct=torch.zeros((), dtype=torch.int64, device=self.device),
        )
        n_batches = math.ceil(len(split.y) / batch_size)
        for group in self.optimizer.param_groups:
            group["lr"] = epoch_learning_rate(self.spec, epoch, self.settings.epochs)
        batches = iterate_batches(split, batch_size, epoch_generator(self.settings.seed, epoch))
        bar = tqdm(
            batches,
            total=n_batches,
            desc=f"epoch {epoch}/{self.settings.epochs} [{self.settings.method}]",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for x, y in bar:
            x = x.to(self.dtype)
            self.optimizer.zero_grad(set_to_none=True)
            result = self.method.gradients(net, x, y)
            self.optimizer.step()
            totals.loss += result.loss.double() * len(y)
            totals.correct += result.correct
            totals.examples += len(y)
            totals.batches += 1
            totals.free_steps += result.free_steps
            totals.nudged_steps += result.nudged_steps
            totals.unconverged += not result.converged
        bar.close()
        return totals

    def _warn_unconverged(self, epoch: int, totals: EpochTotals) -> None:
        if self.settings.method != "ep" or self.spec.dynamics.tolerance <= 0:
            return
        if totals.unconverged:
            warnings.warn(
                f"epoch {epoch}: {totals.unconverged} of {totals.batches} batches reached the "
                f"step limit before the residual fell below {self.spec.dynamics.tolerance:g} "
                "(bounded non-convergence; training goes on)",
                RuntimeWarning,
                stacklevel=2,
            )

    def run(self) -> list[dict[str, Any]]:
        """Train the remaining epochs; returns every epoch's metrics."""
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.out_dir / "config.yaml", self.spec, self.settings)
            self._rewrite_metrics()
        eval_batch = self.settings.eval_batch_size
        for epoch in range(self.start_epoch, self.settings.epochs + 1):
            started = time.perf_counter()
            totals = self.train_epoch(epoch)
            train_seconds = time.perf_counter() - started
            self._warn_unconverged(epoch, totals)
            _, val_acc = evaluate_split(self.method, self.net, self.dataset.val, eval_batch)
            _, test_acc = evaluate_split(self.method, self.net, self.dataset.test, eval_batch)
            n = max(1, totals.examples)
            record = {
                "epoch": epoch,
                "train_loss": float(totals.loss) / n,
                "train_acc": int(totals.correct) / n,
                "val_acc": val_acc,
                "test_acc": test_acc,
                "seconds": train_seconds,
                "free_steps": totals.free_steps / max(1, totals.batches),
                "nudged_steps": totals.nudged_steps / max(1, totals.batches),
            }
            self.metrics.append(record)
            if self.out_dir is not None:
                with (self.out_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
                save_atomic(self.checkpoint_payload(epoch), self.out_dir / "checkpoint.pt")
            self.log(
                f"epoch {epoch}: loss {record['train_loss']:.4f} train {record['train_acc']:.4f} "
                f"val {val_acc:.4f} test {test_acc:.4f} ({train_seconds:.1f} s, "
                f"free {record['free_steps']:.1f} / nudged {record['nudged_steps']:.1f} steps)"
            )
        return self.metrics

    def _rewrite_metrics(self) -> None:
        """metrics.jsonl holds exactly the epochs of the checkpoint (drops lines of a crash)."""
        assert self.out_dir is not None
        lines = "".join(json.dumps(record) + "\n" for record in self.metrics)
        (self.out_dir / "metrics.jsonl").write_text(lines, encoding="utf-8")


def summary_line(spec: TopologySpec, settings: RunSettings, metrics: list[dict[str, Any]]) -> str:
    """One line with the final and the best test accuracy of a run."""
    if not metrics:
        return f"{spec.name}: no epochs run"
    last = metrics[-1]
    best = max(metrics, key=lambda m: m["val_acc"])
    total = sum(m["seconds"] for m in metrics)
    return (
        f"done: {spec.name} [{settings.method}] on {settings.dataset}, {last['epoch']} epochs, "
        f"final test acc {last['test_acc']:.4f} (val {last['val_acc']:.4f}), "
        f"test acc at best val epoch {best['epoch']}: {best['test_acc']:.4f}, "
        f"train time {total:.1f} s"
    )
