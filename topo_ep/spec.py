"""Declarative topology specification: frozen dataclasses, no behaviour.

A :class:`TopologySpec` is what a YAML file (or a networkx graph) declares. It is validated by
:mod:`topo_ep.validate` before construction, so every instance that exists is consistent. The
compiler (:mod:`topo_ep.compiler`) turns it into tensors; nothing here touches torch.

The reserved layer name ``"input"`` denotes the clamped input; edges may start there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

INPUT = "input"

EDGE_KINDS = ("forward", "skip", "feedback")
FEEDBACK_MODES = ("tied", "random")
ACTIVATIONS = ("tanh", "hard_sigmoid", "sigmoid", "identity")
INITS = ("glorot_uniform", "fan_in_uniform", "identity", "zeros")
#: The initial values a readout may start from (it has no identity).
READOUT_INITS = ("glorot_uniform", "fan_in_uniform", "zeros")
#: The initial values a bias may start from: zero, or PyTorch's default for the bias of an
#: ``nn.Linear`` / ``nn.Conv2d``, U(-a, a) with a = 1 / sqrt(fan in of the weights it joins).
BIAS_INITS = ("zeros", "fan_in_uniform")
RULES = ("paper", "contrast")
NUDGINGS = ("one-sided", "symmetric")
ERROR_MODES = ("held", "reread", "accumulated")
#: Which state the readout's EP gradient reads its output error from.
READOUT_ERRORS = ("free", "nudged")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
#: Datasets the loaders know (:func:`topo_ep.data.load_dataset`).
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
#: The validation protocols of ``topo-ep train --validation``: ``holdout`` carves the dataset's
#: validation split out of its training part, ``none`` trains on all of it
#: (:func:`topo_ep.data.val_fraction_for`).
VALIDATION_MODES = ("holdout", "none")


@dataclass(frozen=True)
class BlockSpec:
    """How an edge (or the readout) is stored: a block kind and its options.

    ``kind`` is a name of the block registry (``dense``, ``sparse``, ...); ``options`` are the
    kind's own validated settings as ``(name, value)`` pairs in the kind's order (for
    ``sparse``: pattern, density or radius, seed, backend), defaults filled in. The schema of
    each kind's options is :data:`topo_ep.block_schema.BLOCK_KINDS`; what the compiler builds
    from it is the block class registered under the same name.
    """

    kind: str = "dense"
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, name: str, default: Any = None) -> Any:
        """The value of option ``name`` (``default`` when the kind has no such option)."""
        return dict(self.options).get(name, default)

    @property
    def is_default(self) -> bool:
        """Whether this is the plain dense block (not written out by :meth:`to_dict`)."""
        return self.kind == "dense" and not self.options

    def to_dict(self) -> dict[str, Any]:
        """``{kind: ..., **options}``, the YAML form: an option whose value is itself a tuple of
        ``(name, value)`` pairs (a conv block's ``pool``) is written as a mapping, an option of
        value ``None`` (not set) is left out."""
        out: dict[str, Any] = {"kind": self.kind}
        for name, value in self.options:
            if value is not None:
                out[name] = _option_to_plain(value)
        return out


@dataclass(frozen=True)
class InputSpec:
    """The clamped input vector x of ``size`` features.

    Every example is standardised before it reaches the network, x <- (x - mean) / std, with
    constants declared here (like torchvision's ``Normalize``): the defaults, 0 and 1, leave
    the data as the loader gives it (pixels in [0, 1]). ``dataset`` names the data the topology
    is written for (``mnist``, ...): the commands use it when no ``--dataset`` is given. Where
    its files are is never part of a topology: ``--data-dir`` or ``$TOPO_EP_DATA`` says.
    """

    size: int
    mean: float = 0.0
    std: float = 1.0
    dataset: str | None = None
    shape: tuple[int, ...] | None = None

    @property
    def standardised(self) -> bool:
        """Whether the constants change the data (mean != 0 or std != 1)."""
        return (self.mean, self.std) != (0.0, 1.0)


@dataclass(frozen=True)
class LayerSpec:
    """A hidden layer s_k = rho(h_k) of ``size`` units.

    ``bias`` adds a learned bias to h_k (off by default, as in the paper). ``shape`` arranges
    the units on a grid (``(32, 32)`` for 1024 units, row-major; ``None``: a line of ``size``)
    for blocks that need a geometry, such as sparse ``local`` wiring. ``lr`` and
    ``weight_decay`` override ``training.lr`` and ``training.weight_decay`` for the bias
    (``None``: the training's); they need ``bias``. ``bias_init`` is the bias's initial
    distribution (:data:`BIAS_INITS`; ``fan_in_uniform`` takes the fan in of the layer's
    forward and skip edges, summed).
    """

    name: str
    size: int
    activation: str = "tanh"
    bias: bool = False
    shape: tuple[int, ...] | None = None
    lr: float | None = None
    weight_decay: float | None = None
    bias_init: str = "zeros"

    @property
    def grid(self) -> tuple[int, ...]:
        """The arrangement of the units: ``shape``, or ``(size,)`` when none is declared."""
        return self.shape if self.shape is not None else (self.size,)


@dataclass(frozen=True)
class ReadoutSpec:
    """Softmax readout p = softmax(W_out s_source), outside the recurrent dynamics.

    ``feedback`` selects the matrix B_f that carries the output error into ``source`` during the
    nudged phase: ``tied`` (B_f = W_out^T) or a fixed ``random`` matrix. ``block`` says how
    W_out is stored (a block kind, like an edge's). ``lr`` and ``weight_decay`` override the
    training's for W_out and the readout bias (``None``: the training's). ``init`` is W_out's
    initial distribution (:data:`READOUT_INITS`; a random B_f is always Glorot-uniform), and
    ``bias_init`` the bias's (:data:`BIAS_INITS`; ``fan_in_uniform``: the fan in of W_out).
    """

    source: str
    size: int
    feedback: str = "tied"
    bias: bool = False
    block: BlockSpec = BlockSpec()
    lr: float | None = None
    weight_decay: float | None = None
    init: str = "glorot_uniform"
    bias_init: str = "zeros"


@dataclass(frozen=True)
class EdgeSpec:
    """A block of connections from layer ``source`` to layer ``target``.

    Its contribution to the target's pre-activation is ``gain * W s_source`` where W has shape
    (target size, source size). A ``tied`` feedback edge B->A has no weights of its own: it
    applies ``gain * W_AB^T`` where W_AB belongs to the forward or skip edge A->B. A ``random``
    feedback edge has a fixed random matrix. ``learned`` says whether the optimizer updates W.
    ``block`` says how W is stored (dense by default; a tied feedback edge uses its partner's).
    ``lr`` and ``weight_decay`` override ``training.lr`` and ``training.weight_decay`` for the
    edge's learned tensors (``None``: the training's); only a learned edge takes them.
    """

    source: str
    target: str
    kind: str = "forward"
    gain: float = 1.0
    feedback: str | None = None
    learned: bool = True
    init: str = "glorot_uniform"
    block: BlockSpec = BlockSpec()
    lr: float | None = None
    weight_decay: float | None = None

    @property
    def key(self) -> str:
        """Stable identifier of the edge, ``source->target:kind``."""
        return f"{self.source}->{self.target}:{self.kind}"

    @property
    def is_tied(self) -> bool:
        return self.kind == "feedback" and self.feedback == "tied"


@dataclass(frozen=True)
class DynamicsSpec:
    """How the relaxation runs.

    ``free_steps`` and ``nudged_steps`` are step limits. Every ``check_every`` steps the
    per-example residual r_b = max_i |s_t - s_{t-1}|_{b,i} / max(max_i |s_t|_{b,i}, 1) is
    read on the host, and a phase stops when max_b r_b <= max(tolerance, 16 eps(dtype)); the
    nudged phase also waits until every layer's contrast s - s^0 changes by at most its
    tolerance times its own norm (:mod:`topo_ep.engine`). ``tolerance = 0`` runs exactly
    the step limits (the paper's fixed T/K). ``nudged_schedule`` and ``nudged_tolerance`` are
    the nudged phase's schedule and tolerance (``None``: ``schedule``, ``tolerance``).
    ``execution`` is how EP runs the steps between two checks (:mod:`topo_ep.chunks`):
    ``eager`` (default), ``cuda-graph`` (a captured chunk replayed; eager off CUDA, with a
    warning) or ``compile`` (``torch.compile`` of one chunk).
    """

    schedule: str = "synchronous"
    free_steps: int = 20
    nudged_steps: int = 10
    tolerance: float = 0.0
    check_every: int = 5
    nudged_schedule: str | None = None
    nudged_tolerance: float | None = None
    execution: str = "eager"

    @property
    def nudged_phase_tolerance(self) -> float:
        """The nudged phases' tolerance: ``nudged_tolerance``, else ``tolerance``."""
        return self.tolerance if self.nudged_tolerance is None else self.nudged_tolerance


@dataclass(frozen=True)
class TrainingSpec:
    """EP training settings. ``nudge`` is the output nudging strength.

    ``lr_schedule: cosine`` sets the learning rate of epoch e (1-based, of E) to
    lr * (1 + cos(pi (e - 1) / E)) / 2. ``lr`` and ``weight_decay`` are the defaults of every
    learned tensor; an edge, a hidden layer (its bias) or the readout may override them with its
    own ``lr`` / ``weight_decay``, and the schedule then scales each tensor's own rate.

    ``warm_start`` keeps one free state per training example: the free phase of an example
    starts from its free state of the previous epoch (zero in the first) instead of zero
    (:mod:`topo_ep.warm_start`). It needs converged phases (``dynamics.tolerance`` > 0).

    ``readout_error`` is the output error of the readout's EP gradient
    outer(p - y, s_top^0) / batch: p of the free state (``free``, the exact cross-entropy
    gradient) or of the nudged phase's last state (``nudged``, the authors' graph code;
    one-sided nudging only).
    """

    nudge: float = 0.1
    nudging: str = "one-sided"
    rule: str = "paper"
    error: str = "held"
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    batch_size: int = 500
    epochs: int = 10
    gain_compensated: bool = False
    warm_start: bool = False
    readout_error: str = "free"


@dataclass(frozen=True)
class FeedbackGainSpec:
    """One scale c for every feedback gain, chosen so that the hidden operator has a target
    spectral radius (``feedback_gain: {spectral_radius: r}`` at the top of a topology).

    Each feedback edge's declared gain g_e becomes c g_e, so their ratios are kept; c is solved
    when the topology is compiled, with the initial weights, such that rho(F + c B) = r, where
    F + c B is the gain-scaled hidden-to-hidden operator M (:mod:`topo_ep.gain_radius`).
    ``every_epoch`` solves c again after each training epoch, since learning moves the radius.
    """

    spectral_radius: float
    every_epoch: bool = False


@dataclass(frozen=True)
class TopologySpec:
    """A whole topology: input, hidden layers, readout, edges and run settings.

    ``origin`` records a ``generate:`` shorthand the spec was expanded from (or ``None``).
    ``feedback_gain`` asks for the feedback gains to be scaled to a target spectral radius
    (:class:`FeedbackGainSpec`); the gains of ``edges`` are then the declared ones, which the
    compiled network scales (:attr:`topo_ep.compiler.CompiledNetwork.spec` holds the result).
    """

    name: str
    input: InputSpec
    layers: tuple[LayerSpec, ...]
    readout: ReadoutSpec
    edges: tuple[EdgeSpec, ...]
    dynamics: DynamicsSpec = field(default_factory=DynamicsSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    feedback_gain: FeedbackGainSpec | None = None
    origin: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    description: str = ""

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def layer(self, name: str) -> LayerSpec:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def size_of(self, name: str) -> int:
        """Number of units of a hidden layer or of ``"input"``."""
        return self.input.size if name == INPUT else self.layer(name).size

    def grid_of(self, name: str) -> tuple[int, ...]:
        """The declared arrangement (``shape``) of a hidden layer or of ``"input"``, else
        ``(size,)``."""
        if name == INPUT:
            return self.input.shape if self.input.shape is not None else (self.input.size,)
        return self.layer(name).grid

    def edge(self, source: str, target: str, kind: str) -> EdgeSpec:
        for edge in self.edges:
            if (edge.source, edge.target, edge.kind) == (source, target, kind):
                return edge
        raise KeyError(f"{source}->{target}:{kind}")

    def tied_partner(self, edge: EdgeSpec) -> EdgeSpec:
        """The forward or skip edge whose weights a tied feedback edge transposes."""
        for kind in ("forward", "skip"):
            for other in self.edges:
                if (other.source, other.target, other.kind) == (edge.target, edge.source, kind):
                    return other
        raise KeyError(f"no forward or skip edge {edge.target}->{edge.source}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, the inverse of :func:`topo_ep.validate.spec_from_dict`."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["input"] = {"size": self.input.size}
        if self.input.standardised:
            out["input"].update(mean=self.input.mean, std=self.input.std)
        if self.input.dataset is not None:
            out["input"]["dataset"] = self.input.dataset
        if self.input.shape is not None:
            out["input"]["shape"] = list(self.input.shape)
        out["layers"] = []
        for layer in self.layers:
            item = asdict(layer)
            if layer.shape is None:
                del item["shape"]
            else:
                item["shape"] = list(layer.shape)
            _drop_unset_rates(item)
            _drop_default_bias_init(item)
            out["layers"].append(item)
        readout = asdict(self.readout)
        readout["from"] = readout.pop("source")
        _block_to_dict(readout, self.readout.block)
        _drop_unset_rates(readout)
        _drop_default_bias_init(readout)
        out["readout"] = readout
        edges = []
        for edge in self.edges:
            item = asdict(edge)
            if item["feedback"] is None:
                del item["feedback"]
            _block_to_dict(item, edge.block)
            _drop_unset_rates(item)
            edges.append(item)
        out["edges"] = edges
        if self.feedback_gain is not None:
            out["feedback_gain"] = asdict(self.feedback_gain)
        out["dynamics"] = asdict(self.dynamics)
        for key in ("nudged_schedule", "nudged_tolerance"):
            if out["dynamics"][key] is None:
                del out["dynamics"][key]
        if out["dynamics"]["execution"] == "eager":  # the default; older files have no key
            del out["dynamics"]["execution"]
        out["training"] = asdict(self.training)
        if not self.training.warm_start:  # absent when off: the mapping of before it existed
            del out["training"]["warm_start"]
        if self.origin is not None:
            out["origin"] = dict(self.origin)
        return out


#: Per-tensor optimizer settings of an edge, a layer or the readout (``None``: the training's).
RATE_KEYS = ("lr", "weight_decay")


def _drop_unset_rates(item: dict[str, Any]) -> None:
    """Drop the per-tensor ``lr`` / ``weight_decay`` of ``item`` that are unset (``None``), so
    that a topology without them writes the same mapping as before they existed."""
    for key in RATE_KEYS:
        if item.get(key, 0) is None:
            del item[key]


def _drop_default_bias_init(item: dict[str, Any]) -> None:
    """Drop ``bias_init`` of ``item`` when it is the default (zeros), so that a topology
    without it writes the same mapping as before it existed (and resumes its runs)."""
    if item.get("bias_init") == "zeros":
        del item["bias_init"]


def _option_to_plain(value: Any) -> Any:
    """A block option in its YAML form: nested ``(name, value)`` pairs become a mapping."""
    if isinstance(value, tuple) and all(
        isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) for item in value
    ):
        return {name: _option_to_plain(inner) for name, inner in value}
    return value


def _block_to_dict(item: dict[str, Any], block: BlockSpec) -> None:
    """Write ``block`` in its YAML form into ``item``, or drop it when it is the default."""
    if block.is_default:
        del item["block"]
    else:
        item["block"] = block.to_dict()
