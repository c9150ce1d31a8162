"""The pooled block kind: ``g W pool(x)``, a dense matrix applied after pooling the source.

The source is arranged as ``[C, H, W]``; P pools it in n x n windows
(:class:`~topo_ep.blocks.pooling.Pooling`) and W is (target size, C (H // n) (W // n)). The
paper's CNN reads its top layer this way: ``readout: {from: h2, size: 10, block: {kind: pooled,
pool: {kind: max, size: 2}}}`` is softmax(W maxpool(h2)). Its tied transpose carries the nudge
back into the source, unpooled at the argmax of the source's current pooling (``joined.target``
of the transpose), as the paper's net does:

    g A x = g W P x,    g A^T y = g P_s^T (W^T y).

For average pooling A = W P is a fixed matrix (``dense()``); for max pooling it depends on the
state and ``dense()`` says so. ``outer(post, pre)`` is ``post^T P pre``, shaped like W.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from topo_ep.block_schema import pooled_shape
from topo_ep.blocks.base import (
    BLOCKS,
    Block,
    BlockContext,
    Joined,
    OwningBlock,
    TiedTranspose,
    register_tensor,
)
from topo_ep.blocks.pooling import Pooling
from topo_ep.errors import TopoEpError


@BLOCKS.register("pooled")
class PooledBlock(OwningBlock):
    """``g W P x`` from a ``[C, H, W]`` source.

    Parameters
    ----------
    source, target
        Layer names (``readout`` as the readout's target).
    weight
        W, (target size, pooled source size); an ``nn.Parameter`` when ``learned``.
    gain
        g.
    pooling
        P, the pooling of the source.
    learned
        Whether the optimizer updates W.
    """

    kind = "pooled"

    def __init__(
        self,
        source: str,
        target: str,
        weight: Tensor,
        gain: float,
        pooling: Pooling,
        learned: bool = True,
    ) -> None:
        super().__init__(source, target, gain, learned)
        self.pooling = pooling
        register_tensor(self, "weight", weight, learned)
        self.cols = math.prod(pooling.shape)

    @classmethod
    def build(cls, context: BlockContext) -> PooledBlock:
        """W (rows, pooled size) from :func:`~topo_ep.initial.uniform_init` (``init``: zeros,
        Glorot- or fan-in-uniform, fan in = the pooled size) with the tensor's own generator."""
        grid = context.source_grid
        pooled = pooled_shape(context.block.options, grid)
        pool = dict(context.block.option("pool"))
        pooling = Pooling(pool["kind"], pool["size"], (grid[0], grid[1], grid[2]), context.source)
        rows, cols = context.rows, math.prod(pooled)
        return cls(
            context.source,
            context.target,
            context.initial((rows, cols), (cols, rows)),
            context.gain,
            pooling,
            context.learned,
        )

    @classmethod
    def stored_entries(cls, context: BlockContext) -> int:
        """rows x pooled source size."""
        return context.rows * math.prod(pooled_shape(context.block.options, context.source_grid))

    @property
    def parameter(self) -> Tensor:
        """W."""
        return self.weight

    @property
    def fan_in(self) -> float:
        """The pooled source values one target unit sums: the pooled size (W's columns)."""
        return float(self.weight.shape[1])

    # ------------------------------------------------------------------ pooling, flat
    def pooled(self, x: Tensor) -> Tensor:
        """P x, flat (batch, pooled size)."""
        grid = x.reshape(x.shape[0], *self.pooling.shape)
        return self.pooling.pool(grid).reshape(x.shape[0], -1)

    def gathered(self, y: Tensor, state: Tensor | None, why: str) -> Tensor:
        """P_s y, flat: the pooling of y at the argmax of ``state`` (max) or averaged."""
        grid = y.reshape(y.shape[0], *self.pooling.shape)
        return self.pooling.gather(grid, state, why).reshape(y.shape[0], -1)

    def unpooled(self, z: Tensor, state: Tensor | None, why: str) -> Tensor:
        """P_s^T z, flat (batch, C H W)."""
        grid = z.reshape(z.shape[0], *self.pooling.pooled)
        return self.pooling.unpool(grid, state, why).reshape(z.shape[0], self.cols)

    def matrix(self) -> Tensor:
        """A = W P without the gain, (rows, C H W): each row of W unpooled (P^T is exact for
        average pooling).

        Raises
        ------
        TopoEpError
            For max pooling: A depends on the state.
        """
        if self.pooling.state_dependent:
            raise TopoEpError(
                f"pooled block {self.source}->{self.target} max-pools {self.source}: the "
                f"pooling picks the argmax of {self.source}'s current state, so the block has "
                "no state-independent matrix (no energy, and no spectral radius of a fixed "
                "operator); average pooling keeps it linear"
            )
        return self.unpooled(self.weight.detach(), None, "")

    # ------------------------------------------------------------------ the Block protocol
    def accumulate(
        self, acc: Tensor, x: Tensor, scale: float = 1.0, joined: Joined | None = None
    ) -> Tensor:
        """acc + scale * g * W P x, one fused GEMM after the pooling."""
        return torch.addmm(acc, self.pooled(x), self.weight.t(), alpha=self.gain * scale)

    def apply(self, x: Tensor, joined: Joined | None = None) -> Tensor:
        """g * W P x."""
        out = self.pooled(x) @ self.weight.t()
        return out if self.gain == 1.0 else out * self.gain

    def adjoint(self, y: Tensor, joined: Joined | None = None) -> Tensor:
        """g * P_s^T W^T y, unpooled at the argmax of the source's state ``joined.source``."""
        state = joined.source if joined is not None else None
        out = self.unpooled(y @ self.weight, state, f"the adjoint of pooled block {self}")
        return out if self.gain == 1.0 else out * self.gain

    def dense(self) -> Tensor:
        """g * W P (see :meth:`matrix`)."""
        return self.matrix() * self.gain

    def outer(self, post: Tensor, pre: Tensor, joined: Joined | None = None) -> Tensor:
        """post^T P pre, shaped like W."""
        return post.t() @ self.pooled(pre)

    def transpose(self, source: str, target: str, gain: float) -> Block:
        """The tied feedback ``gain * P_s^T W^T`` from ``source`` (this block's target)."""
        return PooledTransposeBlock(source, target, self, gain)

    def summary(self) -> dict[str, Any]:
        """Kind, pooling, entries, density and backend."""
        rows = self.weight.shape[0]
        return {
            "kind": self.kind,
            "pool": self.pooling.describe(),
            "entries": self.weight.numel(),
            "density": self.weight.numel() / (rows * self.cols),
            "backend": "dense",
        }

    def __repr__(self) -> str:
        rows, cols = self.weight.shape
        return (
            f"PooledBlock({self.source}->{self.target}, {self.pooling.describe()}-pool "
            f"{list(self.pooling.shape)}->{list(self.pooling.pooled)}, then {rows}x{cols}, "
            f"gain={self.gain:g})"
        )

    def __str__(self) -> str:
        return f"{self.source}->{self.target}"


class PooledTransposeBlock(TiedTranspose):
    """The tied feedback B->A of a pooled block A->B: ``g P_s^T W^T``, unpooled at the argmax of
    A's state ``joined.target`` for max pooling. It holds the partner, never a copy."""

    kind = "pooled"
    partner: PooledBlock

    def _why(self) -> str:
        return f"the tied feedback {self.source}->{self.target} of pooled block {self.partner}"

    def accumulate(
        self, acc: Tensor, x: Tensor, scale: float = 1.0, joined: Joined | None = None
    ) -> Tensor:
        """acc + scale * g * P_s^T W^T x, s = ``joined.target``."""
        out = self.partner.unpooled(
            x @ self.partner.weight, self.unpooling_state(joined), self._why()
        )
        return torch.add(acc, out, alpha=self.gain * scale)

    def apply(self, x: Tensor, joined: Joined | None = None) -> Tensor:
        """g * P_s^T W^T x."""
        out = self.partner.unpooled(
            x @ self.partner.weight, self.unpooling_state(joined), self._why()
        )
        return self.gained(out)

    def adjoint(self, y: Tensor, joined: Joined | None = None) -> Tensor:
        """g * W P_s y."""
        gathered = self.partner.gathered(y, self.unpooling_state(joined), self._why())
        out = gathered @ self.partner.weight.t()
        return self.gained(out)

    def dense(self) -> Tensor:
        """g * (W P)^T (average pooling; max pooling raises)."""
        return self.partner.matrix().t() * self.gain

    def outer(self, post: Tensor, pre: Tensor, joined: Joined | None = None) -> Tensor:
        """d/dW sum_b post_b . P_s^T W^T pre_b = pre^T P_s post, shaped like the partner's W."""
        return pre.t() @ self.partner.gathered(post, self.unpooling_state(joined), self._why())

    def __repr__(self) -> str:
        return (
            f"PooledTransposeBlock({self.source}->{self.target}, gain={self.gain:g}, tied to "
            f"{self.partner.source}->{self.partner.target})"
        )
