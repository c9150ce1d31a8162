"""Datasets: loading, fixed train/validation/test splits and minibatch iteration.

Four datasets are known (:data:`DATASETS`). Every split is fixed: it depends neither on the
``seed`` argument of :func:`load_dataset` nor on anything else that varies between runs, so the
validation and test numbers of different runs are comparable.

``digits``
    :func:`sklearn.datasets.load_digits`, bundled with scikit-learn (no download): 1797 images of
    8 x 8 pixels, values 0-16 divided by 16 into [0, 1], 64 features, 10 classes. The test split
    is a stratified 20 % (:func:`sklearn.model_selection.train_test_split` with
    ``random_state=0``); the validation split is a stratified ``val_fraction`` (default 10 %) of
    the remaining training part, again with ``random_state=0``. With the defaults the sizes are
    **train 1293, val 144, test 360** (sklearn rounds the carved part up: ceil(0.2 * 1797) = 360,
    ceil(0.1 * 1437) = 144).

``mnist``, ``fashion-mnist``
    The original IDX files (see :func:`find_idx_files` for the names and directories searched),
    gzipped or not. Pixels are divided by 255 into float32 [0, 1] and flattened (784 features for
    28 x 28 images; the dimensions are read from the file headers), 10 classes. The validation
    split is a stratified sample of :data:`IDX_VAL_SIZE` = 5000 examples of the official
    training set (``train_test_split`` with ``random_state=0``; a ``val_fraction`` given
    explicitly carves ceil(val_fraction * n_train) examples instead), the test split is the
    official test set. For MNIST the sizes are **train 55000, val 5000, test 10000**.

``cifar10``
    The binary distribution (``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin``;
    see :mod:`topo_ep.cifar` for the format, the directories searched and why the pickled
    Python version is never read). Pixels are divided by 255 into float32 [0, 1], 3072
    features per image in the file's channel-major order (R, G, B planes of 32 x 32, so that
    an input ``shape: [3, 32, 32]`` fits), 10 classes. The five training batches are
    concatenated in order and split like MNIST's: a stratified :data:`IDX_VAL_SIZE` = 5000
    validation examples (``random_state=0``; or ``val_fraction``), the test split is
    ``test_batch.bin``: **train 45000, val 5000, test 10000**.

``val_fraction=0`` carves no validation split: the training split is the whole training part (for
MNIST: **train 60000, val 0, test 10000**), the protocol of papers that train on every training
image and report the test accuracy (the command line's ``--validation none``). Nothing can then be
chosen on validation: a setting picked on the test split is picked on the numbers reported.

Within the train and validation splits the examples keep their order in the source;
:func:`iterate_batches` shuffles. ``limit`` keeps a random subset of at most ``limit`` training
examples, drawn with ``seed`` after the validation split has been carved out (validation and test
splits are never limited). Nothing is cached on disk.

An IDX file's header (magic number, dimensions) is checked before its data is read or
decompressed: the declared size must fit :data:`MAX_IDX_BYTES` and the file's size (for a gzip
file: what it can hold, then the decompressed stream, read in chunks), so a truncated file, a
sparse file of 100 GB or a gzip bomb is refused quickly and with little memory.
"""

from __future__ import annotations

import gzip
import math
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from topo_ep.cifar import TEST_FILE, TRAIN_FILES, find_cifar10_files, read_cifar10_batch
from topo_ep.errors import DataError, Location, TopologyError
from topo_ep.spec import DATASETS, VALIDATION_MODES

#: Names accepted by :func:`load_dataset`.

#: Fraction of the digits examples held out as the test split.
DIGITS_TEST_FRACTION = 0.2
#: Default fraction of the digits training part held out as the validation split.
DIGITS_VAL_FRACTION = 0.1
#: Default number of IDX training examples held out as the validation split.
IDX_VAL_SIZE = 5000
#: The fixed ``random_state`` of every split; independent of the run's seed.
SPLIT_SEED = 0

#: Environment variable naming the default data directory (otherwise ``./data``).
DATA_DIR_ENV = "TOPO_EP_DATA"

