"""The conv block kind: ``g conv(pool(x))``, a 2-D convolution after an optional pooling.

Both layers are arranged as channels ``[C, H, W]`` (row-major in the flat state). The block owns
one kernel K of shape (C_out, C_in, k, k); C_out is the target's channel count. With P the
pooling of the source (:class:`~topo_ep.blocks.pooling.Pooling`, or the identity):

    h_target += g conv_K(P x)                    (apply, accumulate)
    g A^T y = g P_s^T conv_transpose_K(y)        (adjoint)

For average pooling (or none) the block is a fixed linear map A, and ``dense()`` is its matrix.
Max pooling picks each window's argmax of the current state: the forward map pools x at its own
argmax, the adjoint unpools at the argmax of the source's state (``joined.source``), and the tied
transpose (:class:`ConvTransposeBlock`, from the target back to the source) unpools at the
argmax of its target's state (``joined.target``). There is then no state-independent matrix, and
``dense()`` says so. ``outer`` is the kernel gradient
``d/dK sum_b post_b . conv_K(P pre_b)``, computed by ``torch.nn.grad.conv2d_weight``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from topo_ep.block_schema import ConvGeometry
from topo_ep.blocks.base import (
    BLOCKS,
    Block,
    BlockContext,
    Joined,
    OwningBlock,
    TiedTranspose,
    register_tensor,
)
from topo_ep.blocks.pooling import Pooling, unit_columns
from topo_ep.errors import TopoEpError

#: Columns of the identity pushed through the block at once by ``dense()``.
DENSE_CHUNK = 512


def _memory_available() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@BLOCKS.register("conv")
class ConvBlock(OwningBlock):
    """``g conv_K(P x)`` from a ``[C_in, H, W]`` source to a ``[C_out, H_o, W_o]`` target.

    Parameters
    ----------
    source, target
        Layer names.
    kernel
        K, (C_out, C_in, k, k); registered as ``weight`` (an ``nn.Parameter`` when
        ``learned``, else a buffer).
    gain
        g.
    geometry
        Shapes, stride, padding and pooling (:class:`~topo_ep.block_schema.ConvGeometry`).
    learned
        Whether the optimizer updates K.
    """

    kind = "conv"

    def __init__(
        self,
        source: str,
        target: str,
        kernel: Tensor,
        gain: float,
        geometry: ConvGeometry,
        learned: bool = True,
    ) -> None:
        super().__init__(source, target, gain, learned)
        self.geometry = geometry
        register_tensor(self, "weight", kernel, learned)
        self.pooling = (
            Pooling(geometry.pool, geometry.pool_size, geometry.source, source)
            if geometry.pool is not None
            else None
        )
        pooled, output = geometry.pooled, geometry.output
        k, stride, padding = geometry.kernel, geometry.stride, geometry.padding
        #: conv_transpose2d's output_padding that gives back the pooled height and width.
        self.output_padding = (
            pooled[1] - ((output[1] - 1) * stride - 2 * padding + k),
            pooled[2] - ((output[2] - 1) * stride - 2 * padding + k),
        )
        self.rows = math.prod(output)
        self.cols = math.prod(geometry.source)

    @classmethod
    def build(cls, context: BlockContext) -> ConvBlock:
        """K (C_out, C_in, k, k) from :func:`~topo_ep.initial.uniform_init` with the tensor's own
        generator (drawn in float64, cast to ``context.dtype``): zeros, Glorot-uniform (fan in
        C_in k^2, fan out C_out k^2) or fan-in-uniform (a = 1 / sqrt(C_in k^2), PyTorch's
        default for ``nn.Conv2d``, which the paper's authors used)."""
        geometry = ConvGeometry.of(
            context.block.options, _image(context.source_grid), context.target_grid[0]
        )
        if geometry is None or geometry.output != tuple(context.target_grid):
            raise TopoEpError(
                f"conv block {context.source}->{context.target}: the options do not map "
                f"{list(context.source_grid)} onto {list(context.target_grid)}"
            )
        shape = (geometry.output[0], geometry.source[0], geometry.kernel, geometry.kernel)
        area = geometry.kernel * geometry.kernel
        fans = (geometry.source[0] * area, geometry.output[0] * area)
        return cls(
            context.source,
            context.target,
            context.initial(shape, fans),
            context.gain,
            geometry,
            context.learned,
        )

    @classmethod
    def stored_entries(cls, context: BlockContext) -> int:
        """C_out C_in k^2."""
        kernel = context.block.option("kernel")
        return context.target_grid[0] * context.source_grid[0] * kernel * kernel

    @property
    def parameter(self) -> Tensor:
        """K."""
        return self.weight

    @property
    def fan_in(self) -> float:
        """The source values one output position sums: C_in k^2."""
        return float(self.geometry.source[0] * self.geometry.kernel**2)

    # ------------------------------------------------------------------ maps without the gain
    def forward_map(self, x: Tensor, scale: float = 1.0) -> Tensor:
        """scale * conv_K(P x) for x (batch, C_in H W), flat (batch, C_out H_o W_o) (the scale
        multiplies the kernel)."""
        grid = x.reshape(x.shape[0], *self.geometry.source)
        if self.pooling is not None:
            grid = self.pooling.pool(grid)
        kernel = self.weight if scale == 1.0 else self.weight * scale
        return self._conv(grid, kernel).reshape(x.shape[0], self.rows)

    def pooled_forward(self, y: Tensor, state: Tensor | None, why: str) -> Tensor:
        """conv_K(P_s y): the forward map with the pooling taken at the argmax of ``state``
        (the adjoint of :meth:`adjoint_map` at that state)."""
        grid = y.reshape(y.shape[0], *self.geometry.source)
        if self.pooling is not None:
            grid = self.pooling.gather(grid, state, why)
        return self._conv(grid, self.weight).reshape(y.shape[0], self.rows)

    def transposed_conv(self, y: Tensor, scale: float = 1.0) -> Tensor:
        """scale * conv_transpose_K(y) for y (batch, C_out H_o W_o), as (batch, C_in, H_p, W_p)
        (the scale multiplies the kernel, the smaller tensor)."""
        grid = y.reshape(y.shape[0], *self.geometry.output)
        return F.conv_transpose2d(
            grid,
            self.weight if scale == 1.0 else self.weight * scale,
            stride=self.geometry.stride,
            padding=self.geometry.padding,
            output_padding=self.output_padding,
        )

    def adjoint_map(self, y: Tensor, state: Tensor | None, why: str) -> Tensor:
        """P_s^T conv_transpose_K(y) for y (batch, C_out H_o W_o), flat (batch, C_in H W);
        ``state`` is the source's, where a max pooling unpools."""
        back = self.transposed_conv(y)
        if self.pooling is not None:
            back = self.pooling.unpool(back, state, why)
        return back.reshape(y.shape[0], self.cols)

    def adjoint_add(
        self, acc: Tensor, y: Tensor, scale: float, state: Tensor | None, why: str
    ) -> Tensor:
        """acc + scale * P_s^T conv_transpose_K(y), the unpooling fused with the sum (the
        scale multiplies the kernel)."""
        back = self.transposed_conv(y, scale)
        if self.pooling is None:
            return acc + back.reshape(y.shape[0], self.cols)
        return self.pooling.unpool_add(acc, back, 1.0, state, why)

    def kernel_gradient(self, post: Tensor, pooled_pre: Tensor) -> Tensor:
        """d/dK sum_b post_b . conv_K(z_b) for z the pooled presynaptic grids."""
        grid = post.reshape(post.shape[0], *self.geometry.output)
        return torch.nn.grad.conv2d_weight(
            pooled_pre,
            self.weight.shape,
            grid,
            stride=self.geometry.stride,
            padding=self.geometry.padding,
        )

    def _conv(self, grid: Tensor, kernel: Tensor) -> Tensor:
        return F.conv2d(grid, kernel, stride=self.geometry.stride, padding=self.geometry.padding)

    def matrix(self) -> Tensor:
        """A, (C_out H_o W_o, C_in H W), without the gain: the forward map applied to the unit
        vectors. Exact for average pooling or none.

        Raises
        ------
        TopoEpError
            For max pooling (no state-independent matrix), or when A would not fit in half the
            available memory.
        """
        if self.pooling is not None and self.pooling.state_dependent:
            raise TopoEpError(
                f"conv block {self.source}->{self.target} max-pools {self.source}: the pooling "
                f"picks the argmax of {self.source}'s current state, so the block has no "
                "state-independent matrix (no energy, and no spectral radius of a fixed "
                "operator); average pooling keeps it linear"
            )
        needed = self.rows * self.cols * self.weight.element_size()
        available = _memory_available()
        if available is not None and 2 * needed > available:
            raise TopoEpError(
                f"the dense matrix of conv block {self.source}->{self.target} "
                f"({self.rows} x {self.cols}) needs {needed:,} bytes, more than half the "
                f"{available:,} bytes available; use its products (matrix-free)"
            )
        out = self.weight.new_empty(self.rows, self.cols)
        with torch.no_grad():
            for start in range(0, self.cols, DENSE_CHUNK):
                stop = min(start + DENSE_CHUNK, self.cols)
                columns = unit_columns(self.cols, start, stop, self.weight)
                out[:, start:stop] = self.forward_map(columns).t()
        return out

    # ------------------------------------------------------------------ the Block protocol
    def accumulate(
        self, acc: Tensor, x: Tensor, scale: float = 1.0, joined: Joined | None = None
    ) -> Tensor:
        """acc + scale * g * conv_K(P x)."""
        return acc + self.forward_map(x, self.gain * scale)

    def apply(self, x: Tensor, joined: Joined | None = None) -> Tensor:
        """g * conv_K(P x)."""
        out = self.forward_map(x)
        return out if self.gain == 1.0 else out * self.gain

    def adjoint(self, y: Tensor, joined: Joined | None = None) -> Tensor:
        """g * P_s^T conv_transpose_K(y), a max pooling unpooled at the argmax of the source's
        state ``joined.source``."""
        state = joined.source if joined is not None else None
        out = self.adjoint_map(y, state, f"the adjoint of conv block {self}")
        return out if self.gain == 1.0 else out * self.gain

    def dense(self) -> Tensor:
        """g * A (see :meth:`matrix`)."""
        return self.matrix() * self.gain

    def outer(self, post: Tensor, pre: Tensor, joined: Joined | None = None) -> Tensor:
        """d/dK sum_b post_b . conv_K(P pre_b), shaped like K (the pooling of pre is its own)."""
        grid = pre.reshape(pre.shape[0], *self.geometry.source)
        if self.pooling is not None:
            grid = self.pooling.pool(grid)
        return self.kernel_gradient(post, grid)

    def transpose(self, source: str, target: str, gain: float) -> Block:
        """The tied feedback ``gain * A^T`` from ``source`` (this block's target)."""
        return ConvTransposeBlock(source, target, self, gain)

    def summary(self) -> dict[str, Any]:
        """Kind, kernel, stride, padding, pooling, density and backend."""
        g = self.geometry
        return {
            "kind": self.kind,
            "kernel": f"{g.output[0]}x{g.source[0]}x{g.kernel}x{g.kernel}",
            "stride": g.stride,
            "padding": g.padding,
            "pool": self.pooling.describe() if self.pooling is not None else "none",
            "entries": self.weight.numel(),
            "density": self.weight.numel() / (self.rows * self.cols),
            "backend": "conv2d",
        }

    def extra_repr(self) -> str:
        g = self.geometry
        pool = f"{self.pooling.describe()}-pool, " if self.pooling is not None else ""
        return (
            f"{self.source}->{self.target}, {pool}{g.kernel}x{g.kernel} conv stride {g.stride} "
            f"padding {g.padding} {list(g.source)}->{list(g.output)}, gain={self.gain:g}"
        )

    def __repr__(self) -> str:
        return f"ConvBlock({self.extra_repr()})"

    def __str__(self) -> str:
        return f"{self.source}->{self.target}"


class ConvTransposeBlock(TiedTranspose):
    """A tied feedback block B->A, ``g A_AB^T``: the transposed convolution of the partner's
    kernel, then its pooling's adjoint (an unpool at the argmax of A's state ``joined.target``
    for max pooling). It holds the partner, never a copy, so it follows learning.
    """

    kind = "conv"
    partner: ConvBlock

    def _why(self) -> str:
        return f"the tied feedback {self.source}->{self.target} of conv block {self.partner}"

    def accumulate(
        self, acc: Tensor, x: Tensor, scale: float = 1.0, joined: Joined | None = None
    ) -> Tensor:
        """acc + scale * g * P_s^T conv_transpose_K(x), s = ``joined.target``."""
        scale = self.gain * scale
        return self.partner.adjoint_add(acc, x, scale, self.unpooling_state(joined), self._why())

    def apply(self, x: Tensor, joined: Joined | None = None) -> Tensor:
        """g * P_s^T conv_transpose_K(x)."""
        out = self.partner.adjoint_map(x, self.unpooling_state(joined), self._why())
        return self.gained(out)

    def adjoint(self, y: Tensor, joined: Joined | None = None) -> Tensor:
        """g * conv_K(P_s y): the partner's forward map with the pooling at the argmax of s."""
        out = self.partner.pooled_forward(y, self.unpooling_state(joined), self._why())
        return self.gained(out)

    def dense(self) -> Tensor:
        """g * A^T (average pooling or none; max pooling raises, see :meth:`ConvBlock.matrix`)."""
        return self.partner.matrix().t() * self.gain

    def outer(self, post: Tensor, pre: Tensor, joined: Joined | None = None) -> Tensor:
        """d/dK sum_b post_b . P_s^T conv_transpose_K(pre_b) = d/dK sum_b pre_b .
        conv_K(P_s post_b), shaped like the partner's K."""
        partner = self.partner
        grid = post.reshape(post.shape[0], *partner.geometry.source)
        if partner.pooling is not None:
            grid = partner.pooling.gather(grid, self.unpooling_state(joined), self._why())
        return partner.kernel_gradient(pre, grid)

    def __repr__(self) -> str:
        return (
            f"ConvTransposeBlock({self.source}->{self.target}, gain={self.gain:g}, tied to "
            f"{self.partner.source}->{self.partner.target})"
        )


def _image(grid: tuple[int, ...]) -> tuple[int, int, int]:
    """A ``[C, H, W]`` arrangement as a triple."""
    if len(grid) != 3:
        raise TopoEpError(f"a conv block joins [C, H, W] layers; got shape {list(grid)}")
    return (grid[0], grid[1], grid[2])
