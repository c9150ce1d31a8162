"""The binary distribution of CIFAR-10: finding and reading its batch files.

The binary version (``cifar-10-binary.tar.gz``, which unpacks to ``cifar-10-batches-bin/``)
holds six files, ``data_batch_1.bin`` .. ``data_batch_5.bin`` (10 000 training images each) and
``test_batch.bin`` (10 000 test images). Each is a sequence of records of
:data:`RECORD_BYTES` = 3073 bytes: one label byte 0..9, then the 3072 pixel bytes of one
32 x 32 colour image, channel-major: the 1024 red values, the 1024 green, the 1024 blue, each
plane row-major. The pixels are kept in that order, so a topology input
``shape: [3, 32, 32]`` sees each channel as a 32 x 32 plane.

Only the binary version is read. The Python version (``cifar-10-batches-py/``, files
``data_batch_1`` .. without a suffix) is pickled, and unpickling a file can execute arbitrary
code; :func:`find_cifar10_files` recognises it and says so instead of reading it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from topo_ep.errors import DataError

#: Bytes of one record: a label byte and 3 x 32 x 32 pixel bytes.
RECORD_BYTES = 1 + 3 * 32 * 32
#: Pixel features per image (channel-major: R plane, G plane, B plane).
PIXELS = 3 * 32 * 32
#: The five training batches, in the order their records are concatenated.
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
#: The test batch.
TEST_FILE = "test_batch.bin"
#: Largest batch file accepted, in bytes (an official batch holds 30 730 000).
MAX_BATCH_BYTES = 1 << 30
#: The folder the official tarballs unpack to (binary version, and the refused Python one).
BINARY_DIR = "cifar-10-batches-bin"
PYTHON_DIR = "cifar-10-batches-py"
#: Number of classes; labels are 0 .. CLASSES - 1.
CLASSES = 10

_PICKLE_REFUSED = (
    "only the binary version of CIFAR-10 is read (cifar-10-binary.tar.gz, which unpacks to "
    f"{BINARY_DIR}/ with {TRAIN_FILES[0]} .. {TRAIN_FILES[-1]} and {TEST_FILE}); the Python "
    "version's batches are pickled, and unpickling a file can execute arbitrary code, so "
    "topo-ep never opens them"
)


def cifar10_search_dirs(root: Path) -> list[Path]:
    """Directories searched for the batch files, in order: ``root/cifar10/cifar-10-batches-bin``,
    ``root/cifar10``, ``root/cifar-10-batches-bin``, ``root``."""
    return [root / "cifar10" / BINARY_DIR, root / "cifar10", root / BINARY_DIR, root]


def _python_version_at(directory: Path) -> Path | None:
    """A file of the pickled Python version in ``directory`` (``data_batch_1`` without a
    suffix, or ``test_batch``), or ``None``."""
    for name in ("data_batch_1", "test_batch"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_cifar10_files(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Locate the six batch files of the binary CIFAR-10.

    The first directory of :func:`cifar10_search_dirs` that holds all six is used.

    Parameters
    ----------
    root
        The data directory.

    Returns
    -------
    dict
        File name (``data_batch_1.bin`` .. ``test_batch.bin``) -> path, training batches first.

    Raises
    ------
    DataError
        When no directory holds all six: the message lists every path looked at, and, where
        a directory holds the pickled Python version instead, says that only the binary
        version is read and why.
    """
    root = Path(root)
    names = (*TRAIN_FILES, TEST_FILE)
    looked: list[str] = []
    for directory in cifar10_search_dirs(root):
        if not directory.is_dir():
            looked.append(f"  {directory} (no such directory)")
            continue
        found = {name: directory / name for name in names if (directory / name).is_file()}
        if len(found) == len(names):
            return found
        looked.extend(
            f"  {directory / name} ({'found' if name in found else 'not found'})" for name in names
        )
    for directory in [*cifar10_search_dirs(root), root / PYTHON_DIR, root / "cifar10" / PYTHON_DIR]:
        pickled = _python_version_at(directory) if directory.is_dir() else None
        if pickled is not None:
            raise DataError(
                f"cifar10: {pickled} is a batch of the Python version of CIFAR-10: "
                f"{_PICKLE_REFUSED}. Download the binary version and put its files under "
                f"{root} or {root / BINARY_DIR}"
            )
    raise DataError(
        f"cifar10: no directory holds all six batch files of the binary version "
        f"({', '.join(names)}) under data directory {root} (set it with --data-dir or "
        "$TOPO_EP_DATA). Paths looked at:\n" + "\n".join(looked)
    )


def read_cifar10_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file of the binary CIFAR-10.

    Parameters
    ----------
    path
        A ``.bin`` batch: records of :data:`RECORD_BYTES` bytes, a label byte then 3072 pixel
        bytes (R, G, B planes of 32 x 32, row-major).

    Returns
    -------
    pixels : numpy.ndarray
        uint8, shape (n, 3072), in the file's channel-major order, read-only.
    labels : numpy.ndarray
        int64, shape (n,), in 0..9.

    Raises
    ------
    DataError
        Naming the file: not a regular file, unreadable, empty, larger than
        :data:`MAX_BATCH_BYTES`, a length that is not a whole number of records (a truncated
        record), or a label byte above 9.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise DataError(f"{path}: not a regular file")
            size = info.st_size
            if size > MAX_BATCH_BYTES:
                raise DataError(
                    f"{path}: {size} bytes, more than the {MAX_BATCH_BYTES} accepted for a "
                    "CIFAR-10 batch (an official batch holds 30730000)"
                )
            if size == 0 or size % RECORD_BYTES:
                whole, extra = divmod(size, RECORD_BYTES)
                detail = (
                    "the file is empty"
                    if size == 0
                    else f"{whole} whole records and {extra} bytes of a truncated one"
                )
                raise DataError(
                    f"{path}: not a CIFAR-10 binary batch: {size} bytes is not a whole number "
                    f"of {RECORD_BYTES}-byte records (a label byte and 3072 pixel bytes; "
                    f"{detail})"
                )
            raw = np.fromfile(handle, dtype=np.uint8, count=size)
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if raw.size != size:
        raise DataError(f"{path}: read {raw.size} of its {size} bytes; the file changed")
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels >= CLASSES)
    if bad.size:
        first = int(bad[0])
        raise DataError(
            f"{path}: record {first} (byte offset {first * RECORD_BYTES}) has label "
            f"{int(labels[first])}; CIFAR-10 labels are 0 to {CLASSES - 1} "
            f"({bad.size} records out of range)"
        )
    pixels = records[:, 1:]
    pixels.flags.writeable = False
    return pixels, labels
