"""Checkpoints: written atomically (temporary file, fsync, rename), read safely and checked.

:func:`load_checkpoint` loads with ``torch.load(weights_only=True)`` (no code runs from a
checkpoint) and checks the structure and the types of the payload in one place
(:func:`check_payload`), so that a hand-edited or foreign file gives one
:class:`~topo_ep.errors.CheckpointError` naming the file and the field.
"""

from __future__ import annotations

import math
import os
import pickle
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from topo_ep.errors import CheckpointError
from topo_ep.partial_epoch import PARTIAL_NAME, check_partial_entry
from topo_ep.testhooks import pause_point

#: The payload format written by :class:`topo_ep.train.Trainer`.
FORMAT = 1
#: Names of the run settings stored in a checkpoint and the types each may have.
SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "epochs": (int,),
    "seed": (int,),
    "device": (str,),
    "dtype": (str,),
    "dataset": (str,),
    "data_dir": (str, type(None)),
    "limit": (int, type(None)),
    "eval_batch_size": (int,),
    "extra": (dict,),
}
#: The dtypes a checkpoint may be trained in.
DTYPE_NAMES = ("float32", "float64")
#: Fields of a metrics record that hold numbers (accuracies may be null: an empty split).
_METRIC_NUMBERS = (
    "train_loss",
    "train_acc",
    "seconds",
    "free_steps",
    "nudged_steps",
    "feedback_scale",
    "spectral_radius",
)
_METRIC_OPTIONAL = ("val_acc", "test_acc")


