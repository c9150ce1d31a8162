"""Layout: where each hidden layer lives in the flat state vector.

The engine keeps one contiguous (batch, size) buffer per layer, which keeps every block GEMM on
contiguous memory; analysis sees the same state as one flat vector through :meth:`Layout.flatten`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Layout:
    """Hidden layers in declaration order, each mapped to ``slice(offset, offset + size)``."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def offsets(self) -> tuple[int, ...]:
        out, total = [], 0
        for size in self.sizes:
            out.append(total)
            total += size
        return tuple(out)

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def slice(self, name: str) -> slice:
        i = self.index(name)
        offset = self.offsets[i]
        return slice(offset, offset + self.sizes[i])

    def flatten(self, state: list[Tensor]) -> Tensor:
        """Concatenate per-layer states (batch, size_k) into (batch, total)."""
        return torch.cat(state, dim=-1)

    def unflatten(self, flat: Tensor) -> list[Tensor]:
        """Split (batch, total) into contiguous per-layer states."""
        return [part.contiguous() for part in torch.split(flat, self.sizes, dim=-1)]

    def zeros(self, batch: int, *, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        """The all-zero state, where every relaxation starts."""
        return [torch.zeros(batch, size, dtype=dtype, device=device) for size in self.sizes]
