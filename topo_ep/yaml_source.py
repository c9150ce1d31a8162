"""Safe YAML parsing that remembers where every value came from.

:func:`parse_yaml` composes the document with PyYAML's safe composer (no object construction,
no arbitrary tags) and converts the node tree to plain Python data itself. While converting it
records, for every path such as ``("edges", 2, "gain")``, the :class:`~topo_ep.errors.Location`
of the value node, and under ``path + (KEY_MARK,)`` the location of the mapping key, so that
validation errors can point at the exact line and column.

Hostile input is bounded: aliases are expanded while converting and every visited node is
counted (a document, or an alias bomb, stops at :data:`MAX_NODES`; the message says which),
nesting is limited to :data:`MAX_DEPTH`,
integers longer than :data:`MAX_INT_DIGITS` digits and floats that overflow are refused, and
duplicate mapping keys are an error rather than silently overwritten.

Scalars follow YAML 1.1 (PyYAML's safe resolver) with one addition: plain scalars such as
``1e-3`` or ``5e4``, which YAML 1.1 reads as strings, are read as floats, as YAML 1.2 does. Two
YAML 1.1 number forms that YAML 1.2 reads differently, and that a reader takes for decimals,
are errors instead of silent misreads: integers with a leading zero (``0100``, octal 64 in YAML
1.1) and base-60 numbers (``1:04``, 64 in YAML 1.1).
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from topo_ep.errors import Location, TopologyError

#: Path component under which the location of a mapping key is recorded.
KEY_MARK = "<key>"
#: Largest number of nodes visited while converting one document (alias expansion included).
MAX_NODES = 100_000
#: Deepest nesting of mappings and sequences accepted.
MAX_DEPTH = 64
#: Most digits accepted in an integer literal.
MAX_INT_DIGITS = 30

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT = _TAG + "str", _TAG + "int", _TAG + "float"
_BOOL, _NULL, _TIMESTAMP = _TAG + "bool", _TAG + "null", _TAG + "timestamp"
_MAP, _SEQ, _MERGE = _TAG + "map", _TAG + "seq", _TAG + "merge"

#: YAML 1.2 style floats that YAML 1.1 leaves as strings (no dot, or exponent without sign).
FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")
_INFINITE_LITERAL = re.compile(r"^[-+]?\.inf$", re.IGNORECASE)
#: YAML 1.1 octal integers (``0100``): a leading zero followed by digits.
_OCTAL_11 = re.compile(r"^[-+]?0[0-9_]+$")

Positions = dict[tuple, Location]


class _TooManyNodes(Exception):
    """Composing went past :data:`MAX_NODES` nodes; ``mark`` is where."""

    def __init__(self, mark: Any) -> None:
        super().__init__("too many nodes")
        self.mark = mark


def _too_many_nodes(location: Location, path: tuple = ()) -> TopologyError:
    return TopologyError(
        "absurd-number",
        f"the document has more than {MAX_NODES} YAML nodes (values, lists and mappings), the "
        "most a topology file may hold; declare large networks with a generate: block",
        location,
        _dotted(path),
    )


class _Loader(yaml.SafeLoader):
    """Safe loader that reads ``1e-3`` as a float and, while composing, refuses deep nesting
    and more than :data:`MAX_NODES` nodes (mapping keys not counted), so that a large document
    stops early."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.nesting = 0
        self.composed = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if parent is None or index is not None:  # a value or an item, not a mapping key
            self.composed += 1
            if self.composed > MAX_NODES:
                raise _TooManyNodes(self.peek_event().start_mark)
        self.nesting += 1
        try:
            if self.nesting > MAX_DEPTH:
                raise yaml.MarkedYAMLError(
                    problem=f"nesting deeper than {MAX_DEPTH} levels",
                    problem_mark=self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self.nesting -= 1


_Loader.add_implicit_resolver(_FLOAT, FLOAT_12, list("-+0123456789."))


def _mark_location(filename: str, mark: Any) -> Location:
    if mark is None:
        return Location(filename)
    return Location(filename, mark.line + 1, mark.column + 1)


def offset_location(text: str, offset: int, filename: str) -> Location:
    """Location (1-based line and column) of character ``offset`` in ``text``."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return Location(filename, line, column)


class _Converter:
    """Converts composed YAML nodes to plain data, recording positions."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.positions: Positions = {}
        self.visited = 0
        self.active: set[int] = set()
        self.seen: set[int] = set()
        self.aliased = False
        self.constructor = SafeConstructor()

    def location(self, node: Node) -> Location:
        return _mark_location(self.filename, node.start_mark)

    def error(self, kind: str, message: str, node: Node, path: tuple) -> TopologyError:
        return TopologyError(kind, message, self.location(node), _dotted(path))

    def convert(self, node: Node, path: tuple, depth: int) -> Any:
        self.visited += 1
        if id(node) in self.seen:
            self.aliased = True  # the same node reached twice: an alias was expanded
        else:
            self.seen.add(id(node))
        if self.visited > MAX_NODES:
            if self.aliased:
                raise self.error(
                    "alias-bomb",
                    f"the document expands to more than {MAX_NODES} nodes through its aliases "
                    "(*name references); topology files are small",
                    node,
                    path,
                )
            raise _too_many_nodes(self.location(node), path)
        if depth > MAX_DEPTH:
            raise self.error("yaml-syntax", f"nesting deeper than {MAX_DEPTH} levels", node, path)
        self.positions[path] = self.location(node)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            raise self.error(
                "alias-bomb", "an alias refers to a node that contains it (recursion)", node, path
            )
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ:
                    raise self.unsupported_tag(node, path)
                return [
                    self.convert(item, path + (index,), depth + 1)
                    for index, item in enumerate(node.value)
                ]
            if isinstance(node, MappingNode):
                if node.tag != _MAP:
                    raise self.unsupported_tag(node, path)
                return self.mapping(node, path, depth)
        finally:
            self.active.discard(id(node))
        raise self.error("type", f"unsupported YAML node {type(node).__name__}", node, path)

    def unsupported_tag(self, node: Node, path: tuple) -> TopologyError:
        return self.error(
            "type",
            f"unsupported YAML tag {node.tag!r}; a topology holds only mappings, lists, "
            "strings, numbers, booleans and null",
            node,
            path,
        )

    def mapping(self, node: MappingNode, path: tuple, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        explicit: dict[str, Node] = {}
        merge_sources: list[Node] = []
        pairs = []
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE:
                if isinstance(value_node, SequenceNode):
                    merge_sources.extend(value_node.value)
                else:
                    merge_sources.append(value_node)
                continue
            key = self.key(key_node, path)
            if key in explicit:
                first = explicit[key].start_mark.line + 1
                raise self.error(
                    "duplicate-key",
                    f"key '{key}' appears twice in this mapping (first on line {first})",
                    key_node,
                    path + (key,),
                )
            explicit[key] = key_node
            pairs.append((key, key_node, value_node))
        # Merge keys (<<: *anchor): earlier sources win over later ones, explicit keys over all.
        for source in reversed(merge_sources):
            if not isinstance(source, MappingNode):
                raise self.error(
                    "type", "a merge key (<<) needs a mapping or a list of mappings", source, path
                )
            result.update(self.convert(source, path, depth + 1))
        self.positions[path] = self.location(node)
        for key, key_node, value_node in pairs:
            self.positions[path + (key, KEY_MARK)] = self.location(key_node)
            result[key] = self.convert(value_node, path + (key,), depth + 1)
        return result

    def key(self, node: Node, path: tuple) -> str:
        if not isinstance(node, ScalarNode):
            raise self.error("type", "mapping keys must be plain strings", node, path)
        if node.tag != _STR:
            kind = node.tag.rsplit(":", 1)[-1]
            raise self.error(
                "type",
                f"mapping keys must be strings, got {kind} {node.value!r} (quote it)",
                node,
                path,
            )
        return node.value

    def scalar(self, node: ScalarNode, path: tuple) -> Any:
        tag = node.tag
        if tag in (_STR, _TIMESTAMP):
            return node.value
        if tag == _NULL:
            return None
        if tag == _BOOL:
            return self.constructor.construct_yaml_bool(node)
        if tag == _INT:
            self.check_yaml11_int(node, path)
            digits = re.sub(r"[^0-9a-fA-F]", "", node.value)
            if len(digits) > MAX_INT_DIGITS:
                raise self.error(
                    "absurd-number",
                    f"integer with {len(digits)} digits; at most {MAX_INT_DIGITS} are accepted",
                    node,
                    path,
                )
            try:
                return self.constructor.construct_yaml_int(node)
            except (ValueError, TypeError) as exc:
                raise self.error("type", f"not an integer: {node.value!r}", node, path) from exc
        if tag == _FLOAT:
            if ":" in node.value:
                raise self.base60_error(node, path)
            try:
                value = self.constructor.construct_yaml_float(node)
            except (ValueError, TypeError, OverflowError) as exc:
                raise self.error("type", f"not a number: {node.value!r}", node, path) from exc
            if math.isinf(value) and not _INFINITE_LITERAL.match(node.value.strip()):
                raise self.error(
                    "absurd-number",
                    f"{node.value!r} overflows a 64-bit float",
                    node,
                    path,
                )
            return value
        raise self.unsupported_tag(node, path)

    def check_yaml11_int(self, node: ScalarNode, path: tuple) -> None:
        """Refuse the YAML 1.1 integer forms that read as other numbers than they look."""
        text = node.value
        if ":" in text:
            raise self.base60_error(node, path)
        if _OCTAL_11.match(text):
            raise self.error(
                "type",
                f"{text!r} has a leading zero, which is ambiguous: YAML 1.1 reads it as an octal "
                "number, YAML 1.2 as a decimal one; write it without the leading zero",
                node,
                path,
            )

    def base60_error(self, node: ScalarNode, path: tuple) -> TopologyError:
        return self.error(
            "type",
            f"{node.value!r} is a base-60 number in YAML 1.1 (1:04 reads as 64) and a string in "
            "YAML 1.2; write the number in decimal, or quote it if it is a string",
            node,
            path,
        )


def _dotted(path: tuple) -> str | None:
    out = ""
    for part in path:
        if part == KEY_MARK:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def dotted_path(path: tuple) -> str | None:
    """Dotted form of a path, e.g. ``("edges", 2, "gain")`` -> ``"edges[2].gain"``.

    Returns ``None`` for the empty path (the whole document).
    """
    return _dotted(path)


def parse_yaml(text: str, filename: str) -> tuple[Any, Positions]:
    """Parse one YAML document into plain data and the position of every value.

    Parameters
    ----------
    text
        The YAML source.
    filename
        Name used in locations and error messages.

    Returns
    -------
    data
        Plain Python data (dict, list, str, int, float, bool, None); ``None`` for an empty
        document.
    positions
        Maps each path tuple (e.g. ``("edges", 2, "gain")``) to the location of its value node
        and ``path + (KEY_MARK,)`` to the location of the mapping key. The empty path is the
        document itself.

    Raises
    ------
    TopologyError
        Kinds ``yaml-syntax``, ``duplicate-key``, ``alias-bomb``, ``absurd-number``, ``type``
        (non-string keys, unsupported tags) and ``encoding`` (characters YAML forbids).
    """
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except _TooManyNodes as exc:
        raise _too_many_nodes(_mark_location(filename, exc.mark)) from None
    except yaml.reader.ReaderError as exc:
        raise TopologyError(
            "encoding",
            f"character {exc.character!r} is not allowed in a YAML file ({exc.reason})",
            offset_location(text, exc.position, filename),
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or "invalid YAML"
        if exc.context:
            message = f"{message} ({exc.context})"
        raise TopologyError("yaml-syntax", message, _mark_location(filename, mark)) from None
    except yaml.YAMLError as exc:
        raise TopologyError("yaml-syntax", str(exc), Location(filename)) from None
    except RecursionError:
        raise TopologyError(
            "yaml-syntax", f"nesting deeper than {MAX_DEPTH} levels", Location(filename)
        ) from None
    if root is None:
        return None, {(): Location(filename, 1, 1)}
    converter = _Converter(filename)
    data = converter.convert(root, (), 0)
    return data, converter.positions
