"""CIFAR-10 from its binary distribution, on small batch files written here in the exact
format: one label byte and 3072 pixel bytes (R, G, B planes of 32 x 32, row-major) per record.
There is no CIFAR-10 on the test machines."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from topo_ep.cifar import (
    BINARY_DIR,
    PYTHON_DIR,
    RECORD_BYTES,
    TEST_FILE,
    TRAIN_FILES,
    find_cifar10_files,
    read_cifar10_batch,
)
from topo_ep.cli import main
from topo_ep.data import IDX_VAL_SIZE, load_dataset
from topo_ep.errors import DataError

#: Records per training batch and in the test batch of the small sets.
PER_BATCH = 4
N_TEST = 6


def _image(index: int) -> np.ndarray:
    """A 3 x 32 x 32 image whose every byte says where it is: channel, row, column, example."""
    c, r, col = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return ((c * 80 + r * 5 + col * 3 + index * 11) % 256).astype(np.uint8)


def _record(label: int, image: np.ndarray) -> bytes:
    """One record as the format describes it, written plane by plane and row by row."""
    out = bytearray([label])
    for channel in range(3):  # 1024 red bytes, then 1024 green, then 1024 blue
        for row in range(32):
            for column in range(32):
                out.append(int(image[channel, row, column]))
    return bytes(out)


def _write_set(directory: Path, per_batch: int = PER_BATCH, n_test: int = N_TEST) -> dict:
    """The six batch files of a small set; returns the images and labels written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[list[np.ndarray], list[int]]] = {}
    index = 0
    for name, count in [(name, per_batch) for name in TRAIN_FILES] + [(TEST_FILE, n_test)]:
        images, labels = [], []
        for _ in range(count):
            images.append(_image(index))
            labels.append(index % 10)
            index += 1
        (directory / name).write_bytes(
            b"".join(_record(y, x) for x, y in zip(images, labels, strict=True))
        )
        written[name] = (images, labels)
    return written


def test_reader_gives_labels_and_channel_major_pixels(tmp_path: Path) -> None:
    written = _write_set(tmp_path)
    pixels, labels = read_cifar10_batch(tmp_path / TRAIN_FILES[1])
    images, expected = written[TRAIN_FILES[1]]
    assert pixels.dtype == np.uint8 and pixels.shape == (PER_BATCH, 3072)
    assert labels.dtype == np.int64 and labels.tolist() == expected
    for row, image in zip(pixels, images, strict=True):
        np.testing.assert_array_equal(row.reshape(3, 32, 32), image)
        assert row[1024 + 2 * 32 + 5] == image[1, 2, 5]  # green plane, row 2, column 5


def test_dataset_splits_scaling_and_order(tmp_path: Path) -> None:
    written = _write_set(tmp_path)
    data = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.5)
    n_train = PER_BATCH * len(TRAIN_FILES)
    assert (len(data.train), len(data.val), len(data.test)) == (n_train // 2, n_train // 2, N_TEST)
    assert (data.n_features, data.n_classes) == (3072, 10)
    source = [image for name in TRAIN_FILES for image in written[name][0]]
    source_labels = [label for name in TRAIN_FILES for label in written[name][1]]
    seen = []
    for split in (data.train, data.val):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        # the first byte of image i is (i * 11) % 256: it names the example
        index = [
            next(i for i, image in enumerate(source) if np.array_equal(image.ravel(), row))
            for row in np.rint(split.x.numpy() * 255).astype(np.uint8)
        ]
        assert index == sorted(index), "the splits keep the order of the batches"
        expected = np.stack([source[i].reshape(-1) for i in index]).astype(np.float32) / 255
        np.testing.assert_array_equal(split.x.numpy(), expected)
        assert split.y.tolist() == [source_labels[i] for i in index]
        seen.extend(index)
    assert sorted(seen) == list(range(n_train)), "train and val partition the training batches"
    test_images, test_labels = written[TEST_FILE]
    np.testing.assert_array_equal(
        data.test.x.numpy().reshape(-1, 3, 32, 32),
        np.stack(test_images).astype(np.float32) / 255,
    )
    assert data.test.y.tolist() == test_labels
    assert float(data.train.x.min()) >= 0.0 and float(data.train.x.max()) <= 1.0


def test_default_validation_is_5000_examples(tmp_path: Path) -> None:
    _write_set(tmp_path)
    with pytest.raises(DataError, match=f"{IDX_VAL_SIZE} validation examples"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_found_in_the_folder_the_tarball_unpacks_to(tmp_path: Path) -> None:
    _write_set(tmp_path / BINARY_DIR)
    files = find_cifar10_files(tmp_path)
    assert list(files) == [*TRAIN_FILES, TEST_FILE]
    assert all(path.parent == tmp_path / BINARY_DIR for path in files.values())
    assert len(load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.5).test) == N_TEST


def test_truncated_record_names_the_file(tmp_path: Path) -> None:
    _write_set(tmp_path)
    path = tmp_path / TEST_FILE
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError) as info:
        read_cifar10_batch(path)
    message = str(info.value)
    assert str(path) in message and str(RECORD_BYTES) in message
    assert f"{N_TEST - 1} whole records and {RECORD_BYTES - 1} bytes of a truncated one" in message
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_cifar10_batch(path)


