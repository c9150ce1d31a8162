"""A hidden layer's learned bias, per unit or per channel.

A layer of ``size`` units gets one bias per unit, b in R^size. A layer arranged as channels
``shape: [C, H, W]`` gets one bias per channel, b in R^C, broadcast over the H x W positions of
its channel (the convolutional convention): every block into the layer sees the same bias, so a
layer with two incoming convolutions still has one. The compiler stores the tensor (its state-
dict key is ``biases.<layer>``); :class:`LayerBias` is the view that maps it to the layer's
units and reduces a per-unit contrast back to its shape.
"""

from __future__ import annotations

import math

from torch import Tensor

#: Number of dimensions of a channel arrangement ``[C, H, W]``.
CHANNEL_DIMS = 3


def bias_shape(grid: tuple[int, ...]) -> tuple[int, ...]:
    """The bias tensor's shape for a layer arranged as ``grid``: ``(C,)`` for ``[C, H, W]``,
    ``(size,)`` otherwise."""
    if len(grid) == CHANNEL_DIMS:
        return (grid[0],)
    return (math.prod(grid),)


class LayerBias:
    """The bias b of one hidden layer, seen as a per-unit vector.

    Parameters
    ----------
    value
        The stored tensor, shaped :func:`bias_shape` of ``grid`` (never copied: the view follows
        learning).
    grid
        The layer's arrangement (``shape``, else ``(size,)``).
    """

    def __init__(self, value: Tensor, grid: tuple[int, ...]) -> None:
        self.value = value
        self.size = math.prod(grid)
        self.channels = value.shape[0]
        self.per_channel = self.channels != self.size

    def vector(self) -> Tensor:
        """b per unit, (size,): b_c repeated over the H x W positions of channel c when per
        channel (differentiable in b)."""
        if not self.per_channel:
            return self.value
        return self.value.repeat_interleave(self.size // self.channels)

    def expand(self, batch: int) -> Tensor:
        """b per unit for every example, (batch, size), a broadcast view (no copy per row)."""
        return self.vector().expand(batch, self.size)

    def outer(self, contrast: Tensor) -> Tensor:
        """The derivative of ``sum_b contrast_b . expand(batch)_b`` with respect to b, shaped
        like b: ``sum_b contrast_b`` per unit, also summed over each channel's positions when
        per channel."""
        total = contrast.sum(dim=0)
        if not self.per_channel:
            return total
        return total.reshape(self.channels, -1).sum(dim=1)
