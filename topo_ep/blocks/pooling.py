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

    @property
    def state_dependent(self) -> bool:
        """Whether the map depends on the state (max pooling)."""
        return self.kind == "max"

    def pool(self, x: Tensor) -> Tensor:
        """P x for x of shape (batch, C, H, W): each window's maximum or average."""
        if self.kind == "max":
            return F.max_pool2d(x, self.size)
        return F.avg_pool2d(x, self.size)

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
        return F.max_pool2d(grid, self.size, return_indices=True)[1]

    def gather(self, y: Tensor, state: Tensor | None, why: str) -> Tensor:
        """P_s y: the pooling of y (batch, C, H, W) at the argmax of ``state`` for max pooling,
        the window averages for average pooling."""
        if self.kind == "avg":
            return F.avg_pool2d(y, self.size)
        index = self.indices(state, why)
        picked = y.flatten(2).gather(2, index.flatten(2))
        return picked.reshape(index.shape)

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

    def describe(self) -> str:
        """``max 2x2``."""
        return f"{self.kind} {self.size}x{self.size}"


def unit_columns(n: int, start: int, stop: int, like: Tensor) -> Tensor:
    """Rows ``start`` to ``stop`` of the n x n identity, in the dtype and device of ``like``."""
    eye = torch.zeros(stop - start, n, dtype=like.dtype, device=like.device)
    eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
    return eye