def test_label_above_9_is_an_error(tmp_path: Path) -> None:
    _write_set(tmp_path)
    path = tmp_path / TRAIN_FILES[2]
    raw = bytearray(path.read_bytes())
    raw[2 * RECORD_BYTES] = 10
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.5)
    message = str(info.value)
    assert str(path) in message and "record 2" in message and "label 10" in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    _write_set(tmp_path)
    (tmp_path / TRAIN_FILES[2]).unlink()
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.5)
    message = str(info.value)
    assert f"{tmp_path / TRAIN_FILES[2]} (not found)" in message
    assert f"{tmp_path / TRAIN_FILES[1]} (found)" in message
    assert f"{tmp_path / BINARY_DIR} (no such directory)" in message


class _Touch:
    """Unpickling this creates ``path``: a stand-in for the code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_python_version_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    folder = tmp_path / PYTHON_DIR
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        (folder / name).write_bytes(pickle.dumps(_Touch(marker)))
    for root in (tmp_path, folder):
        with pytest.raises(DataError) as info:
            load_dataset("cifar10", data_dir=root, val_fraction=0.5)
        message = str(info.value)
        assert "only the binary version of CIFAR-10 is read" in message
        assert "unpickling a file can execute arbitrary code" in message
        assert str(folder / "data_batch_1") in message
    assert not marker.exists()


def test_cli_exits_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_set(tmp_path / "data")
    path = tmp_path / "data" / TRAIN_FILES[0]
    path.write_bytes(path.read_bytes()[:-7])
    topology = tmp_path / "net.yaml"
    topology.write_text(_TOPOLOGY, encoding="utf-8")
    args = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "data")]
    assert main(["train", str(topology), *args, "--out", str(tmp_path / "a"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and "truncated" in err
    assert "Traceback" not in err
    path.unlink()
    assert main(["train", str(topology), *args, "--out", str(tmp_path / "b"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{path} (not found)" in err
    assert "Traceback" not in err


_TOPOLOGY = """\
name: tiny_cifar
input: {size: 3072, shape: [3, 32, 32], dataset: cifar10}
layers:
  - {name: h1, size: 8}
readout: {from: h1, size: 10}
edges:
  - {source: input, target: h1, lr: 0.02}
dynamics: {free_steps: 4, nudged_steps: 2}
training: {optimizer: sgd, lr: 0.1, batch_size: 10}
"""


def test_train_end_to_end_on_fake_batches(tmp_path: Path) -> None:
    """``topo-ep train --dataset cifar10`` on six fake batches with enough training records
    for the default 5000 validation examples; one epoch of 20 examples."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data" / BINARY_DIR
    data.mkdir(parents=True)
    for name, count in [(name, 1010) for name in TRAIN_FILES] + [(TEST_FILE, 30)]:
        records = rng.integers(0, 256, size=(count, RECORD_BYTES), dtype=np.uint8)
        records[:, 0] = np.arange(count) % 10
        (data / name).write_bytes(records.tobytes())
    topology = tmp_path / "net.yaml"
    topology.write_text(_TOPOLOGY, encoding="utf-8")
    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(topology),
            "--dataset",
            "cifar10",
            "--data-dir",
            str(tmp_path / "data"),
            "--epochs",
            "1",
            "--limit",
            "20",
            "--out",
            str(run),
            "--quiet",
        ]
    )
    assert code == 0
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert record["epoch"] == 1
    assert record["val_acc"] is not None and record["test_acc"] is not None
    assert main(["evaluate", str(run)]) == 0
