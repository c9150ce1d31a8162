"""Training runs: epochs of a method over a dataset, with metrics, config and checkpoints.

A run directory holds

- ``metrics.jsonl``: one JSON line per epoch (``epoch``, ``train_loss``, ``train_acc``,
  ``val_acc``, ``test_acc``, ``seconds``, ``free_steps``, ``nudged_steps``; accuracies are
  fractions in [0, 1], null for an empty split, step counts are means over the epoch's batches);
- ``config.yaml``: the fully resolved topology, the run settings and the package versions
  (and ``data_parallel``: the ranks and backend of a torchrun launch);
- ``checkpoint.pt``: model, optimizer and metrics after the last finished epoch (and the
  warm starts, ``warm_states``, of a run with ``training.warm_start``), written atomically;
- ``checkpoint.partial.pt``, with ``checkpoint_minutes``: the epoch in progress, saved every so
  many minutes and removed when the epoch ends (:mod:`topo_ep.partial_epoch`).

The shuffling order of epoch e comes from a generator seeded with (seed, e) alone, so a run
resumed from its checkpoint, or from the middle of an epoch, ends bit-identical to an
uninterrupted one on the CPU.

An epoch is committed whole: its checkpoint first, then its metrics line, with Ctrl-C and
SIGTERM held back meanwhile (:func:`topo_ep.interrupts.signals_deferred`). A kill between the
two leaves metrics.jsonl one epoch behind the checkpoint; resuming rewrites it from the
checkpoint's metrics. While :meth:`Trainer.run` writes a run directory it holds the directory's
:class:`~topo_ep.rundir.RunLock`. Every batch's loss is checked for NaN and infinite values
through a flag on the device, read once per epoch (no host sync per batch), and the weights at
the end of each epoch: a run whose loss or weights became non-finite stops with
:class:`~topo_ep.errors.RunFailedError` before anything of that epoch is written.
"""

from __future__ import annotations

