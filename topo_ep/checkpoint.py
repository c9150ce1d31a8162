"""Checkpoints: written atomically (temporary file, fsync, rename), read with clear errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from topo_ep.errors import CheckpointError


def save_atomic(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``payload`` with ``torch.save`` so that ``path`` is either the old or the new file.

    The data goes to a temporary file in the same directory, is flushed to disk, then renamed
    over ``path`` (``os.replace`` is atomic on POSIX and Windows).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_atomic`; errors name the file."""
    source = Path(path)
    if source.is_dir():
        source = source / "checkpoint.pt"
    if not source.is_file():
        raise CheckpointError(f"{path}: no checkpoint found (looked for {source})")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{source}: not a readable topo-ep checkpoint ({exc})") from exc
    required = {"spec", "model", "epoch", "method"}
    if not isinstance(payload, dict) or not required <= set(payload):
        raise CheckpointError(f"{source}: not a topo-ep checkpoint (missing {sorted(required)})")
    return payload
