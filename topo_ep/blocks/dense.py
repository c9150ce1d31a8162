"""The dense block kind: a (target size, source size) matrix W, run as GEMMs.

h_target += g * s_source @ W^T (one fused ``addmm``); its tied transpose B->A is
``g * W_AB^T`` (:class:`TransposeBlock`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from topo_ep.blocks.base import (
    BLOCKS,
    Block,
    BlockContext,
    Joined,
    OwningBlock,
    TiedTranspose,
    register_tensor,
)


@BLOCKS.register("dense")
class DenseBlock(OwningBlock):
    """A dense block ``g W`` with W of shape (target size, source size).

    Parameters
    ----------
    source, target
        Layer names.
    weight
        W; registered as ``weight``, an ``nn.Parameter`` when ``learned``, else a buffer.
    gain
        g.
    learned
        Whether the optimizer updates W.
    """

    kind = "dense"

    def __init__(
        self, source: str, target: str, weight: Tensor, gain: float, learned: bool = True
    ) -> None:
        super().__init__(source, target, gain, learned)
        register_tensor(self, "weight", weight, learned)

    @classmethod
    def build(cls, context: BlockContext) -> DenseBlock:
        """W = I (``init: identity``), else :func:`~topo_ep.initial.uniform_init` (zeros,
        Glorot- or fan-in-uniform, fan in = cols, fan out = rows) from the tensor's own
        generator, drawn in float64 and cast to ``context.dtype``."""
        rows, cols = context.rows, context.cols
        if context.init == "identity":
            value = torch.eye(rows, cols, dtype=context.dtype)
        else:
            value = context.initial((rows, cols), (cols, rows))
        return cls(context.source, context.target, value, context.gain, context.learned)

    @classmethod
    def stored_entries(cls, context: BlockContext) -> int:
        """rows x cols."""
        return context.rows * context.cols

    @property
    def parameter(self) -> Tensor:
        """W."""
        return self.weight

    @property
    def fan_in(self) -> float:
        """The source units one target unit sums: cols."""
        return float(self.weight.shape[1])

    def accumulate(
        self, acc: Tensor, x: Tensor, scale: float = 1.0, joined: Joined | None = None
    ) -> Tensor:
        """acc + scale * g * x @ W^T, one fused GEMM."""
        return torch.addmm(acc, x, self.weight.t(), alpha=self.gain * scale)

    def accumulate_(
        self, acc: Tensor, x: Tensor, scale: float = 1.0, joined: Joined | None = None
    ) -> Tensor:
        """acc += scale * g * x @ W^T in place (the same GEMM as :meth:`accumulate`, without
        copying acc first); returns acc."""
        return acc.addmm_(x, self.weight.t(), alpha=self.gain * scale)

    def apply(self, x: Tensor, joined: Joined | None = None) -> Tensor:
        """g * x @ W^T."""
        out = x @ self.weight.t()
        return out if self.gain == 1.0 else out * self.gain

    def adjoint(self, y: Tensor, joined: Joined | None = None) -> Tensor:
        """g * y @ W (the transpose map, target to source)."""
        out = y @ self.weight
        return out if self.gain == 1.0 else out * self.gain

    def dense(self) -> Tensor:
        """g * W, shape (target size, source size)."""
        return self.weight * self.gain

    def outer(self, post: Tensor, pre: Tensor, joined: Joined | None = None) -> Tensor:
        """post^T pre = sum_b post_b pre_b^T, shaped like W."""
        return post.t() @ pre

    def transpose(self, source: str, target: str, gain: float) -> Block:
        """The tied feedback ``gain * W^T`` from ``source`` (this block's target)."""
        return TransposeBlock(source, target, self, gain)

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "density": 1.0, "backend": "dense"}

    def extra_repr(self) -> str:
        rows, cols = self.weight.shape
        return f"{self.source}->{self.target}, {rows}x{cols}, gain={self.gain:g}"

    def __repr__(self) -> str:
        return f"DenseBlock({self.extra_repr()})"


class TransposeBlock(TiedTranspose):
    """A tied feedback block B->A: ``g W_AB^T``, where W_AB belongs to the partner block.

    It holds a reference to the partner, never a copy, so it follows learning.
    h_A += g * s_B @ W_AB.
    """

    kind = "dense"
    partner: DenseBlock

    @property
    def weight(self) -> Tensor:
        """The partner's weight W_AB, shape (source size, target size) for this block."""
        return self.partner.weight

    def accumulate(
        self, acc: Tensor, x: Tensor, scale: float = 1.0, joined: Joined | None = None
    ) -> Tensor:
        """acc + scale * g * x @ W_AB, one fused GEMM."""
        return torch.addmm(acc, x, self.partner.weight, alpha=self.gain * scale)

    def accumulate_(
        self, acc: Tensor, x: Tensor, scale: float = 1.0, joined: Joined | None = None
    ) -> Tensor:
        """acc += scale * g * x @ W_AB in place (the GEMM of :meth:`accumulate`); returns acc."""
        return acc.addmm_(x, self.partner.weight, alpha=self.gain * scale)

    def apply(self, x: Tensor, joined: Joined | None = None) -> Tensor:
        out = x @ self.partner.weight
        return self.gained(out)

    def adjoint(self, y: Tensor, joined: Joined | None = None) -> Tensor:
        out = y @ self.partner.weight.t()
        return self.gained(out)

    def dense(self) -> Tensor:
        return self.partner.weight.t() * self.gain

    def outer(self, post: Tensor, pre: Tensor, joined: Joined | None = None) -> Tensor:
        """pre^T post: the derivative with respect to the partner's W (its shape)."""
        return pre.t() @ post

    def __repr__(self) -> str:
        cols, rows = self.partner.weight.shape
        return (
            f"TransposeBlock({self.source}->{self.target}, {rows}x{cols}, gain={self.gain:g}, "
            f"tied to {self.partner.source}->{self.partner.target})"
        )