import itertools
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
from topo_ep.checkpoint import check_finite, choose_resume_payload, save_atomic
from topo_ep.compiler import CompiledNetwork, compile_topology
from topo_ep.data import Dataset, Split, iterate_batches, iterate_indexed_batches
from topo_ep.distributed import DataParallel, with_agreement
from topo_ep.errors import CheckpointError, DivergenceError, RunFailedError, TopoEpError
from topo_ep.interrupts import signals_deferred
from topo_ep.learn import Method, make_method
from topo_ep.param_groups import (
    ParamGroup,
    describe_rates,
    make_optimizer,
    param_groups,
    schedule_factor,
)
from topo_ep.partial_epoch import PARTIAL_NAME, PartialEpoch
from topo_ep.precision_check import (
    CHECK_EXAMPLES,
    disagreeing,
    disagreement_message,
    float64_agreement,
)
from topo_ep.rundir import RunLock, remove_stale_temps, write_text_atomic
from topo_ep.spec import TopologySpec
from topo_ep.testhooks import pause_point
from topo_ep.warm_start import WarmStarts

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: Run settings that may differ when a run is resumed (with their command-line options).
RESUMABLE_SETTINGS = ("epochs", "device", "data_dir", "eval_batch_size")
#: Topology fields that a resumed run may change: the number of epochs, and how the steps are
#: executed (``eager``, ``cuda-graph`` or ``compile`` compute the same steps), so that a run
#: moves between a CPU and a GPU with graph capture.
RESUMABLE_FIELDS = (("training", "epochs"), ("dynamics", "execution"))
#: The command-line option of each run setting, for messages.
SETTING_OPTIONS = {
    "method": "--method",
    "epochs": "--epochs",
    "seed": "--seed",
    "device": "--device",
    "dtype": "--dtype",
    "dataset": "--dataset",
    "data_dir": "--data-dir",
    "limit": "--limit",
    "validation": "--validation",
}


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
    #: ``holdout`` (a validation split carved out of the training part) or ``none`` (train on
    #: all of it; :data:`topo_ep.spec.VALIDATION_MODES`).
    validation: str = "holdout"
    eval_batch_size: int = 2000
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise TopoEpError(f"unknown device {name!r}; expected auto, cpu or cuda[:N]")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TopoEpError("--device cuda was asked for, but torch sees no CUDA device")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TopoEpError(f"unknown device {name!r}; expected auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise TopoEpError(f"--device {name}: torch sees {count} CUDA device(s)")
    return device


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling generator of one epoch; depends only on (seed, epoch).

    Its seed is ``seed * 1_000_003 + epoch`` taken modulo 2**64 (the range of
    :meth:`torch.Generator.manual_seed`), so that every seed in [0, 2**63) works; below
    about 1.8e13 the modulo changes nothing.
    """
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % 2**64)


def evaluate_split(
    method: Method, net: CompiledNetwork, split: Split, batch_size: int
) -> tuple[float | None, float | None]:
    """Mean cross-entropy and accuracy (fraction) of ``method``'s prediction on a split;
    ``(None, None)`` for an empty split (no accuracy to report, not 0)."""
    if len(split) == 0:
        return None, None
    loss_sum = torch.zeros((), dtype=torch.float64, device=net.device)
    correct = torch.zeros((), dtype=torch.int64, device=net.device)
    for x, y in iterate_batches(split, batch_size, None, shuffle=False):
        logits = method.logits(net, x.to(net.dtype))
        loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(dim=-1) == y).sum()
    n = len(split.y)
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


def write_config(
    path: Path, spec: TopologySpec, settings: RunSettings, ranks: dict[str, Any] | None = None
) -> None:
    """Write the resolved topology, the run settings and the package versions as YAML, and
    the ranks of a data-parallel run (``ranks``: their number and backend)."""
    document = {
        "topology": spec.to_dict(),
        "run": asdict(settings),
        "versions": package_versions(),
    }
    if ranks is not None:
        document["data_parallel"] = ranks
    write_text_atomic(path, yaml.safe_dump(document, sort_keys=False))


def _spec_differences(stored: Any, current: Any, path: str) -> list[str]:
    """Dotted paths at which two topology dicts differ, with both values."""
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in list(stored) + [k for k in current if k not in stored]:
            where = f"{path}.{key}" if path else str(key)
            if key not in stored or key not in current:
                out.append(
                    f"topology {where}: {stored.get(key, '(absent)')!r} in the checkpoint, "
                    f"{current.get(key, '(absent)')!r} now"
                )
            else:
                out.extend(_spec_differences(stored[key], current[key], where))
        return out
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        out = []
        for index, (a, b) in enumerate(zip(stored, current, strict=True)):
            out.extend(_spec_differences(a, b, f"{path}[{index}]"))
        return out
    if stored != current:
        if isinstance(stored, list) and isinstance(current, list):
            return [f"topology {path}: {len(stored)} items in the checkpoint, {len(current)} now"]
        return [f"topology {path}: {stored!r} in the checkpoint, {current!r} now"]
    return []


def resume_differences(
    payload: dict[str, Any], spec: TopologySpec, settings: RunSettings
) -> list[str]:
    """What differs between a checkpoint and the run that would resume it.

    The run settings of :data:`RESUMABLE_SETTINGS` and the topology fields of
    :data:`RESUMABLE_FIELDS` may differ; anything else differing is listed, one entry per
    setting or topology field.
    """
    differences = []
    stored_settings = payload.get("settings", {})
    current_settings = asdict(settings)
    if payload["method"] != settings.method:
        stored_settings = {**stored_settings, "method": payload["method"]}
    for key, value in current_settings.items():
        if key in RESUMABLE_SETTINGS or key not in stored_settings:
            continue
        if stored_settings[key] != value:
            name = SETTING_OPTIONS.get(key, key)
            differences.append(f"{name}: {stored_settings[key]!r} in the checkpoint, {value!r} now")

    differences += _spec_differences(
        _without_resumable_fields(payload["spec"]), _without_resumable_fields(spec.to_dict()), ""
    )
    return differences


def _without_resumable_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The topology dict without the fields of :data:`RESUMABLE_FIELDS`."""
    out = dict(data)
    for section, key in RESUMABLE_FIELDS:
        fields = out.get(section)
        if isinstance(fields, dict):
            out[section] = {k: v for k, v in fields.items() if k != key}
    return out


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
    #: Training seconds of the epoch: those of an earlier process (a mid-epoch checkpoint's)
    #: while the pass runs, the whole epoch's when it ends.
    seconds: float = 0.0

    @classmethod
    def start(cls, device: torch.device, resumed: PartialEpoch | None = None) -> EpochTotals:
        """Zero sums, or those of a mid-epoch checkpoint."""
        if resumed is None:
            resumed = PartialEpoch()
        return cls(
            loss=torch.tensor(resumed.loss, dtype=torch.float64, device=device),
            correct=torch.tensor(resumed.correct, dtype=torch.int64, device=device),
            examples=resumed.examples,
            batches=resumed.batches,
            free_steps=resumed.free_steps,
            nudged_steps=resumed.nudged_steps,
            unconverged=resumed.unconverged,
            seconds=resumed.seconds,
        )

    def partial(self, seconds: float, warm_filled: bool | None) -> PartialEpoch:
        """The sums as a mid-epoch checkpoint's entry, after ``seconds`` of this process."""
        return PartialEpoch(
            batches=self.batches,
            loss=float(self.loss),
            correct=int(self.correct),
            examples=self.examples,
            free_steps=int(self.free_steps),
            nudged_steps=int(self.nudged_steps),
            unconverged=int(self.unconverged),
            seconds=self.seconds + seconds,
            warm_filled=warm_filled,
        )


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
    log
        Receives one line per epoch.
    lock
        The held lock of ``out_dir``, when the caller took it; otherwise :meth:`run` takes one.
    parallel
        The ranks of a data-parallel run (:mod:`topo_ep.distributed`): each rank trains on its
        shard of every batch, the gradients are combined before each step, the metrics reduced,
        and rank 0 alone writes ``out_dir``. Default: a single process.
    checkpoint_minutes
        Also save the epoch in progress to ``out_dir/checkpoint.partial.pt`` whenever this many
        minutes have passed since the last save (checked after each batch; 0: after every
        batch), so that a killed run resumes mid-epoch (:mod:`topo_ep.partial_epoch`). ``None``
        (default): only whole epochs are saved. One process only.
    """

    def __init__(
        self,
        spec: TopologySpec,
        dataset: Dataset,
        settings: RunSettings,
        out_dir: str | Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
        lock: RunLock | None = None,
        parallel: DataParallel | None = None,
        checkpoint_minutes: float | None = None,
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
        self.parallel = parallel if parallel is not None else DataParallel.single()
        if checkpoint_minutes is not None and not (
            math.isfinite(checkpoint_minutes) and checkpoint_minutes >= 0
        ):
            raise TopoEpError(
                f"checkpoint minutes must be a finite number >= 0, got {checkpoint_minutes!r}"
            )
        if checkpoint_minutes is not None and self.parallel.distributed:
            raise TopoEpError(
                "--checkpoint-minutes saves the epoch in progress of one process; a data-parallel "
                "run saves whole epochs (launch without torchrun, or drop --checkpoint-minutes)"
            )
        #: Seconds between mid-epoch checkpoints, or ``None``.
        self.checkpoint_seconds = None if checkpoint_minutes is None else 60.0 * checkpoint_minutes
        #: The epoch in progress that :meth:`resume` read from a mid-epoch checkpoint.
        self.resumed_partial: PartialEpoch | None = None
        self.method = with_agreement(
            make_method(settings.method, self.net.spec), self.parallel.agreement
        )
        #: The optimizer's groups with their base rates, in the optimizer's order.
        self.param_groups: list[ParamGroup] = param_groups(self.net, spec)
        self.optimizer = make_optimizer(self.net, spec)
        self.metrics: list[dict[str, Any]] = []
        self.start_epoch = 1
        self.lock = lock
        #: Optimizer steps taken by this object (not counting those of a resumed checkpoint).
        self.steps_taken = 0
        #: The tensors that :meth:`_check_precision` has reported.
        self.imprecise: set[str] = set()
        #: The free state of every training example (``training.warm_start``), else ``None``.
        self.warm_starts = self._warm_starts()

    def _warm_starts(self) -> WarmStarts | None:
        """The table of warm starts of ``training.warm_start``, checked against the method, the
        tolerance and the memory; ``None`` when warm starts are off."""
        if not self.spec.training.warm_start:
            return None
        if self.settings.method != "ep":
            raise TopoEpError(
                f"training.warm_start applies to --method ep (its free phase), not to --method "
                f"{self.settings.method}; set training.warm_start to false for this method"
            )
        if self.spec.dynamics.tolerance <= 0:
            raise TopoEpError(
                "training.warm_start needs converged phases (dynamics.tolerance > 0): with fixed "
                "step counts a warm start would change what the free_steps steps compute"
            )
        return WarmStarts.allocate(
            self.spec.name,
            self.net.layout,
            len(self.dataset.train),
            self.dtype,
            self.device,
            self.parallel.world_size,
        )

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
            **self._feedback_scale_entry(),
            **self._warm_start_entry(),
        }

    def _warm_start_entry(self) -> dict[str, torch.Tensor]:
        """``{"warm_states": table}`` with warm starts on (:mod:`topo_ep.warm_start`), else
        nothing."""
        warm = self.warm_starts
        return {} if warm is None else {"warm_states": warm.state_dict()}

    def _feedback_scale_entry(self) -> dict[str, float]:
        """``{"feedback_scale": c}`` for a topology with a target radius, else nothing."""
        scale = self.net.feedback_scale
        return {} if scale is None else {"feedback_scale": scale}

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint of the same topology and run settings.

        Raises
        ------
        CheckpointError
            When the checkpoint cannot be read, lacks the optimizer state or the metrics, holds
            non-finite weights or weights and optimizer state that do not fit the network, or
            was written with other settings (each one named; see :func:`resume_differences`).
        """
        path, payload = choose_resume_payload(path)
        for needed in ("optimizer", "metrics"):
            if needed not in payload:
                raise CheckpointError(f"{path}: the checkpoint has no {needed!r}; cannot resume")
        differences = resume_differences(payload, self.spec, self.settings)
        if differences:
            listed = "; ".join(differences[:8])
            more = f"; and {len(differences) - 8} more" if len(differences) > 8 else ""
            raise CheckpointError(
                f"--resume: {path} was trained with other settings: {listed}{more}. Resume with "
                "the same topology file, --set options and settings (only --epochs, --device and "
                "--data-dir may change), or start a new run with --overwrite"
            )
        check_finite(payload, path)
        try:
            self.net.load_state_dict(payload["model"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: the weights do not fit the network ({str(exc).splitlines()[0]})"
            ) from None
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(
                f"{path}: the optimizer state does not fit the network "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            ) from None
        self._check_optimizer_state(path)
        if "feedback_scale" in payload:
            self.net.set_feedback_scale(payload["feedback_scale"])
        if self.warm_starts is not None:
            if "warm_states" not in payload:
                raise CheckpointError(
                    f"{path}: the checkpoint has no warm starts ('warm_states'), but "
                    "training.warm_start is on; cannot resume"
                )
            self.warm_starts.load_state_dict(payload["warm_states"], str(path))
        self.metrics = list(payload["metrics"])
        # a mid-epoch checkpoint's epoch is the one in progress, a whole one's the one done
        self.start_epoch = int(payload["epoch"]) + ("partial" not in payload)
        if "partial" in payload:
            self._resume_partial(PartialEpoch.from_entry(payload["partial"], path), path)

    def _resume_partial(self, partial: PartialEpoch, path: str | Path) -> None:
        """Continue inside the epoch of a mid-epoch checkpoint (its ``epoch``)."""
        if self.parallel.distributed:
            raise CheckpointError(
                f"{path} holds epoch {self.start_epoch} after {partial.batches} batches, "
                "saved by one process; resume it without torchrun, or delete that file to "
                "restart the epoch from checkpoint.pt"
            )
        if self.warm_starts is not None:
            if partial.warm_filled is None:
                raise CheckpointError(
                    f"{path}: the mid-epoch checkpoint does not say whether the warm starts "
                    "were filled ('partial.warm_filled'), but training.warm_start is on"
                )
            self.warm_starts.filled = partial.warm_filled
        self.resumed_partial = partial

    def _check_optimizer_state(self, path: str | Path) -> None:
        """Every tensor of the loaded optimizer state has its parameter's shape (or is a
        scalar such as Adam's step)."""
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                for name, value in self.optimizer.state.get(param, {}).items():
                    if not isinstance(value, torch.Tensor):
                        continue
                    if value.dim() > 0 and value.shape != param.shape:
                        raise CheckpointError(
                            f"{path}: the optimizer state {name!r} has shape "
                            f"{tuple(value.shape)}, but its parameter has shape "
                            f"{tuple(param.shape)}"
                        )
                    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                        raise CheckpointError(
                            f"{path}: the optimizer state {name!r} holds NaN or infinite values"
                        )

    # ------------------------------------------------------------------ epochs
    def train_epoch(self, epoch: int) -> EpochTotals:
        """One pass over the training split (or its rest, after a mid-epoch checkpoint of this
        epoch); returns the running sums."""
        from tqdm.auto import tqdm

        started = time.perf_counter()
        net, split = self.net, self.dataset.train
        batch_size = self.spec.training.batch_size
        n_batches = math.ceil(len(split.y) / batch_size)
        resumed, self.resumed_partial = self.resumed_partial, None
        if resumed is not None and resumed.batches > n_batches:
            raise CheckpointError(
                f"the mid-epoch checkpoint of epoch {epoch} has {resumed.batches} batches done, "
                f"but an epoch here has {n_batches}"
            )
        totals = EpochTotals.start(self.device, resumed)
        last_saved = started
        factor = schedule_factor(self.spec, epoch, self.settings.epochs)
        for group, base in zip(self.optimizer.param_groups, self.param_groups, strict=True):
            group["lr"] = base.lr * factor
        rates = self._rates_text(factor)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        # every batch loss finite so far: a device flag, read once per epoch (no sync per batch);
        # the weights themselves are checked once, at the end of the epoch
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        warm = self.warm_starts
        batches = itertools.islice(
            iterate_indexed_batches(split, batch_size, epoch_generator(self.settings.seed, epoch)),
            totals.batches,
            None,
        )
        bar = tqdm(
            batches,
            total=n_batches,
            initial=totals.batches,
            desc=f"epoch {epoch}/{self.settings.epochs} [{self.settings.method}]",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for index, x_all, y_all in bar:
            shard = self.parallel.shard(x_all, y_all, index)
            x, y = shard.x.to(self.dtype), shard.y
            self.optimizer.zero_grad(set_to_none=True)
            try:
                if warm is None:
                    result = self.method.gradients(net, x, y)
                else:
                    start = warm.start(shard.index)  # only EP is allowed a warm start
                    result = self.method.gradients(net, x, y, start)  # type: ignore[call-arg]
            except DivergenceError as exc:
                if not _all_finite(params):  # NaN weights, not the dynamics, made the states NaN
                    raise self._non_finite_error(epoch, rates) from None
                if self.steps_taken == 0:  # the network as declared diverges: the input's fault
                    raise
                raise RunFailedError(
                    f"epoch {epoch}: the relaxation diverged after {self.steps_taken} optimizer "
                    f"steps of this run, so training stopped: the updates made the network "
                    f"unstable; the learning rate is probably too large ({rates}, "
                    f"optimizer {self.spec.training.optimizer}). {self._saved_state(epoch)} "
                    f"(The relaxation said: {exc})"
                ) from None
            self.parallel.combine_gradients(params, shard.weight)
            try:
                self.optimizer.step()
            except RuntimeError as exc:
                if "overflow" not in str(exc):
                    raise
                raise RunFailedError(
                    f"epoch {epoch}: the optimizer step overflowed ({exc}); the learning rate "
                    f"({rates}) is too large for {self.spec.training.optimizer} in "
                    f"{self.settings.dtype}. {self._saved_state(epoch)}"
                ) from None
            self.steps_taken += 1
            if warm is not None and result.free_state is not None:
                warm.store(shard.index, result.free_state)
            finite &= torch.isfinite(result.loss).all()
            if totals.batches == 0:
                pause_point("mid-epoch", epoch)
            totals.loss += result.loss.double() * shard.size
            totals.correct += result.correct if shard.size else 0
            totals.examples += shard.size
            totals.batches += 1
            totals.free_steps += result.free_steps
            totals.nudged_steps += result.nudged_steps
            totals.unconverged += not result.converged
            due = self.checkpoint_seconds is not None and totals.batches < n_batches
            if due and time.perf_counter() - last_saved >= self.checkpoint_seconds:
                if not bool(finite) or not _all_finite(params):
                    raise self._non_finite_error(epoch, rates)
                filled = None if warm is None else warm.filled
                self._save_partial(epoch, totals.partial(time.perf_counter() - started, filled))
                last_saved = time.perf_counter()
        bar.close()
        if warm is not None:
            warm.end_epoch(self.parallel.sum_over_ranks if self.parallel.distributed else None)
        finite = self.parallel.reduce_totals(totals, finite, params)
        if not bool(finite) or not _all_finite(params):
            raise self._non_finite_error(epoch, rates)
        totals.seconds += time.perf_counter() - started
        return totals

    def _save_partial(self, epoch: int, partial: PartialEpoch) -> None:
        """Write ``checkpoint.partial.pt``: this epoch so far (see :mod:`topo_ep.partial_epoch`)."""
        if self.out_dir is None:
            return
        payload = {**self.checkpoint_payload(epoch), "partial": partial.to_entry()}
        with signals_deferred():
            save_atomic(payload, self.out_dir / PARTIAL_NAME)
        pause_point("after-partial", epoch)

    def _rates_text(self, factor: float) -> str:
        """The learning rates of an epoch at schedule factor ``factor``, for messages:
        ``training.lr = 0.001`` when every tensor uses it, else each group's rate and
        tensors."""
        groups = self.param_groups
        lr = self.spec.training.lr
        if len(groups) == 1 and groups[0].lr == lr:
            return f"training.lr = {lr * factor:g}"
        return f"learning rates of this epoch by group: {describe_rates(groups, factor)}"

    def _saved_state(self, epoch: int) -> str:
        """What the run directory holds when epoch ``epoch`` fails."""
        if self.out_dir is None:
            return "Nothing was written."
        partial = self.out_dir / PARTIAL_NAME
        if partial.exists():
            whole = (
                f"; {self.out_dir / 'checkpoint.pt'} holds epoch {epoch - 1}" if epoch > 1 else ""
            )
            return (
                f"{partial} holds epoch {epoch} as of its last mid-epoch save (before the "
                f"failure){whole}."
            )
        if epoch > 1:
            return (
                f"Nothing of epoch {epoch} was written; {self.out_dir / 'checkpoint.pt'} holds "
                f"epoch {epoch - 1}."
            )
        return "No checkpoint was written."

    def _non_finite_error(self, epoch: int, rates: str) -> RunFailedError:
        t = self.spec.training
        return RunFailedError(
            f"epoch {epoch}: the weights or the loss became non-finite (NaN or inf) after an "
            "optimizer step, so training stopped; the learning rate is probably too large "
            f"({rates}, optimizer {t.optimizer}). {self._saved_state(epoch)}"
        )

    def _warn_unconverged(self, epoch: int, totals: EpochTotals) -> None:
        d = self.spec.dynamics
        if self.settings.method != "ep" or max(d.tolerance, d.nudged_phase_tolerance) <= 0:
            return
        if totals.unconverged:
            warnings.warn(
                f"epoch {epoch}: {totals.unconverged} of {totals.batches} batches reached a "
                f"step limit before converging (tolerance {d.tolerance:g}, nudged phase "
                f"{d.nudged_phase_tolerance:g}; bounded non-convergence, training goes on)",
                RuntimeWarning,
                stacklevel=2,
            )

    def _check_precision(self, epoch: int) -> None:
        """EP in a dtype other than float64: warn when the rounding changes the update of some
        tensors (:mod:`topo_ep.precision_check`), when a tensor not reported before is among
        them; on the main rank only."""
        if self.settings.method != "ep" or self.dtype == torch.float64:
            return
        if not self.parallel.is_main:
            return
        split = self.dataset.train
        x, y = split.x[:CHECK_EXAMPLES], split.y[:CHECK_EXAMPLES]
        tensors = disagreeing(float64_agreement(self.net, x, y))
        new = {key for key, _ in tensors} - self.imprecise
        if new:
            message = disagreement_message(epoch, tensors, self.settings.dtype)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            self.imprecise |= new

    def run(self) -> list[dict[str, Any]]:
        """Train the remaining epochs; returns every epoch's metrics.

        With a run directory: holds its lock (taken here unless given to the constructor),
        removes stale temporary files, writes config.yaml and rewrites metrics.jsonl from the
        metrics resumed (so it holds exactly the checkpoint's epochs), then commits each epoch.

        Raises
        ------
        RunFailedError
            When the weights become non-finite or an optimizer step overflows.
        RunDirError
            When another process holds the run directory's lock.
        """
        if self.out_dir is None or not self.parallel.is_main:
            return self._train_epochs()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        lock = self.lock if self.lock is not None else RunLock(self.out_dir)
        own = not lock.held
        lock.acquire()
        try:
            remove_stale_temps(self.out_dir)
            if self.resumed_partial is None:  # a leftover of an epoch checkpoint.pt holds whole
                (self.out_dir / PARTIAL_NAME).unlink(missing_ok=True)
            ranks = self.parallel.describe() if self.parallel.distributed else None
            write_config(self.out_dir / "config.yaml", self.spec, self.settings, ranks)
            self._rewrite_metrics()
            if self.start_epoch > 1:
                pause_point("resumed", self.start_epoch)
            return self._train_epochs()
        finally:
            if own:
                lock.release()

    def _train_epochs(self) -> list[dict[str, Any]]:
        eval_batch = self.settings.eval_batch_size
        for epoch in range(self.start_epoch, self.settings.epochs + 1):
            totals = self.train_epoch(epoch)
            train_seconds = totals.seconds
            self._warn_unconverged(epoch, totals)
            self._check_precision(epoch)
            rescaled = self._solve_feedback_scale_again()
            _, val_acc = self._evaluate(self.dataset.val, eval_batch)
            _, test_acc = self._evaluate(self.dataset.test, eval_batch)
            n = max(1, totals.examples)
            record: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": float(totals.loss) / n,
                "train_acc": int(totals.correct) / n,
                "val_acc": val_acc,
                "test_acc": test_acc,
                "seconds": train_seconds,
                "free_steps": totals.free_steps / max(1, totals.batches),
                "nudged_steps": totals.nudged_steps / max(1, totals.batches),
                **rescaled,
            }
            self.metrics.append(record)
            if self.out_dir is not None and self.parallel.is_main:
                with signals_deferred():  # the checkpoint, then its metrics line; never half
                    save_atomic(self.checkpoint_payload(epoch), self.out_dir / "checkpoint.pt")
                    pause_point("before-metrics", epoch)
                    with (self.out_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
                        handle.write(json.dumps(record) + "\n")
                    (self.out_dir / PARTIAL_NAME).unlink(missing_ok=True)
                pause_point("after-epoch", epoch)
            self.log(
                f"epoch {epoch}: loss {record['train_loss']:.4f} train {record['train_acc']:.4f} "
                f"val {format_accuracy(val_acc)} test {format_accuracy(test_acc)} "
                f"({train_seconds:.1f} s, free {record['free_steps']:.1f} / nudged "
                f"{record['nudged_steps']:.1f} steps)"
            )
        return self.metrics

    def _evaluate(self, split: Split, batch_size: int) -> tuple[float | None, float | None]:
        """:func:`evaluate_split`; with several ranks, each global batch sharded over them."""
        if not self.parallel.distributed:
            return evaluate_split(self.method, self.net, split, batch_size)
        return self.parallel.evaluate(
            lambda x: self.method.logits(self.net, x), split, batch_size, self.dtype
        )

    def _solve_feedback_scale_again(self) -> dict[str, float]:
        """With ``feedback_gain: {every_epoch: true}``: solve the feedback scale again for the
        weights the epoch left (the model evaluated and saved uses it) and return
        ``feedback_scale`` and ``spectral_radius`` for the epoch's metrics; else nothing."""
        target = self.spec.feedback_gain
        if target is None or not target.every_epoch:
            return {}
        solution = self.net.solve_feedback_scale()
        return {"feedback_scale": solution.scale, "spectral_radius": solution.radius}

    def _rewrite_metrics(self) -> None:
        """metrics.jsonl holds exactly the epochs of the checkpoint (drops lines of a crash)."""
        assert self.out_dir is not None
        lines = "".join(json.dumps(record) + "\n" for record in self.metrics)
        write_text_atomic(self.out_dir / "metrics.jsonl", lines)


def _all_finite(params: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


def format_accuracy(value: float | None) -> str:
    """An accuracy with four decimals, or ``n/a (empty split)`` for ``None``."""
    return "n/a (empty split)" if value is None else f"{value:.4f}"


def best_validation_epoch(metrics: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The metrics line of the epoch with the highest validation accuracy (the first of equals),
    or ``None`` when no epoch has one (an empty validation split: ``--validation none``)."""
    validated = [m for m in metrics if m["val_acc"] is not None]
    return max(validated, key=lambda m: m["val_acc"]) if validated else None


def summary_line(spec: TopologySpec, settings: RunSettings, metrics: list[dict[str, Any]]) -> str:
    """One line with the final and the best test accuracy of a run."""
    if not metrics:
        return f"{spec.name}: no epochs run"
    last = metrics[-1]
    total = sum(m["seconds"] for m in metrics)
    head = (
        f"done: {spec.name} [{settings.method}] on {settings.dataset}, {last['epoch']} epochs, "
        f"final test acc {format_accuracy(last['test_acc'])} "
        f"(val {format_accuracy(last['val_acc'])}), "
    )
    best = best_validation_epoch(metrics)
    if best is None:
        return f"{head}no validation split to pick an epoch on, train time {total:.1f} s"
    return (
        f"{head}test acc at best val epoch {best['epoch']}: {format_accuracy(best['test_acc'])}, "
        f"train time {total:.1f} s"
    )
