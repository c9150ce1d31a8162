"""Validation of plain topology data into a :class:`~topo_ep.spec.TopologySpec`.

:func:`spec_from_dict` checks every field (types, unknown and missing keys, ranges, allowed
values) and the graph as a whole (edges to declared layers, tied feedback partners, identity
sizes, acyclic forward part, a readout reachable from the input). The first problem found raises
a :class:`~topo_ep.errors.TopologyError` that names the field as a dotted path
(``edges[2].gain``) and points at the YAML node it came from.

:class:`FieldChecker` holds the typed accessors; :mod:`topo_ep.generate` uses it as well.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from topo_ep import graph
from topo_ep.errors import Location, TopologyError
from topo_ep.spec import (
    ACTIVATIONS,
    EDGE_KINDS,
    ERROR_MODES,
    FEEDBACK_MODES,
    INITS,
    INPUT,
    LR_SCHEDULES,
    NUDGINGS,
    OPTIMIZERS,
    RULES,
    SCHEDULES,
    DynamicsSpec,
    EdgeSpec,
    InputSpec,
    LayerSpec,
    ReadoutSpec,
    TopologySpec,
    TrainingSpec,
)
from topo_ep.yaml_source import KEY_MARK, dotted_path

#: Largest layer, input or readout size accepted.
MAX_SIZE = 1_000_000
#: Largest step count (free_steps, nudged_steps, check_every) accepted.
MAX_STEPS = 10_000_000
#: Largest epoch count accepted.
MAX_EPOCHS = 1_000_000
#: Name reserved for the readout node in :func:`topo_ep.graph.to_graph`.
READOUT = "readout"
#: Layer names: a letter or underscore, then letters, digits, ``_`` or ``-``.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")

TOP_KEYS = (
    "name",
    "description",
    "input",
    "layers",
    "readout",
    "edges",
    "dynamics",
    "training",
    "generate",
    "origin",
)
INPUT_KEYS = ("size", "mean", "std")
LAYER_KEYS = ("name", "size", "activation", "bias")
READOUT_KEYS = ("from", "size", "feedback", "bias")
EDGE_KEYS = ("source", "target", "kind", "gain", "feedback", "learned", "init")
DYNAMICS_KEYS = ("schedule", "free_steps", "nudged_steps", "tolerance", "check_every")
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
)

_REQUIRED = object()


def suggest(word: str, options: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest option, or an empty string."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def _show(value: Any) -> str:
    if isinstance(value, (Mapping, list, tuple)):
        return _type_name(value)
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{_type_name(value)} {text}"


class FieldChecker:
    """Typed access to plain data whose errors point at the YAML node of each field.

    Parameters
    ----------
    positions
        Path tuple -> :class:`Location`, as returned by :func:`topo_ep.yaml_source.parse_yaml`.
    filename
        Used when no position is known.
    """

    def __init__(self, positions: Mapping[tuple, Location] | None, filename: str) -> None:
        self.positions = positions or {}
        self.filename = filename

    def location(self, path: tuple, key: bool = False) -> Location:
        """Location of ``path`` (of its key if ``key``), else of its nearest known ancestor."""
        if key and path + (KEY_MARK,) in self.positions:
            return self.positions[path + (KEY_MARK,)]
        for end in range(len(path), -1, -1):
            found = self.positions.get(path[:end])
            if found is not None:
                return found
        return Location(self.filename)

    def error(self, kind: str, message: str, path: tuple, key: bool = False) -> TopologyError:
        """A :class:`TopologyError` about the field at ``path``."""
        return TopologyError(kind, message, self.location(path, key), dotted_path(path))

    def missing(self, path: tuple, key: str) -> TopologyError:
        """A ``missing-key`` error about the mapping at ``path``."""
        where = "" if path else " at the top level"
        return self.error("missing-key", f"the required key '{key}' is missing{where}", path)

    # -- containers -------------------------------------------------------------------------

    def mapping(
        self,
        value: Any,
        path: tuple,
        allowed: Sequence[str],
        required: Sequence[str] = (),
        what: str = "mapping",
    ) -> dict[str, Any]:
        """Check that ``value`` is a mapping with only ``allowed`` keys and all ``required``."""
        if not isinstance(value, Mapping):
            raise self.error(
                "type",
                f"expected a {what} with keys {', '.join(allowed)}; got {_show(value)}",
                path,
            )
        for key in value:
            if not isinstance(key, str):
                raise self.error("type", f"keys must be strings, got {_show(key)}", path)
            if key not in allowed:
                hint = suggest(key, allowed) or f"; valid keys: {', '.join(allowed)}"
                where = dotted_path(path) or "the top level"
                raise self.error(
                    "unknown-key", f"unknown key '{key}' in {where}{hint}", path + (key,), True
                )
        for key in required:
            if key not in value:
                raise self.missing(path, key)
        return dict(value)

    def sequence(self, value: Any, path: tuple, what: str) -> list[Any]:
        """Check that ``value`` is a list of ``what``."""
        if not isinstance(value, (list, tuple)):
            raise self.error("type", f"expected a list of {what}; got {_show(value)}", path)
        return list(value)

    def get(
        self,
        data: Mapping[str, Any],
        path: tuple,
        key: str,
        check: Callable[[Any, tuple], Any],
        default: Any = _REQUIRED,
    ) -> Any:
        """``check(data[key])``, or ``default`` when the key is absent (required if none)."""
        if key not in data:
            if default is _REQUIRED:
                raise self.missing(path, key)
            return default
        return check(data[key], path + (key,))

    # -- scalars ----------------------------------------------------------------------------

    def integer(self, value: Any, path: tuple, low: int = 1, high: int = MAX_SIZE) -> int:
        """An int (not a bool) in ``[low, high]``; out of range is ``absurd-number``."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error("type", f"expected an integer; got {_show(value)}", path)
        if not low <= value <= high:
            raise self.error(
                "absurd-number", f"{value} is out of range; expected {low} to {high}", path
            )
        return int(value)

    def number(
        self,
        value: Any,
        path: tuple,
        minimum: float | None = None,
        positive: bool = False,
        kind: str = "absurd-number",
    ) -> float:
        """A finite float (an int is accepted); ``positive`` means > 0, ``minimum`` >= it."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error("type", f"expected a number; got {_show(value)}", path)
        value = float(value)
        if not math.isfinite(value):
            raise self.error(kind, f"{value} is not a finite number", path)
        if positive and value <= 0:
            raise self.error(kind, f"{value} must be greater than 0", path)
        if minimum is not None and value < minimum:
            raise self.error(kind, f"{value} must be at least {minimum:g}", path)
        return value

    def boolean(self, value: Any, path: tuple) -> bool:
        """A boolean (``true``/``false``)."""
        if not isinstance(value, bool):
            raise self.error("type", f"expected true or false; got {_show(value)}", path)
        return value

    def string(self, value: Any, path: tuple, empty: bool = False) -> str:
        """A string, non-empty unless ``empty``."""
        if not isinstance(value, str):
            raise self.error("type", f"expected a string; got {_show(value)}", path)
        if not empty and not value.strip():
            raise self.error("invalid-value", "must not be empty", path)
        return value

    def choice(self, value: Any, path: tuple, options: Sequence[str]) -> str:
        """One of ``options``."""
        if not isinstance(value, str):
            raise self.error(
                "type", f"expected one of {', '.join(options)}; got {_show(value)}", path
            )
        if value not in options:
            raise self.error(
                "invalid-value",
                f"'{value}' is not allowed; expected one of {', '.join(options)}"
                f"{suggest(value, options)}",
                path,
            )
        return value

    def name(self, value: Any, path: tuple) -> str:
        """A layer name: matches :data:`NAME_PATTERN`."""
        value = self.string(value, path)
        if not NAME_PATTERN.match(value):
            raise self.error(
                "invalid-value",
                f"layer name {value!r} must start with a letter or '_' and contain only "
                "letters, digits, '_' and '-'",
                path,
            )
        return value

    def size(self, value: Any, path: tuple, low: int = 1) -> int:
        """A size in ``[low, MAX_SIZE]``."""
        return self.integer(value, path, low, MAX_SIZE)


def _steps(check: FieldChecker) -> Callable[[Any, tuple], int]:
    return lambda value, path: check.integer(value, path, 1, MAX_STEPS)


def _layers(check: FieldChecker, value: Any) -> tuple[LayerSpec, ...]:
    path: tuple = ("layers",)
    items = check.sequence(value, path, "layers")
    if not items:
        raise check.error("invalid-value", "at least one hidden layer is needed", path)
    layers: list[LayerSpec] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        here = path + (index,)
        data = check.mapping(item, here, LAYER_KEYS, ("name", "size"), "layer")
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
        layers.append(
            LayerSpec(
                name=name,
                size=check.get(data, here, "size", check.size),
                activation=check.get(
                    data, here, "activation", lambda v, p: check.choice(v, p, ACTIVATIONS), "tanh"
                ),
                bias=check.get(data, here, "bias", check.boolean, False),
            )
        )
    return tuple(layers)


def _readout(check: FieldChecker, value: Any, layers: Sequence[str]) -> ReadoutSpec:
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
    return ReadoutSpec(
        source=source,
        size=check.get(data, path, "size", lambda v, p: check.size(v, p, low=2)),
        feedback=check.get(
            data, path, "feedback", lambda v, p: check.choice(v, p, FEEDBACK_MODES), "tied"
        ),
        bias=check.get(data, path, "bias", check.boolean, False),
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


def _edge(check: FieldChecker, item: Any, index: int, sizes: Mapping[str, int]) -> EdgeSpec:
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
    return EdgeSpec(
        source=source,
        target=target,
        kind=kind,
        gain=gain,
        feedback=feedback,
        learned=learned,
        init=init,
    )


def _edges(check: FieldChecker, value: Any, sizes: Mapping[str, int]) -> tuple[EdgeSpec, ...]:
    items = check.sequence(value, ("edges",), "edges")
    edges: list[EdgeSpec] = []
    seen: dict[tuple[str, str, str], int] = {}
    for index, item in enumerate(items):
        edge = _edge(check, item, index, sizes)
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
            data, path, "schedule", lambda v, p: check.choice(v, p, SCHEDULES), default.schedule
        ),
        free_steps=check.get(data, path, "free_steps", steps, default.free_steps),
        nudged_steps=check.get(data, path, "nudged_steps", steps, default.nudged_steps),
        tolerance=check.get(
            data, path, "tolerance", lambda v, p: check.number(v, p, 0.0), default.tolerance
        ),
        check_every=check.get(data, path, "check_every", steps, default.check_every),
    )


def _training(check: FieldChecker, value: Any) -> TrainingSpec:
    path: tuple = ("training",)
    data = check.mapping(value, path, TRAINING_KEYS, (), "training mapping")
    default = TrainingSpec()

    def enum(options: Sequence[str]) -> Callable[[Any, tuple], str]:
        return lambda v, p: check.choice(v, p, options)

    def positive(v: Any, p: tuple) -> float:
        return check.number(v, p, positive=True)

    return TrainingSpec(
        nudge=check.get(data, path, "nudge", positive, default.nudge),
        nudging=check.get(data, path, "nudging", enum(NUDGINGS), default.nudging),
        rule=check.get(data, path, "rule", enum(RULES), default.rule),
        error=check.get(data, path, "error", enum(ERROR_MODES), default.error),
        optimizer=check.get(data, path, "optimizer", enum(OPTIMIZERS), default.optimizer),
        lr=check.get(data, path, "lr", positive, default.lr),
        lr_schedule=check.get(data, path, "lr_schedule", enum(LR_SCHEDULES), default.lr_schedule),
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
    )


def _origin(check: FieldChecker, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise check.error(
            "type", f"origin is a mapping written by dump; got {_show(value)}", ("origin",)
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
        Plain data as parsed from YAML (or :meth:`TopologySpec.to_dict`). A ``generate:`` block
        is expanded first (:func:`topo_ep.generate.expand_generate`).
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
    if isinstance(data, Mapping) and "generate" in data:
        from topo_ep.generate import expand_generate

        positions = dict(positions or {})
        data = expand_generate(dict(data), positions)
    check = FieldChecker(positions, filename)
    if data is None:
        raise check.error(
            "type",
            "the topology is empty; expected a mapping with name, input, layers, readout, edges",
            (),
        )
    top = check.mapping(data, (), TOP_KEYS, ("name", "input", "layers", "readout", "edges"))
    name = check.get(top, (), "name", check.string)
    description = check.get(top, (), "description", lambda v, p: check.string(v, p, True), "")
    input_data = check.mapping(top["input"], ("input",), INPUT_KEYS, ("size",), "input mapping")
    input_spec = InputSpec(
        size=check.get(input_data, ("input",), "size", check.size),
        mean=check.get(input_data, ("input",), "mean", check.number, 0.0),
        std=check.get(
            input_data, ("input",), "std", lambda v, p: check.number(v, p, positive=True), 1.0
        ),
    )
    layers = _layers(check, top["layers"])
    names = [layer.name for layer in layers]
    readout = _readout(check, top["readout"], names)
    sizes = {INPUT: input_spec.size, **{layer.name: layer.size for layer in layers}}
    edges = _edges(check, top["edges"], sizes)
    dynamics = _dynamics(check, top.get("dynamics", {})) if "dynamics" in top else DynamicsSpec()
    training = _training(check, top["training"]) if "training" in top else TrainingSpec()
    spec = TopologySpec(
        name=name,
        input=input_spec,
        layers=layers,
        readout=readout,
        edges=edges,
        dynamics=dynamics,
        training=training,
        origin=_origin(check, top.get("origin")),
        description=description,
    )
    _check_graph(check, spec)
    return spec
