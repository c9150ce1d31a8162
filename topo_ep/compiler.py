"""Compiler: a :class:`~topo_ep.spec.TopologySpec` becomes a :class:`CompiledNetwork`.

Declaration and execution are separate, as in Nengo's Builder: the spec says what exists, the
block kind registered under each edge's ``block: {kind: ...}`` (:data:`topo_ep.blocks.BLOCKS`)
says what it becomes, and the result keeps, for every declared edge, the block it turned into
(:attr:`CompiledNetwork.bindings`), so learning and analysis can ask "what did this edge
become". The compiler never looks inside a block: the block owns its tensors and their
initialisation, and a tied feedback edge is the transpose its partner's block offers.

Pre-activation of hidden layer k (row vectors, batch first):

    h_k = sum_{input edges} g W x + b_k + sum_{edges j->k} g A_jk s_j  (+ nudge drive on the top)

where A_jk is W (forward, skip, random feedback) or W_partner^T (tied feedback).
"""

from __future__ import annotations

import math
import os
from collections.abc import Container
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from topo_ep.activations import Activation, get_activation
from topo_ep.balance import Balance, analyse_balance, require_gain_factors
from topo_ep.blocks import (
    BLOCKS,
    READOUT,
    Block,
    BlockContext,
    BlockKind,
    Joined,
    ReadoutHead,
    in_place_accumulator,
)
from topo_ep.blocks.bias import LayerBias, bias_shape
from topo_ep.errors import TopoEpError
from topo_ep.gain_radius import (
    GainSolution,
    ScaledOperator,
    layer_levels,
    scale_lines,
    solve_feedback_scale,
)
from topo_ep.graph import feedforward_order
from topo_ep.initial import glorot_uniform, initial_bias, tensor_generator
from topo_ep.layout import Layout
from topo_ep.params import READOUT_BIAS, READOUT_WEIGHT, ParamKey
from topo_ep.schedules import SCHEDULES
from topo_ep.spec import INPUT, BlockSpec, EdgeSpec, TopologySpec

__all__ = [
    "READOUT_FEEDBACK",
    "CompiledNetwork",
    "EdgeBinding",
    "compile_topology",
    "glorot_uniform",
    "tensor_generator",
]


@dataclass(frozen=True)
class EdgeBinding:
    """What a declared edge became.

    Attributes
    ----------
    edge
        The declared edge.
    tensor
        Name of its block in :attr:`CompiledNetwork.edges` (the block owns the tensor, learned
        or fixed); ``None`` for tied feedback, which owns nothing.
    learned
        Whether the optimizer updates the weight.
    block
        Index of its block in :attr:`CompiledNetwork.blocks`.
    tied_to
        For tied feedback, the key of the forward or skip edge it transposes.
    """

    edge: EdgeSpec
    tensor: str | None
    learned: bool
    block: int
    tied_to: str | None = None


#: Name of the fixed random readout feedback B_f in :func:`tensor_generator`.
READOUT_FEEDBACK = "readout:feedback"


def edge_context(spec: TopologySpec, edge: EdgeSpec, seed: int, dtype: torch.dtype) -> BlockContext:
    """What the block of a declared (owning) edge is built from."""
    return BlockContext(
        name=edge.key,
        source=edge.source,
        target=edge.target,
        rows=spec.size_of(edge.target),
        cols=spec.size_of(edge.source),
        source_grid=spec.grid_of(edge.source),
        target_grid=spec.grid_of(edge.target),
        gain=edge.gain,
        learned=edge.learned,
        init=edge.init,
        block=edge.block,
        seed=seed,
        dtype=dtype,
    )


def readout_contexts(
    spec: TopologySpec, seed: int, dtype: torch.dtype
) -> tuple[BlockContext, BlockContext | None]:
    """What the readout's block W_out (and its fixed random feedback, if any) are built from."""
    readout = spec.readout
    weight = BlockContext(
        name=READOUT_WEIGHT.name,
        source=readout.source,
        target=READOUT,
        rows=readout.size,
        cols=spec.size_of(readout.source),
        source_grid=spec.grid_of(readout.source),
        target_grid=(readout.size,),
        gain=1.0,
        learned=True,
        init=readout.init,
        block=readout.block,
        seed=seed,
        dtype=dtype,
    )
    if readout.feedback != "random":
        return weight, None
    fixed = replace(
        weight, name=READOUT_FEEDBACK, learned=False, init="glorot_uniform", block=BlockSpec()
    )
    return weight, fixed


