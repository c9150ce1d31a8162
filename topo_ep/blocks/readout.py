"""The readout as a block: logits W_out s_top (+ b) and the feedback B_f that carries the error.

The readout's weight is a block of any registered kind from the top hidden layer to the
``readout`` node (dense today); its nudge feedback B_f is that block's tied transpose
(``feedback: tied``, B_f = W_out^T) or the transpose of a fixed random dense block
(``feedback: random``). The learners see only :class:`ReadoutHead`: a new readout kind is a new
block kind.
"""

from __future__ import annotations

from torch import Tensor, nn

from topo_ep.blocks.base import Block, BlockKind, Joined

#: The readout node's name as a block target.
READOUT = "readout"


class ReadoutBias(nn.Module):
    """The readout's bias b, (readout size,), as a module of its own (``value``)."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value)


class ReadoutHead(nn.Module):
    """p = softmax(A s_top + b), with A a block, and the nudge feedback B_f.

    Parameters
    ----------
    block
        A, from the readout's source layer to ``readout`` (learned).
    bias
        b, or ``None``.
    feedback
        A fixed block of A's shape whose transpose is B_f (``feedback: random``), or ``None``
        for B_f = A^T (tied).
    """

    def __init__(self, block: BlockKind, bias: Tensor | None, feedback: BlockKind | None) -> None:
        super().__init__()
        self.block = block
        self.bias = ReadoutBias(bias) if bias is not None else None
        self.feedback = feedback
        owner = feedback if feedback is not None else block
        #: B_f, from ``readout`` back to the source layer, gain 1.
        self.nudge_block: Block = owner.transpose(READOUT, block.source, 1.0)

    @property
    def source(self) -> str:
        return self.block.source

    def logits(self, top: Tensor, joined: Joined | None = None) -> Tensor:
        """A s_top (+ b)."""
        if self.bias is None:
            return self.block.apply(top, joined)
        return self.block.accumulate(self.bias.value, top, joined=joined)

    def nudge(
        self, acc: Tensor, error: Tensor, scale: float, joined: Joined | None = None
    ) -> Tensor:
        """acc + scale * B_f error (one fused product where the block allows).

        ``joined.target`` is the state of the top layer, which B_f carries the error into (a
        max-pooled readout unpools at its argmax); ``None`` where no state exists.
        """
        return self.nudge_block.accumulate(acc, error, scale, joined)

    def feedback_of(self, error: Tensor, joined: Joined | None = None) -> Tensor:
        """B_f error, (batch, top size); ``joined`` as in :meth:`nudge`."""
        return self.nudge_block.apply(error, joined)
