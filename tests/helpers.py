"""Shared helpers for the test suite: where the shared reference data lives."""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """The ``shared/`` folder beside the checkout (or ``$TOPO_EP_SHARED``), if present."""
    candidates = [os.environ.get("TOPO_EP_SHARED"), _REPO.parent / "shared", _REPO / "shared"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def golden_path(name: str) -> Path | None:
    """Path of the golden vectors ``<name>.npz``: the copy in ``tests/golden`` (taken verbatim
    from ``shared/golden``), or ``None`` when absent."""
    path = _REPO / "tests" / "golden" / f"{name}.npz"
    return path if path.is_file() else None


def mnist_dir() -> Path | None:
    """``shared/data/mnist`` (or ``$TOPO_EP_MNIST_DIR``), if present."""
    env = os.environ.get("TOPO_EP_MNIST_DIR")
    if env and Path(env).is_dir():
        return Path(env)
    base = shared_dir()
    if base is None:
        return None
    path = base / "data" / "mnist"
    return path if path.is_dir() else None