def parameter_bytes(spec: TopologySpec, dtype: torch.dtype) -> int:
    """Bytes the compiled tensors take: every value a block stores
    (:meth:`~topo_ep.blocks.base.BlockKind.stored_entries`), the biases and the readout in
    ``dtype``, plus the float64 draw of the largest one (initial values are drawn in float64)."""
    contexts = [edge_context(spec, e, 0, dtype) for e in spec.edges if not e.is_tied]
    contexts += [c for c in readout_contexts(spec, 0, dtype) if c is not None]
    counts = [BLOCKS.get(c.block.kind).stored_entries(c) for c in contexts]
    counts += [math.prod(bias_shape(layer.grid)) for layer in spec.layers if layer.bias]
    counts += [spec.readout.size]
    itemsize = torch.empty((), dtype=dtype).element_size()
    return sum(counts) * itemsize + max(counts) * 8


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def require_representable(spec: TopologySpec, dtype: torch.dtype) -> None:
    """Refuse gains, the nudge and the input constants that ``dtype`` cannot hold.

    Every one of them multiplies a tensor of the network's dtype; one beyond the dtype's range
    (a feedback gain of 1e308 in float32) would overflow inside the first product.

    Raises
    ------
    TopoEpError
        Naming the field, its value and the dtype's largest value.
    """
    largest = torch.finfo(dtype).max
    scalars = [(f"edges[{i}].gain ({e.key})", e.gain) for i, e in enumerate(spec.edges)]
    scalars += [("training.nudge", spec.training.nudge), ("input.mean", spec.input.mean)]
    scalars += [("1 / input.std", 1.0 / spec.input.std)]
    for field, value in scalars:
        if abs(value) > largest:
            raise TopoEpError(
                f"topology {spec.name!r}: {field} = {value:g} is beyond what "
                f"{str(dtype).removeprefix('torch.')} holds (largest {largest:.3g})"
            )


def require_memory(spec: TopologySpec, dtype: torch.dtype) -> None:
    """Refuse, before allocating anything, a network whose tensors would not fit in memory.

    Raises
    ------
    TopoEpError
        With the bytes needed and the bytes available.
    """
    needed, available = parameter_bytes(spec, dtype), available_memory()
    if available is not None and needed > available:
        raise TopoEpError(
            f"topology {spec.name!r} needs {needed:,} bytes ({needed / 2**30:.3g} GiB) for its "
            f"{str(dtype).removeprefix('torch.')} parameters, more than the {available:,} bytes "
            f"({available / 2**30:.3g} GiB) of memory available; reduce the layer sizes"
        )


#: Ordered groups of layer indices: the form of a schedule the engine runs.
Schedule = tuple[tuple[int, ...], ...]


def _tensor_name(edge: EdgeSpec) -> str:
    return edge.key.replace(".", "_")


