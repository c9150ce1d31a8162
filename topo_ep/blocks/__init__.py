"""Blocks: every edge of the layer graph, and the readout, as a linear map between two layers.

A block kind is one class registered in :data:`BLOCKS` under its YAML name (``block: {kind:
NAME}``), with its options' schema in :data:`topo_ep.block_schema.BLOCK_KINDS`. It owns its
tensors, their initialisation, its products, the tied transpose it offers to a feedback edge and
``outer``, the bilinear primitive of every EP rule; see :class:`~topo_ep.blocks.base.Block` for
the whole contract. The compiler, the engine and the learners only call that protocol.

Importing this package registers the shipped kinds: ``dense`` (:mod:`topo_ep.blocks.dense`),
``sparse`` (:mod:`topo_ep.blocks.sparse`), ``conv`` (:mod:`topo_ep.blocks.conv`) and ``pooled``
(:mod:`topo_ep.blocks.pooled`).
"""

from topo_ep.blocks.base import (
    BLOCKS,
    Block,
    BlockContext,
    BlockKind,
    Joined,
    build_block,
    in_place_accumulator,
)
from topo_ep.blocks.dense import DenseBlock, TransposeBlock
from topo_ep.blocks.readout import READOUT, ReadoutHead
from topo_ep.blocks.sparse import SparseBlock, SparseTransposeBlock

# isort: split
# Registration order is the order of the kinds in messages and docs: conv and pooled after
# the two above.
from topo_ep.blocks.conv import ConvBlock, ConvTransposeBlock
from topo_ep.blocks.pooled import PooledBlock, PooledTransposeBlock

__all__ = [
    "BLOCKS",
    "READOUT",
    "Block",
    "BlockContext",
    "BlockKind",
    "ConvBlock",
    "ConvTransposeBlock",
    "DenseBlock",
    "Joined",
    "PooledBlock",
    "PooledTransposeBlock",
    "ReadoutHead",
    "SparseBlock",
    "SparseTransposeBlock",
    "TransposeBlock",
    "in_place_accumulator",
    "build_block",
]
