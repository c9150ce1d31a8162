"""Masks of sparse blocks: which entries (target unit, source unit) of A are present.

A mask is returned in CSR form, ``(crow, col)`` (int64, on the CPU): row i (a target unit)
holds the source units ``col[crow[i]:crow[i + 1]]``, sorted. This order, row-major, is the
fixed order of a sparse block's stored values, whatever the backend.

- :func:`random_mask`: each target unit draws k = max(1, round(density x cols)) distinct
  source units uniformly (a fixed fan-in), from a generator seeded by the mask's own seed.
- :func:`local_mask`: each target unit connects to the source units within a Euclidean radius
  of its position mapped onto the source's grid (topographic wiring).

Both work in row chunks of at most :data:`CHUNK_ENTRIES` candidate entries, so a mask of a
large block never needs a dense (rows x cols) temporary.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Candidate entries handled at once (rows per chunk = CHUNK_ENTRIES // cols, at least 1).
CHUNK_ENTRIES = 1 << 22


def _step(cols: int) -> int:
    """Rows per chunk."""
    return max(1, CHUNK_ENTRIES // max(cols, 1))


def row_count(density: float, cols: int) -> int:
    """k = max(1, round(density x cols)): the fan-in of a random mask."""
    return min(cols, max(1, round(density * cols)))


def random_mask(
    rows: int, cols: int, density: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """A random mask with k = :func:`row_count` entries in every row.

    Row i keeps the k source units with the largest of ``cols`` uniform draws (a uniformly
    random k-subset), drawn in chunks of rows in order, so the mask depends only on the
    generator's seed and the shape.
    """
    k = row_count(density, cols)
    step = _step(cols)
    parts = []
    for start in range(0, rows, step):
        count = min(step, rows - start)
        draws = torch.rand(count, cols, generator=generator, dtype=torch.float64)
        parts.append(draws.topk(k, dim=1).indices.sort(dim=1).values)
    col = torch.cat(parts).reshape(-1) if parts else torch.zeros(0, dtype=torch.long)
    crow = torch.arange(rows + 1, dtype=torch.long) * k
    return crow, col.to(torch.long)


def _positions(grid: tuple[int, ...]) -> Tensor:
    """Coordinates (n, dims) of the units of a row-major grid, float64."""
    axes = [torch.arange(size, dtype=torch.float64) for size in grid]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)


def local_mask(
    source_grid: tuple[int, ...], target_grid: tuple[int, ...], radius: float
) -> tuple[Tensor, Tensor]:
    """Entries (i, j) with ||q_j - c_i||_2 <= radius, on the source's grid.

    q_j is source unit j's grid position; c_i = (p_i + 1/2) S_source / S_target - 1/2 maps
    target unit i's position p_i onto the source's grid, per axis (the identity when the
    grids are equal). Both grids have the same number of dimensions (1 or 2).
    """
    if len(source_grid) != len(target_grid):
        raise ValueError(f"grids {source_grid} and {target_grid} differ in dimension")
    source = _positions(source_grid)
    scale = torch.tensor(
        [s / t for s, t in zip(source_grid, target_grid, strict=True)], dtype=torch.float64
    )
    centres = (_positions(target_grid) + 0.5) * scale - 0.5
    rows, cols = centres.shape[0], source.shape[0]
    limit = radius * radius * (1.0 + 1e-12)
    counts, cols_out = [], []
    step = _step(cols)
    for start in range(0, rows, step):
        offsets = centres[start : start + step, None, :] - source[None, :, :]
        present = offsets.pow(2).sum(dim=-1) <= limit
        counts.append(present.sum(dim=1))
        cols_out.append(present.nonzero()[:, 1])
    crow = torch.zeros(rows + 1, dtype=torch.long)
    crow[1:] = torch.cat(counts).cumsum(0)
    return crow, torch.cat(cols_out).to(torch.long)


def local_row_bound(source_grid: tuple[int, ...], radius: float) -> int:
    """An upper bound of a local mask's entries per row: the lattice points of the box of
    half-width ``radius`` around a centre, clipped to the grid."""
    return math.prod(min(size, 2 * math.floor(radius) + 2) for size in source_grid)