class CompiledNetwork(nn.Module):
    """Tensors and block operators of one topology.

    Parameters
    ----------
    spec
        The validated topology.
    seed
        Seeds the initial weights. Each tensor is drawn from its own generator keyed by the
        seed and its name (:func:`tensor_generator`: the edge key, ``readout`` or
        ``readout:feedback``), in float64 on the CPU, so the same seed gives the same network
        in every dtype, on every device and in every declaration order.
    dtype, device
        Where the tensors live.
    feedback_scale
        For a topology with a target radius (``feedback_gain: {spectral_radius: r}``): the
        scale of its feedback gains to use, such as one stored in a checkpoint, instead of
        solving for it.

    Attributes
    ----------
    spec
        The topology the network runs: ``declared_spec`` itself, or, with a target radius,
        ``declared_spec`` with every feedback gain scaled by :attr:`feedback_scale` and no
        ``feedback_gain`` target (compiling it again gives the same network).
    declared_spec
        The topology as given.
    feedback_scale
        The scale c applied to every declared feedback gain; ``None`` without a target.
    gain_solution
        How c was last solved (:class:`~topo_ep.gain_radius.GainSolution`), or ``None``.
    """

    def __init__(
        self,
        spec: TopologySpec,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        feedback_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.declared_spec = spec
        self.feedback_scale: float | None = None
        self.gain_solution: GainSolution | None = None
        if feedback_scale is not None and spec.feedback_gain is None:
            raise TopoEpError(
                f"topology {spec.name!r} declares no feedback_gain target, so a feedback scale "
                f"({feedback_scale:g}) does not apply"
            )
        self.layout = Layout(spec.layer_names, tuple(layer.size for layer in spec.layers))
        self.activations: tuple[Activation, ...] = tuple(
            get_activation(layer.activation) for layer in spec.layers
        )
        self.order: tuple[int, ...] = tuple(
            self.layout.index(name) for name in feedforward_order(spec)
        )
        self.top = self.layout.index(spec.readout.source)
        self._schedules: dict[str, Schedule] = {}
        require_representable(spec, dtype)
        require_memory(spec, dtype)

        # Registration order fixes the order of parameters() (and of an optimizer's state):
        # W_out, the readout bias, the edges' tensors in declaration order, the hidden biases.
        weight_context, feedback_context = readout_contexts(spec, seed, dtype)
        readout_block = BLOCKS.get(weight_context.block.kind).build(weight_context)
        readout_bias = None
        if spec.readout.bias:
            readout_bias = initial_bias(
                spec.readout.bias_init,
                (spec.readout.size,),
                readout_block.fan_in,
                seed,
                str(READOUT_BIAS),
                dtype,
            )
        self.head = ReadoutHead(
            readout_block,
            readout_bias,
            BLOCKS.get("dense").build(feedback_context) if feedback_context else None,
        )
        #: The blocks that own tensors, by tensor name (the edge key, ``.`` replaced).
        self.edges = nn.ModuleDict()
        self.biases = nn.ParameterDict()
        bindings: dict[str, EdgeBinding] = {}
        for edge in spec.edges:
            if edge.is_tied:
                partner = spec.tied_partner(edge)
                bindings[edge.key] = EdgeBinding(edge, None, partner.learned, -1, partner.key)
                continue
            name = _tensor_name(edge)
            context = edge_context(spec, edge, seed, dtype)
            self.edges[name] = BLOCKS.get(edge.block.kind).build(context)
            bindings[edge.key] = EdgeBinding(edge, name, edge.learned, -1)
        for layer in spec.layers:
            if layer.bias:
                fan_in = sum(
                    self.edges[binding.tensor].fan_in
                    for binding in bindings.values()
                    if binding.edge.target == layer.name
                    and binding.edge.kind != "feedback"
                    and binding.tensor is not None
                )
                value = initial_bias(
                    layer.bias_init,
                    bias_shape(layer.grid),
                    fan_in,
                    seed,
                    str(ParamKey.bias(layer.name)),
                    dtype,
                )
                self.biases[layer.name] = nn.Parameter(value)
        # Declaration order of edges fixes the block order.
        self.bindings: dict[str, EdgeBinding] = {
            edge.key: bindings[edge.key] for edge in spec.edges
        }
        self._register_load_state_dict_pre_hook(self._upgrade_state_dict)
        self._bind_blocks()
        self.to(device)
        if spec.feedback_gain is not None:
            if feedback_scale is None:
                self.solve_feedback_scale()
            else:
                self.set_feedback_scale(feedback_scale)

    # ------------------------------------------------------------------ blocks
    def _bind_blocks(self) -> None:
        """The blocks in declaration order: each owning edge's block, and for a tied feedback
        edge the transpose its partner's block offers; and the per-layer block lists the
        operator runs. Blocks are modules or views of modules, so moves and casts keep them."""
        owners: dict[str, BlockKind] = {
            key: self.edges[b.tensor] for key, b in self.bindings.items() if b.tensor is not None
        }
        self.blocks: list[Block] = []
        for binding in self.bindings.values():
            edge = binding.edge
            if binding.tied_to is None:
                self.blocks.append(owners[edge.key])
            else:
                self.blocks.append(
                    owners[binding.tied_to].transpose(edge.source, edge.target, edge.gain)
                )
        self.bindings = {
            key: EdgeBinding(b.edge, b.tensor, b.learned, i, b.tied_to)
            for i, (key, b) in enumerate(self.bindings.items())
        }
        n = len(self.layout.names)
        self.input_blocks: list[list[Block]] = [[] for _ in range(n)]
        self.incoming: list[list[tuple[int, Block]]] = [[] for _ in range(n)]
        self.feedforward_incoming: list[list[tuple[int, Block]]] = [[] for _ in range(n)]
        for block, binding in zip(self.blocks, self.bindings.values(), strict=True):
            target = self.layout.index(block.target)
            if block.source == INPUT:
                self.input_blocks[target].append(block)
                continue
            pair = (self.layout.index(block.source), block)
            self.incoming[target].append(pair)
            if binding.edge.kind != "feedback":
                self.feedforward_incoming[target].append(pair)

    def _upgrade_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Rename the tensors of a state dict written before blocks owned their tensors.

        Format 1 (``weights.<edge>``, ``fixed_<i>``, ``readout_weight``, ``readout_bias``,
        ``readout_feedback``) becomes ``edges.<edge>.weight``, ``head.block.weight``,
        ``head.bias.value`` and ``head.feedback.weight``; the values are unchanged.
        """
        fixed = [b.tensor for b in self.bindings.values() if b.tensor and not b.learned]
        renames = {"readout_weight": "head.block.weight", "readout_bias": "head.bias.value"}
        renames["readout_feedback"] = "head.feedback.weight"
        renames.update({f"fixed_{i}": f"edges.{name}.weight" for i, name in enumerate(fixed)})
        for key in list(state_dict):
            local = key[len(prefix) :] if key.startswith(prefix) else None
            if local is None:
                continue
            new = renames.get(local)
            if new is None and local.startswith("weights."):
                new = f"edges.{local.removeprefix('weights.')}.weight"
            if new is not None and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(key)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, refusing first a tensor of the wrong kind: the weights
        must be floating-point (torch would otherwise cast an integer tensor silently); a block's
        integer structure (a sparse mask) may come as integers or as floats holding integers
        exactly (a state dict cast with ``.double()``), and is stored back as integers.

        Raises
        ------
        RuntimeError
            Naming the tensor, what it should be and what it is.
        """
        own = self.state_dict()
        for key, value in state_dict.items():
            mine = own.get(key)
            if not isinstance(value, Tensor) or mine is None:
                continue
            if mine.is_floating_point() and not value.is_floating_point():
                raise RuntimeError(f"{key}: expected a floating-point tensor, got {value.dtype}")
            if mine.is_floating_point() or not value.is_floating_point():
                continue
            if not bool(torch.equal(value, value.round())):
                raise RuntimeError(f"{key}: expected integers ({mine.dtype}), got fractions")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ feedback scale
    def scaled_operator(self, method: str = "auto") -> ScaledOperator:
        """M(c) = F + c B with B at the declared feedback gains (:mod:`topo_ep.gain_radius`)."""
        forward: list[Block] = []
        feedback: list[Block] = []
        for binding in self.bindings.values():
            if binding.edge.source == INPUT:
                continue
            part = feedback if binding.edge.kind == "feedback" else forward
            part.append(self.blocks[binding.block])
        current = 1.0 if self.feedback_scale is None else self.feedback_scale
        return ScaledOperator(
            self.layout,
            forward,
            feedback,
            current,
            dtype=self.dtype,
            device=self.device,
            method=method,
        )

    def solve_feedback_scale(self, method: str = "auto") -> GainSolution:
        """Solve the scale c of the declared feedback gains for which the hidden operator's
        spectral radius is the target, with the current weights, and apply it.

        Starts from the current scale. See :func:`topo_ep.gain_radius.solve_feedback_scale`.

        Raises
        ------
        TopoEpError
            Without a ``feedback_gain`` target, or when the target cannot be reached.
        """
        declared = self.declared_spec
        target = declared.feedback_gain
        if target is None:
            raise TopoEpError(f"topology {declared.name!r} declares no feedback_gain target")
        gains = [abs(e.gain) for e in declared.edges if e.kind == "feedback"]
        solution = solve_feedback_scale(
            self.scaled_operator(method),
            target.spectral_radius,
            graded=layer_levels(declared.layer_names, declared.edges) is not None,
            largest_gain=max(gains),
            start=1.0 if self.feedback_scale is None else self.feedback_scale,
            label=f"topology {declared.name!r}: feedback_gain.spectral_radius",
        )
        self.set_feedback_scale(solution.scale)
        self.gain_solution = solution
        return solution

    def set_feedback_scale(self, scale: float) -> None:
        """Make every feedback gain its declared value times ``scale``: in the blocks, the
        bindings and :attr:`spec`; the balance and the gain factors are recomputed on next
        use.

        Raises
        ------
        TopoEpError
            Without a ``feedback_gain`` target, for a scale that is not a positive finite
            number, or when a scaled gain is beyond what the dtype holds.
        """
        declared = self.declared_spec
        if declared.feedback_gain is None:
            raise TopoEpError(f"topology {declared.name!r} declares no feedback_gain target")
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise TopoEpError(f"a feedback scale must be a positive finite number, got {scale}")
        edges = tuple(
            replace(edge, gain=edge.gain * scale) if edge.kind == "feedback" else edge
            for edge in declared.edges
        )
        spec = replace(declared, edges=edges, feedback_gain=None)
        require_representable(spec, self.dtype)
        bindings = {}
        for edge, (key, binding) in zip(edges, self.bindings.items(), strict=True):
            if edge.kind == "feedback":
                self.blocks[binding.block].gain = edge.gain
            bindings[key] = replace(binding, edge=edge)
        self.bindings = bindings
        self.spec = spec
        self.feedback_scale = scale
        self.gain_solution = None
        for cached in ("balance", "gain_factors"):
            self.__dict__.pop(cached, None)

    # ------------------------------------------------------------------ properties
    @property
    def dtype(self) -> torch.dtype:
        return self.readout_weight.dtype

    @property
    def device(self) -> torch.device:
        return self.readout_weight.device

    @property
    def readout_weight(self) -> Tensor:
        """W_out, the readout block's tensor."""
        return self.head.block.parameter

    @property
    def readout_bias(self) -> Tensor | None:
        """The readout's bias, or ``None``."""
        return self.head.bias.value if self.head.bias is not None else None

    @property
    def readout_feedback(self) -> Tensor | None:
        """The fixed random B_f^T (readout size x top size), or ``None`` when tied."""
        return self.head.feedback.parameter if self.head.feedback is not None else None

    @property
    def weights(self) -> dict[str, Tensor]:
        """The learned tensor of every learned edge, by tensor name (declaration order)."""
        return {b.tensor: self.edges[b.tensor].parameter for b in self.learned_bindings()}

    def block_of(self, edge_key: str) -> Block:
        """The block a declared edge became."""
        return self.blocks[self.bindings[edge_key].block]

    def bias_of(self, layer: str) -> LayerBias:
        """The learned bias of a hidden layer as a per-unit view (:class:`~topo_ep.blocks.
        bias.LayerBias`): per unit, or per channel for a ``[C, H, W]`` layer."""
        return LayerBias(self.biases[layer], self.spec.layer(layer).grid)

    def weight_of(self, edge_key: str) -> Tensor:
        """The tensor a declared edge uses (the partner's, for tied feedback): W for a dense
        block, the values at the mask for a sparse one."""
        binding = self.bindings[edge_key]
        if binding.tied_to is not None:
            return self.weight_of(binding.tied_to)
        return self.edges[binding.tensor].parameter

    def schedule(self, name: str) -> Schedule:
        """The groups of layer indices of the schedule ``name`` (:data:`topo_ep.schedules.
        SCHEDULES`), built on first use and kept: the engine never rebuilds one per phase.

        Raises
        ------
        topo_ep.registry.UnknownNameError
            For a name no schedule carries (a ``ValueError`` too).
        """
        groups = self._schedules.get(name)
        if groups is None:
            names = SCHEDULES.get(name)(self.spec)
            groups = tuple(tuple(self.layout.index(layer) for layer in group) for group in names)
            self._schedules[name] = groups
        return groups

    @cached_property
    def balance(self) -> Balance:
        """The energy balance of the topology (:func:`topo_ep.balance.analyse_balance`),
        analysed once per compiled network."""
        return analyse_balance(self.spec)

    @cached_property
    def gain_factors(self) -> dict[str, float]:
        """c_top^2 / c_j^2 per hidden layer (:func:`topo_ep.balance.gain_factors`), computed
        once; a :class:`~topo_ep.errors.TopoEpError` says why when there is no energy."""
        return require_gain_factors(self.spec)

    def learned_bindings(self) -> list[EdgeBinding]:
        """Bindings of the edges that own a learned weight, in declaration order."""
        return [b for b in self.bindings.values() if b.tensor is not None and b.learned]

    def learned_tensors(self) -> dict[ParamKey, Tensor]:
        """Every learned tensor by its :class:`~topo_ep.params.ParamKey`: edge weights in
        declaration order, hidden biases, the readout weight and its bias."""
        out: dict[ParamKey, Tensor] = {
            ParamKey.edge(b.edge): self.edges[b.tensor].parameter for b in self.learned_bindings()
        }
        out.update({ParamKey.bias(name): bias for name, bias in self.biases.items()})
        out[READOUT_WEIGHT] = self.readout_weight
        if self.readout_bias is not None:
            out[READOUT_BIAS] = self.readout_bias
        return out

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ operator
    def prepare_input(self, x: Tensor) -> Tensor:
        """What the network sees of a raw batch: x' = (x - mean) / std, in its dtype and device.

        The constants are the topology's ``input`` (:class:`~topo_ep.spec.InputSpec`); with the
        defaults (0, 1) only the dtype and device change. Every path from data to the network
        goes through here: the input drive, EP's input-edge updates, every learner, evaluation
        and the analyses.
        """
        x = x.to(device=self.device, dtype=self.dtype)
        declared = self.spec.input
        if declared.standardised:
            x = (x - declared.mean) / declared.std
        return x

    def input_drive(self, x: Tensor, *, prepared: bool = False) -> list[Tensor]:
        """Per-layer constant drive: sum of g W x' over input edges plus the bias, (batch, n_k).

        ``x`` is a raw batch, prepared here (:meth:`prepare_input`), or the prepared batch
        itself when ``prepared``. A drive is read only: a bias is broadcast over the batch, and
        the zero drive of a layer without input edge or bias is one zero broadcast to
        (batch, n_k), so that the first product of every step into that layer fills its
        pre-activation with zeros instead of copying a stored zero tensor (the same bits).
        """
        if not prepared:
            x = self.prepare_input(x)
        drives = []
        for k, size in enumerate(self.layout.sizes):
            name = self.layout.names[k]
            if name in self.biases:
                acc = self.bias_of(name).expand(x.shape[0])
            else:
                acc = x.new_zeros(()).expand(x.shape[0], size)
            for block in self.input_blocks[k]:
                acc = block.accumulate(acc, x, joined=Joined(x, None))
            drives.append(acc)
        return drives

    def preactivation(
        self, k: int, state: list[Tensor], drive: Tensor, zero: Container[int] = ()
    ) -> Tensor:
        """h_k = drive_k + sum_{j->k} g A_jk s_j over hidden-to-hidden blocks.

        Each block sees the current states of the two layers it joins (:class:`~topo_ep.
        blocks.Joined`). The blocks from the layers in ``zero``, whose states the caller
        knows to be exactly zero, are skipped (with finite weights, adding their exact zeros
        changes no bit).

        The first block's ``accumulate`` creates h_k from the drive (one copy of it); the
        next ones add into that tensor in place (``accumulate_``, :func:`~topo_ep.blocks.
        in_place_accumulator`), the same bits as a chain of ``accumulate`` without a copy per
        block. So the result is a new tensor, which the caller owns, unless no block was
        applied: then it is ``drive`` itself.
        """
        acc = drive
        for source, block in self.incoming[k]:
            if source in zero:
                continue
            x = state[source]
            if acc is drive:
                acc = block.accumulate(acc, x, joined=Joined(x, state[k]))
            else:
                acc = in_place_accumulator(block)(acc, x, joined=Joined(x, state[k]))
        return acc

    def feedforward_preactivation(self, k: int, state: list[Tensor], drive: Tensor) -> Tensor:
        """h_k = drive_k + sum over forward and skip blocks j->k of g A_jk s_j (no feedback):
        the pre-activation of the feedforward pass, which has no state of layer k yet."""
        acc = drive
        for source, block in self.feedforward_incoming[k]:
            acc = block.accumulate(acc, state[source], joined=Joined(state[source], None))
        return acc

    def readout_logits(self, top: Tensor) -> Tensor:
        """W_out s_top (+ bias), the readout's logits (:meth:`~topo_ep.blocks.ReadoutHead.
        logits`)."""
        return self.head.logits(top, Joined(top, None))

    def readout(self, state: list[Tensor]) -> Tensor:
        """p = softmax(W_out s_top)."""
        return torch.softmax(self.readout_logits(state[self.top]), dim=-1)

    def nudge_matrix(self) -> Tensor:
        """B_f^T as (readout size, top size): W_out (tied) or the fixed random matrix, dense
        (for analysis; the learners use :attr:`head`)."""
        return self.head.nudge_block.dense().t()

    def hidden_operator_bytes(self) -> int:
        """Bytes of the dense N x N hidden operator in the network's dtype."""
        n = self.layout.total
        return n * n * torch.empty((), dtype=self.dtype).element_size()

    def hidden_operator(self) -> Tensor:
        """The gain-scaled hidden-to-hidden matrix M (N x N, flat layout), assembled from the
        blocks' ``dense()``.

        (M s)_k = sum_{j->k} g A_jk s_j. Row block k, column block j.

        Raises
        ------
        TopoEpError
            When M would not fit in half the available memory (use the matrix-free operator,
            :func:`topo_ep.spectral.operator_matvec`, with ARPACK).
        """
        n = self.layout.total
        needed, available = self.hidden_operator_bytes(), available_memory()
        if available is not None and 2 * needed > available:
            raise TopoEpError(
                f"the dense hidden operator of {n} units needs {needed:,} bytes, more than half "
                f"the {available:,} bytes available; use the matrix-free operator (ARPACK)"
            )
        matrix = torch.zeros(n, n, dtype=self.dtype, device=self.device)
        for block in self.blocks:
            if block.source == INPUT:
                continue
            rows, cols = self.layout.slice(block.target), self.layout.slice(block.source)
            matrix[rows, cols] += block.dense().detach()
        return matrix

    def describe(self) -> str:
        """A human-readable listing of the layout, the blocks and the parameter count."""
        lines = [f"topology {self.spec.name}: {self.layout.total} hidden units"]
        lines.append("layout (flat state vector):")
        for name, size, offset in zip(
            self.layout.names, self.layout.sizes, self.layout.offsets, strict=True
        ):
            act = self.activations[self.layout.index(name)].name
            lines.append(f"  {name:<12} [{offset}:{offset + size}]  size {size:<6} {act}")
        lines.append("blocks: [kind, density, backend]")
        for binding in self.bindings.values():
            block = self.blocks[binding.block]
            role = (
                f"tied to {binding.tied_to}"
                if binding.tied_to
                else ("learned" if binding.learned else "fixed")
            )
            lines.append(f"  {binding.edge.key:<28} {_block_line(block)}  {block!r}  {role}")
        readout = self.spec.readout
        lines.append(
            f"readout: softmax(W_out s_{readout.source}), {readout.size} classes, "
            f"nudge feedback {readout.feedback}; {_block_line(self.head.block)}"
        )
        learned = sum(p.numel() for p in self.parameters())
        fixed = sum(b.numel() for b in self.buffers() if b.is_floating_point())
        lines.append(f"parameters: {learned} learned, {fixed} fixed")
        if self.feedback_scale is not None:
            lines.extend(scale_lines(self.declared_spec, self.feedback_scale, self.gain_solution))
        return "\n".join(lines)


def _block_line(block: Block) -> str:
    """``[dense, 100%, dense]``: a block's kind, density and backend."""
    info = block.summary()
    return f"[{info['kind']}, {100 * info['density']:.3g}%, {info['backend']}]"


def compile_topology(
    spec: TopologySpec,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    feedback_scale: float | None = None,
) -> CompiledNetwork:
    """Compile a topology into tensors and block operators (see :class:`CompiledNetwork`).

    A topology with ``feedback_gain: {spectral_radius: r}`` has its feedback gains scaled to
    that radius here, for the initial weights, unless ``feedback_scale`` gives the scale.
    """
    return CompiledNetwork(
        spec, seed=seed, dtype=dtype, device=device, feedback_scale=feedback_scale
    )


def recompiled(net: CompiledNetwork, dtype: torch.dtype) -> CompiledNetwork:
    """A copy of ``net`` in ``dtype`` on the same device, with the same weights: ``net.spec``
    compiled again (it carries the solved feedback gains of a radius target, see
    :class:`CompiledNetwork`) and the floating-point tensors of its state cast to ``dtype``."""
    other = compile_topology(net.spec, dtype=dtype, device=net.device)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    other.load_state_dict(state)
    return other
