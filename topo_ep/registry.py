"""Name registries: the one place that maps a YAML or command-line name to what it selects.

A :class:`Registry` is filled when the module that defines an entry is imported (a decorator
next to the definition), and read everywhere else: the validator's allowed values, the CLI's
choices and the documentation come from :meth:`Registry.names`. Adding a learning method or a
schedule is one module plus its registration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from topo_ep.errors import TopoEpError
from topo_ep.fields import suggest

T = TypeVar("T")


class UnknownNameError(TopoEpError, ValueError):
    """A name that no entry of a registry carries."""


class Registry(Generic[T]):
    """Entries of one kind (``what``: "schedule", "learning method", ...) by name.

    Parameters
    ----------
    what
        What the entries are, for messages.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` (names are unique)."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """The entry called ``name``; :class:`UnknownNameError` names the valid ones."""
        try:
            return self._entries[name]
        except KeyError:
            names = self.names()
            raise UnknownNameError(
                f"unknown {self.what} {name!r}; expected one of {', '.join(names)}"
                f"{suggest(str(name), names)}"
            ) from None

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        return tuple(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, entry) pairs in registration order."""
        return iter(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries
