"""Typed names of a compiled network's learned tensors.

Every learner returns its gradients as ``{ParamKey: tensor}``; one writer
(:func:`topo_ep.learn.base.write_gradients`) puts them into ``.grad``. No caller parses strings:
a key says what the tensor is (``kind``), which edge or layer owns it (``name``) and which
layer's pre-activation it drives (``target``).
"""

from __future__ import annotations

from dataclasses import dataclass

from topo_ep.spec import EdgeSpec

#: The readout node's name as a ``target``.
READOUT = "readout"


@dataclass(frozen=True)
class ParamKey:
    """One learned tensor.

    Attributes
    ----------
    kind
        ``edge`` (the weight W of a declared edge), ``bias`` (a hidden layer's bias),
        ``readout`` (W_out) or ``readout_bias``.
    name
        The edge key (``input->h1:forward``), the layer name, or ``readout``.
    target
        The layer whose pre-activation the tensor drives (``readout`` for the readout's).
    """

    kind: str
    name: str
    target: str

    @classmethod
    def edge(cls, edge: EdgeSpec) -> ParamKey:
        """The key of a declared edge's weight."""
        return cls("edge", edge.key, edge.target)

    @classmethod
    def bias(cls, layer: str) -> ParamKey:
        """The key of a hidden layer's bias."""
        return cls("bias", layer, layer)

    @property
    def is_readout(self) -> bool:
        """Whether the tensor belongs to the readout (its gradient is exact in every method)."""
        return self.target == READOUT

    def __str__(self) -> str:
        """``input->h1:forward``, ``bias:h1``, ``readout`` or ``readout:bias``."""
        if self.kind == "bias":
            return f"bias:{self.name}"
        if self.kind == "readout_bias":
            return "readout:bias"
        return self.name


#: The readout weight W_out.
READOUT_WEIGHT = ParamKey("readout", READOUT, READOUT)
#: The readout bias.
READOUT_BIAS = ParamKey("readout_bias", READOUT, READOUT)
