"""Block operators: one edge of the layer graph as a linear map between two layers.

Every block has the same interface, so the engine never needs to know how a block is stored:

- ``accumulate(acc, x)`` returns ``acc + gain * A x`` (batched, row-major states), fused into
  one GEMM for dense blocks;
- ``apply(x)`` returns ``gain * A x``;
- ``adjoint(y)`` returns ``gain * A^T y``;
- ``dense()`` returns ``gain * A`` as a (target size, source size) matrix for analysis.

States are row vectors: a batch of states of a layer is a (batch, size) tensor, so
``gain * A x`` is computed as ``gain * x @ A^T``. Sparse and convolutional blocks join by
implementing this interface.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class Block(Protocol):
    """A linear map from the state of ``source`` into the pre-activation of ``target``."""

    source: str
    target: str
    gain: float

    def accumulate(self, acc: Tensor, x: Tensor) -> Tensor: ...

    def apply(self, x: Tensor) -> Tensor: ...

    def adjoint(self, y: Tensor) -> Tensor: ...

    def dense(self) -> Tensor: ...


class DenseBlock:
    """A dense block ``gain * W`` with W of shape (target size, source size).

    h_target += gain * s_source @ W^T.
    """

    def __init__(self, source: str, target: str, weight: Tensor, gain: float) -> None:
        self.source = source
        self.target = target
        self.weight = weight
        self.gain = float(gain)

    def accumulate(self, acc: Tensor, x: Tensor) -> Tensor:
        """acc + gain * x @ W^T, one fused GEMM."""
        return torch.addmm(acc, x, self.weight.t(), alpha=self.gain)

    def apply(self, x: Tensor) -> Tensor:
        """gain * x @ W^T."""
        out = x @ self.weight.t()
        return out if self.gain == 1.0 else out * self.gain

    def adjoint(self, y: Tensor) -> Tensor:
        """gain * y @ W (the transpose map, target to source)."""
        out = y @ self.weight
        return out if self.gain == 1.0 else out * self.gain

    def dense(self) -> Tensor:
        """gain * W, shape (target size, source size)."""
        return self.weight * self.gain

    def __repr__(self) -> str:
        rows, cols = self.weight.shape
        return f"DenseBlock({self.source}->{self.target}, {rows}x{cols}, gain={self.gain:g})"


class TransposeBlock:
    """A tied feedback block B->A: ``gain * W_AB^T`` where W_AB is the partner's weight.

    It holds a reference to the partner block, never a copy, so it follows learning.
    h_A += gain * s_B @ W_AB.
    """

    def __init__(self, source: str, target: str, partner: DenseBlock, gain: float) -> None:
        self.source = source
        self.target = target
        self.partner = partner
        self.gain = float(gain)

    @property
    def weight(self) -> Tensor:
        """The partner's weight W_AB, shape (source size, target size) for this block."""
        return self.partner.weight

    def accumulate(self, acc: Tensor, x: Tensor) -> Tensor:
        """acc + gain * x @ W_AB, one fused GEMM."""
        return torch.addmm(acc, x, self.partner.weight, alpha=self.gain)

    def apply(self, x: Tensor) -> Tensor:
        out = x @ self.partner.weight
        return out if self.gain == 1.0 else out * self.gain

    def adjoint(self, y: Tensor) -> Tensor:
        out = y @ self.partner.weight.t()
        return out if self.gain == 1.0 else out * self.gain

    def dense(self) -> Tensor:
        return self.partner.weight.t() * self.gain

    def __repr__(self) -> str:
        cols, rows = self.partner.weight.shape
        return (
            f"TransposeBlock({self.source}->{self.target}, {rows}x{cols}, gain={self.gain:g}, "
            f"tied to {self.partner.source}->{self.partner.target})"
        )
