"""Error types raised by topo-ep.

Every error a user can cause derives from :class:`TopoEpError`; the command line prints it
without a traceback and exits with code 2. Errors about a topology file carry the file, the
line and column of the offending YAML node, the dotted field path and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The classes of topology errors, used as ``TopologyError.kind``.
ERROR_KINDS = (
    "yaml-syntax",
    "type",
    "unknown-key",
    "duplicate-key",
    "missing-key",
    "absurd-number",
    "invalid-value",
    "gain",
    "missing-layer",
    "duplicate",
    "tied-partner",
    "size-mismatch",
    "unreachable-readout",
    "cycle",
    "alias-bomb",
    "encoding",
    "path",
    "override",
    "dataset-size",
)


class TopoEpError(Exception):
    """Base class of every error caused by user input (files, options, data)."""


@dataclass(frozen=True)
class Location:
    """Where in a source a field was declared.

    Parameters
    ----------
    file
        The file's path as the user gave it, or a pseudo source such as ``"--set"``.
    line, column
        1-based position of the YAML node, or ``None`` when unknown (e.g. a whole file).
    """

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        if self.column is None:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"


class TopologyError(TopoEpError):
    """A topology could not be loaded or is not valid.

    Parameters
    ----------
    kind
        One of :data:`ERROR_KINDS`.
    message
        What is wrong and what was expected.
    location
        Where the offending node was declared.
    field
        Dotted path of the field, e.g. ``edges[2].gain``.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        location: Location | None = None,
        field: str | None = None,
    ) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        self.kind = kind
        self.message = message
        self.location = location
        self.field = field
        super().__init__(str(self))

    @property
    def file(self) -> str | None:
        return self.location.file if self.location else None

    @property
    def line(self) -> int | None:
        return self.location.line if self.location else None

    @property
    def column(self) -> int | None:
        return self.location.column if self.location else None

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message} [{self.kind}]"


class DataError(TopoEpError):
    """A dataset could not be found or read, or does not fit the topology."""


class DivergenceError(TopoEpError):
    """The relaxation produced non-finite states."""


class CheckpointError(TopoEpError):
    """A checkpoint could not be read or does not fit the topology."""


class RunFailedError(Exception):
    """A run that started from valid input failed (exit code 1), e.g. its weights became
    non-finite. Not a :class:`TopoEpError`: the input was accepted, the run did not work out."""
