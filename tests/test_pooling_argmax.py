"""``window_argmax`` (the max pooling's argmax, on a channels-last copy on the CPU) returns what
``max_pool2d(grid, n, return_indices=True)`` returns on the grid as it is: the same indices,
ties and NaN included, so that the faster path changes no state of any run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from topo_ep.blocks.pooling import Pooling, window_argmax


def _reference(grid: torch.Tensor, size: int) -> torch.Tensor:
    return F.max_pool2d(grid, size, return_indices=True)[1]


@given(
    batch=st.integers(1, 4),
    channels=st.integers(1, 6),
    height=st.integers(2, 11),
    width=st.integers(2, 11),
    size=st.integers(2, 3),
    levels=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_window_argmax_equals_max_pool2d_with_ties(
    batch, channels, height, width, size, levels, seed, dtype
):
    if min(height, width) < size:
        height, width = size, size
    generator = torch.Generator().manual_seed(seed)
    # few distinct values (a clamped hard-sigmoid layer: many exact 0s and 1s): many ties
    grid = torch.randint(0, levels + 1, (batch, channels, height, width), generator=generator)
    grid = (grid.to(dtype) / levels).clamp(0.25, 1.0)
    assert torch.equal(window_argmax(grid, size), _reference(grid, size))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_window_argmax_at_the_conv_nets_shapes_and_with_nan(dtype):
    generator = torch.Generator().manual_seed(0)
    for shape in [(128, 32, 24, 24), (128, 64, 8, 8)]:
        grid = torch.randn(shape, generator=generator, dtype=dtype).clamp(0.0, 1.0)
        grid[0] = 0.0  # a whole example of ties
        grid[1, 0, 0, 1] = float("nan")
        index = window_argmax(grid, 2)
        assert index.is_contiguous() and index.shape == (
            shape[0],
            shape[1],
            *[s // 2 for s in shape[2:]],
        )
        assert torch.equal(index, _reference(grid, 2))


def test_the_pooling_picks_and_unpools_at_window_argmax():
    pooling = Pooling("max", 2, (2, 4, 4), "h")
    state = torch.tensor([[0.0, 1, 1, 0, 0.5, 0.5, 0, 0.2, 1, 1, 1, 1, 0, 0, 0, 0] * 2])
    index = pooling.indices(state, "test")
    assert torch.equal(index, _reference(state.reshape(1, 2, 4, 4), 2))
    z = torch.arange(8.0).reshape(1, 2, 2, 2)
    unpooled = pooling.unpool(z, state, "test")
    assert torch.equal(unpooled, F.max_unpool2d(z, index, 2, output_size=(4, 4)))
