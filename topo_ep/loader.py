"""Reading and writing topology files.

:func:`load_topology` checks the path and the bytes (size, NUL bytes, UTF-8), parses the YAML
with positions (:func:`topo_ep.yaml_source.parse_yaml`), applies ``--set`` overrides and the
``generate:`` shorthand (:func:`topo_ep.overrides.apply_overrides`) and validates
(:func:`topo_ep.validate.spec_from_dict`). :func:`dump_topology` writes the YAML that reads back
into an equal spec.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from topo_ep.errors import Location, TopologyError
from topo_ep.overrides import apply_overrides
from topo_ep.spec import TopologySpec
from topo_ep.validate import spec_from_dict
from topo_ep.yaml_source import FLOAT_12, offset_location, parse_yaml

#: Largest topology file accepted, in bytes.
MAX_BYTES = 4 * 1024 * 1024


def _byte_location(raw: bytes, offset: int, filename: str) -> Location:
    line = raw.count(b"\n", 0, offset) + 1
    column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return Location(filename, line, column)


def _decode(raw: bytes, filename: str) -> str:
    """UTF-8 text of ``raw``; NUL bytes and invalid UTF-8 are ``encoding`` errors."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise TopologyError(
            "encoding",
            f"NUL byte at byte offset {nul}: this is a binary file (or UTF-16), "
            "not a UTF-8 YAML topology",
            _byte_location(raw, nul, filename),
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyError(
            "encoding",
            f"invalid UTF-8 byte 0x{raw[exc.start]:02x} at byte offset {exc.start}; "
            "save the file as UTF-8",
            _byte_location(raw, exc.start, filename),
        ) from None
    return text.removeprefix("\ufeff")


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def read_topology_text(path: str | os.PathLike[str]) -> str:
    """The text of a topology file, after checking path, size and encoding.

    Only a regular file is read: a FIFO, a device or a socket is refused without blocking.

    Raises
    ------
    TopologyError
        Kind ``path`` (missing, a directory, not a regular file, unreadable, too large) or
        ``encoding``.
    """
    filename = os.fspath(path)
    file = Path(filename)
    try:
        exists, is_dir = file.exists(), file.is_dir()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise TopologyError(
            "path", f"cannot use this path: {reason}", Location(filename[:200])
        ) from None
    if not exists:
        hint = ""
        for suffix in (".yaml", ".yml"):
            candidate = Path(filename + suffix)
            if candidate.is_file():
                hint = f"; did you mean {candidate}?"
                break
        raise TopologyError(
            "path",
            f"no topology file at {filename!r} (looked for {file.absolute()}){hint}",
            Location(filename),
        )
    if is_dir:
        raise TopologyError(
            "path",
            f"{filename!r} is a directory; expected a YAML topology file such as "
            f"{Path(filename) / 'name.yaml'}",
            Location(filename),
        )
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; only regular files are read
        fd = os.open(filename, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise TopologyError(
            "path", f"cannot read {filename!r}: {exc.strerror or exc}", Location(filename)
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise TopologyError(
                "path",
                f"{filename!r} is {_file_kind(mode)}, not a regular file; expected a YAML "
                "topology file",
                Location(filename),
            )
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise TopologyError(
            "path", f"cannot read {filename!r}: {exc.strerror or exc}", Location(filename)
        ) from None
    if len(raw) > MAX_BYTES:
        raise TopologyError(
            "path",
            f"file is larger than {MAX_BYTES // (1024 * 1024)} MiB; a topology file is small",
            Location(filename),
        )
    return _decode(raw, filename)


def loads_topology(
    text: str, filename: str = "<string>", overrides: Sequence[str] = ()
) -> TopologySpec:
    """Parse, expand, override and validate topology YAML given as text.

    Parameters
    ----------
    text
        YAML source.
    filename
        Name used in error locations.
    overrides
        ``PATH=VALUE`` strings (see :mod:`topo_ep.overrides`).

    Raises
    ------
    TopologyError
        With the kind, location and field of the first problem.
    """
    if not isinstance(text, str):
        raise TopologyError("encoding", f"expected text, got {type(text).__name__}")
    if len(text) > MAX_BYTES:
        raise TopologyError(
            "path", f"text is larger than {MAX_BYTES} characters", Location(filename)
        )
    nul = text.find("\x00")
    if nul >= 0:
        raise TopologyError(
            "encoding", "NUL character: binary data", offset_location(text, nul, filename)
        )
    data, positions = parse_yaml(text, filename)
    data = apply_overrides(data, overrides, positions)
    return spec_from_dict(data, positions, filename)


def load_topology(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TopologySpec:
    """Load and validate a topology file.

    Parameters
    ----------
    path
        A YAML file (UTF-8, at most :data:`MAX_BYTES`).
    overrides
        ``PATH=VALUE`` strings applied after parsing (see :mod:`topo_ep.overrides`).

    Raises
    ------
    TopologyError
        Kinds ``path`` and ``encoding`` for the file itself, any other kind for its content.
    """
    return loads_topology(read_topology_text(path), os.fspath(path), overrides)


class _Dumper(yaml.SafeDumper):
    """Safe dumper that quotes strings our loader would read as floats (``1e3``)."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_12, list("-+0123456789."))


class _Flow(dict):
    """A mapping written on one line (layers, edges, input)."""


def _represent_flow(dumper: yaml.SafeDumper, data: _Flow) -> Any:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True)


_Dumper.add_representer(_Flow, _represent_flow)

#: Characters YAML treats as line breaks inside plain or single-quoted scalars.
_YAML_BREAKS = frozenset("\n\r\x85\u2028\u2029")


def _represent_str(dumper: yaml.SafeDumper, data: str) -> Any:
    """Double-quote strings with line breaks, so folding cannot change them on reload."""
    style = '"' if _YAML_BREAKS.intersection(data) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_topology(spec: TopologySpec) -> str:
    """YAML text of ``spec``; :func:`loads_topology` reads it back into an equal spec."""
    data = spec.to_dict()
    data["input"] = _Flow(data["input"])
    readout = data["readout"]
    data["readout"] = {"from": readout.pop("from"), **readout}
    data["layers"] = [_Flow(layer) for layer in data["layers"]]
    data["edges"] = [_Flow(edge) for edge in data["edges"]]
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def save_topology(spec: TopologySpec, path: str | os.PathLike[str]) -> None:
    """Write ``dump_topology(spec)`` to ``path`` as UTF-8."""
    Path(path).write_text(dump_topology(spec), encoding="utf-8")