def save_atomic(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``payload`` with ``torch.save`` so that ``path`` is either the old or the new file.

    The data goes to a temporary file in the same directory, is flushed to disk, then renamed
    over ``path`` (``os.replace`` is atomic on POSIX and Windows). On any exception, Ctrl-C
    included, the temporary file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        epoch = payload.get("epoch")
        pause_point("before-rename", epoch if isinstance(epoch, int) else None)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint file that ``path`` names: itself, or ``checkpoint.pt`` in a run directory.

    Raises
    ------
    CheckpointError
        When there is none, or it is not a regular file (a directory, a FIFO, a device).
    """
    source = Path(path)
    if source.is_dir():
        source = source / "checkpoint.pt"
    try:
        mode = source.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint found (looked for {source})") from None
    except OSError as exc:
        raise CheckpointError(f"{source}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise CheckpointError(f"{source} is {what}, not a checkpoint file")
    return source


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if "weights_only" not in line]
    return (lines[0].strip() if lines else "") or type(exc).__name__


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`save_atomic`.

    Parameters
    ----------
    path
        The file, or a run directory holding ``checkpoint.pt``.

    Returns
    -------
    dict
        The payload, checked by :func:`check_payload`.

    Raises
    ------
    CheckpointError
        Naming the file: missing, empty, not a torch file, holding objects a safe load refuses
        (it is never loaded unsafely), or a payload of the wrong structure (naming the field).
    """
    source = checkpoint_file(path)
    size = source.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"{source}: the file is empty (0 bytes), not a topo-ep checkpoint (an interrupted "
            "copy?)"
        )
    if not zipfile.is_zipfile(source):
        raise CheckpointError(
            f"{source}: not a readable topo-ep checkpoint: not a file written by torch.save "
            f"({size} bytes)"
        )
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{source}: not a topo-ep checkpoint: it holds Python objects other than tensors and "
            "plain data, so the safe loader refuses it (topo-ep never loads a checkpoint "
            "unsafely, as that can run code from the file)"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"{source}: not a readable topo-ep checkpoint ({_first_line(exc)})"
        ) from None
    check_payload(payload, source)
    return payload


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _bad(source: Path, field: str, expected: str, value: Any) -> CheckpointError:
    return CheckpointError(
        f"{source}: not a valid topo-ep checkpoint: field {field!r} must be {expected}, "
        f"got {_describe(value)}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_payload(payload: Any, source: str | os.PathLike) -> None:
    """Check the structure and the types of a checkpoint payload.

    Required: ``spec`` (mapping), ``model`` (tensor name -> floating tensor, or int64 for a
    block's fixed structure such as a sparse mask), ``epoch``
    (integer >= 1) and ``method`` (a method's name; the caller that builds it checks the
    learning-method registry). Checked when present: ``format``,
    ``settings`` (each of :data:`SETTING_TYPES`), ``optimizer`` (``state`` and
    ``param_groups``), ``metrics`` (one record per finished epoch, 1 to ``epoch``), ``versions``,
    ``feedback_scale`` (the scale of the feedback gains of a topology with a target radius),
    ``warm_states`` (the warm starts of ``training.warm_start``: examples x hidden units) and
    ``partial`` (a mid-epoch checkpoint, :mod:`topo_ep.partial_epoch`: ``epoch`` is then the
    epoch in progress and ``metrics`` holds the epochs before it).

    Raises
    ------
    CheckpointError
        Naming ``source`` and the first field that is missing or of the wrong type.
    """
    where = Path(source)
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{where}: not a topo-ep checkpoint (it holds {type(payload).__name__}, not a mapping)"
        )
    missing = [key for key in ("spec", "model", "epoch", "method") if key not in payload]
    if missing:
        raise CheckpointError(
            f"{where}: not a topo-ep checkpoint (missing field {', '.join(map(repr, missing))})"
        )
    if "format" in payload and payload["format"] != FORMAT:
        raise _bad(where, "format", str(FORMAT), payload["format"])
    epoch = payload["epoch"]
    if not _is_int(epoch) or epoch < 1:
        raise _bad(where, "epoch", "an integer >= 1", epoch)
    method = payload["method"]
    if not isinstance(method, str) or not method:
        raise _bad(where, "method", "the name of a learning method", method)
    if not isinstance(payload["spec"], dict):
        raise _bad(where, "spec", "a mapping (the stored topology)", payload["spec"])
    _check_model(payload["model"], where)
    if "settings" in payload:
        _check_settings(payload["settings"], method, where)
    if "optimizer" in payload:
        _check_optimizer(payload["optimizer"], where)
    if "partial" in payload:
        check_partial_entry(payload["partial"], where)
    if "metrics" in payload:
        _check_metrics(payload["metrics"], epoch - ("partial" in payload), where)
    if "versions" in payload and not isinstance(payload["versions"], dict):
        raise _bad(where, "versions", "a mapping", payload["versions"])
    states = payload.get("warm_states")
    if states is not None and not (
        isinstance(states, torch.Tensor) and states.is_floating_point() and states.dim() == 2
    ):
        raise _bad(where, "warm_states", "a floating-point matrix (the warm starts)", states)
    scale = payload.get("feedback_scale", 1.0)
    if not _is_number(scale) or not (math.isfinite(scale) and scale > 0):
        raise _bad(where, "feedback_scale", "a positive finite number", scale)


def _check_model(model: Any, where: Path) -> None:
    if not isinstance(model, dict):
        raise _bad(where, "model", "a mapping of tensor names to tensors", model)
    for name, value in model.items():
        if not isinstance(name, str):
            raise _bad(where, "model", "a mapping with string keys", name)
        # Integer tensors are the fixed structure of a block (a sparse block's mask).
        if not isinstance(value, torch.Tensor) or not (
            value.is_floating_point() or value.dtype == torch.int64
        ):
            raise _bad(where, f"model.{name}", "a floating-point (or int64 index) tensor", value)


def _check_settings(settings: Any, method: str, where: Path) -> None:
    if not isinstance(settings, dict):
        raise _bad(where, "settings", "a mapping of run settings", settings)
    for key, types in SETTING_TYPES.items():
        if key not in settings:
            continue
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise _bad(where, f"settings.{key}", names, value)
    if settings.get("dtype", "float32") not in DTYPE_NAMES:
        raise _bad(where, "settings.dtype", f"one of {', '.join(DTYPE_NAMES)}", settings["dtype"])
    if settings.get("method", method) != method:
        raise _bad(
            where, "settings.method", f"the checkpoint's method {method!r}", settings["method"]
        )


