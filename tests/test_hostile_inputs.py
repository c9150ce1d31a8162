"""A corpus of hostile inputs: every one ends with a clear message, the right exit code and no
traceback.

Exit codes: 2 for an error in the user's input, 1 for a run that failed, 0 where the input is
odd but valid (the message then says what was done), 130 / 143 after SIGINT / SIGTERM.

:data:`CASES` runs the command line in-process (fast); the tests after it need processes
(signals, a lock held by another trainer) or a monkeypatch. The classes: ``yaml``, ``set``,
``data``, ``checkpoint``, ``out`` (output and run directories), ``cli`` (option values) and
``signal``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import hostile
from topo_ep import cli
from topo_ep.checkpoint import load_checkpoint
from topo_ep.data import read_idx_images, read_idx_labels
from topo_ep.errors import DataError, TopologyError
from topo_ep.rundir import RunLock
from topo_ep.yaml_source import parse_yaml

#: Options that keep a training run tiny.
QUICK = ["--limit", "20", "--epochs", "1", "--quiet", "--device", "cpu"]


@dataclass(frozen=True)
class Env:
    """What the module fixture prepared once: the tiny topology, a finished run and data."""

    root: Path
    topology: Path
    idx_topology: Path
    run: Path

    @property
    def checkpoint(self) -> Path:
        return self.run / "checkpoint.pt"


@dataclass(frozen=True)
class Case:
    """One hostile input.

    Parameters
    ----------
    name
        Test id.
    group
        Its class (see the module docstring).
    build
        Makes the files it needs in its own directory and returns the command-line arguments.
    code
        Expected exit code.
    words
        Substrings the message must contain (stderr; stdout too when ``code`` is 0).
    absent
        Substrings it must not contain.
    check
        Further assertions on (env, directory, stdout, stderr).
    lock
        A directory (relative to the case's) whose run lock is held while the command runs.
    """

    name: str
    group: str
    build: Callable[[Env, Path], list[str]]
    code: int
    words: tuple[str, ...]
    absent: tuple[str, ...] = ()
    check: Callable[[Env, Path, str, str], None] | None = None
    lock: str | None = None


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------ case builders
def _train(env: Env, d: Path, *extra: str, topology: Path | None = None) -> list[str]:
    topo = topology or env.topology
    return ["train", str(topo), *QUICK, "--out", str(d / "run"), *extra]


def _resume(env: Env, d: Path, *extra: str) -> list[str]:
    hostile.copy_run(env.run, d / "run")
    args = ["train", str(env.topology), "--limit", "20", "--quiet", "--device", "cpu"]
    return [*args, "--out", str(d / "run"), "--resume", "--epochs", "2", *extra]


def _yaml(text: str) -> Callable[[Env, Path], list[str]]:
    def build(env: Env, d: Path) -> list[str]:
        return ["validate", str(hostile.write(d / "t.yaml", text))]

    return build


def _tiny(old: str, new: str) -> Callable[[Env, Path], list[str]]:
    def build(env: Env, d: Path) -> list[str]:
        return ["validate", str(hostile.tiny_topology(d, (old, new)))]

    return build


def _fifo(env: Env, d: Path) -> list[str]:
    os.mkfifo(d / "pipe.yaml")
    return ["validate", str(d / "pipe.yaml")]


def _set(*overrides: str, command: str = "validate") -> Callable[[Env, Path], list[str]]:
    def build(env: Env, d: Path) -> list[str]:
        sets = [item for text in overrides for item in ("--set", text)]
        if command == "train":
            return _train(env, d, *sets)
        return [command, str(env.topology), *sets]

    return build


def _bp_lr(env: Env, d: Path) -> list[str]:
    sets = ["--set", "training.lr=3e38", "--set", "training.optimizer=sgd"]
    return ["train", str(env.topology), "--method", "bp", "--limit", "200", "--epochs", "2"] + [
        "--quiet",
        "--device",
        "cpu",
        "--out",
        str(d / "run"),
        *sets,
    ]


def _no_checkpoint_written(env: Env, d: Path, out: str, err: str) -> None:
    assert not (d / "run" / "checkpoint.pt").exists()
    assert hostile.temp_files(d / "run") == []


def _idx(corrupt: Callable[[dict[str, Path]], None], **kwargs: int) -> Callable:
    def build(env: Env, d: Path) -> list[str]:
        paths = hostile.idx_set(d / "data", **kwargs)
        corrupt(paths)
        data = ["--dataset", "mnist", "--data-dir", str(d / "data")]
        return _train(env, d, *data, topology=env.idx_topology)

    return build


def _replace_bytes(role: str, data: Callable[[bytes], bytes]) -> Callable[[dict], None]:
    def corrupt(paths: dict[str, Path]) -> None:
        paths[role].write_bytes(data(paths[role].read_bytes()))

    return corrupt


def _gzip_instead(role: str, data: Callable[[bytes], bytes]) -> Callable[[dict], None]:
    """Replace the raw file of ``role`` with a ``.gz`` file holding ``data(raw)``."""

    def corrupt(paths: dict[str, Path]) -> None:
        raw = paths[role].read_bytes()
        paths[role].unlink()
        paths[role].with_name(paths[role].name + ".gz").write_bytes(data(raw))

    return corrupt


def _sparse(role: str, header: bytes, size: int) -> Callable[[dict], None]:
    def corrupt(paths: dict[str, Path]) -> None:
        hostile.sparse_file(paths[role], header, size)

    return corrupt


def _fifo_file(role: str) -> Callable[[dict], None]:
    def corrupt(paths: dict[str, Path]) -> None:
        paths[role].unlink()
        os.mkfifo(paths[role])

    return corrupt


def _gzip_bytes(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


def _ckpt(change: Callable[[dict], object], command: str = "evaluate") -> Callable:
    def build(env: Env, d: Path) -> list[str]:
        if command == "resume":
            hostile.copy_run(env.run, d / "run")
            hostile.mutated_checkpoint(env.checkpoint, d / "run" / "checkpoint.pt", change)
            return _resume_existing(env, d)
        path = hostile.mutated_checkpoint(env.checkpoint, d / "checkpoint.pt", change)
        if command == "analyze":
            return ["analyze", str(env.topology), "--checkpoint", str(path), "--out", str(d / "a")]
        return ["evaluate", str(path), "--device", "cpu"]

    return build


def _resume_existing(env: Env, d: Path) -> list[str]:
    args = ["train", str(env.topology), "--limit", "20", "--quiet", "--device", "cpu"]
    return [*args, "--out", str(d / "run"), "--resume", "--epochs", "2"]


def _raw_checkpoint(data: bytes) -> Callable[[Env, Path], list[str]]:
    def build(env: Env, d: Path) -> list[str]:
        (d / "checkpoint.pt").write_bytes(data)
        return ["evaluate", str(d / "checkpoint.pt"), "--device", "cpu"]

    return build


def _set_key(key: str, value: object) -> Callable[[dict], None]:
    def change(payload: dict) -> None:
        payload[key] = value

    return change


def _unknown_method(name: str) -> Callable[[dict], None]:
    """A checkpoint whose method (and its settings' copy) no registered method carries."""

    def change(payload: dict) -> None:
        payload["method"] = name
        payload["settings"]["method"] = name

    return change


def _first_tensor(make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], None]:
    def change(payload: dict) -> None:
        name = next(iter(payload["model"]))
        payload["model"][name] = make(payload["model"][name])

    return change


def _nan_weights(t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(t, math.nan)


def _optimizer_state(payload: dict) -> None:
    payload["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)


def _optimizer_groups(payload: dict) -> None:
    payload["optimizer"]["param_groups"][0]["params"] = [0]


def _unsafe_pickle(env: Env, d: Path) -> list[str]:
    import argparse

    torch.save({"spec": argparse.Namespace(x=1)}, d / "checkpoint.pt")
    return ["evaluate", str(d / "checkpoint.pt"), "--device", "cpu"]


def _ckpt_dir(env: Env, d: Path) -> list[str]:
    (d / "run" / "checkpoint.pt").mkdir(parents=True)
    return ["evaluate", str(d / "run"), "--device", "cpu"]


def _out_file(env: Env, d: Path) -> list[str]:
    hostile.write(d / "file", "x")
    return ["train", str(env.topology), *QUICK, "--out", str(d / "file")]


def _out(path: str) -> Callable[[Env, Path], list[str]]:
    def build(env: Env, d: Path) -> list[str]:
        return ["train", str(env.topology), *QUICK, "--out", path]

    return build


def _checkpoint_is_dir(resume: bool) -> Callable[[Env, Path], list[str]]:
    def build(env: Env, d: Path) -> list[str]:
        (d / "run" / "checkpoint.pt").mkdir(parents=True)
        return _train(env, d, *(["--resume", "--epochs", "2"] if resume else []))

    return build


def _no_epoch_ran(env: Env, d: Path, out: str, err: str) -> None:
    assert "epoch 1:" not in out


def _nonempty(env: Env, d: Path) -> list[str]:
    hostile.copy_run(env.run, d / "run")
    return _train(env, d)


def _unchanged_run(env: Env, d: Path, out: str, err: str) -> None:
    for name in ("checkpoint.pt", "metrics.jsonl", "config.yaml"):
        assert (d / "run" / name).read_bytes() == (env.run / name).read_bytes(), name


def _overwrite(env: Env, d: Path) -> list[str]:
    hostile.copy_run(env.run, d / "run")
    return _train(env, d, "--overwrite")


def _moved_aside(env: Env, d: Path, out: str, err: str) -> None:
    old = [p for p in d.iterdir() if p.name.startswith("run.old-")]
    assert len(old) == 1 and str(old[0]) in out
    assert (old[0] / "checkpoint.pt").read_bytes() == env.checkpoint.read_bytes()
    assert load_checkpoint(d / "run")["epoch"] == 1


def _overwrite_foreign(env: Env, d: Path) -> list[str]:
    hostile.copy_run(env.run, d / "run")
    hostile.write(d / "run" / "notes.txt", "mine")
    return _train(env, d, "--overwrite")


def _resume_empty(env: Env, d: Path) -> list[str]:
    (d / "run").mkdir()
    hostile.write(d / "run" / "config.yaml", "x: 1\n")
    return _train(env, d, "--resume", "--epochs", "2")


def _lock_held(env: Env, d: Path) -> list[str]:
    (d / "run").mkdir()
    return _train(env, d)


def _stale_temp(env: Env, d: Path) -> list[str]:
    hostile.copy_run(env.run, d / "run")
    hostile.write(d / "run" / ".checkpoint.pt.abc123.tmp", "half a checkpoint")
    return _resume_existing(env, d)


def _stale_removed(env: Env, d: Path, out: str, err: str) -> None:
    assert hostile.temp_files(d / "run") == []
    assert load_checkpoint(d / "run")["epoch"] == 2


def _metrics_ahead(env: Env, d: Path) -> list[str]:
    hostile.copy_run(env.run, d / "run")
    with (d / "run" / "metrics.jsonl").open("a") as handle:
        handle.write('{"epoch": 2, "half": tr')
    return _resume_existing(env, d)


def _metrics_match(env: Env, d: Path, out: str, err: str) -> None:
    lines = (d / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records == load_checkpoint(d / "run")["metrics"]


def _resume_same(env: Env, d: Path) -> list[str]:
    hostile.copy_run(env.run, d / "run")
    args = ["train", str(env.topology), *QUICK, "--out", str(d / "run"), "--resume"]
    return args


def _empty_test_split(env: Env, d: Path) -> list[str]:
    hostile.idx_set(d / "data", n_train=5010, n_test=0)
    data = ["--dataset", "mnist", "--data-dir", str(d / "data")]
    return _train(env, d, *data, topology=env.idx_topology)


def _test_acc_null(env: Env, d: Path, out: str, err: str) -> None:
    record = json.loads((d / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["test_acc"] is None and record["val_acc"] is not None


def _evaluate_empty_test(env: Env, d: Path) -> list[str]:
    assert cli.main(_empty_test_split(env, d)) == 0
    return ["evaluate", str(d / "run"), "--device", "cpu"]


def _resume_fewer(env: Env, d: Path) -> list[str]:
    assert cli.main(_resume(env, d)) == 0  # the run now holds 2 epochs
    return [*_resume_existing(env, d)[:-2], "--epochs", "1"]


def _sweep_out_file(env: Env, d: Path) -> list[str]:
    hostile.write(d / "file", "x")
    values = ["--set-values", "feedback_gain=0.1"]
    return ["sweep", str(env.topology), *values, "--out", str(d / "file")]


def _analyze_out_file(env: Env, d: Path) -> list[str]:
    hostile.write(d / "file", "x")
    return ["analyze", str(env.topology), "--out", str(d / "file")]


def _cli(*args: str) -> Callable[[Env, Path], list[str]]:
    def build(env: Env, d: Path) -> list[str]:
        return [
            part.replace("TOPO", str(env.topology)).replace("OUT", str(d / "o")) for part in args
        ]

    return build


SEED_MAX = str(2**63 - 1)
GZ_BOMB_HEADER = hostile.idx_header(hostile.IMAGES_MAGIC, (100_000_000, 2, 2))

CASES = [
    # ---------------------------------------------------------------------------------- yaml
    Case("octal-size", "yaml", _tiny("size: 8}", "size: 010}"), 2, ("leading zero", "octal")),
    Case("base60-size", "yaml", _tiny("size: 8}", "size: 1:04}"), 2, ("base-60", "layers[0].size")),
    Case("base60-float", "yaml", _tiny("lr: 2e-3", "lr: 1:30.5"), 2, ("base-60", "training.lr")),
    Case("fifo-topology", "yaml", _fifo, 2, ("FIFO", "not a regular file")),
    Case("device-topology", "yaml", lambda e, d: ["validate", "/dev/zero"], 2, ("a device",)),
    Case("directory-topology", "yaml", lambda e, d: ["validate", str(d)], 2, ("a directory",)),
    Case("empty-topology", "yaml", _yaml(""), 2, ("[type]",)),
    Case("binary-topology", "yaml", _yaml("name: x\n\x00\x01\x02"), 2, ("NUL",)),
    Case("python-tag", "yaml", _yaml("name: !!python/object:os.system x\n"), 2, ("tag",)),
    Case(
        "alias-bomb",
        "yaml",
        _yaml(
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"a{i}: &a{i} [{', '.join([f'*a{i - 1}' if i > 1 else '*a'] * 10)}]\n"
                for i in range(1, 7)
            )
        ),
        2,
        ("aliases", "[alias-bomb]"),
    ),
    Case("duplicate-key", "yaml", _tiny("lr: 2e-3", "lr: 2e-3, lr: 1e-3"), 2, ("twice",)),
    Case("deep-nesting", "yaml", _yaml("a: " + "[" * 100 + "]" * 100 + "\n"), 2, ("nesting",)),
    # ----------------------------------------------------------------------------------- set
    Case("set-new-path", "set", _set("foo.bar=1"), 2, ("error: --set: foo",), ("tiny.yaml",)),
    Case("set-no-equals", "set", _set("training.lr"), 2, ("[override]", "PATH=VALUE")),
    Case("set-index", "set", _set("layers.9.size=3"), 2, ("out of range",)),
    Case("set-octal", "set", _set("layers.h1.size=010"), 2, ("leading zero", "--set")),
    Case("set-list-lr", "set", _set("training.lr=[1, 2]"), 2, ("training.lr", "[type]")),
    Case("set-nan-gain", "set", _set("feedback_gain=.nan"), 2, ("[gain]",)),
    Case(
        "set-lr-overflows-adam",
        "set",
        _set("training.lr=1e38", command="train"),
        1,
        ("run failed", "overflowed", "training.lr = 1e+38"),
        check=_no_checkpoint_written,
    ),
    Case(
        "set-lr-nan-weights-bp",
        "set",
        _bp_lr,
        1,
        ("run failed", "non-finite", "learning rate", "No checkpoint was written"),
        check=_no_checkpoint_written,
    ),
    Case(
        "set-lr-nan-weights-ep",
        "set",
        _set("training.lr=3e38", "training.optimizer=sgd", command="train"),
        1,
        ("run failed", "learning rate"),
        check=_no_checkpoint_written,
    ),
    # ---------------------------------------------------------------------------------- data
    Case(
        "idx-bad-magic",
        "data",
        _idx(_replace_bytes("train-images", lambda b: b"\x00\x00\x09\x01" + b[4:])),
        2,
        ("bad IDX magic number", "train-images"),
    ),
    Case(
        "idx-4d-images",
        "data",
        _idx(_replace_bytes("train-images", lambda b: b"\x00\x00\x08\x04" + b[4:])),
        2,
        ("bad IDX magic number",),
    ),
    Case(
        "idx-truncated",
        "data",
        _idx(_replace_bytes("t10k-images", lambda b: b[:-5])),
        2,
        ("truncated", "t10k-images"),
    ),
    Case(
        "idx-trailing-bytes",
        "data",
        _idx(_replace_bytes("train-labels", lambda b: b + b"\x01\x02")),
        2,
        ("trailing bytes",),
    ),
    Case(
        "idx-empty-file",
        "data",
        _idx(_replace_bytes("train-labels", lambda b: b"")),
        2,
        ("truncated",),
    ),
    Case(
        "idx-header-1e9-images",
        "data",
        _idx(
            _replace_bytes(
                "train-images", lambda b: hostile.idx_header(2051, (10**9, 2, 2)) + b[16:]
            )
        ),
        2,
        ("declares", "more than"),
    ),
    Case(
        "idx-header-1e8-images",
        "data",
        _idx(
            _replace_bytes(
                "train-images", lambda b: hostile.idx_header(2051, (10**8, 2, 2)) + b[16:]
            )
        ),
        2,
        ("truncated", "declares"),
    ),
    Case(
        "idx-gz-header-1e8-images",
        "data",
        _idx(_gzip_instead("train-images", lambda b: _gzip_bytes(GZ_BOMB_HEADER + b[16:]))),
        2,
        ("cannot hold",),
    ),
    Case(
        "idx-gz-corrupt",
        "data",
        _idx(_gzip_instead("train-labels", lambda b: b"\x1f\x8b\x08\x00garbage" * 3)),
        2,
        ("gzip",),
    ),
    Case(
        "idx-gz-truncated",
        "data",
        _idx(_gzip_instead("t10k-labels", lambda b: _gzip_bytes(b)[:-10])),
        2,
        ("t10k-labels",),
    ),
    Case(
        "idx-gz-trailing",
        "data",
        _idx(_gzip_instead("t10k-labels", lambda b: _gzip_bytes(b + bytes(10**6)))),
        2,
        ("trailing bytes",),
    ),
    Case(
        "idx-sparse-100gb-zeros",
        "data",
        _idx(_sparse("train-images", b"", 100 * 2**30)),
        2,
        ("bad IDX magic number 0",),
    ),
    Case(
        "idx-sparse-100gb-declared",
        "data",
        _idx(
            _sparse(
                "train-images",
                hostile.idx_header(2051, (100_000, 1000, 1000)),
                16 + 100_000 * 1000 * 1000,
            )
        ),
        2,
        ("more than",),
    ),
    Case(
        "idx-labels-out-of-range",
        "data",
        _idx(_replace_bytes("train-labels", lambda b: hostile.idx_bytes(2049, np.full(60, 11)))),
        2,
        ("out of range",),
    ),
    Case(
        "idx-count-mismatch",
        "data",
        _idx(_replace_bytes("train-labels", lambda b: hostile.idx_bytes(2049, np.zeros(59)))),
        2,
        ("59 labels",),
    ),
    Case("idx-label-fifo", "data", _idx(_fifo_file("train-labels")), 2, ("no directory holds",)),
    Case(
        "data-dir-missing",
        "data",
        lambda e, d: _train(
            e, d, "--dataset", "mnist", "--data-dir", str(d / "nope"), topology=e.idx_topology
        ),
        2,
        ("no directory holds",),
    ),
    Case("dataset-unknown", "data", lambda e, d: _train(e, d, "--dataset", "cifar"), 2, ("cifar",)),
    Case(
        "empty-test-split",
        "data",
        _empty_test_split,
        0,
        ("test split is empty", "test n/a"),
        ("test 0.0000", "test acc 0.0000"),
        check=_test_acc_null,
    ),
    Case("evaluate-empty-test-split", "data", _evaluate_empty_test, 0, ("test acc n/a",)),
    # ---------------------------------------------------------------------------- checkpoint
    Case(
        "ckpt-random-bytes",
        "checkpoint",
        _raw_checkpoint(bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8))),
        2,
        ("not a readable topo-ep checkpoint",),
        ("weights_only", "Weights only"),
    ),
    Case("ckpt-empty", "checkpoint", _raw_checkpoint(b""), 2, ("empty (0 bytes)",), ("()",)),
    Case(
        "ckpt-unsafe-pickle",
        "checkpoint",
        _unsafe_pickle,
        2,
        ("not a topo-ep checkpoint", "never loads a checkpoint unsafely"),
        ("weights_only=False",),
    ),
    Case("ckpt-list", "checkpoint", _ckpt(lambda p: [1, 2]), 2, ("not a mapping",)),
    Case("ckpt-epoch-str", "checkpoint", _ckpt(_set_key("epoch", "3")), 2, ("'epoch'", "str")),
    Case("ckpt-epoch-bool", "checkpoint", _ckpt(_set_key("epoch", True)), 2, ("'epoch'",)),
    Case("ckpt-epoch-zero", "checkpoint", _ckpt(_set_key("epoch", 0)), 2, ("'epoch'",)),
    Case("ckpt-settings-str", "checkpoint", _ckpt(_set_key("settings", "x")), 2, ("'settings'",)),
    Case("ckpt-model-str", "checkpoint", _ckpt(_set_key("model", "x")), 2, ("'model'",)),
    Case("ckpt-spec-str", "checkpoint", _ckpt(_set_key("spec", "x")), 2, ("'spec'",)),
    Case(
        "ckpt-method-mismatch",
        "checkpoint",
        _ckpt(_set_key("method", "sgdx")),
        2,
        ("'settings.method'", "'sgdx'"),
    ),
    Case(
        "ckpt-method-unknown",
        "checkpoint",
        _ckpt(_unknown_method("sgdx")),
        2,
        ("'method'", "unknown learning method 'sgdx'", "expected one of"),
    ),
    Case(
        "ckpt-missing-fields",
        "checkpoint",
        _ckpt(lambda p: {"epoch": 1}),
        2,
        ("missing field", "'spec'"),
    ),
    Case(
        "ckpt-dtype-unknown",
        "checkpoint",
        _ckpt(lambda p: p["settings"].update(dtype="float16")),
        2,
        ("settings.dtype",),
    ),
    Case(
        "ckpt-metrics-short",
        "checkpoint",
        _ckpt(_set_key("metrics", [])),
        2,
        ("'metrics'", "0 records"),
    ),
    Case(
        "ckpt-model-int-tensor",
        "checkpoint",
        _ckpt(_first_tensor(lambda t: t.to(torch.int64))),
        2,
        ("floating-point tensor",),
    ),
    Case(
        "ckpt-model-shape",
        "checkpoint",
        _ckpt(_first_tensor(lambda t: torch.zeros(3, 3))),
        2,
        ("do not fit",),
    ),
    Case("ckpt-nan-evaluate", "checkpoint", _ckpt(_first_tensor(_nan_weights)), 2, ("NaN",)),
    Case(
        "ckpt-nan-analyze",
        "checkpoint",
        _ckpt(_first_tensor(_nan_weights), command="analyze"),
        2,
        ("NaN", "diverged"),
        ("feedback gain",),
    ),
    Case(
        "ckpt-nan-resume",
        "checkpoint",
        _ckpt(_first_tensor(_nan_weights), command="resume"),
        2,
        ("NaN",),
    ),
    Case(
        "ckpt-model-shape-resume",
        "checkpoint",
        _ckpt(_first_tensor(lambda t: torch.zeros(3, 3)), command="resume"),
        2,
        ("weights do not fit",),
    ),
    Case(
        "ckpt-optimizer-state-resume",
        "checkpoint",
        _ckpt(_optimizer_state, command="resume"),
        2,
        ("optimizer state", "shape"),
    ),
    Case(
        "ckpt-optimizer-groups-resume",
        "checkpoint",
        _ckpt(_optimizer_groups, command="resume"),
        2,
        ("optimizer state does not fit",),
    ),
    Case(
        "ckpt-optimizer-str-resume",
        "checkpoint",
        _ckpt(_set_key("optimizer", "adam"), command="resume"),
        2,
        ("'optimizer'",),
    ),
    Case("ckpt-is-directory", "checkpoint", _ckpt_dir, 2, ("is a directory",)),
    # ----------------------------------------------------------------------------------- out
    Case("out-is-file", "out", _out_file, 2, ("regular file", "not a directory")),
    Case("out-dev-null", "out", _out("/dev/null"), 2, ("a device", "not a directory")),
    Case("out-proc", "out", _out("/proc/foo"), 2, ("cannot create",)),
    Case(
        "out-under-file",
        "out",
        lambda e, d: _out_file(e, d)[:-1] + [str(d / "file" / "x")],
        2,
        ("cannot",),
    ),
    Case("analyze-out-file", "out", _analyze_out_file, 2, ("--out", "not a directory")),
    Case("sweep-out-file", "out", _sweep_out_file, 2, ("--out", "not a directory")),
    Case(
        "out-checkpoint-is-dir",
        "out",
        _checkpoint_is_dir(resume=False),
        2,
        ("not empty", "checkpoint.pt"),
        check=_no_epoch_ran,
    ),
    Case(
        "out-checkpoint-is-dir-resume",
        "out",
        _checkpoint_is_dir(resume=True),
        2,
        ("checkpoint.pt is a directory",),
        check=_no_epoch_ran,
    ),
    Case(
        "out-not-empty",
        "out",
        _nonempty,
        2,
        ("not empty", "--resume", "--overwrite"),
        check=_unchanged_run,
    ),
    Case("out-overwrite", "out", _overwrite, 0, ("moved the previous run",), check=_moved_aside),
    Case("out-overwrite-foreign", "out", _overwrite_foreign, 2, ("notes.txt", "does not write")),
    Case(
        "resume-no-directory",
        "out",
        lambda e, d: _train(e, d, "--resume", "--epochs", "2"),
        2,
        ("no run directory",),
    ),
    Case("resume-no-checkpoint", "out", _resume_empty, 2, ("no checkpoint.pt",)),
    Case(
        "resume-and-overwrite",
        "out",
        lambda e, d: _train(e, d, "--resume", "--overwrite"),
        2,
        ("not allowed with",),
    ),
    Case("resume-seed", "out", lambda e, d: _resume(e, d, "--seed", "1"), 2, ("--seed: 0",)),
    Case(
        "resume-dtype-limit-method",
        "out",
        lambda e, d: _resume(e, d, "--dtype", "float64", "--limit", "30", "--method", "bp"),
        2,
        ("--dtype", "--limit: 20", "--method: 'ep'"),
        check=_unchanged_run,
    ),
    Case(
        "resume-topology",
        "out",
        lambda e, d: _resume(e, d, "--set", "training.lr=1e-3"),
        2,
        ("topology training.lr: 0.002",),
    ),
    Case("resume-fewer-epochs", "out", _resume_fewer, 2, ("already holds 2 epochs",)),
    Case("resume-more-epochs", "out", _stale_temp, 0, ("epoch 2:",), check=_stale_removed),
    Case("resume-metrics-ahead", "out", _metrics_ahead, 0, ("epoch 2:",), check=_metrics_match),
    Case(
        "resume-same-epochs",
        "out",
        _resume_same,
        0,
        ("nothing to train",),
        check=_unchanged_run,
    ),
    Case("out-locked", "out", _lock_held, 2, ("in use by another", "pid"), lock="run"),
    # ----------------------------------------------------------------------------------- cli
    Case(
        "seed-max-compile", "cli", _cli("compile", "TOPO", "--seed", SEED_MAX), 0, ("parameters",)
    ),
    Case("seed-max-train", "cli", lambda e, d: _train(e, d, "--seed", SEED_MAX), 0, ("epoch 1:",)),
    Case("seed-2**63", "cli", _cli("compile", "TOPO", "--seed", str(2**63)), 2, ("--seed",)),
    Case("seed-negative", "cli", lambda e, d: _train(e, d, "--seed", "-1"), 2, ("--seed", "'-1'")),
    Case("seed-text", "cli", _cli("compile", "TOPO", "--seed", "x"), 2, ("expected an integer",)),
    Case("epochs-negative", "cli", _cli("train", "TOPO", "--epochs", "-1"), 2, ("--epochs",)),
    Case("epochs-zero", "cli", _cli("train", "TOPO", "--epochs", "0"), 2, ("--epochs",)),
    Case("limit-zero", "cli", _cli("train", "TOPO", "--limit", "0"), 2, ("--limit",)),
    Case("track-flow-negative", "cli", _cli("train", "TOPO", "--track-flow", "-1"), 2, (">= 0",)),
    Case("analyze-batch-zero", "cli", _cli("analyze", "TOPO", "--batch", "0"), 2, ("--batch",)),
    Case(
        "analyze-schedule-bogus",
        "cli",
        _cli("analyze", "TOPO", "--schedule", "bogus", "--out", "OUT"),
        2,
        ("--schedule: invalid choice: 'bogus'", "sweep"),
    ),
    Case(
        "sweep-schedule-bogus",
        "cli",
        _cli("sweep", "TOPO", "--set-values", "feedback_gain=0.1", "--schedule", "bogus"),
        2,
        ("--schedule: invalid choice: 'bogus'", "colour"),
    ),
    Case(
        "check-gradients-schedule-bogus",
        "cli",
        _cli("check-gradients", "TOPO", "--schedule", "bogus"),
        2,
        ("invalid choice: 'bogus'", "synchronous"),
    ),
    Case(
        "analyze-max-steps-zero",
        "cli",
        _cli("analyze", "TOPO", "--max-steps", "0"),
        2,
        ("--max-steps",),
    ),
    Case(
        "sweep-seeds-zero",
        "cli",
        _cli("sweep", "TOPO", "--set-values", "feedback_gain=0.1", "--seeds", "0"),
        2,
        ("--seeds",),
    ),
    Case(
        "check-gradients-nudge-nan",
        "cli",
        _cli("check-gradients", "TOPO", "--nudge", "nan"),
        2,
        ("nudge must be a positive number",),
    ),
    Case(
        "device-bogus", "cli", lambda e, d: _train(e, d, "--device", "tpu"), 2, ("unknown device",)
    ),
    Case("method-bogus", "cli", _cli("train", "TOPO", "--method", "sgd"), 2, ("invalid choice",)),
]


def test_corpus_size_and_classes() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
    groups = {case.group for case in CASES}
    assert {"yaml", "set", "data", "checkpoint", "out", "cli"} <= groups
    assert len(CASES) >= 60


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("hostile")
    topology = hostile.tiny_topology(root)
    idx_topology = hostile.write(root / "tiny4.yaml", hostile.TINY_IDX_TOPOLOGY)
    run = root / "run"
    assert cli.main(["train", str(topology), *QUICK, "--out", str(run)]) == 0
    return Env(root, topology, idx_topology, run)


@pytest.mark.filterwarnings("ignore:epoch 1. 1 of 1 batches:RuntimeWarning")
@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.group}-{case.name}")
def test_hostile_input(
    case: Case, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = case.build(env, tmp_path)
    capsys.readouterr()
    if case.lock is not None:
        with RunLock(tmp_path / case.lock):
            code, out, err = _run(argv, capsys)
    else:
        code, out, err = _run(argv, capsys)
    shown = err if case.code != 0 else out + err
    assert code == case.code, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err
    for word in case.words:
        assert word in shown, f"{word!r} not in:\n{shown}"
    for word in case.absent:
        assert word not in out + err, f"{word!r} in:\n{out + err}"
    if case.code == 2 and not err.startswith("usage:"):
        assert err.startswith("error: ") or "error:" in err
    if case.check is not None:
        case.check(env, tmp_path, out, err)


# -------------------------------------------------------------------- bounded work on data files
def _gzip_bomb(path: Path, header: bytes, mib: int) -> Path:
    """A multi-member gzip file of about 1 KiB per MiB that inflates to ``mib`` MiB."""
    import gzip

    member = gzip.compress(bytes(1 << 20), compresslevel=9)
    first = gzip.compress(header + bytes((1 << 20) - len(header)), compresslevel=9)
    path.write_bytes(first + member * (mib - 1))
    return path


@pytest.mark.parametrize(
    "dims, words",
    [
        ((2**29, 2, 2), "more than"),  # declares the whole 2 GiB: refused from the header
        ((1000, 2, 2), "trailing bytes"),  # declares 4000 bytes: refused after 4001
    ],
)
def test_gzip_bomb_is_refused_quickly_with_little_memory(
    tmp_path: Path, dims: tuple[int, ...], words: str
) -> None:
    bomb = _gzip_bomb(tmp_path / "train-images-idx3-ubyte.gz", hostile.idx_header(2051, dims), 2048)
    assert bomb.stat().st_size < 4 * 2**20  # a 2 MB file that inflates to 2 GiB
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DataError, match=words):
            read_idx_images(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 5.0
    assert peak < 8 * 2**20, f"peak {peak} bytes"


def test_sparse_100_gb_file_is_refused_without_reading(tmp_path: Path) -> None:
    path = hostile.sparse_file(
        tmp_path / "labels", hostile.idx_header(2049, (2**32 - 1,)), 100 * 2**30
    )
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="more than"):
            read_idx_labels(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_node_bound_message_says_nodes_not_alias(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10k explicit layers are not an alias bomb: the message names the node bound (lowered
    here, so that the test stays fast)."""
    import topo_ep.yaml_source as yaml_source

    monkeypatch.setattr(yaml_source, "MAX_NODES", 300)
    path = hostile.explicit_layers(tmp_path, 100)
    with pytest.raises(TopologyError) as info:
        parse_yaml(path.read_text(), str(path))
    assert info.value.kind == "absurd-number"
    assert "more than 300 YAML nodes" in str(info.value) and "alias" not in str(info.value)
    text = "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nb: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    text += "c: [" + ", ".join(["*a"] * 40) + "]\n"
    with pytest.raises(TopologyError) as info:
        parse_yaml(text, "bomb.yaml")
    assert info.value.kind == "alias-bomb" and "aliases" in str(info.value)


# ------------------------------------------------------------------------ top-level exit codes
@pytest.mark.parametrize(
    "error, code, words",
    [
        (MemoryError(), 1, "out of memory"),
        (OverflowError("int too large to convert to float"), 1, "overflowed"),
        (OSError(28, "No space left on device"), 1, "No space left on device"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
    ids=["memory", "overflow", "oserror", "keyboard"],
)
def test_top_level_handler_gives_no_traceback(
    error: BaseException,
    code: int,
    words: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fail(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "_cmd_validate", fail)
    assert cli.main(["validate", "x.yaml"]) == code
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


# ------------------------------------------------------------------- processes: signals, locks
def _paused_trainer(
    env: Env, out: Path, point: str, flag: Path, *extra: str, seconds: float = 60.0
) -> tuple[object, list[str]]:
    args = ["train", str(env.topology), "--limit", "20", "--epochs", "2", "--quiet"]
    args += ["--device", "cpu", "--out", str(out), *extra]
    environment = {"TOPO_EP_TEST_PAUSE": f"{point}={flag}"}
    environment["TOPO_EP_TEST_PAUSE_SECONDS"] = str(seconds)
    process = hostile.topo_ep(args, environment)
    hostile.wait_for(flag, process)
    return process, args


@pytest.mark.parametrize(
    "signum, code, words",
    [(signal.SIGINT, 130, "interrupted (Ctrl-C)"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
    ids=["sigint", "sigterm"],
)
def test_signal_mid_epoch_abandons_the_epoch(
    env: Env, tmp_path: Path, signum: int, code: int, words: str
) -> None:
    """Signal class: interrupted in epoch 2, the run keeps epoch 1 whole and no temp file."""
    out = tmp_path / "run"
    process, _ = _paused_trainer(env, out, "mid-epoch@2", tmp_path / "flag")
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert words in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert load_checkpoint(out)["epoch"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert hostile.temp_files(out) == []


def test_sigterm_during_commit_finishes_the_epoch_then_exits_143(env: Env, tmp_path: Path) -> None:
    """Signal class: SIGTERM between the checkpoint and its metrics line is held back until the
    epoch is committed whole."""
    out = tmp_path / "run"
    process, _ = _paused_trainer(env, out, "before-metrics@1", tmp_path / "flag", seconds=2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert load_checkpoint(out)["epoch"] == 1
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]
    assert hostile.temp_files(out) == []


def test_second_trainer_into_a_locked_run_exits_2(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Out class: a running trainer (another process) holds the lock; a second one is refused,
    and the first one's run is not disturbed."""
    out = tmp_path / "run"
    process, args = _paused_trainer(env, out, "mid-epoch@1", tmp_path / "flag")
    try:
        code, _, err = _run(args, capsys)
        assert code == 2 and "in use by another topo-ep training" in err
        assert f"pid {process.pid}" in err and "Traceback" not in err
    finally:
        process.kill()
        process.communicate(timeout=60)
    assert not (out / "checkpoint.pt").exists()
