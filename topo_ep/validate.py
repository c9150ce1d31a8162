"""The topology schema: plain topology data into a :class:`~topo_ep.spec.TopologySpec`.

:func:`spec_from_dict` checks every field (types, unknown and missing keys, ranges, allowed
values) and the graph as a whole (edges to declared layers, tied feedback partners, identity
sizes, acyclic forward part, a readout reachable from the input). The first problem found raises
a :class:`~topo_ep.errors.TopologyError` that names the field as a dotted path
(``edges[2].gain``) and points at the YAML node it came from. Field access is
:class:`topo_ep.fields.FieldChecker`; a ``generate:`` block is expanded before this, on the load
path (:func:`topo_ep.overrides.apply_overrides`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from topo_ep import graph
from topo_ep.block_schema import Placement, parse_block, state_dependence
from topo_ep.errors import Location
from topo_ep.fields import MAX_EDGES, MAX_LAYERS, MAX_SIZE, FieldChecker, show_value, suggest
from topo_ep.schedules import SCHEDULES
from topo_ep.spec import (
    ACTIVATIONS,
    BIAS_INITS,
    DATASETS,
    EDGE_KINDS,
    ERROR_MODES,
    FEEDBACK_MODES,
    INITS,
    INPUT,
    LR_SCHEDULES,
    NUDGINGS,
    OPTIMIZERS,
    RATE_KEYS,
    READOUT_ERRORS,
    READOUT_INITS,
    RULES,
    BlockSpec,
    DynamicsSpec,
    EdgeSpec,
    FeedbackGainSpec,
    InputSpec,
    LayerSpec,
    ReadoutSpec,
    TopologySpec,
    TrainingSpec,
)

#: Largest step count (free_steps, nudged_steps, check_every) accepted.
MAX_STEPS = 10_000_000
#: Largest epoch count accepted.
MAX_EPOCHS = 1_000_000
#: Name reserved for the readout node in :func:`topo_ep.graph_io.to_graph`.
READOUT = graph.READOUT

TOP_KEYS = (
    "name",
    "description",
    "input",
    "layers",
    "readout",
    "edges",
    "dynamics",
    "training",
    "feedback_gain",
    "generate",
    "origin",
)
INPUT_KEYS = ("size", "mean", "std", "shape", "dataset")
LAYER_KEYS = ("name", "size", "activation", "bias", "bias_init", "shape", "lr", "weight_decay")
READOUT_KEYS = (
    "from",
    "size",
    "feedback",
    "bias",
    "bias_init",
    "block",
    "lr",
    "weight_decay",
    "init",
)
EDGE_KEYS = (
    "source",
    "target",
    "kind",
    "gain",
    "feedback",
    "learned",
    "init",
    "block",
    "lr",
    "weight_decay",
)
#: Most dimensions a layer ``shape`` may have (channels x height x width).
MAX_SHAPE_DIMS = 3
FEEDBACK_GAIN_KEYS = ("spectral_radius", "every_epoch")
DYNAMICS_KEYS = (
    "schedule",
    "free_steps",
    "nudged_steps",
    "tolerance",
    "check_every",
    "nudged_schedule",
    "nudged_tolerance",
    "execution",
)
#: Values of ``dynamics.execution`` (:data:`topo_ep.chunks.EXECUTIONS`, which sits above).
EXECUTIONS = ("eager", "cuda-graph", "compile")
TRAINING_KEYS = (
    "nudge",
    "nudging",
    "rule",
    "error",
    "optimizer",
    "lr",
    "lr_schedule",
    "weight_decay",
    "batch_size",
    "epochs",
    "gain_compensated",
    "warm_start",
    "readout_error",
)


def _enum(check: FieldChecker, options: Sequence[str]) -> Callable[[Any, tuple], str]:
    return lambda v, p: check.choice(v, p, options)


def _optional(check: Callable[[Any, tuple], Any]) -> Callable[[Any, tuple], Any]:
    """``check``, with ``null`` accepted as ``None``."""
    return lambda value, path: None if value is None else check(value, path)


def _steps(check: FieldChecker) -> Callable[[Any, tuple], int]:
    return lambda value, path: check.integer(value, path, 1, MAX_STEPS)


def _shape(check: FieldChecker, data: Mapping[str, Any], path: tuple) -> tuple[int, ...] | None:
    """A layer's ``shape``: 1 to :data:`MAX_SHAPE_DIMS` positive sizes whose product is its
    ``size`` (checked when both are present), or ``None``."""
    if "shape" not in data:
        return None
    here = path + ("shape",)
    items = check.sequence(data["shape"], here, "sizes")
    if not 1 <= len(items) <= MAX_SHAPE_DIMS:
        raise check.error(
            "invalid-value",
            f"a shape has 1 to {MAX_SHAPE_DIMS} dimensions; got {len(items)}",
            here,
        )
    shape = tuple(check.size(item, here + (i,)) for i, item in enumerate(items))
    size = data.get("size")
    if isinstance(size, int) and math.prod(shape) != size:
        raise check.error(
            "size-mismatch",
            f"shape {list(shape)} holds {math.prod(shape)} units but size is {size}",
            here,
        )
    return shape


def _size_and_shape(
    check: FieldChecker, data: Mapping[str, Any], path: tuple
) -> tuple[int, tuple[int, ...] | None]:
    """``size`` and ``shape`` of a layer or the input: either may be declared alone (the size
    of a shape is the product of its dimensions, ``[C, H, W]`` for channels of images), and
    both must agree when both are."""
    shape = _shape(check, data, path)
    if "size" in data or shape is None:
        if "size" not in data:
            raise check.error(
                "missing-key",
                "the required key 'size' is missing (or declare 'shape: [channels, height, "
                "width]')",
                path,
            )
        return check.get(data, path, "size", check.size), shape
    size = math.prod(shape)
    if size > MAX_SIZE:
        raise check.error(
            "absurd-number",
            f"shape {list(shape)} holds {size:,} units, more than the {MAX_SIZE:,} allowed",
            path + ("shape",),
        )
    return size, shape


def _rates(
    check: FieldChecker, data: Mapping[str, Any], path: tuple
) -> tuple[float | None, float | None]:
    """The optional per-tensor ``lr`` (> 0) and ``weight_decay`` (>= 0) of an edge, a layer
    or the readout; ``None`` where absent (the training's value applies)."""
    lr = check.get(data, path, "lr", lambda v, p: check.number(v, p, positive=True), None)
    decay = check.get(
        data, path, "weight_decay", lambda v, p: check.number(v, p, minimum=0.0), None
    )
    return lr, decay


def _refuse_rates(
    check: FieldChecker, data: Mapping[str, Any], path: tuple, kind: str, why: str
) -> None:
    """Refuse ``lr`` / ``weight_decay`` on something that owns no learned tensor (``why``
    says what it is and where to set the rate instead), pointing at the key."""
    for key in RATE_KEYS:
        if key in data:
            raise check.error(kind, f"'{key}' does not apply here: {why}", path + (key,), True)


def _layers(check: FieldChecker, value: Any) -> tuple[LayerSpec, ...]:
    path: tuple = ("layers",)
    items = check.sequence(value, path, "layers", MAX_LAYERS)
    if not items:
        raise check.error("invalid-value", "at least one hidden layer is needed", path)
    layers: list[LayerSpec] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        here = path + (index,)
        data = check.mapping(item, here, LAYER_KEYS, ("name",), "layer")
        name = check.get(data, here, "name", check.name)
        if name in (INPUT, READOUT):
            meaning = "the clamped input" if name == INPUT else "the readout"
            raise check.error(
                "duplicate",
                f"'{name}' is a reserved name ({meaning})",
                here + ("name",),
            )
        if name in seen:
            raise check.error(
                "duplicate",
                f"layer '{name}' is declared twice (first as layers[{seen[name]}])",
                here + ("name",),
            )
        seen[name] = index
        size, shape = _size_and_shape(check, data, here)
        bias = check.get(data, here, "bias", check.boolean, False)
        bias_init = _bias_init(check, data, here, bias)
        lr, decay = _rates(check, data, here)
        if not bias:
            _refuse_rates(
                check,
                data,
                here,
                "invalid-value",
                f"on a layer it sets the rate of the layer's bias, and layer '{name}' has none "
                "(bias: false); add 'bias: true', or set it on the edges into the layer",
            )
        layers.append(
            LayerSpec(
                name=name,
                size=size,
                activation=check.get(
                    data, here, "activation", lambda v, p: check.choice(v, p, ACTIVATIONS), "tanh"
                ),
                bias=bias,
                shape=shape,
                lr=lr,
                weight_decay=decay,
                bias_init=bias_init,
            )
        )
    return tuple(layers)


def _bias_init(check: FieldChecker, data: Mapping[str, Any], path: tuple, bias: bool) -> str:
    """``bias_init`` of a layer or the readout (:data:`BIAS_INITS`), refused without a bias."""
    init = check.get(data, path, "bias_init", lambda v, p: check.choice(v, p, BIAS_INITS), "zeros")
    if "bias_init" in data and not bias:
        raise check.error(
            "invalid-value",
            "'bias_init' sets the initial values of a bias, and there is none here "
            "(bias: false); add 'bias: true'",
            path + ("bias_init",),
            True,
        )
    return init


def _check_bias_fan_in(
    check: FieldChecker, layers: Sequence[LayerSpec], edges: Sequence[EdgeSpec]
) -> None:
    """A layer's ``bias_init: fan_in_uniform`` takes the fan in of the forward and skip edges
    into it: refused on a layer that has none (it is fed by feedback only)."""
    fed = {edge.target for edge in edges if edge.kind != "feedback"}
    for index, layer in enumerate(layers):
        if layer.bias_init == "fan_in_uniform" and layer.name not in fed:
            raise check.error(
                "invalid-value",
                f"fan_in_uniform takes the fan in of the forward and skip edges into "
                f"'{layer.name}', and it has none; use bias_init: zeros",
                ("layers", index, "bias_init"),
            )


def _readout(
    check: FieldChecker, value: Any, layers: Sequence[str], grids: Mapping[str, tuple[int, ...]]
) -> ReadoutSpec:
    path: tuple = ("readout",)
    data = check.mapping(value, path, READOUT_KEYS, ("from", "size"), "readout")
    source = check.get(data, path, "from", check.string)
    if source not in layers:
        what = "the input" if source == INPUT else f"'{source}', which is not a declared layer"
        raise check.error(
            "missing-layer",
            f"the readout must read a hidden layer, not {what}{suggest(source, layers)}",
            path + ("from",),
        )
    size = check.get(data, path, "size", lambda v, p: check.size(v, p, low=2))
    init = check.get(
        data, path, "init", lambda v, p: check.choice(v, p, READOUT_INITS), "glorot_uniform"
    )
    where = Placement(source, READOUT, grids[source], (size,), init)
    lr, decay = _rates(check, data, path)
    bias = check.get(data, path, "bias", check.boolean, False)
    return ReadoutSpec(
        source=source,
        size=size,
        feedback=check.get(
            data, path, "feedback", lambda v, p: check.choice(v, p, FEEDBACK_MODES), "tied"
        ),
        bias=bias,
        bias_init=_bias_init(check, data, path, bias),
        block=check.get(
            data, path, "block", lambda v, p: parse_block(check, v, p, where), BlockSpec()
        ),
        lr=lr,
        weight_decay=decay,
        init=init,
    )


def _endpoint(check: FieldChecker, value: Any, path: tuple, layers: Sequence[str]) -> str:
    name = check.string(value, path)
    allowed = (INPUT, *layers) if path[-1] == "source" else tuple(layers)
    if name == INPUT and path[-1] == "target":
        raise check.error(
            "invalid-value", "an edge cannot end at the input: the input is clamped", path
        )
    if name not in allowed:
        hint = suggest(name, allowed) or f"; declared: {', '.join(allowed)}"
        raise check.error("missing-layer", f"'{name}' is not a declared layer{hint}", path)
    return name


def _edge(
    check: FieldChecker,
    item: Any,
    index: int,
    sizes: Mapping[str, int],
    grids: Mapping[str, tuple[int, ...]],
) -> EdgeSpec:
    here: tuple = ("edges", index)
    layers = [name for name in sizes if name != INPUT]
    data = check.mapping(item, here, EDGE_KEYS, ("source", "target"), "edge")
    source = check.get(data, here, "source", lambda v, p: _endpoint(check, v, p, layers))
    target = check.get(data, here, "target", lambda v, p: _endpoint(check, v, p, layers))
    kind = check.get(data, here, "kind", lambda v, p: check.choice(v, p, EDGE_KINDS), "forward")
    gain = check.get(
        data, here, "gain", lambda v, p: check.number(v, p, minimum=0.0, kind="gain"), 1.0
    )
    is_feedback = kind == "feedback"
    feedback = check.get(
        data, here, "feedback", lambda v, p: check.choice(v, p, FEEDBACK_MODES), None
    )
    if feedback is not None and not is_feedback:
        raise check.error(
            "tied-partner",
            f"'feedback: {feedback}' applies only to edges of kind feedback; this edge is "
            f"kind {kind} (its own feedback is a separate edge {target}->{source} of kind "
            "feedback)",
            here + ("feedback",),
            True,
        )
    if is_feedback and feedback is None:
        feedback = "tied"
    learned = check.get(data, here, "learned", check.boolean, not is_feedback)
    if is_feedback and learned:
        why = (
            "tied feedback follows the weights of its partner edge"
            if feedback == "tied"
            else "random feedback is a fixed matrix"
        )
        raise check.error(
            "tied-partner",
            f"a feedback edge cannot be learned: {why}; remove 'learned' or set it to false",
            here + ("learned",),
        )
    lr, decay = _rates(check, data, here)
    if feedback == "tied":
        _refuse_rates(
            check,
            data,
            here,
            "tied-partner",
            f"a tied feedback edge owns no weights (it applies the transpose of the weights of "
            f"{target}->{source}); set it on that forward or skip edge",
        )
    elif not learned:
        what = "random feedback is a fixed matrix" if feedback == "random" else "it is fixed"
        _refuse_rates(
            check,
            data,
            here,
            "invalid-value",
            f"this edge has no learned weights ({what}: learned: false), so the optimizer "
            "never updates it; remove it",
        )
    init = check.get(data, here, "init", lambda v, p: check.choice(v, p, INITS), "glorot_uniform")
    if source == INPUT and is_feedback:
        raise check.error(
            "invalid-value",
            "the input can only be the source of forward or skip edges",
            here + ("kind",),
        )
    if source == target:
        raise check.error(
            "cycle" if not is_feedback else "invalid-value",
            f"edge {source}->{target} connects a layer to itself; within-layer weights are "
            "not supported",
            here + ("target",),
        )
    if feedback == "tied" and init != "glorot_uniform":
        raise check.error(
            "invalid-value",
            f"a tied feedback edge has no weights of its own, so 'init: {init}' does not apply",
            here + ("init",),
        )
    if init == "identity" and sizes[source] != sizes[target]:
        raise check.error(
            "size-mismatch",
            f"init: identity needs equal sizes, but {source} has {sizes[source]} units and "
            f"{target} has {sizes[target]}",
            here + ("init",),
        )
    if feedback == "tied" and "block" in data:
        raise check.error(
            "tied-partner",
            f"a tied feedback edge has no weights of its own: it is the transpose of the block "
            f"of {target}->{source}; declare 'block' on that edge",
            here + ("block",),
            True,
        )
    where = Placement(source, target, grids[source], grids[target], init)
    block = check.get(
        data, here, "block", lambda v, p: parse_block(check, v, p, where), BlockSpec()
    )
    return EdgeSpec(
        source=source,
        target=target,
        kind=kind,
        gain=gain,
        feedback=feedback,
        learned=learned,
        init=init,
        block=block,
        lr=lr,
        weight_decay=decay,
    )


def _edges(
    check: FieldChecker,
    value: Any,
    sizes: Mapping[str, int],
    grids: Mapping[str, tuple[int, ...]],
) -> tuple[EdgeSpec, ...]:
    items = check.sequence(value, ("edges",), "edges", MAX_EDGES)
    edges: list[EdgeSpec] = []
    seen: dict[tuple[str, str, str], int] = {}
    for index, item in enumerate(items):
        edge = _edge(check, item, index, sizes, grids)
        triple = (edge.source, edge.target, edge.kind)
        if triple in seen:
            raise check.error(
                "duplicate",
                f"edge {edge.key} is declared twice (first as edges[{seen[triple]}])",
                ("edges", index),
            )
        seen[triple] = index
        edges.append(edge)
    forward = {(e.source, e.target) for e in edges if e.kind in graph.FORWARD_KINDS}
    for index, edge in enumerate(edges):
        if edge.is_tied and (edge.target, edge.source) not in forward:
            raise check.error(
                "tied-partner",
                f"tied feedback {edge.source}->{edge.target} transposes the weights of a "
                f"forward or skip edge {edge.target}->{edge.source}, which is not declared; "
                "declare it or use 'feedback: random'",
                ("edges", index),
            )
    return tuple(edges)


def _dynamics(check: FieldChecker, value: Any) -> DynamicsSpec:
    path: tuple = ("dynamics",)
    data = check.mapping(value, path, DYNAMICS_KEYS, (), "dynamics mapping")
    default = DynamicsSpec()
    steps = _steps(check)
    return DynamicsSpec(
        schedule=check.get(
            data, path, "schedule", _enum(check, SCHEDULES.names()), default.schedule
        ),
        free_steps=check.get(data, path, "free_steps", steps, default.free_steps),
        nudged_steps=check.get(data, path, "nudged_steps", steps, default.nudged_steps),
        tolerance=check.get(
            data, path, "tolerance", lambda v, p: check.number(v, p, 0.0), default.tolerance
        ),
        check_every=check.get(data, path, "check_every", steps, default.check_every),
        # null, like an absent key, means "as the free phase"
        nudged_schedule=check.get(
            data, path, "nudged_schedule", _optional(_enum(check, SCHEDULES.names())), None
        ),
        nudged_tolerance=check.get(
            data, path, "nudged_tolerance", _optional(lambda v, p: check.number(v, p, 0.0)), None
        ),
        execution=check.get(data, path, "execution", _enum(check, EXECUTIONS), default.execution),
    )


def _training(check: FieldChecker, value: Any) -> TrainingSpec:
    path: tuple = ("training",)
    data = check.mapping(value, path, TRAINING_KEYS, (), "training mapping")
    default = TrainingSpec()

    def positive(v: Any, p: tuple) -> float:
        return check.number(v, p, positive=True)

    return TrainingSpec(
        nudge=check.get(data, path, "nudge", positive, default.nudge),
        nudging=check.get(data, path, "nudging", _enum(check, NUDGINGS), default.nudging),
        rule=check.get(data, path, "rule", _enum(check, RULES), default.rule),
        error=check.get(data, path, "error", _enum(check, ERROR_MODES), default.error),
        optimizer=check.get(data, path, "optimizer", _enum(check, OPTIMIZERS), default.optimizer),
        lr=check.get(data, path, "lr", positive, default.lr),
        lr_schedule=check.get(
            data, path, "lr_schedule", _enum(check, LR_SCHEDULES), default.lr_schedule
        ),
        weight_decay=check.get(
            data, path, "weight_decay", lambda v, p: check.number(v, p, 0.0), default.weight_decay
        ),
        batch_size=check.get(data, path, "batch_size", check.size, default.batch_size),
        epochs=check.get(
            data, path, "epochs", lambda v, p: check.integer(v, p, 1, MAX_EPOCHS), default.epochs
        ),
        gain_compensated=check.get(
            data, path, "gain_compensated", check.boolean, default.gain_compensated
        ),
        warm_start=check.get(data, path, "warm_start", check.boolean, default.warm_start),
        readout_error=check.get(
            data, path, "readout_error", _enum(check, READOUT_ERRORS), default.readout_error
        ),
    )


def _check_warm_start(check: FieldChecker, training: TrainingSpec, dynamics: DynamicsSpec) -> None:
    """``training.warm_start`` needs converged phases: at ``dynamics.tolerance`` 0 the free phase
    runs exactly ``free_steps`` steps, and from a warm start those steps would compute another
    state than the paper's fixed T from zero (more relaxation for the same count, carried over
    epochs), so the fixed-step mode would no longer be the paper's. Refused rather than
    silently changed."""
    if training.warm_start and dynamics.tolerance <= 0:
        raise check.error(
            "invalid-value",
            "true needs converged phases (dynamics.tolerance > 0); with fixed step "
            "counts (tolerance 0) a warm start would change what the free_steps steps compute. "
            "Set dynamics.tolerance (e.g. 1e-4) or drop warm_start",
            ("training", "warm_start"),
        )


def _check_accumulated_error(
    check: FieldChecker, training: TrainingSpec, dynamics: DynamicsSpec
) -> None:
    """``training.error: accumulated`` grows the nudge drive at every step, so the nudged
    phase has no fixed point to converge to: it needs the fixed step count (a nudged
    tolerance of 0)."""
    nudged = dynamics.nudged_phase_tolerance
    if training.error == "accumulated" and nudged > 0:
        raise check.error(
            "invalid-value",
            "accumulated adds the nudge drive once more at every nudged step, so the nudged "
            f"phase has no fixed point and a nudged tolerance ({nudged:g}) cannot stop it. Set "
            "dynamics.nudged_tolerance: 0 (exactly nudged_steps) or use error: held",
            ("training", "error"),
        )


def _feedback_gain(check: FieldChecker, value: Any, edges: Sequence[EdgeSpec]) -> FeedbackGainSpec:
    """``feedback_gain: {spectral_radius: r, every_epoch: false}``: r > 0, and feedback edges
    with a gain other than 0 to scale (the radius is 0 without them: the forward part is
    acyclic)."""
    path: tuple = ("feedback_gain",)
    data = check.mapping(
        value, path, FEEDBACK_GAIN_KEYS, ("spectral_radius",), "feedback_gain mapping"
    )
    radius = check.get(
        data, path, "spectral_radius", lambda v, p: check.number(v, p, positive=True)
    )
    every_epoch = check.get(data, path, "every_epoch", check.boolean, False)
    for edge in edges:
        why = state_dependence(edge.block)
        if why is not None and edge.source != INPUT:
            raise check.error(
                "invalid-value",
                f"feedback_gain sets the gains from the spectral radius of the hidden "
                f"operator, but {edge.key} {why}: the operator depends on the state and has "
                "no spectral radius; give the feedback gains directly",
                path,
                True,
            )
    gains = [edge.gain for edge in edges if edge.kind == "feedback"]
    if not gains:
        raise check.error(
            "invalid-value",
            "feedback_gain scales the gains of the feedback edges, but this topology has none; "
            "without feedback the hidden operator's spectral radius is 0 at every scale (its "
            "forward and skip part is acyclic); add feedback edges or remove feedback_gain",
            path,
            True,
        )
    if not any(gains):
        raise check.error(
            "invalid-value",
            f"every feedback edge has gain 0, so no scale of the gains changes the spectral "
            f"radius (0) and {radius:g} cannot be reached; give the feedback edges gains other "
            "than 0 (their ratios are kept)",
            path + ("spectral_radius",),
        )
    return FeedbackGainSpec(spectral_radius=radius, every_epoch=every_epoch)


def _origin(check: FieldChecker, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise check.error(
            "type", f"origin is a mapping written by dump; got {show_value(value)}", ("origin",)
        )
    return copy.deepcopy(dict(value))


def _check_graph(check: FieldChecker, spec: TopologySpec) -> None:
    cycle = graph.find_forward_cycle(spec.layer_names, spec.edges)
    if cycle is not None:
        index = max(spec.edges.index(edge) for edge in cycle)
        loop = " -> ".join([cycle[0].source] + [edge.target for edge in cycle])
        raise check.error(
            "cycle",
            f"forward and skip edges form a cycle {loop}; the forward part of the graph must "
            "be acyclic (top-down connections are edges of kind feedback)",
            ("edges", index),
        )
    reached = graph.reachable_from_input(spec)
    if spec.readout.source not in reached:
        seen = ", ".join(sorted(reached)) or "nothing"
        raise check.error(
            "unreachable-readout",
            f"no path of forward or skip edges leads from the input to '{spec.readout.source}', "
            f"the layer the readout reads (the input reaches: {seen})",
            ("readout", "from"),
        )


def spec_from_dict(
    data: Any, positions: Mapping[tuple, Location] | None = None, filename: str = "<dict>"
) -> TopologySpec:
    """Validate plain topology data and build the :class:`TopologySpec`.

    Parameters
    ----------
    data
        Plain data as parsed from YAML (or :meth:`TopologySpec.to_dict`), with any
        ``generate:`` block already expanded (:func:`topo_ep.generate.expand_generate`).
    positions
        Path tuple -> :class:`Location` of the YAML node, as returned by
        :func:`topo_ep.yaml_source.parse_yaml`. Errors for a path missing here point at its
        nearest recorded ancestor.
    filename
        Used in locations when ``positions`` is empty.

    Returns
    -------
    TopologySpec
        A consistent spec.

    Raises
    ------
    TopologyError
        The first problem found, with kind, message, location and dotted field path.
    """
    check = FieldChecker(positions, filename)
    if isinstance(data, Mapping) and "generate" in data:
        raise check.error(
            "invalid-value",
            "a generate: block is expanded on the load path; load the topology with "
            "topo_ep.loader.loads_topology, or expand it with topo_ep.generate.expand_generate",
            ("generate",),
            True,
        )
    if data is None:
        raise check.error(
            "type",
            "the topology is empty; expected a mapping with name, input, layers, readout, edges",
            (),
        )
    top = check.mapping(data, (), TOP_KEYS, ("name", "input", "layers", "readout", "edges"))
    name = check.get(top, (), "name", check.string)
    description = check.get(top, (), "description", lambda v, p: check.string(v, p, True), "")
    input_data = check.mapping(top["input"], ("input",), INPUT_KEYS, (), "input mapping")
    input_size, input_shape = _size_and_shape(check, input_data, ("input",))
    input_spec = InputSpec(
        size=input_size,
        mean=check.get(input_data, ("input",), "mean", check.number, 0.0),
        std=check.get(
            input_data, ("input",), "std", lambda v, p: check.number(v, p, positive=True), 1.0
        ),
        dataset=check.get(input_data, ("input",), "dataset", _enum(check, DATASETS), None),
        shape=input_shape,
    )
    layers = _layers(check, top["layers"])
    names = [layer.name for layer in layers]
    grids = {INPUT: input_spec.shape or (input_spec.size,)}
    grids.update({layer.name: layer.grid for layer in layers})
    readout = _readout(check, top["readout"], names, grids)
    sizes = {INPUT: input_spec.size, **{layer.name: layer.size for layer in layers}}
    edges = _edges(check, top["edges"], sizes, grids)
    _check_bias_fan_in(check, layers, edges)
    dynamics = _dynamics(check, top.get("dynamics", {})) if "dynamics" in top else DynamicsSpec()
    training = _training(check, top["training"]) if "training" in top else TrainingSpec()
    feedback_gain = (
        _feedback_gain(check, top["feedback_gain"], edges) if "feedback_gain" in top else None
    )
    _check_warm_start(check, training, dynamics)
    _check_accumulated_error(check, training, dynamics)
    if training.readout_error == "nudged" and training.nudging != "one-sided":
        raise check.error(
            "invalid-value",
            "nudged reads the output error of the one nudged phase; with "
            f"nudging: {training.nudging} there are two. Use readout_error: free",
            ("training", "readout_error"),
        )
    spec = TopologySpec(
        name=name,
        input=input_spec,
        layers=layers,
        readout=readout,
        edges=edges,
        dynamics=dynamics,
        training=training,
        feedback_gain=feedback_gain,
        origin=_origin(check, top.get("origin")),
        description=description,
    )
    _check_graph(check, spec)
    return spec
