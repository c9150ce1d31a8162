"""The Block protocol, what a block kind is built from, and the registry of kinds.

A block is one edge of the layer graph (or the readout) as a linear map A from the state of
its ``source`` into the pre-activation of its ``target``, scaled by the edge's gain g. States
are row vectors: a batch of a layer's states is a (batch, size) tensor, so ``g A x`` is
computed as ``g x @ A^T`` by dense blocks. A block kind is one class registered in
:data:`BLOCKS` under its YAML name (``block: {kind: NAME}``); the compiler, the engine and the
learners only call the protocol below, so a new kind touches none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from topo_ep.initial import tensor_generator, uniform_init
from topo_ep.registry import Registry
from topo_ep.spec import BlockSpec


class Joined(NamedTuple):
    """The current states of the two layers a block joins, (batch, size) each.

    ``source`` is the state of the block's source layer (the prepared input for an input
    edge), ``target`` that of its target layer; either is ``None`` where no state exists (the
    target of an input drive or of a feedforward pass before it is computed; the operator's
    spectrum, which has no state).
    """

    source: Tensor | None = None
    target: Tensor | None = None


@runtime_checkable
class Block(Protocol):
    """A linear map ``g A`` from the state of ``source`` into the pre-activation of ``target``.

    Contract of every block kind
    ----------------------------
    Products (``x``: the source state (batch, n_source); ``y``: a target-side vector
    (batch, n_target)):

    - ``accumulate(acc, x, scale=1.0, joined=None)`` returns ``acc + scale * g * A x``, fused
      where the storage allows (one ``addmm`` for a dense block). With ``scale == 1`` the
      factor must be exactly ``g``.
    - optional: ``accumulate_(acc, x, scale=1.0, joined=None)`` adds ``scale * g * A x`` into
      ``acc`` in place and returns it, with the same bits as ``accumulate``; the caller owns
      ``acc`` (a pre-activation that an earlier ``accumulate`` created). The engine sums a
      layer's blocks so, which saves one copy of the pre-activation per block after the first
      (:func:`in_place_accumulator`); a kind without it is called through ``accumulate``.
    - ``apply(x, joined=None)`` returns ``g * A x``.
    - ``adjoint(y, joined=None)`` returns ``g * A^T y``, (batch, n_source).
    - ``dense()`` returns ``g * A`` as a (n_target, n_source) matrix, for analysis only.
    - ``outer(post, pre, joined=None)`` is the bilinear primitive of every EP rule: the
      derivative of ``sum_b post_b . A(theta) pre_b`` with respect to the block's own
      parameter theta, without the gain, shaped like :attr:`parameter`. For a dense W it is
      ``post^T pre`` (n_target, n_source); for a sparse block the same at the mask, as the
      stored values; for a convolution the kernel gradient. The ``paper`` rule calls it once
      with the contrast as ``post``; the ``contrast`` rule twice and subtracts. It returns a
      new tensor, which the caller owns (the learner scales it in place).

    A block that owns storage (the kind's class, :class:`BlockKind`) also offers
    ``transpose(source, target, gain)``: the tied feedback block ``gain * A^T`` from its
    target back to its source. That block shares the owner's parameter (never a copy), so it
    follows learning; its ``parameter`` is ``None`` and its ``outer`` is the derivative with
    respect to the owner's parameter (shaped like it).

    What a block may see. Its products see their operand and, through ``joined``
    (:class:`Joined`), the current states of the two layers it joins, nothing else: a max-pooled
    convolution's feedback unpools at the argmax of its target's forward pooling. ``joined``
    may be ``None`` (the spectrum of the operator); a block that needs it raises a
    :class:`~topo_ep.errors.TopoEpError` saying so. The dense and sparse kinds never read it.

    Parameters and gradients. A block that owns storage is a ``torch.nn.Module``: its learned
    tensor is an ``nn.Parameter`` (a buffer when the edge is fixed), created and initialised by
    the kind's :meth:`build` from the compiler's per-tensor generator
    (:func:`topo_ep.initial.tensor_generator` keyed by (seed, edge key)), so seeding does not
    depend on the declaration order; any fixed structure it needs (a sparse mask) is a
    persistent buffer, stored in the checkpoint. Every product must be differentiable by
    autograd with respect to the parameter and the operands (BP, BPTT and implicit
    differentiation run through the products), with ``outer`` equal to that derivative. The
    learners set ``.grad`` of every parameter a block owns, through
    :func:`topo_ep.learn.base.write_gradients` (keyed by :class:`~topo_ep.params.ParamKey`,
    one key per edge): a kind owns exactly one learned tensor, :attr:`parameter`, the one
    ``outer`` is shaped like. Products never modify their operands.

    ``summary()`` returns what ``topo-ep compile`` prints: at least ``kind``, ``density``
    (stored entries over rows x cols) and ``backend``.

    The readout is a block of the same protocol, from the top hidden layer to ``readout``
    (:class:`~topo_ep.blocks.readout.ReadoutHead`): its logits are ``accumulate``/``apply``,
    its gradient ``outer(p - y, s_top)``, and its tied transpose carries the nudge (B_f).

    Attributes
    ----------
    kind
        The registry name (``dense``, ``sparse``, ``conv``, ``pooled``).
    source, target
        Layer names (``input`` as a source; ``readout`` as the readout's target).
    gain
        g, a float.
    parameter
        The tensor this block owns (learned or fixed), ``None`` for a tied transpose.
    """

    kind: str
    source: str
    target: str
    gain: float

    @property
    def parameter(self) -> Tensor | None: ...

    def accumulate(
        self, acc: Tensor, x: Tensor, scale: float = 1.0, joined: Joined | None = None
    ) -> Tensor: ...

    def apply(self, x: Tensor, joined: Joined | None = None) -> Tensor: ...

    def adjoint(self, y: Tensor, joined: Joined | None = None) -> Tensor: ...

    def dense(self) -> Tensor: ...

    def outer(self, post: Tensor, pre: Tensor, joined: Joined | None = None) -> Tensor: ...

    def summary(self) -> dict[str, Any]: ...


#: ``accumulate_`` of :class:`Block`: (acc, x, scale, joined) -> acc + scale * g * A x, which
#: may write into acc (owned by the caller).
Accumulator = Callable[..., Tensor]


def in_place_accumulator(block: Block) -> Accumulator:
    """The block's ``accumulate_`` (in place into an accumulator the caller owns), or its
    ``accumulate`` for a kind without one; either returns acc + scale * g * A x."""
    method = getattr(block, "accumulate_", None)
    return method if method is not None else block.accumulate


def register_tensor(module: nn.Module, name: str, value: Tensor, learned: bool) -> None:
    """Give ``module`` its tensor ``name``: an ``nn.Parameter`` when ``learned`` (the optimizer
    updates it), else a buffer (fixed, but in the state dict and the checkpoint)."""
    if learned:
        setattr(module, name, nn.Parameter(value))
    else:
        module.register_buffer(name, value)


class OwningBlock(nn.Module):
    """What every kind's owning block shares (see :class:`Block`): the layers it joins, its
    gain and whether the optimizer updates its tensor. A kind subclasses it, registers its
    tensor with :func:`register_tensor` and adds its own products."""

    def __init__(self, source: str, target: str, gain: float, learned: bool) -> None:
        super().__init__()
        self.source = source
        self.target = target
        self.gain = float(gain)
        self.learned = bool(learned)


class TiedTranspose:
    """What every kind's tied feedback block ``g A^T`` shares (see :class:`Block`).

    It joins ``source`` (the partner's target) back to ``target`` (the partner's source),
    holds the owning ``partner`` block itself, never a copy, so it follows learning, and owns
    no tensor. A kind subclasses it with its own products (``accumulate``, ``apply``,
    ``adjoint``, ``dense``, ``outer``); ``summary`` is the partner's.
    """

    kind: str

    def __init__(self, source: str, target: str, partner: Any, gain: float) -> None:
        self.source = source
        self.target = target
        self.partner = partner
        self.gain = float(gain)

    @property
    def parameter(self) -> None:
        """A tied block owns nothing."""
        return None

    def gained(self, out: Tensor) -> Tensor:
        """g * out (``out`` itself when g = 1)."""
        return out if self.gain == 1.0 else out * self.gain

    @staticmethod
    def unpooling_state(joined: Joined | None) -> Tensor | None:
        """The state of the layer this block writes into (``joined.target``), whose pooling
        a state-dependent kind unpools at; ``None`` where no states are given."""
        return joined.target if joined is not None else None

    def summary(self) -> dict[str, Any]:
        return self.partner.summary()


@dataclass(frozen=True)
class BlockContext:
    """Everything a block kind is built from (:meth:`BlockKind.build`).

    Attributes
    ----------
    name
        The tensor's name for :func:`~topo_ep.initial.tensor_generator`: the edge key, or
        ``readout`` / ``readout:feedback``.
    source, target
        The layers joined.
    rows, cols
        Target and source sizes: A is (rows, cols).
    source_grid, target_grid
        The layers' arrangements (declared ``shape`` or ``(size,)``).
    gain
        g.
    learned
        Whether the block's tensor is an ``nn.Parameter`` (else a buffer).
    init
        ``glorot_uniform``, ``fan_in_uniform``, ``identity`` or ``zeros``.
    block
        The declared kind and options.
    seed
        The run's seed (initial values); a mask has its own seed among the options.
    dtype
        Dtype of the floating tensors.
    """

    name: str
    source: str
    target: str
    rows: int
    cols: int
    source_grid: tuple[int, ...]
    target_grid: tuple[int, ...]
    gain: float
    learned: bool
    init: str
    block: BlockSpec
    seed: int
    dtype: torch.dtype

    def initial(self, shape: tuple[int, ...], fans: tuple[float, float]) -> Tensor:
        """The block's initial tensor of ``shape``: :func:`~topo_ep.initial.uniform_init` of
        ``init`` with the kind's (fan in, fan out), from the tensor's own generator (keyed by
        (seed, name)), drawn in float64 and cast to ``dtype``."""
        generator = tensor_generator(self.seed, self.name)
        return uniform_init(self.init, shape, fans, generator).to(self.dtype)


class BlockKind(Block, Protocol):
    """What :data:`BLOCKS` holds: a block class that owns storage (an ``nn.Module``).

    ``build(context)`` creates and initialises the block; ``stored_entries(context)`` is the
    number of values it will store (checked against the memory before anything is allocated);
    ``transpose(source, target, gain)`` is the tied feedback it offers (see :class:`Block`);
    ``fan_in`` the number of source values one target unit sums (the fan in of its ``init``;
    a bias's ``fan_in_uniform`` takes it too).
    """

    @classmethod
    def build(cls, context: BlockContext) -> BlockKind: ...

    @property
    def fan_in(self) -> float: ...

    @classmethod
    def stored_entries(cls, context: BlockContext) -> int: ...

    def transpose(self, source: str, target: str, gain: float) -> Block: ...


#: YAML block kind -> the class (see :class:`Block`). The options' schema is
#: :data:`topo_ep.block_schema.BLOCK_KINDS`, registered under the same names.
BLOCKS: Registry[type[BlockKind]] = Registry("block kind")


def build_block(context: BlockContext) -> BlockKind:
    """The block of kind ``context.block.kind`` (a name of :data:`BLOCKS`)."""
    return BLOCKS.get(context.block.kind).build(context)
