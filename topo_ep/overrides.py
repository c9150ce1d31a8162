"""Command-line overrides: ``--set PATH=VALUE``.

``PATH`` is a dotted path into the topology mapping. List items are addressed by index
(``layers.0.size=128``), a layer by its name (``layers.h1.size=128``) and an edge by its key
``source->target:kind`` or, when only one edge joins the two layers, ``source->target``
(``edges.h2->h1:feedback.gain=0.05``). Missing mappings on the way are created, so
``training.lr=3e-4`` works in a file without a ``training:`` block; a misspelt key is then
reported by validation as an unknown key at ``--set``.

``VALUE`` is read as YAML (``128``, ``1e-3``, ``true``, ``tied``, ``[1, 2]``).

Two kinds of paths are special:

- ``generate.*`` paths apply to the ``generate:`` block before it is expanded
  (``generate.depth=20``);
- ``feedback_gain=V`` sets the gain of every feedback edge, after expansion; a mapping
  (``feedback_gain={spectral_radius: 0.5}``) sets the top-level ``feedback_gain`` field instead,
  as ``feedback_gain.spectral_radius=0.5`` does.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from topo_ep.errors import Location, TopologyError
from topo_ep.fields import suggest
from topo_ep.generate import expand_generate
from topo_ep.yaml_source import KEY_MARK, dotted_path, parse_yaml

#: Pseudo file name of override locations.
SOURCE = "--set"
#: Special path: the gain of every feedback edge.
FEEDBACK_GAIN = "feedback_gain"


@dataclass(frozen=True)
class Override:
    """One parsed ``PATH=VALUE`` override."""

    text: str
    parts: tuple[str, ...]
    value: Any


def _error(message: str, override_text: str, field: str | None = None) -> TopologyError:
    return TopologyError(
        "override", f"{message} (in --set {override_text!r})", Location(SOURCE), field
    )


def parse_override(text: str) -> Override:
    """Split ``PATH=VALUE`` and read ``VALUE`` as YAML.

    Raises
    ------
    TopologyError
        Kind ``override`` when there is no ``=``, the path is empty or malformed, or the value is
        not valid YAML.
    """
    if not isinstance(text, str) or "=" not in text:
        raise _error("an override has the form PATH=VALUE, e.g. training.lr=1e-3", str(text))
    path_text, _, value_text = text.partition("=")
    path_text = path_text.strip()
    parts = tuple(part.strip() for part in path_text.split("."))
    if not path_text or any(not part for part in parts):
        raise _error(f"malformed path {path_text!r}", text)
    try:
        value, _ = parse_yaml(value_text, SOURCE)
    except TopologyError as exc:
        raise _error(f"cannot read the value: {exc.message}", text, path_text) from None
    return Override(text=text, parts=parts, value=value)


def _edge_label(item: Any) -> tuple[str, str] | None:
    if isinstance(item, dict):
        source, target = item.get("source"), item.get("target")
        kind = item.get("kind", "forward")
        if all(isinstance(x, str) for x in (source, target, kind)):
            return f"{source}->{target}:{kind}", f"{source}->{target}"
    return None


def _index(container: list[Any], part: str, override: Override, where: tuple) -> int:
    """Index of the list item addressed by ``part``: a number, a layer name or an edge key."""
    field = dotted_path(where)
    if part.isdigit():
        index = int(part)
        if index >= len(container):
            raise _error(
                f"{field} has {len(container)} items; index {index} is out of range",
                override.text,
                field,
            )
        return index
    names = [item.get("name") if isinstance(item, dict) else None for item in container]
    if part in names:
        return names.index(part)
    labels = [_edge_label(item) for item in container]
    keys = [label[0] for label in labels if label]
    if part in keys:
        return next(i for i, label in enumerate(labels) if label and label[0] == part)
    short = [i for i, label in enumerate(labels) if label and label[1] == part]
    if len(short) == 1:
        return short[0]
    if len(short) > 1:
        raise _error(
            f"{field} has several edges {part}; add the kind, e.g. {part}:forward",
            override.text,
            field,
        )
    options = [name for name in names if isinstance(name, str)] + keys
    hint = suggest(part, options) or f"; available: {', '.join(options) or 'none'}"
    raise _error(f"{field} has no item {part!r}{hint}", override.text, field)


def _mark(positions: dict[tuple, Location] | None, path: tuple) -> None:
    """Point ``path`` and everything below it at ``--set``."""
    if positions is None:
        return
    for key in [key for key in positions if key[: len(path)] == path]:
        del positions[key]
    positions[path] = Location(SOURCE)
    positions[path + (KEY_MARK,)] = Location(SOURCE)


def _apply(data: Any, override: Override, positions: dict[tuple, Location] | None) -> None:
    """Apply one override to ``data`` in place."""
    if not isinstance(data, dict):
        raise _error("the topology is not a mapping", override.text)
    if override.parts == (FEEDBACK_GAIN,) and isinstance(override.value, dict):
        data[FEEDBACK_GAIN] = copy.deepcopy(override.value)
        _mark(positions, (FEEDBACK_GAIN,))
        return
    if override.parts == (FEEDBACK_GAIN,):
        edges = data.get("edges")
        targets = [
            index
            for index, edge in enumerate(edges if isinstance(edges, list) else [])
            if isinstance(edge, dict) and edge.get("kind") == "feedback"
        ]
        if not targets:
            raise _error("feedback_gain: the topology has no feedback edges", override.text)
        for index in targets:
            edges[index]["gain"] = copy.deepcopy(override.value)
            _mark(positions, ("edges", index, "gain"))
        return
    node: Any = data
    path: tuple = ()
    for depth, part in enumerate(override.parts):
        last = depth == len(override.parts) - 1
        if isinstance(node, dict):
            key: Any = part
            if not last and not isinstance(node.get(key), (dict, list)):
                if node.get(key) is not None:
                    field = dotted_path(path + (key,))
                    raise _error(f"{field} is a value, not a mapping or list", override.text, field)
                node[key] = {}
                _mark(positions, path + (key,))  # created by --set: errors about it name --set
        elif isinstance(node, list):
            key = _index(node, part, override, path)
        else:
            field = dotted_path(path)
            raise _error(f"{field} is a value, not a mapping or list", override.text, field)
        path = path + (key,)
        if last:
            node[key] = copy.deepcopy(override.value)
            _mark(positions, path)
        else:
            node = node[key]


def apply_overrides(
    data: Any,
    overrides: Sequence[str],
    positions: dict[tuple, Location] | None = None,
) -> Any:
    """Apply ``PATH=VALUE`` overrides and expand a ``generate:`` block.

    ``generate.*`` overrides are applied first, then the block is expanded
    (:func:`topo_ep.generate.expand_generate`), then the other overrides in the order given.

    Parameters
    ----------
    data
        Plain topology data; not modified.
    overrides
        Strings ``PATH=VALUE`` (see the module docstring).
    positions
        Path -> location map of ``data``; if given, updated in place so that overridden fields
        point at ``--set``.

    Returns
    -------
    Any
        A new (deep-copied) mapping. Data that is not a mapping is returned unchanged when there
        are no overrides, so validation can report it.

    Raises
    ------
    TopologyError
        Kind ``override`` for a malformed override or a path that does not exist.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    parsed = [parse_override(text) for text in overrides]
    result = copy.deepcopy(data)
    early = [item for item in parsed if item.parts[0] == "generate"]
    late = [item for item in parsed if item.parts[0] != "generate"]
    for item in early:
        if not isinstance(result, dict) or "generate" not in result:
            raise _error("generate.* overrides need a topology with a generate: block", item.text)
        _apply(result, item, positions)
    if isinstance(result, dict) and "generate" in result:
        result = expand_generate(result, positions)
    for item in late:
        _apply(result, item, positions)
    return result
