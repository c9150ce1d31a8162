"""Typed, located access to plain data parsed from YAML.

:class:`FieldChecker` reads one field at a time (integers, numbers, choices, mappings, lists)
and raises a :class:`~topo_ep.errors.TopologyError` that names the field as a dotted path
(``edges[2].gain``) and points at the YAML node it came from. The topology schema
(:mod:`topo_ep.validate`) and the ``generate:`` shorthand (:mod:`topo_ep.generate`) are both
written with it.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from topo_ep.errors import Location, TopologyError
from topo_ep.yaml_source import KEY_MARK, dotted_path

#: Largest layer, input or readout size accepted.
MAX_SIZE = 1_000_000
#: Most hidden layers a topology may have, declared or generated.
MAX_LAYERS = 10_000
#: Most edges a topology may have, declared or generated (a YAML document of at most 100000
#: nodes holds at most about 33000 edges of three nodes each).
MAX_EDGES = 30_000
#: Layer names: a letter or underscore, then letters, digits, ``_`` or ``-``.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")

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


def show_value(value: Any) -> str:
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
                f"expected a {what} with keys {', '.join(allowed)}; got {show_value(value)}",
                path,
            )
        for key in value:
            if not isinstance(key, str):
                raise self.error("type", f"keys must be strings, got {show_value(key)}", path)
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

    def sequence(self, value: Any, path: tuple, what: str, most: int | None = None) -> list[Any]:
        """Check that ``value`` is a list of ``what``, of at most ``most`` items."""
        if not isinstance(value, (list, tuple)):
            raise self.error("type", f"expected a list of {what}; got {show_value(value)}", path)
        if most is not None and len(value) > most:
            raise self.error(
                "absurd-number", f"{len(value)} {what} is more than the {most} allowed", path
            )
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
            raise self.error("type", f"expected an integer; got {show_value(value)}", path)
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
            raise self.error("type", f"expected a number; got {show_value(value)}", path)
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
            raise self.error("type", f"expected true or false; got {show_value(value)}", path)
        return value

    def string(self, value: Any, path: tuple, empty: bool = False) -> str:
        """A string, non-empty unless ``empty``."""
        if not isinstance(value, str):
            raise self.error("type", f"expected a string; got {show_value(value)}", path)
        if not empty and not value.strip():
            raise self.error("invalid-value", "must not be empty", path)
        return value

    def choice(self, value: Any, path: tuple, options: Sequence[str]) -> str:
        """One of ``options``."""
        if not isinstance(value, str):
            raise self.error(
                "type", f"expected one of {', '.join(options)}; got {show_value(value)}", path
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
