"""Tests of topo_ep.data: dataset loading, fixed splits, IDX parsing and batching."""

from __future__ import annotations

import gzip
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from topo_ep.data import (
    DATASETS,
    IDX_VAL_SIZE,
    Dataset,
    Split,
    check_compatible,
    find_idx_files,
    iterate_batches,
    load_dataset,
    read_idx_images,
    read_idx_labels,
    val_fraction_for,
)
from topo_ep.errors import DataError, TopologyError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def _shared_mnist_dir() -> Path | None:
    env = os.environ.get("TOPO_EP_MNIST_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared/data/mnist")
    for path in candidates:
        if path.is_dir():
            return path
    return None


# --------------------------------------------------------------------------- synthetic IDX files

ROWS, COLS = 3, 4
N_TRAIN, N_TEST = 60, 20


def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _synthetic(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose first pixel is the example's index (+offset), labels cycling 0-9."""
    rng = np.random.default_rng(n + offset)
    images = rng.integers(0, 256, size=(n, ROWS, COLS), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) + offset
    images[0, 0, 1] = 255  # the full range occurs
    images[0, 0, 2] = 0
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def _write_idx_set(
    directory: Path, *, gz: bool = True, dot: bool = False, offset: int = 0
) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = _synthetic(N_TRAIN, offset)
    test_images, test_labels = _synthetic(N_TEST, 100 + offset)
    arrays = {
        "train-images": (2051, train_images),
        "train-labels": (2049, train_labels),
        "t10k-images": (2051, test_images),
        "t10k-labels": (2049, test_labels),
    }
    for stem, (magic, array) in arrays.items():
        kind = "idx3" if magic == 2051 else "idx1"
        name = f"{stem}.{kind}-ubyte" if dot else f"{stem}-{kind}-ubyte"
        data = _idx_bytes(magic, array)
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return {stem: array for stem, (_, array) in arrays.items()}


def _check_synthetic(dataset: Dataset, arrays: dict[str, np.ndarray], n_val: int) -> None:
    assert dataset.n_features == ROWS * COLS
    assert dataset.n_classes == 10
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (
        N_TRAIN - n_val,
        n_val,
        N_TEST,
    )
    source = arrays["train-images"].reshape(N_TRAIN, -1).astype(np.float32) / 255
    seen = []
    for split in (dataset.train, dataset.val):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        index = np.rint(split.x[:, 0].numpy() * 255).astype(int)
        assert np.all(np.diff(index) > 0), "split keeps source order"
        np.testing.assert_array_equal(split.x.numpy(), source[index])
        np.testing.assert_array_equal(split.y.numpy(), arrays["train-labels"][index])
        seen.extend(index.tolist())
    assert sorted(seen) == list(range(N_TRAIN)), "train and val partition the training file"
    test_source = arrays["t10k-images"].reshape(N_TEST, -1).astype(np.float32) / 255
    np.testing.assert_array_equal(dataset.test.x.numpy(), test_source)
    np.testing.assert_array_equal(dataset.test.y.numpy(), arrays["t10k-labels"])
    assert float(dataset.train.x.min()) >= 0.0 and float(dataset.train.x.max()) <= 1.0


# --------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_digits_sizes_types_range(digits: Dataset) -> None:
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1293, 144, 360)
    assert digits.n_features == 64 and digits.n_classes == 10
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.float32 and split.x.shape[1] == 64
        assert split.y.dtype == torch.int64 and split.y.ndim == 1
    all_x = torch.cat([digits.train.x, digits.val.x, digits.test.x])
    assert float(all_x.min()) == 0.0 and float(all_x.max()) == 1.0
    assert "1293" in digits.description and "144" in digits.description
    assert "360" in digits.description and "load_digits" in digits.description


def test_digits_splits_partition_the_data(digits: Dataset) -> None:
    bunch = load_digits()
    original = Counter(
        (row.astype(np.int64).tobytes(), int(label))
        for row, label in zip(bunch.data, bunch.target, strict=True)
    )
    loaded = Counter()
    for split in (digits.train, digits.val, digits.test):
        rows = np.rint(split.x.numpy() * 16).astype(np.int64)
        loaded.update(
            (row.tobytes(), int(label)) for row, label in zip(rows, split.y.numpy(), strict=True)
        )
    assert loaded == original


def test_digits_stratified(digits: Dataset) -> None:
    totals = np.bincount(load_digits().target, minlength=10)
    test_counts = np.bincount(digits.test.y.numpy(), minlength=10)
    val_counts = np.bincount(digits.val.y.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * totals) <= 1)
    assert np.all(np.abs(val_counts - 0.1 * 0.8 * totals) <= 1.5)


def test_digits_split_fixed_regardless_of_seed(digits: Dataset) -> None:
    other = load_dataset("digits", seed=123)
    for a, b in ((digits.train, other.train), (digits.val, other.val), (digits.test, other.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_digits_val_fraction(digits: Dataset) -> None:
    wider = load_dataset("digits", val_fraction=0.2)
    assert (len(wider.train), len(wider.val), len(wider.test)) == (1149, 288, 360)
    assert torch.equal(wider.test.x, digits.test.x)


def test_no_validation_trains_on_the_whole_training_part(digits: Dataset) -> None:
    whole = load_dataset("digits", val_fraction=val_fraction_for("none"))
    assert (len(whole.train), len(whole.val), len(whole.test)) == (1437, 0, 360)
    assert whole.val.x.shape == (0, 64)
    assert torch.equal(whole.test.x, digits.test.x)
    rows = {row.tobytes() for row in whole.train.x.numpy()}
    for part in (digits.train, digits.val):  # the holdout's train and val, both trained on now
        assert all(row.tobytes() in rows for row in part.x.numpy())
    assert val_fraction_for("holdout") is None
    with pytest.raises(DataError, match="holdout, none"):
        val_fraction_for("test")


def test_limit_caps_training_only(digits: Dataset) -> None:
    small = load_dataset("digits", limit=100, seed=1)
    again = load_dataset("digits", limit=100, seed=1)
    other = load_dataset("digits", limit=100, seed=2)
    assert len(small.train) == 100
    assert len(small.val) == len(digits.val) and len(small.test) == len(digits.test)
    assert torch.equal(small.val.x, digits.val.x)
    assert torch.equal(small.train.x, again.train.x)
    assert not torch.equal(small.train.x, other.train.x)
    full_rows = {row.tobytes() for row in digits.train.x.numpy()}
    assert all(row.tobytes() in full_rows for row in small.train.x.numpy())
    assert len(load_dataset("digits", limit=10**6).train) == len(digits.train)


def test_unknown_dataset_names_the_allowed_ones() -> None:
    with pytest.raises(DataError) as info:
        load_dataset("cifar100")
    for name in DATASETS:
        assert name in str(info.value)


@pytest.mark.parametrize("kwargs", [{"val_fraction": -0.1}, {"val_fraction": 1.0}, {"limit": 0}])
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(DataError):
        load_dataset("digits", **kwargs)


def test_split_rejects_bad_tensors() -> None:
    with pytest.raises(DataError):
        Split(x=torch.zeros(3, 2, dtype=torch.float64), y=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(DataError):
        Split(x=torch.zeros(3, 2), y=torch.zeros(4, dtype=torch.int64))


# ------------------------------------------------------------------------------ shared MNIST


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    directory = _shared_mnist_dir()
    if directory is None:
        pytest.skip("MNIST not found (set TOPO_EP_MNIST_DIR)")
    return load_dataset("mnist", data_dir=directory)


def test_mnist_shapes_and_range(mnist: Dataset) -> None:
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (55000, IDX_VAL_SIZE, 10000)
    assert mnist.n_features == 784 and mnist.n_classes == 10
    for split in (mnist.train, mnist.val, mnist.test):
        assert split.x.shape[1] == 784 and split.x.dtype == torch.float32
        assert float(split.x.min()) == 0.0 and float(split.x.max()) == 1.0
    assert "55000" in mnist.description and "train-images" in mnist.description


def test_mnist_label_counts(mnist: Dataset) -> None:
    counts = torch.bincount(torch.cat([mnist.train.y, mnist.val.y]), minlength=10)
    assert counts.tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.test.y, minlength=10).sum() == 10000
    expected_val = np.array(MNIST_TRAIN_COUNTS) * IDX_VAL_SIZE / 60000
    val_counts = torch.bincount(mnist.val.y, minlength=10).numpy()
    assert np.all(np.abs(val_counts - expected_val) <= 1)


def test_mnist_found_from_parent_dir(mnist: Dataset) -> None:
    parent = _shared_mnist_dir().parent
    if _shared_mnist_dir().name != "mnist":
        pytest.skip("MNIST directory is not named mnist")
    files = find_idx_files("mnist", parent)
    assert files["train-images"].parent == _shared_mnist_dir()


# --------------------------------------------------------------------------- synthetic IDX files


def test_idx_gz_in_data_dir(tmp_path: Path) -> None:
    arrays = _write_idx_set(tmp_path, gz=True)
    dataset = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.25)
    _check_synthetic(dataset, arrays, n_val=15)
    val_counts = np.bincount(dataset.val.y.numpy(), minlength=10)
    assert set(val_counts.tolist()) <= {1, 2}  # stratified: 1.5 per class
    assert str(tmp_path) in dataset.description


def test_idx_without_validation_keeps_every_training_image(tmp_path: Path) -> None:
    arrays = _write_idx_set(tmp_path, gz=True)
    dataset = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.0)
    _check_synthetic(dataset, arrays, n_val=0)
    assert "val 0" in dataset.description


