"""Pooling of a layer's channels in n x n windows of step n, and its adjoints.

A layer arranged as ``[C, H, W]`` pools into ``[C, H // n, W // n]`` (rows and columns past the
last whole window are dropped, as in ``torch.nn.functional.max_pool2d``). Average pooling is
linear: P x averages each window, P^T y spreads each value over its window divided by n^2.
Max pooling is linear only at fixed indices: P_s x picks, in each window, the entry at the
argmax of a state s (of x itself in the forward map), P_s^T y puts each value back at that
argmax (an unpool) and zero elsewhere. The state is the current state of the layer being pooled,
which a block receives through :class:`~topo_ep.blocks.base.Joined`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from topo_ep.errors import TopoEpError


class Pooling:
    """n x n pooling of a ``[C, H, W]`` layer, average or max.

    Parameters
    ----------
    kind
        ``max`` or ``avg``.
    size
        n, the window and its step.
    shape
        ``(C, H, W)`` of the pooled layer.
    layer
        The pooled layer's name, for messages.
    """

    def __init__(self, kind: str, size: int, shape: tuple[int, int, int], layer: str) -> None:
        self.kind = kind
        self.size = int(size)
        self.shape = shape
        self.layer = layer
        channels, height, width = shape
        self.pooled = (channels, height // self.size, width // self.size)
        #: The last state whose argmax was taken, its version and the indices: within one step
        #: the forward pooling and the feedback's unpooling read the same state tensor, and
        #: its argmax is taken once.
        self._cached: tuple[Tensor, int, Tensor] | None = None

    @property
    def state_dependent(self) -> bool:
        """Whether the map depends on the state (max pooling)."""
        return self.kind == "max"

    def pool(self, x: Tensor) -> Tensor:
        """P x for x of shape (batch, C, H, W): each window's maximum (x picked at its own
        argmax, :meth:`indices`, so autograd routes the gradient to the argmax as
        ``max_pool2d`` does) or average."""
        if self.kind == "max":
            return self._pick(x, self.indices(x, "the max pooling"))
        return F.avg_pool2d(x, self.size)

    @staticmethod
    def _pick(grid: Tensor, index: Tensor) -> Tensor:
        """grid (batch, C, H, W) at the flat H x W indices ``index`` (batch, C, h, w)."""
        batch = grid.shape[0]
        picked = grid.reshape(batch, grid.shape[1], -1).gather(2, index.flatten(2))
        return picked.reshape(index.shape)

    def indices(self, state: Tensor | None, why: str) -> Tensor:
        """The argmax of each window of ``state`` (batch, C * H * W), as flat H x W indices of
        shape (batch, C, H // n, W // n).

        Raises
        ------
        TopoEpError
            When ``state`` is ``None``: the max pooling's adjoint needs the pooled layer's state.
        """
        if state is None:
            raise TopoEpError(
                f"{why} unpools at the argmax of {self.layer}'s max pooling, so it needs the "
                f"current state of {self.layer}; none was given (a max-pooled block has no "
                "state-independent matrix)"
            )
        grid = state.detach().reshape(state.shape[0], *self.shape)
        if state.is_inference():  # no version counter: nothing to cache by
            return window_argmax(grid, self.size)
        cached = self._cached
        if cached is not None and _same_values(cached[0], cached[1], state):
            return cached[2]
        index = window_argmax(grid, self.size)
        self._cached = (state, state._version, index)
        return index

    def gather(self, y: Tensor, state: Tensor | None, why: str) -> Tensor:
        """P_s y: the pooling of y (batch, C, H, W) at the argmax of ``state`` for max pooling,
        the window averages for average pooling."""
        if self.kind == "avg":
            return F.avg_pool2d(y, self.size)
        return self._pick(y, self.indices(state, why))

    def unpool(self, z: Tensor, state: Tensor | None, why: str) -> Tensor:
        """P_s^T z for z of shape (batch, C, H // n, W // n), back to (batch, C, H, W).

        Average: each value spread over its window divided by n^2 (zeros on dropped rows and
        columns). Max: each value put at its window's argmax of ``state``, zeros elsewhere.
        """
        height, width = self.shape[1], self.shape[2]
        if self.kind == "max":
            index = self.indices(state, why)
            return F.max_unpool2d(z, index, self.size, output_size=(height, width))
        n = self.size
        spread = z.repeat_interleave(n, dim=2).repeat_interleave(n, dim=3) / (n * n)
        rows, cols = height - spread.shape[2], width - spread.shape[3]
        return F.pad(spread, (0, cols, 0, rows)) if rows or cols else spread

    def unpool_add(
        self, acc: Tensor, z: Tensor, scale: float, state: Tensor | None, why: str
    ) -> Tensor:
        """acc + scale * P_s^T z, flat (batch, C H W), for z of shape (batch, C, h, w).

        Max: one scatter-add of the scaled z at the argmax into a copy of acc (no zero-filled
        unpooled tensor, no second pass). Average: acc plus the spread values.
        """
        batch = z.shape[0]
        if self.kind == "max":
            index = self.indices(state, why)
            flat = acc.reshape(batch, self.shape[0], -1)
            values = z if scale == 1.0 else z * scale
            out = flat.scatter_add(2, index.flatten(2), values.flatten(2))
            return out.reshape(batch, -1)
        return torch.add(acc, self.unpool(z, state, why).reshape(batch, -1), alpha=scale)

    def describe(self) -> str:
        """``max 2x2``."""
        return f"{self.kind} {self.size}x{self.size}"


def window_argmax(grid: Tensor, size: int) -> Tensor:
    """The flat H x W index of the maximum of each ``size`` x ``size`` window of ``grid``
    (batch, C, H, W), as ``max_pool2d(grid, size, return_indices=True)[1]`` returns it.

    On the CPU the pooling runs on a channels-last copy of ``grid``: the same maxima and the
    same indices (ties and NaN included, ``tests/test_pooling_argmax.py``), several times
    faster there than the channels-first kernel on the small planes of a conv net
    (``benchmarks/pool_argmax.py``). Other devices pool ``grid`` as it is.
    """
    if grid.device.type != "cpu":
        return F.max_pool2d(grid, size, return_indices=True)[1]
    last = grid.contiguous(memory_format=torch.channels_last)
    return F.max_pool2d(last, size, return_indices=True)[1].contiguous()


def _same_values(kept: Tensor, version: int, state: Tensor) -> bool:
    """Whether ``state`` holds the values ``kept`` held at ``version``: the same contiguous
    memory (``kept`` itself or a reshaped view of it; ``kept`` is held, so its memory is not
    reused) and no in-place change since."""
    return (
        state.data_ptr() == kept.data_ptr()
        and state.numel() == kept.numel()
        and state.dtype == kept.dtype
        and state.device == kept.device
        and state.is_contiguous()
        and kept.is_contiguous()
        and state._version == version
    )


def unit_columns(n: int, start: int, stop: int, like: Tensor) -> Tensor:
    """Rows ``start`` to ``stop`` of the n x n identity, in the dtype and device of ``like``."""
    eye = torch.zeros(stop - start, n, dtype=like.dtype, device=like.device)
    eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
    return eye
