"""Run directories that cannot lose or mix data.

A run directory (``topo-ep train --out OUT``) holds the files of :data:`RUN_FILES`. This module
keeps it consistent:

- :func:`ensure_output_dir` checks an output path before any work is done: an existing file,
  a device such as ``/dev/null`` or a path that cannot be created is refused at once;
- :class:`RunLock` takes an exclusive ``fcntl.flock`` on ``OUT/.topo-ep.lock`` for the whole
  training, so that a second trainer into the same directory is refused;
- :func:`prepare_run_dir` refuses to start a new run in a directory that holds one, or moves the
  old run aside (``--overwrite``), and checks what ``--resume`` needs;
- :func:`remove_stale_temps` removes the temporary files a killed writer left behind;
- :func:`write_text_atomic` writes a small file so that it is either the old or the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from types import TracebackType

from topo_ep.errors import TopoEpError
from topo_ep.partial_epoch import PARTIAL_NAME

#: Files a training run writes into its directory.
RUN_FILES = (
    "checkpoint.pt",
    PARTIAL_NAME,
    "config.yaml",
    "metrics.jsonl",
    "flow.jsonl",
)
#: The checkpoints that ``--resume`` can continue from (a finished epoch, the epoch in progress).
RESUMABLE = ("checkpoint.pt", PARTIAL_NAME)
#: The lock file of a run directory (removed when the lock is released).
LOCK_NAME = ".topo-ep.lock"
#: Prefix of the file :func:`ensure_output_dir` creates and removes to probe a directory.
_PROBE = "topo-ep-probe"
#: Temporary files of :func:`topo_ep.checkpoint.save_atomic`, :func:`write_text_atomic` and
#: :func:`ensure_output_dir`.
_TEMP = re.compile(
    r"^\.(?:" + "|".join(re.escape(name) for name in (*RUN_FILES, _PROBE)) + r")\..+\.tmp$"
)
#: How often :meth:`RunLock.acquire` retries when the previous holder removed the file.
_LOCK_ATTEMPTS = 20


class RunDirError(TopoEpError):
    """An output or run directory that cannot be used as asked (exit code 2)."""


def _kind(mode: int) -> str:
    """What a file of ``mode`` is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def ensure_output_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Create the output directory ``path`` if needed and check that files can be written in it.

    Parameters
    ----------
    path
        The directory given on the command line.
    option
        The option that named it, for messages.

    Returns
    -------
    Path
        The directory.

    Raises
    ------
    RunDirError
        When ``path`` exists and is not a directory (a file, ``/dev/null``), cannot be created
        (``/proc/foo``, a parent that is a file) or is not writable.
    """
    text = os.fspath(path)
    if not text:
        raise RunDirError(f"{option} is empty; give a directory")
    directory = Path(text)
    try:
        info = directory.stat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise RunDirError(f"{option} {text}: cannot use this path: {_reason(exc)}") from None
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise RunDirError(
            f"{option} {text} is {_kind(info.st_mode)}, not a directory; "
            "give a directory (it is created if missing)"
        )
    if info is None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(
                f"{option} {text}: cannot create the directory: {_reason(exc)}"
            ) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{_PROBE}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise RunDirError(
            f"{option} {text}: cannot write in this directory: {_reason(exc)}"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return directory


class RunLock:
    """An exclusive lock on a run directory, held while one process trains into it.

    The lock is an ``fcntl.flock`` on :data:`LOCK_NAME` inside the directory; the kernel drops it
    when the process dies, even by ``kill -9``. The file holds the holder's process id and is
    removed on :meth:`release`.

    Parameters
    ----------
    directory
        The run directory (must exist).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock without waiting.

        Raises
        ------
        RunDirError
            When another process holds it, or the lock file cannot be created.
        """
        if self._fd is not None:
            return self
        for _ in range(_LOCK_ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise RunDirError(
                    f"{self.directory}: cannot create the lock file {LOCK_NAME}: {_reason(exc)}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunDirError(
                    f"{self.directory} is in use by another topo-ep training{holder}; wait for "
                    "it to finish or choose another --out"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise RunDirError(
                    f"{self.directory}: cannot lock {LOCK_NAME}: {_reason(exc)}"
                ) from None
            # The previous holder removes the file on release: make sure that the file locked
            # is still the one at the path, or another process could lock a new one as well.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return self
            os.close(fd)
        raise RunDirError(f"{self.directory}: the lock file {LOCK_NAME} keeps changing")

    def release(self) -> None:
        """Remove the lock file and drop the lock; nothing when not held."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _holder(fd: int) -> str:
    """`` (pid N)`` from the lock file, or nothing when it holds no process id."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files of :data:`RUN_FILES` that a killed writer left behind.

    Call it only while holding the directory's :class:`RunLock`: then no live writer owns them.

    Returns
    -------
    list of Path
        The files removed.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in Path(directory).iterdir():
            if _TEMP.match(entry.name) and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed.append(entry)
    return removed


def _holds_nothing(entry: Path) -> bool:
    """The lock, a stale temporary file, or what a run writes before its first epoch ends
    (config.yaml, an empty metrics.jsonl): nothing that a new run would lose."""
    if entry.name == LOCK_NAME or _TEMP.match(entry.name):
        return True
    if entry.is_symlink() or not entry.is_file():
        return False
    if entry.name == "config.yaml":
        return not any((entry.parent / name).exists() for name in RESUMABLE)
    return entry.name == "metrics.jsonl" and entry.stat().st_size == 0


def run_entries(directory: str | os.PathLike[str]) -> list[Path]:
    """The entries of a run directory that hold data: all but its lock file, stale temporary
    files, and the config.yaml and empty metrics.jsonl of a run that finished no epoch."""
    try:
        entries = sorted(Path(directory).iterdir())
    except FileNotFoundError:
        return []
    return [entry for entry in entries if not _holds_nothing(entry)]


def _listing(entries: list[Path], limit: int = 5) -> str:
    names = [entry.name for entry in entries[:limit]]
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(names) + more


def prepare_run_dir(directory: Path, resume: bool, overwrite: bool) -> Path | None:
    """Check a locked run directory before training into it.

    Parameters
    ----------
    directory
        The run directory; the caller holds its :class:`RunLock`.
    resume
        Continue the run it holds: its ``checkpoint.pt`` or ``checkpoint.partial.pt`` (the
        epoch in progress, :mod:`topo_ep.partial_epoch`) must be a regular file.
    overwrite
        Start a new run: move whatever run it holds aside first (see :func:`move_aside`).

    Returns
    -------
    Path or None
        Where the previous run was moved, or ``None``.

    Raises
    ------
    RunDirError
        For a new run in a directory that holds one (without ``overwrite``), an ``overwrite``
        of a directory that holds files a run does not write, or a ``resume`` without a
        checkpoint; run files that are not regular files are named.
    """
    entries = run_entries(directory)
    if resume:
        for name in RUN_FILES:
            path = directory / name
            if path.is_symlink() or path.exists():
                mode = path.lstat().st_mode
                if not stat.S_ISREG(mode):
                    raise RunDirError(
                        f"{path} is {_kind(mode)}, not a regular file; this is not a run "
                        "that can be resumed"
                    )
        if not any((directory / name).is_file() for name in RESUMABLE):
            held = f" (it holds {_listing(entries)})" if entries else ""
            raise RunDirError(
                f"--resume: {directory} has no checkpoint.pt (nor {PARTIAL_NAME}) to continue "
                f"from{held}; train without --resume (with --overwrite if the directory is not "
                "empty)"
            )
        return None
    if not entries:
        return None
    if not overwrite:
        raise RunDirError(
            f"{directory} is not empty (it holds {_listing(entries)}); pass --resume to "
            "continue its run, --overwrite to move it aside and start again, or choose "
            "another --out"
        )
    foreign = [entry for entry in entries if entry.name not in RUN_FILES]
    if foreign:
        raise RunDirError(
            f"--overwrite: {directory} holds files that a training run does not write "
            f"({_listing(foreign)}); move them away or choose another --out"
        )
    return move_aside(directory, entries)


def move_aside(directory: Path, entries: list[Path]) -> Path:
    """Move ``entries`` of ``directory`` into a new sibling ``<name>.old-<YYYYmmdd-HHMMSS>``.

    Returns
    -------
    Path
        The new directory holding the old run.
    """
    base = directory.resolve()
    if not base.name:
        raise RunDirError(f"--overwrite: cannot move a run aside from {directory}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = base.with_name(f"{base.name}.old-{stamp}")
    suffix = 1
    while True:
        try:
            target.mkdir()
            break
        except FileExistsError:
            suffix += 1
            target = base.with_name(f"{base.name}.old-{stamp}-{suffix}")
        except OSError as exc:
            raise RunDirError(
                f"--overwrite: cannot create {target} for the old run: {_reason(exc)}"
            ) from None
    for entry in entries:
        try:
            os.replace(entry, target / entry.name)
        except OSError as exc:
            raise RunDirError(
                f"--overwrite: cannot move {entry} to {target}: {_reason(exc)}"
            ) from None
    return target


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file renamed over it."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