def _check_optimizer(optimizer: Any, where: Path) -> None:
    if not isinstance(optimizer, dict):
        raise _bad(where, "optimizer", "a mapping (an optimizer state)", optimizer)
    if not isinstance(optimizer.get("state"), dict):
        raise _bad(where, "optimizer.state", "a mapping", optimizer.get("state"))
    groups = optimizer.get("param_groups")
    if not isinstance(groups, list) or not groups:
        raise _bad(where, "optimizer.param_groups", "a non-empty list", groups)
    for index, group in enumerate(groups):
        params = group.get("params") if isinstance(group, dict) else None
        if not isinstance(params, list) or not all(_is_int(p) for p in params):
            raise _bad(
                where, f"optimizer.param_groups[{index}]", "a mapping with a list of params", group
            )


def _check_metrics(metrics: Any, finished: int, where: Path) -> None:
    if not isinstance(metrics, list):
        raise _bad(where, "metrics", "a list of records, one per epoch", metrics)
    if len(metrics) != finished:
        raise CheckpointError(
            f"{where}: not a valid topo-ep checkpoint: field 'metrics' holds {len(metrics)} "
            f"records but {finished} epochs are finished"
        )
    for index, record in enumerate(metrics):
        field = f"metrics[{index}]"
        if not isinstance(record, dict):
            raise _bad(where, field, "a mapping", record)
        if record.get("epoch") != index + 1 or not _is_int(record.get("epoch")):
            raise _bad(where, f"{field}.epoch", f"{index + 1}", record.get("epoch"))
        for key in _METRIC_NUMBERS:
            if key in record and not _is_number(record[key]):
                raise _bad(where, f"{field}.{key}", "a number", record[key])
        for key in _METRIC_OPTIONAL:
            if key in record and record[key] is not None and not _is_number(record[key]):
                raise _bad(where, f"{field}.{key}", "a number or null", record[key])


def choose_resume_payload(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint that ``--resume`` continues from, and its payload.

    ``path`` names a run directory or a checkpoint file. A file is read as it is. In a run
    directory, ``checkpoint.partial.pt`` is chosen when it holds a later epoch than
    ``checkpoint.pt`` (or there is no ``checkpoint.pt``: a run stopped in its first epoch);
    otherwise it is a stale leftover of an epoch that ``checkpoint.pt`` already holds whole
    (the trainer removes it when that run's next epoch ends), and ``checkpoint.pt`` is chosen.

    Raises
    ------
    CheckpointError
        When neither file exists, or the chosen one cannot be read or is not a checkpoint.
    """
    directory = Path(path)
    partial = directory / PARTIAL_NAME
    if not directory.is_dir() or not partial.is_file():
        source = checkpoint_file(path)
        return source, load_checkpoint(source)
    whole = directory / "checkpoint.pt"
    mid = load_checkpoint(partial)
    if not whole.exists():
        return partial, mid
    payload = load_checkpoint(whole)
    if "partial" in mid and mid["epoch"] > payload["epoch"]:
        return partial, mid
    return whole, payload


def non_finite_tensors(model: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors of a state dict that hold NaN or infinite values."""
    return [
        name
        for name, value in model.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]


def check_finite(payload: dict[str, Any], source: str | os.PathLike) -> None:
    """Refuse a checkpoint whose weights hold NaN or infinite values.

    Raises
    ------
    CheckpointError
        Naming the file, the epoch and the tensors.
    """
    bad = non_finite_tensors(payload["model"])
    if bad:
        names = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise CheckpointError(
            f"{source}: the weights of epoch {payload['epoch']} hold NaN or infinite values "
            f"({names}): the training diverged before this checkpoint was written; it cannot "
            "be used (retrain with a smaller training.lr)"
        )