#: Magic numbers of IDX files of unsigned bytes: 0x0803 (3-D images), 0x0801 (1-D labels).
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
#: Largest IDX payload accepted, in bytes, checked against the header before reading.
MAX_IDX_BYTES = 1 << 30
#: Deflate compresses at most about 1032:1; a gzip declaring more than this ratio is corrupt.
_GZIP_MAX_RATIO = 1032
_GZIP_SLACK = 1 << 16
#: Bytes read (decompressed) at a time.
_IDX_CHUNK = 1 << 20

#: The four IDX files of a dataset: role -> (canonical name, dot spelling).
IDX_FILES = {
    "train-images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train-labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test-images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test-labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}

#: torchvision's directory name of each IDX dataset (``<data_dir>/<name>/raw``).
_TORCHVISION_DIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

_N_CLASSES = 10


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset.

    Compared by identity (tensors have no single truth value).

    Parameters
    ----------
    x
        float32 features, shape (n, features).
    y
        int64 class labels, shape (n,).
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.float32 or self.x.ndim != 2:
            raise DataError(
                f"Split.x must be a float32 matrix, got {self.x.dtype} of shape "
                f"{tuple(self.x.shape)}"
            )
        if self.y.dtype != torch.int64 or self.y.ndim != 1:
            raise DataError(
                f"Split.y must be an int64 vector, got {self.y.dtype} of shape "
                f"{tuple(self.y.shape)}"
            )
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"Split has {self.x.shape[0]} examples but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    """A dataset with its fixed train, validation and test splits.

    Parameters
    ----------
    name
        One of :data:`DATASETS`.
    train, val, test
        The splits.
    n_features
        Features per example (the topology's input size).
    n_classes
        Number of classes (the smallest possible readout size).
    description
        One line giving the split sizes and where the data came from.
    """

    name: str
    train: Split
    val: Split
    test: Split
    n_features: int
    n_classes: int
    description: str


def default_data_dir() -> Path:
    """The data directory used when none is given: ``$TOPO_EP_DATA`` or ``./data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> Dataset:
    """Load a dataset with its fixed splits.

    Parameters
    ----------
    name
        One of :data:`DATASETS`.
    data_dir
        Where the IDX files of ``mnist`` and ``fashion-mnist`` (see :func:`find_idx_files`)
        and the batch files of ``cifar10`` (see :func:`topo_ep.cifar.find_cifar10_files`)
        are searched; default :func:`default_data_dir`. Ignored for ``digits``.
    val_fraction
        Fraction of the training part carved out (stratified) as the validation split, in
        [0, 1); 0 carves none (an empty validation split). ``None`` takes the dataset's
        default: 10 % for ``digits``, exactly :data:`IDX_VAL_SIZE` examples for the IDX
        datasets and ``cifar10``.
    seed
        Selects the subset kept by ``limit``; the splits themselves never depend on it.
    limit
        Keep at most this many training examples (a random subset drawn with ``seed``, in source
        order), applied after the validation split has been carved out. ``None`` keeps all.

    Returns
    -------
    Dataset
        The splits as CPU tensors.

    Raises
    ------
    DataError
        For an unknown name, invalid arguments, missing or corrupt files, or a split that
        cannot be made.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if val_fraction is not None:
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
            raise DataError(f"val_fraction must be a number, got {val_fraction!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    if name == "digits":
        return _load_digits(val_fraction, seed, limit)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if name == "cifar10":
        return _load_cifar10(root, val_fraction, seed, limit)
    return _load_idx_dataset(name, root, val_fraction, seed, limit)


def _load_digits(val_fraction: float | None, seed: int, limit: int | None) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    features = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    fraction = DIGITS_VAL_FRACTION if val_fraction is None else val_fraction
    rest, test_idx = _stratified_carve(
        np.arange(labels.shape[0]), labels, DIGITS_TEST_FRACTION, "digits test"
    )
    train_idx, val_idx = _stratified_carve(rest, labels, fraction, "digits validation")
    train_idx = _apply_limit(train_idx, limit, seed)
    splits = [_make_split(features[i], labels[i]) for i in (train_idx, val_idx, test_idx)]
    limited = f", limited to {limit} with seed {seed}" if limit is not None else ""
    description = (
        f"digits: train {len(splits[0])}, val {len(splits[1])}, test {len(splits[2])} "
        f"(sklearn.datasets.load_digits, bundled with scikit-learn; fixed stratified split: "
        f"test {DIGITS_TEST_FRACTION:g}, val {fraction:g} of the rest, "
        f"random_state={SPLIT_SEED}{limited})"
    )
    return Dataset(
        name="digits",
        train=splits[0],
        val=splits[1],
        test=splits[2],
        n_features=int(features.shape[1]),
        n_classes=_N_CLASSES,
        description=description,
    )


def _load_idx_dataset(
    name: str, root: Path, val_fraction: float | None, seed: int, limit: int | None
) -> Dataset:
    files = find_idx_files(name, root)
    train_images = read_idx_images(files["train-images"])
    train_labels = read_idx_labels(files["train-labels"])
    test_images = read_idx_images(files["test-images"])
    test_labels = read_idx_labels(files["test-labels"])
    _check_pair(train_images, train_labels, files["train-images"], files["train-labels"])
    _check_pair(test_images, test_labels, files["test-images"], files["test-labels"])
    if test_images.shape[1] != train_images.shape[1]:
        raise DataError(
            f"{files['test-images']}: images have {test_images.shape[1]} pixels but those of "
            f"{files['train-images']} have {train_images.shape[1]}"
        )

    n_train = int(train_labels.shape[0])
    return _official_splits(
        name,
        (train_images, train_labels),
        (test_images, test_labels),
        val_fraction,
        seed,
        limit,
        too_few=(
            f"{files['train-labels']}: {n_train} training examples cannot give the default "
            f"{IDX_VAL_SIZE} validation examples; pass a val_fraction"
        ),
        origin=f"IDX files {', '.join(str(path) for path in files.values())}",
        training_set="the training set",
        test_set="the official test set",
    )


def _official_splits(
    name: str,
    official_train: tuple[np.ndarray, np.ndarray],
    official_test: tuple[np.ndarray, np.ndarray],
    val_fraction: float | None,
    seed: int,
    limit: int | None,
    *,
    too_few: str,
    origin: str,
    training_set: str,
    test_set: str,
) -> Dataset:
    """Train / validation / test of a dataset distributed as a training and a test set.

    Validation: a fixed stratified sample of the official training set (``IDX_VAL_SIZE``
    examples, or ``val_fraction`` of it; random_state ``SPLIT_SEED``); the rest is the training
    split, limited to ``limit`` examples drawn with ``seed``; test: the official test set.
    Pixels are scaled to [0, 1]. ``too_few`` is the error when the training set cannot give the
    default validation size; ``origin``, ``training_set`` and ``test_set`` word the
    description.
    """
    (train_pixels, train_labels), (test_pixels, test_labels) = official_train, official_test
    n_train = int(train_labels.shape[0])
    if val_fraction is None:
        if n_train <= IDX_VAL_SIZE:
            raise DataError(too_few)
        carve: float | int = IDX_VAL_SIZE
    else:
        carve = val_fraction
    train_idx, val_idx = _stratified_carve(
        np.arange(n_train), train_labels, carve, f"{name} validation"
    )
    train_idx = _apply_limit(train_idx, limit, seed)
    train = _make_split(_scale_pixels(train_pixels[train_idx]), train_labels[train_idx])
    val = _make_split(_scale_pixels(train_pixels[val_idx]), train_labels[val_idx])
    test = _make_split(_scale_pixels(test_pixels), test_labels)
    limited = f", training part limited to {limit} with seed {seed}" if limit is not None else ""
    description = (
        f"{name}: train {len(train)}, val {len(val)}, test {len(test)} ({origin}; val a fixed "
        f"stratified sample of {training_set}, random_state={SPLIT_SEED}; test "
        f"{test_set}{limited})"
    )
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        n_features=int(train_pixels.shape[1]),
        n_classes=_N_CLASSES,
        description=description,
    )


def _load_cifar10(root: Path, val_fraction: float | None, seed: int, limit: int | None) -> Dataset:
    files = find_cifar10_files(root)
    batches = [read_cifar10_batch(files[name]) for name in TRAIN_FILES]
    train_pixels = np.concatenate([pixels for pixels, _ in batches])
    train_labels = np.concatenate([labels for _, labels in batches])
    test_pixels, test_labels = read_cifar10_batch(files[TEST_FILE])
    n_train = int(train_labels.shape[0])
    return _official_splits(
        "cifar10",
        (train_pixels, train_labels),
        (test_pixels, test_labels),
        val_fraction,
        seed,
        limit,
        too_few=(
            f"cifar10: the five training batches under {files[TRAIN_FILES[0]].parent} hold "
            f"{n_train} examples, too few for the default {IDX_VAL_SIZE} validation "
            "examples; pass a val_fraction"
        ),
        origin=f"binary batches under {files[TEST_FILE].parent}",
        training_set="the five training batches",
        test_set=TEST_FILE,
    )


def _check_pair(images: np.ndarray, labels: np.ndarray, image_file: Path, label_file: Path) -> None:
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{image_file} holds {images.shape[0]} images but {label_file} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= _N_CLASSES:
        raise DataError(
            f"{label_file}: label {int(labels.max())} is out of range 0-{_N_CLASSES - 1}"
        )


def _stratified_carve(
    indices: np.ndarray, labels: np.ndarray, size: float | int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (kept, carved), stratified on ``labels[indices]``, both sorted;
    a ``size`` of 0 carves nothing."""
    if size == 0:
        return np.sort(indices), indices[:0]
    try:
        kept, carved = train_test_split(
            indices,
            test_size=size,
            stratify=labels[indices],
            random_state=SPLIT_SEED,
        )
    except ValueError as exc:
        raise DataError(f"cannot make the {what} split of {len(indices)} examples: {exc}") from exc
    return np.sort(kept), np.sort(carved)


def val_fraction_for(validation: str) -> float | None:
    """The ``val_fraction`` of :func:`load_dataset` for a protocol of :data:`VALIDATION_MODES`:
    ``None`` (the dataset's default holdout) for ``holdout``, 0 for ``none``."""
    if validation not in VALIDATION_MODES:
        raise DataError(
            f"unknown validation protocol {validation!r}; expected one of "
            f"{', '.join(VALIDATION_MODES)}"
        )
    return None if validation == "holdout" else 0.0


def _apply_limit(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= indices.shape[0]:
        return indices
    chosen = np.random.default_rng(seed).permutation(indices.shape[0])[:limit]
    return indices[np.sort(chosen)]


def _scale_pixels(pixels: np.ndarray) -> np.ndarray:
    out = pixels.astype(np.float32)
    out /= np.float32(255.0)
    return out


def _make_split(x: np.ndarray, y: np.ndarray) -> Split:
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64)
    return Split(x=torch.from_numpy(x), y=torch.from_numpy(y))


def idx_search_dirs(name: str, root: Path) -> list[Path]:
    """Directories searched for the IDX files of dataset ``name``, in order.

    The dataset-specific ones come first, so that a root holding several datasets does not
    hand out the wrong one: ``root/<name>``, ``root/<MNIST|FashionMNIST>/raw`` (torchvision's
    layout), then ``root`` and ``root/raw``. A directory holding the bare file names is taken to
    hold whichever dataset was asked for.
    """
    return [root / name, root / _TORCHVISION_DIRS[name] / "raw", root, root / "raw"]


def find_idx_files(name: str, root: str | os.PathLike[str]) -> dict[str, Path]:
    """Locate the four IDX files of ``mnist`` or ``fashion-mnist``.

    In each directory of :func:`idx_search_dirs` every file is looked up under its canonical
    name (``train-images-idx3-ubyte``) and its dot spelling (``train-images.idx3-ubyte``), raw
    or with ``.gz``; the first directory that holds all four files is used.

    Parameters
    ----------
    name
        ``"mnist"`` or ``"fashion-mnist"``.
    root
        The data directory.

    Returns
    -------
    dict
        Role (a key of :data:`IDX_FILES`) -> path.

    Raises
    ------
    DataError
        When no directory holds all four files; the message lists every path looked at.
    """
    if name not in _TORCHVISION_DIRS:
        raise DataError(f"{name!r} is not an IDX dataset; expected one of mnist, fashion-mnist")
    looked: list[str] = []
    for directory in idx_search_dirs(name, Path(root)):
        if not directory.is_dir():
            looked.append(f"  {directory} (no such directory)")
            continue
        found: dict[str, Path] = {}
        for role, spellings in IDX_FILES.items():
            candidates = [directory / (base + ext) for base in spellings for ext in ("", ".gz")]
            hit = next((path for path in candidates if path.is_file()), None)
            if hit is None:
                looked.extend(f"  {path} (not found)" for path in candidates)
            else:
                found[role] = hit
        if len(found) == len(IDX_FILES):
            return found
        looked.extend(
            f"  {path} (found, but the other files are missing)" for path in found.values()
        )
    raise DataError(
        f"{name}: no directory holds all four IDX files (train-images, train-labels, "
        f"t10k-images, t10k-labels; raw or .gz) under data directory {root} (set it with "
        f"--data-dir or ${DATA_DIR_ENV}). Paths looked at:\n" + "\n".join(looked)
    )


def _read_into(stream: BinaryIO, buffer: np.ndarray) -> int:
    """Fill ``buffer`` from ``stream`` in chunks; returns the number of bytes read."""
    view = memoryview(buffer).cast("B")
    got = 0
    while got < len(view):
        n = stream.readinto(view[got : got + _IDX_CHUNK])
        if not n:
            break
        got += n
    return got


def _parse_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes, raw or gzipped, checking its header first.

    The header (magic number and dimensions) is read and checked before anything large is
    allocated or decompressed: the declared size must be at most :data:`MAX_IDX_BYTES`, equal
    the size of a raw file, and be within what a gzip file of this size can hold. The payload is
    then read (decompressed) in chunks into one buffer of the declared size, and a gzip stream
    that goes on past it is refused after one more byte.
    """
    try:
        with path.open("rb") as raw:
            info = os.fstat(raw.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise DataError(f"{path}: not a regular file")
            is_gzip = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            if is_gzip:
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    return _parse_idx_stream(stream, path, expected_magic, info.st_size, True)
            return _parse_idx_stream(raw, path, expected_magic, info.st_size, False)
    except DataError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _parse_idx_stream(
    stream: BinaryIO, path: Path, expected_magic: int, file_size: int, is_gzip: bool
) -> np.ndarray:
    head = stream.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(head)} bytes, no header)")
    magic = int.from_bytes(head, "big")
    if magic != expected_magic:
        raise DataError(
            f"{path}: bad IDX magic number {magic} (0x{magic:08x}), expected {expected_magic} "
            f"(0x{expected_magic:08x})"
        )
    ndim = head[3]
    header = 4 + 4 * ndim
    dims_bytes = stream.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DataError(
            f"{path}: truncated IDX header ({4 + len(dims_bytes)} bytes, need {header})"
        )
    dims = tuple(int(d) for d in np.frombuffer(dims_bytes, dtype=">u4"))
    declared = math.prod(dims)
    expected = header + declared
    if declared > MAX_IDX_BYTES:
        raise DataError(
            f"{path}: the IDX header declares dimensions {dims}, {declared} bytes of data, more "
            f"than the {MAX_IDX_BYTES} accepted (the largest MNIST file holds 47,040,000)"
        )
    if is_gzip:
        bound = _GZIP_MAX_RATIO * file_size + _GZIP_SLACK
        if expected > bound:
            raise DataError(
                f"{path}: the IDX header declares dimensions {dims} ({expected} bytes) but a "
                f"gzip file of {file_size} bytes cannot hold more than about {bound}: corrupt"
            )
    elif file_size != expected:
        state = "truncated" if file_size < expected else "has trailing bytes"
        raise DataError(
            f"{path}: IDX file {state}: header declares dimensions {dims} "
            f"({expected} bytes) but the file holds {file_size} bytes"
        )
    buffer = np.empty(declared, dtype=np.uint8)
    got = _read_into(stream, buffer)
    if got < declared:
        raise DataError(
            f"{path}: IDX file truncated: header declares dimensions {dims} ({expected} bytes) "
            f"but the {'decompressed ' if is_gzip else ''}data holds {header + got} bytes"
        )
    if is_gzip and stream.read(1):
        raise DataError(
            f"{path}: IDX file has trailing bytes: header declares dimensions {dims} "
            f"({expected} bytes) but the decompressed data goes on past them"
        )
    buffer.flags.writeable = False
    return buffer.reshape(dims)


def read_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX image file (magic 2051), gzipped or raw.

    Returns
    -------
    numpy.ndarray
        uint8, shape (n, rows * cols), read-only.

    Raises
    ------
    DataError
        For an unreadable, corrupt or truncated file; the message names it.
    """
    path = Path(path)
    images = _parse_idx(path, IDX_IMAGES_MAGIC)
    n, rows, cols = images.shape
    if rows * cols == 0:
        raise DataError(f"{path}: images of {rows} x {cols} pixels")
    return images.reshape(n, rows * cols)


def read_idx_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX label file (magic 2049), gzipped or raw.

    Returns
    -------
    numpy.ndarray
        int64, shape (n,).

    Raises
    ------
    DataError
        For an unreadable, corrupt or truncated file; the message names it.
    """
    return _parse_idx(Path(path), IDX_LABELS_MAGIC).astype(np.int64)


def check_compatible(
    dataset: Dataset, input_size: int, readout_size: int, topology_file: str | None
) -> None:
    """Check that a topology can be trained on ``dataset``.

    Parameters
    ----------
    dataset
        The loaded dataset.
    input_size
        The topology's input size (``input.size``).
    readout_size
        The topology's readout size (``readout.size``).
    topology_file
        The topology's file, for the error location; ``None`` when it has none.

    Raises
    ------
    TopologyError
        Of kind ``"dataset-size"`` when ``input_size`` differs from the dataset's feature count
        or ``readout_size`` is smaller than its number of classes.
    """
    location = Location(topology_file) if topology_file is not None else None
    source = f"topology {topology_file}" if topology_file is not None else "the topology"
    if input_size != dataset.n_features:
        raise TopologyError(
            "dataset-size",
            f"dataset {dataset.name!r} has {dataset.n_features} features per example but "
            f"{source} declares input size {input_size}",
            location,
            "input.size",
        )
    if readout_size < dataset.n_classes:
        raise TopologyError(
            "dataset-size",
            f"dataset {dataset.name!r} has {dataset.n_classes} classes but {source} declares "
            f"readout size {readout_size}",
            location,
            "readout.size",
        )


def iterate_batches(
    split: Split,
    batch_size: int,
    generator: torch.Generator | None,
    shuffle: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate over ``split`` in minibatches.

    The permutation is drawn from ``generator`` when this function is called (not lazily), in
    one :func:`torch.randperm` call, so the same generator state always gives the same order
    and advances the generator by the same amount: saving its state before an epoch is enough
    to resume bit-identically.

    Parameters
    ----------
    split
        The examples.
    batch_size
        Examples per batch; the last batch holds the remainder.
    generator
        The only source of the order. Required when ``shuffle`` is true.
    shuffle
        Visit the examples in a random order; otherwise in split order.

    Returns
    -------
    Iterator
        ``(x, y)`` pairs on the split's device.

    Raises
    ------
    ValueError
        For a non-positive ``batch_size`` or ``shuffle`` without a generator.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(split)
    if shuffle:
        if generator is None:
            raise ValueError("iterate_batches(shuffle=True) needs a torch.Generator")
        order: torch.Tensor | None = torch.randperm(
            n, generator=generator, device=generator.device
        ).to(split.x.device)
    else:
        order = None
    return _batches(split, batch_size, order)


def iterate_indexed_batches(
    split: Split, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`iterate_batches` with shuffling, each batch with the split indices of its rows.

    Yields ``(index, x, y)`` with ``x = split.x[index]`` and ``y = split.y[index]``: the same
    batches, in the same order, as ``iterate_batches(split, batch_size, generator)`` with a
    generator in the same state (one :func:`torch.randperm` call). The indices let per-example
    state follow an example across epochs (:mod:`topo_ep.warm_start`).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    order = torch.randperm(len(split), generator=generator, device=generator.device)
    order = order.to(split.x.device)
    for start in range(0, len(split), batch_size):
        index = order[start : start + batch_size]
        yield index, split.x.index_select(0, index), split.y.index_select(0, index)


def _batches(
    split: Split, batch_size: int, order: torch.Tensor | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(split), batch_size):
        if order is None:
            yield split.x[start : start + batch_size], split.y[start : start + batch_size]
        else:
            index = order[start : start + batch_size]
            yield split.x.index_select(0, index), split.y.index_select(0, index)
