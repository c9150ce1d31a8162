"""Builders of hostile inputs for the hostile-input tests: topology files, IDX data files,
checkpoints and run directories, all small and made in a test's temporary directory."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

#: quickstart.yaml shrunk to 8 units per layer: trains an epoch of 20 examples in milliseconds.
TINY_TOPOLOGY = """\
name: tiny
input: {size: 64, mean: 0.305, std: 0.376}
layers:
  - {name: h1, size: 8}
  - {name: h2, size: 8}
readout: {from: h2, size: 10}
edges:
  - {source: input, target: h1}
  - {source: h1, target: h2}
  - {source: h2, target: h1, kind: feedback, gain: 0.1}
dynamics: {schedule: sweep, free_steps: 8, nudged_steps: 4, tolerance: 1e-4, check_every: 2}
training: {nudge: 0.1, nudging: symmetric, rule: paper, optimizer: adam, lr: 2e-3,
           lr_schedule: cosine, batch_size: 10, epochs: 2}
"""

#: The same network for IDX files of 2 x 2 pixels (4 features).
TINY_IDX_TOPOLOGY = TINY_TOPOLOGY.replace("{size: 64, mean: 0.305, std: 0.376}", "{size: 4}")

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


def write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` (parents created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def tiny_topology(directory: Path, replace: tuple[str, str] | None = None) -> Path:
    """``tiny.yaml`` in ``directory``, with one text replacement applied."""
    text = TINY_TOPOLOGY if replace is None else TINY_TOPOLOGY.replace(*replace)
    return write(directory / "tiny.yaml", text)


def explicit_layers(directory: Path, count: int) -> Path:
    """A topology file with ``count`` explicit layers in a chain (no alias anywhere)."""
    lines = ["name: many", "input: {size: 4}", "layers:"]
    lines += [f"  - {{name: h{i}, size: 4, activation: tanh}}" for i in range(count)]
    lines += [f"readout: {{from: h{count - 1}, size: 4}}", "edges:"]
    lines += ["  - {source: input, target: h0}"]
    lines += [f"  - {{source: h{i}, target: h{i + 1}}}" for i in range(count - 1)]
    return write(directory / "many.yaml", "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------ IDX files
def idx_header(magic: int, dims: tuple[int, ...]) -> bytes:
    """The header of an IDX file: magic number and big-endian dimensions."""
    return magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in dims)


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    """A whole IDX file holding ``array`` (uint8)."""
    return idx_header(magic, array.shape) + np.ascontiguousarray(array, np.uint8).tobytes()


def idx_set(
    directory: Path, n_train: int = 60, n_test: int = 20, gz: bool = False
) -> dict[str, Path]:
    """The four IDX files of a dataset of 2 x 2 images; returns role -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": (IMAGES_MAGIC, rng.integers(0, 256, (n_train, 2, 2))),
        "train-labels-idx1-ubyte": (LABELS_MAGIC, np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte": (IMAGES_MAGIC, rng.integers(0, 256, (n_test, 2, 2))),
        "t10k-labels-idx1-ubyte": (LABELS_MAGIC, np.arange(n_test) % 10),
    }
    paths = {}
    for name, (magic, array) in arrays.items():
        data = idx_bytes(magic, array.astype(np.uint8))
        path = directory / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(data) if gz else data)
        paths[name.split("-idx")[0]] = path
    return paths


def gzip_of_zeros(path: Path, header: bytes, zeros: int) -> Path:
    """A gzip file of ``header`` followed by ``zeros`` zero bytes, compressed in chunks."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    chunk = bytes(1 << 20)
    with path.open("wb") as handle:
        handle.write(compressor.compress(header))
        left = zeros
        while left > 0:
            handle.write(compressor.compress(chunk[: min(left, len(chunk))]))
            left -= len(chunk)
        handle.write(compressor.flush())
    return path


def sparse_file(path: Path, header: bytes, size: int) -> Path:
    """A sparse file of ``size`` bytes beginning with ``header`` (no disk space used)."""
    with path.open("wb") as handle:
        handle.write(header)
        handle.truncate(size)
    return path


# ---------------------------------------------------------------------------------- checkpoints
def mutated_checkpoint(source: Path, target: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    """Copy the checkpoint ``source`` to ``target`` with ``change(payload)`` applied; when
    ``change`` returns something other than ``None``, that is saved instead."""
    payload = torch.load(source, map_location="cpu", weights_only=True)
    result = change(payload)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload if result is None else result, target)
    return target


def copy_run(source: Path, target: Path) -> Path:
    """Copy the files of a run directory (not its subdirectories)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.is_file():
            (target / entry.name).write_bytes(entry.read_bytes())
    return target


# ------------------------------------------------------------------------------------ processes
def _default_sigint() -> None:
    """In the child, before exec: SIGINT back to its default disposition.

    A suite started in the background by a non-interactive shell (``pytest &``, ``nohup``)
    inherits SIGINT as *ignored*, and so would every trainer it starts: Python then installs
    no KeyboardInterrupt handler and a test's Ctrl-C would go unheard.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def topo_ep(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python -m topo_ep ARGS`` in the repository root, capturing its output, with
    SIGINT at its default disposition whatever the suite's own (see :func:`_default_sigint`)."""
    environment = {**os.environ, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "topo_ep", *args],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until ``path`` exists; fail with the process's output if it ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"process ended (code {process.returncode}) first:\n{out}\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.02)


def temp_files(directory: Path) -> list[str]:
    """Names of temporary files (``*.tmp``) and lock files left in a directory."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".tmp", ".lock")))
