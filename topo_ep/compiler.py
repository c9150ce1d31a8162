"""Compiler: a :class:`~topo_ep.spec.TopologySpec` becomes a :class:`CompiledNetwork`.

Declaration and execution are separate, as in Nengo's Builder: the spec says what exists, a
compile rule per edge kind says what each edge becomes, and the result keeps, for every declared
edge, the tensor and the block it turned into (:attr:`CompiledNetwork.bindings`), so learning and
analysis can ask "what did this edge become".

Pre-activation of hidden layer k (row vectors, batch first):

    h_k = sum_{input edges} g W x + b_k + sum_{edges j->k} g A_jk s_j  (+ nudge drive on the top)

where A_jk is W (forward, skip, random feedback) or W_partner^T (tied feedback).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from topo_ep.activations import Activation, get_activation
from topo_ep.balance import Balance, analyse_balance, require_gain_factors
from topo_ep.blocks import Block, DenseBlock, TransposeBlock
from topo_ep.errors import TopoEpError
from topo_ep.graph import feedforward_order
from topo_ep.layout import Layout
from topo_ep.params import READOUT_BIAS, READOUT_WEIGHT, ParamKey
from topo_ep.schedules import SCHEDULES
from topo_ep.spec import INPUT, EdgeSpec, TopologySpec


@dataclass(frozen=True)
class EdgeBinding:
    """What a declared edge became.

    Attributes
    ----------
    edge
        The declared edge.
    tensor
        Name of its weight in :attr:`CompiledNetwork.weights` (learned) or
        :attr:`CompiledNetwork.fixed` (fixed); ``None`` for tied feedback, which owns no weight.
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


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """The generator of one tensor's initial values, keyed by (seed, tensor name).

    The 64-bit state is the first 8 bytes of sha256("<seed>:<name>"), so each tensor depends
    on the seed and its own name only: declaring edges in another order, adding or removing an
    edge leaves every other tensor's initial values unchanged.
    """
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def glorot_uniform(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """U(-a, a) with a = sqrt(6 / (rows + cols)), drawn in float64 on the CPU."""
    bound = math.sqrt(6.0 / (rows + cols))
    return (torch.rand(rows, cols, generator=generator, dtype=torch.float64) * 2 - 1) * bound


def _initial_weight(edge: EdgeSpec, rows: int, cols: int, generator: torch.Generator) -> Tensor:
    if edge.init == "identity":
        return torch.eye(rows, cols, dtype=torch.float64)
    if edge.init == "zeros":
        return torch.zeros(rows, cols, dtype=torch.float64)
    return glorot_uniform(rows, cols, generator)


#: Name of the fixed random readout feedback B_f in :func:`tensor_generator`.
READOUT_FEEDBACK = "readout:feedback"


def parameter_bytes(spec: TopologySpec, dtype: torch.dtype) -> int:
    """Bytes the compiled tensors take: every owned weight, bias and readout matrix in
    ``dtype``, plus the float64 draw of the largest one (initial values are drawn in float64)."""
    counts = [spec.size_of(e.target) * spec.size_of(e.source) for e in spec.edges if not e.is_tied]
    readout = spec.readout.size * spec.size_of(spec.readout.source)
    counts += [readout] * (2 if spec.readout.feedback == "random" else 1)
    counts += [layer.size for layer in spec.layers if layer.bias] + [spec.readout.size]
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
    """

    def __init__(
        self,
        spec: TopologySpec,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.spec = spec
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

        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        self._fixed_names: dict[str, str] = {}
        bindings: dict[str, EdgeBinding] = {}
        for edge in spec.edges:
            if edge.is_tied:
                continue
            rows, cols = spec.size_of(edge.target), spec.size_of(edge.source)
            generator = tensor_generator(seed, edge.key)
            value = _initial_weight(edge, rows, cols, generator).to(dtype)
            name = _tensor_name(edge)
            if edge.learned:
                self.weights[name] = nn.Parameter(value)
            else:
                buffer = f"fixed_{len(self._fixed_names)}"
                self.register_buffer(buffer, value)
                self._fixed_names[name] = buffer
            bindings[edge.key] = EdgeBinding(edge, name, edge.learned, -1)
        for edge in spec.edges:
            if edge.is_tied:
                partner = spec.tied_partner(edge)
                bindings[edge.key] = EdgeBinding(edge, None, partner.learned, -1, partner.key)
        for layer in spec.layers:
            if layer.bias:
                self.biases[layer.name] = nn.Parameter(torch.zeros(layer.size, dtype=dtype))

        n_out, n_top = spec.readout.size, spec.size_of(spec.readout.source)
        readout = glorot_uniform(n_out, n_top, tensor_generator(seed, READOUT_WEIGHT.name))
        self.readout_weight = nn.Parameter(readout.to(dtype))
        self.readout_bias = (
            nn.Parameter(torch.zeros(n_out, dtype=dtype)) if spec.readout.bias else None
        )
        if spec.readout.feedback == "random":
            generator = tensor_generator(seed, READOUT_FEEDBACK)
            self.register_buffer(
                "readout_feedback", glorot_uniform(n_out, n_top, generator).to(dtype)
            )
        else:
            self.readout_feedback = None
        # Declaration order of edges fixes the block order.
        self.bindings: dict[str, EdgeBinding] = {
            edge.key: bindings[edge.key] for edge in spec.edges
        }
        self.to(device)
        self._bind_blocks()

    # ------------------------------------------------------------------ compile rules
    def _weight(self, tensor_name: str) -> Tensor:
        if tensor_name in self.weights:
            return self.weights[tensor_name]
        return getattr(self, self._fixed_names[tensor_name])

    def _build_block(self, binding: EdgeBinding, built: dict[str, Block]) -> Block:
        """The compile rule of each edge kind: dense weight, or transpose of the partner."""
        edge = binding.edge
        if binding.tied_to is not None:
            partner = built[binding.tied_to]
            assert isinstance(partner, DenseBlock)
            return TransposeBlock(edge.source, edge.target, partner, edge.gain)
        return DenseBlock(edge.source, edge.target, self._weight(binding.tensor), edge.gain)

    def _bind_blocks(self) -> None:
        """(Re)create blocks over the current tensors; called after every move or cast."""
        built: dict[str, Block] = {}
        pending = sorted(self.bindings.values(), key=lambda b: b.tied_to is not None)
        for binding in pending:
            built[binding.edge.key] = self._build_block(binding, built)
        self.blocks: list[Block] = [built[key] for key in self.bindings]
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

    def _apply(self, fn: Callable, *args, **kwargs):  # type: ignore[override]
        out = super()._apply(fn, *args, **kwargs)
        if hasattr(self, "bindings"):
            self._bind_blocks()
        return out

    # ------------------------------------------------------------------ properties
    @property
    def dtype(self) -> torch.dtype:
        return self.readout_weight.dtype

    @property
    def device(self) -> torch.device:
        return self.readout_weight.device

    def weight_of(self, edge_key: str) -> Tensor:
        """The weight tensor a declared edge uses (the partner's, for tied feedback)."""
        binding = self.bindings[edge_key]
        if binding.tied_to is not None:
            return self.weight_of(binding.tied_to)
        return self._weight(binding.tensor)

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
            ParamKey.edge(b.edge): self.weights[b.tensor] for b in self.learned_bindings()
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
        itself when ``prepared``.
        """
        if not prepared:
            x = self.prepare_input(x)
        drives = []
        for k, size in enumerate(self.layout.sizes):
            name = self.layout.names[k]
            if name in self.biases:
                acc = self.biases[name].expand(x.shape[0], size)
            else:
                acc = x.new_zeros(x.shape[0], size)
            for block in self.input_blocks[k]:
                acc = block.accumulate(acc, x)
            drives.append(acc)
        return drives

    def preactivation(self, k: int, state: list[Tensor], drive: Tensor) -> Tensor:
        """h_k = drive_k + sum_{j->k} g A_jk s_j over hidden-to-hidden blocks."""
        acc = drive
        for source, block in self.incoming[k]:
            acc = block.accumulate(acc, state[source])
        return acc

    def readout_logits(self, top: Tensor) -> Tensor:
        """W_out s_top (+ bias), the readout's logits."""
        if self.readout_bias is None:
            return top @ self.readout_weight.t()
        return torch.addmm(self.readout_bias, top, self.readout_weight.t())

    def readout(self, state: list[Tensor]) -> Tensor:
        """p = softmax(W_out s_top)."""
        return torch.softmax(self.readout_logits(state[self.top]), dim=-1)

    def nudge_matrix(self) -> Tensor:
        """B_f^T as (readout size, top size): W_out (tied) or the fixed random matrix."""
        return self.readout_weight if self.readout_feedback is None else self.readout_feedback

    def hidden_operator(self) -> Tensor:
        """The gain-scaled hidden-to-hidden matrix M (N x N, flat layout), assembled from blocks.

        (M s)_k = sum_{j->k} g A_jk s_j. Row block k, column block j.
        """
        n = self.layout.total
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
        lines.append("blocks:")
        for binding in self.bindings.values():
            block = self.blocks[binding.block]
            role = (
                f"tied to {binding.tied_to}"
                if binding.tied_to
                else ("learned" if binding.learned else "fixed")
            )
            lines.append(f"  {binding.edge.key:<28} {block!r}  {role}")
        readout = self.spec.readout
        lines.append(
            f"readout: softmax(W_out s_{readout.source}), {readout.size} classes, "
            f"nudge feedback {readout.feedback}"
        )
        learned = sum(p.numel() for p in self.parameters())
        fixed = sum(b.numel() for b in self.buffers())
        lines.append(f"parameters: {learned} learned, {fixed} fixed")
        return "\n".join(lines)


def compile_topology(
    spec: TopologySpec,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> CompiledNetwork:
    """Compile a topology into tensors and block operators (see :class:`CompiledNetwork`)."""
    return CompiledNetwork(spec, seed=seed, dtype=dtype, device=device)