def test_idx_raw_in_torchvision_layout(tmp_path: Path) -> None:
    arrays = _write_idx_set(tmp_path / "MNIST" / "raw", gz=False)
    dataset = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.5)
    _check_synthetic(dataset, arrays, n_val=30)
    assert np.all(np.bincount(dataset.val.y.numpy()) == 3)


def test_idx_dot_names_in_raw_subdir(tmp_path: Path) -> None:
    arrays = _write_idx_set(tmp_path / "raw", gz=False, dot=True)
    dataset = load_dataset("mnist", data_dir=str(tmp_path), val_fraction=0.5)
    _check_synthetic(dataset, arrays, n_val=30)


def test_fashion_prefers_its_own_directory(tmp_path: Path) -> None:
    _write_idx_set(tmp_path, offset=1)  # bare files in the root: taken for either dataset
    fashion = _write_idx_set(tmp_path / "FashionMNIST" / "raw", gz=False)
    dataset = load_dataset("fashion-mnist", data_dir=tmp_path, val_fraction=0.5)
    assert dataset.name == "fashion-mnist"
    _check_synthetic(dataset, fashion, n_val=30)
    root = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.5)
    assert float(root.test.x[0, 0]) * 255 == pytest.approx(101)  # the root's files


def test_fashion_does_not_use_mnist_layout(tmp_path: Path) -> None:
    _write_idx_set(tmp_path / "MNIST" / "raw")
    with pytest.raises(DataError):
        load_dataset("fashion-mnist", data_dir=tmp_path, val_fraction=0.5)


def test_default_data_dir_from_environment(tmp_path: Path, monkeypatch) -> None:
    arrays = _write_idx_set(tmp_path / "fashion-mnist")
    monkeypatch.setenv("TOPO_EP_DATA", str(tmp_path))
    _check_synthetic(load_dataset("fashion-mnist", val_fraction=0.5), arrays, n_val=30)
    monkeypatch.delenv("TOPO_EP_DATA")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fashion-mnist").rename(tmp_path / "data")
    _check_synthetic(load_dataset("fashion-mnist", val_fraction=0.5), arrays, n_val=30)


def test_default_val_size_needs_enough_examples(tmp_path: Path) -> None:
    _write_idx_set(tmp_path)
    with pytest.raises(DataError, match="5000"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_limit_after_validation(tmp_path: Path) -> None:
    _write_idx_set(tmp_path)
    full = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.5)
    small = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.5, limit=7)
    assert len(small.train) == 7 and torch.equal(small.val.x, full.val.x)
    full_rows = {row.tobytes() for row in full.train.x.numpy()}
    assert all(row.tobytes() in full_rows for row in small.train.x.numpy())


def test_missing_directory_lists_paths(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=missing)
    message = str(info.value)
    for directory in (missing, missing / "raw", missing / "MNIST" / "raw", missing / "mnist"):
        assert str(directory) in message


def test_missing_file_lists_every_path(tmp_path: Path) -> None:
    _write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path, val_fraction=0.5)
    message = str(info.value)
    for name in (
        "t10k-labels-idx1-ubyte",
        "t10k-labels-idx1-ubyte.gz",
        "t10k-labels.idx1-ubyte",
        "t10k-labels.idx1-ubyte.gz",
    ):
        assert str(tmp_path / name) in message
        assert str(tmp_path / "raw" / name) not in message  # raw/ does not exist: named once
    assert str(tmp_path / "raw") in message


@pytest.mark.parametrize("magic", [b"\x00\x00\x09\x03", b"\x00\x00\x08\x01", b"\x1a\x2b\x08\x03"])
def test_corrupt_magic(tmp_path: Path, magic: bytes) -> None:
    _write_idx_set(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(magic + path.read_bytes()[4:])
    with pytest.raises(DataError, match="bad IDX magic number") as info:
        load_dataset("mnist", data_dir=tmp_path, val_fraction=0.5)
    assert str(path) in str(info.value)


def test_truncated_file(tmp_path: Path) -> None:
    _write_idx_set(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated") as info:
        read_idx_images(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="truncated"):
        read_idx_images(path)


def test_truncated_gzip(tmp_path: Path) -> None:
    _write_idx_set(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError) as info:
        read_idx_labels(path)
    assert str(path) in str(info.value)


def test_inconsistent_files(tmp_path: Path) -> None:
    _write_idx_set(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(_idx_bytes(2049, np.zeros(N_TRAIN - 1, dtype=np.uint8)))
    with pytest.raises(DataError, match="labels"):
        load_dataset("mnist", data_dir=tmp_path, val_fraction=0.5)
    labels.write_bytes(_idx_bytes(2049, np.full(N_TRAIN, 10, dtype=np.uint8)))
    with pytest.raises(DataError, match="out of range"):
        load_dataset("mnist", data_dir=tmp_path, val_fraction=0.5)


# ---------------------------------------------------------------------------- check_compatible


def test_check_compatible(digits: Dataset) -> None:
    check_compatible(digits, 64, 10, "topologies/a.yaml")
    check_compatible(digits, 64, 12, None)
    with pytest.raises(TopologyError) as info:
        check_compatible(digits, 784, 10, "topologies/a.yaml")
    error = info.value
    assert error.kind == "dataset-size" and error.file == "topologies/a.yaml"
    for part in ("784", "64", "digits", "topologies/a.yaml"):
        assert part in str(error)
    with pytest.raises(TopologyError) as info:
        check_compatible(digits, 64, 9, None)
    assert info.value.kind == "dataset-size" and info.value.location is None
    assert "9" in str(info.value) and "10" in str(info.value)


# ----------------------------------------------------------------------------- iterate_batches


def _order(split: Split, batch_size: int, generator: torch.Generator | None, **kw) -> list:
    return [(x.clone(), y.clone()) for x, y in iterate_batches(split, batch_size, generator, **kw)]


def test_iterate_batches_deterministic_and_complete(digits: Dataset) -> None:
    split = digits.val
    first = _order(split, 50, torch.Generator().manual_seed(3))
    second = _order(split, 50, torch.Generator().manual_seed(3))
    other = _order(split, 50, torch.Generator().manual_seed(4))
    assert [len(y) for _, y in first] == [50, 50, 44]
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(first, second, strict=True)
    )
    assert not torch.equal(first[0][1], other[0][1])
    xs = torch.cat([x for x, _ in first])
    ys = torch.cat([y for _, y in first])
    assert not torch.equal(ys, split.y)  # shuffled
    pairs = Counter(zip(map(bytes, xs.numpy()), ys.tolist(), strict=True))
    assert pairs == Counter(zip(map(bytes, split.x.numpy()), split.y.tolist(), strict=True))


def test_iterate_batches_resume_from_generator_state(digits: Dataset) -> None:
    generator = torch.Generator().manual_seed(11)
    _order(digits.val, 32, generator)
    state = generator.get_state()
    epoch_two = _order(digits.val, 32, generator)
    generator.set_state(state)
    partial = iterate_batches(digits.val, 32, generator)
    next(partial)
    after = torch.randint(0, 1000, (4,), generator=generator)  # drawn eagerly: fixed amount
    generator.set_state(state)
    replay = _order(digits.val, 32, generator)
    assert torch.equal(after, torch.randint(0, 1000, (4,), generator=generator))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(epoch_two, replay, strict=True))


def test_iterate_batches_unshuffled_and_errors(digits: Dataset) -> None:
    batches = _order(digits.test, 100, None, shuffle=False)
    assert torch.equal(torch.cat([x for x, _ in batches]), digits.test.x)
    with pytest.raises(ValueError):
        iterate_batches(digits.test, 10, None)
    with pytest.raises(ValueError):
        iterate_batches(digits.test, 0, torch.Generator())
