"""Data-parallel training (:mod:`topo_ep.distributed`): the ranks of a torchrun launch train
the same network as one process with the same global batch.

The launches run ``python -m torch.distributed.run`` with gloo on the CPU, on a free port
(``--standalone``, or a port the test reserves for two "nodes" on localhost), with 2 ranks of
one thread. Weights are compared in float64 after 3 optimizer steps on digits, where one batch
is split unequally (8 and 7 examples) and the last batch has one example, so that rank 1 relaxes
a placeholder of weight 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tests import hostile
from topo_ep.checkpoint import load_checkpoint
from topo_ep.compiler import compile_topology
from topo_ep.data import load_dataset
from topo_ep.distributed import (
    DataParallel,
    backend_for,
    process_group,
    rank_device,
    shard_range,
    with_agreement,
)
from topo_ep.errors import TopoEpError
from topo_ep.learn import make_method
from topo_ep.loader import load_topology
from topo_ep.train import RunSettings, Trainer

#: 31 examples in batches of 15: two batches split 8 / 7 over 2 ranks, then one of 1 example.
LIMIT, BATCH = 31, 15
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _topology(directory: Path, tolerance: str = "0") -> Path:
    text = hostile.TINY_TOPOLOGY.replace("tolerance: 1e-4", f"tolerance: {tolerance}")
    return hostile.write(
        directory / "tiny.yaml", text.replace("batch_size: 10", f"batch_size: {BATCH}")
    )


def _train_args(topology: Path, out: Path, method: str, epochs: int, *extra: str) -> list[str]:
    return [
        "-m",
        "topo_ep",
        "train",
        str(topology),
        "--method",
        method,
        "--epochs",
        str(epochs),
        "--limit",
        str(LIMIT),
        "--dtype",
        "float64",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


def _torchrun(launch: list[str], train: list[str], env: dict[str, str] | None = None):
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *launch, *train],
        cwd=hostile.REPO,
        env={**os.environ, **ENV, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 180.0) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"exit {process.returncode}\n{out}\n{err}"
    return out


def _two_ranks(topology: Path, out: Path, method: str, epochs: int = 1, *extra: str) -> str:
    launch = ["--standalone", "--nproc-per-node", "2"]
    return _finish(_torchrun(launch, _train_args(topology, out, method, epochs, *extra)))


def _single_process(topology: Path, method: str, epochs: int = 1) -> Trainer:
    spec = load_topology(topology)
    data = load_dataset("digits", None, seed=0, limit=LIMIT)
    settings = RunSettings(method=method, epochs=epochs, device="cpu", dtype="float64", limit=LIMIT)
    trainer = Trainer(spec, data, settings, progress=False, log=lambda _: None)
    trainer.run()
    assert trainer.steps_taken == 3 * epochs
    return trainer


def _assert_same_metrics(found: dict, expected: dict) -> None:
    """Loss, accuracies (train, validation, test: sharded evaluation) and steps per phase."""
    assert found["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-12)
    for key in ("train_acc", "val_acc", "test_acc", "free_steps", "nudged_steps"):
        assert found[key] == expected[key], key


def _assert_close(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    assert found.keys() == expected.keys()
    worst = 0.0
    for key, tensor in expected.items():
        if tensor.is_floating_point():
            worst = max(worst, float((found[key] - tensor).abs().max()))
        else:
            assert torch.equal(found[key], tensor), key
    assert worst <= 1e-12, f"largest weight difference {worst:.3g}"
    return worst


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ------------------------------------------------------------------------------ in-process units
@pytest.mark.parametrize("batch", [1, 2, 7, 15, 16])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_the_shards_cover_every_row_once_and_differ_in_size_by_at_most_one(batch, world):
    ranges = [shard_range(batch, rank, world) for rank in range(world)]
    rows = [i for start, stop in ranges for i in range(start, stop)]
    assert rows == list(range(batch))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_an_empty_shard_relaxes_a_placeholder_of_weight_zero():
    x, y = torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 2])
    ranks = [DataParallel(rank, 4, rank, "gloo") for rank in range(4)]
    shards = [r.shard(x, y) for r in ranks]
    assert [s.size for s in shards] == [1, 1, 1, 0]
    assert [s.weight for s in shards] == [1 / 3, 1 / 3, 1 / 3, 0.0]
    assert torch.equal(shards[3].x, x[:1])


@pytest.mark.parametrize("method", ["ep", "bp", "bptt", "implicit"])
def test_the_weighted_sum_of_shard_gradients_is_the_batch_gradient(tmp_path, method):
    """What the all-reduce computes, done by hand: every learner's .grad is a mean over its
    batch, so sum_r (n_r / B) g_r over unequal shards is the gradient of the whole batch."""
    spec = load_topology(_topology(tmp_path))
    net = compile_topology(spec, seed=3, dtype=torch.float64)
    learner = make_method(method, spec)
    data = load_dataset("digits", None, seed=0, limit=LIMIT)
    x, y = data.train.x[:BATCH].double(), data.train.y[:BATCH]
    params = list(net.parameters())
    learner.gradients(net, x, y)
    whole = [p.grad.clone() for p in params]
    combined = [torch.zeros_like(p) for p in params]
    for rank in range(2):
        shard = DataParallel(rank, 2, rank, "gloo").shard(x, y)
        learner.gradients(net, shard.x, shard.y)
        for total, p in zip(combined, params, strict=True):
            total += shard.weight * p.grad
    for a, b in zip(combined, whole, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-14)
    assert any(float(g.abs().max()) > 1e-6 for g in whole)


def test_a_single_process_is_unchanged_and_agrees_with_nothing(tmp_path):
    single = DataParallel.single()
    assert single.is_main and not single.distributed and single.agreement is None
    x, y = torch.ones(3, 2), torch.zeros(3, dtype=torch.long)
    shard = single.shard(x, y)
    assert shard.x is x and shard.size == 3 and shard.weight == 1.0
    value = torch.tensor(0.5)
    assert single.agree(value) is value
    method = make_method("bp", load_topology(_topology(tmp_path)))
    assert with_agreement(method, None) is method


def test_the_backend_follows_the_device_unless_asked_for():
    assert backend_for(torch.device("cpu"), "auto") == "gloo"
    assert backend_for(torch.device("cuda:1"), "auto") == "nccl"
    assert backend_for(torch.device("cuda:0"), "gloo") == "gloo"
    with pytest.raises(TopoEpError, match="nccl needs CUDA"):
        backend_for(torch.device("cpu"), "nccl")
    assert rank_device("auto", 3, cuda_available=True) == "cuda:3"
    assert rank_device("auto", 3, cuda_available=False) == "cpu"
    assert rank_device("cuda", 1, cuda_available=True) == "cuda:1"
    for name, message in [("cuda:0", "local rank"), ("cuda", "no CUDA"), ("tpu", "unknown")]:
        with pytest.raises(TopoEpError, match=message):
            rank_device(name, 0, cuda_available=False)


def test_without_torchrun_there_is_one_process_and_no_backend_to_choose(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with process_group("cpu", "auto") as parallel:
        assert parallel == DataParallel.single()
    with pytest.raises(TopoEpError, match="launched with torchrun"), process_group("cpu", "gloo"):
        pass


@dataclasses.dataclass(frozen=True)
class _StopsWithoutAgreeing:
    """A method that stops on a tolerance and has no ``agree`` field (a third-party learner)."""

    tolerance: float
    name: str = "third-party"


def test_a_method_that_cannot_agree_its_stop_is_warned_about(tmp_path):
    ranks = DataParallel(0, 2, 0, "gloo")
    with pytest.warns(RuntimeWarning, match="cannot agree the stop"):
        with_agreement(_StopsWithoutAgreeing(1e-4), ranks.agreement)
    spec = load_topology(_topology(tmp_path, tolerance="1e-4"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with_agreement(_StopsWithoutAgreeing(0.0), ranks.agreement)
        with_agreement(make_method("bp", spec), ranks.agreement)
        for name in ("ep", "implicit"):  # both agree their stops
            assert with_agreement(make_method(name, spec), ranks.agreement).agree is not None


# ------------------------------------------------------------------------------ torchrun launches
@pytest.mark.parametrize("method", ["ep", "bp", "bptt", "implicit"])
def test_two_ranks_train_the_weights_of_one_process(tmp_path, method):
    """3 Adam steps in float64; batches of 15 split 8 / 7, and a last batch of 1."""
    topology = _topology(tmp_path)
    out = tmp_path / "run"
    printed = _two_ranks(topology, out, method)
    assert "2 ranks (gloo" in printed and printed.count("epoch 1: loss") == 1  # rank 0 alone prints
    single = _single_process(topology, method)
    _assert_close(load_checkpoint(out)["model"], single.net.state_dict())
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    _assert_same_metrics(record, single.metrics[0])
    config = (out / "config.yaml").read_text()
    assert "data_parallel:\n  ranks: 2\n  backend: gloo" in config


def test_two_nodes_of_one_rank_on_localhost_train_the_weights_of_one_process(tmp_path):
    topology = _topology(tmp_path)
    out = tmp_path / "run"
    port = str(_free_port())
    nodes = [
        _torchrun(
            [
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--nproc-per-node",
                "1",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
            ],
            _train_args(topology, out, "ep", 1),
        )  # fmt: skip
        for node in (0, 1)
    ]
    printed = [_finish(process) for process in nodes]
    assert "2 ranks (gloo" in printed[0] and printed[1].strip() == ""
    _assert_close(load_checkpoint(out)["model"], _single_process(topology, "ep").net.state_dict())


@pytest.mark.slow
def test_a_rank_killed_after_epoch_1_then_resumed_ends_as_an_uninterrupted_run(tmp_path):
    """kill -9 of rank 0 once epoch 1 is committed ends the job with a message from rank 1;
    a --resume that rank 0 refuses (another seed) stops both ranks; --resume under the same
    launch ends bit-identical to an uninterrupted 2-rank run."""
    topology = _topology(tmp_path)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    _two_ranks(topology, whole, "ep", 2)

    flag = tmp_path / "paused"
    launch = ["--standalone", "--nproc-per-node", "2"]
    env = {"TOPO_EP_TEST_PAUSE": f"after-epoch@1={flag}"}
    process = _torchrun(launch, _train_args(topology, broken, "ep", 2), env)
    hostile.wait_for(flag, process)
    os.kill(int(flag.read_text()), signal.SIGKILL)  # rank 0, the writer
    _, err = process.communicate(timeout=180)
    assert process.returncode != 0
    assert "rank 1 of 2: lost contact with the other ranks" in err or (
        "rank 1: terminated (SIGTERM) (torchrun stops every rank" in err
    )
    assert load_checkpoint(broken)["epoch"] == 1
    assert len((broken / "metrics.jsonl").read_text().splitlines()) == 1

    refused = _torchrun(launch, _train_args(topology, broken, "ep", 2, "--resume", "--seed", "1"))
    _, err = refused.communicate(timeout=180)
    assert refused.returncode != 0
    assert "--seed: 0 in the checkpoint, 1 now" in err  # rank 0's refusal
    assert "rank 1: rank 0 stopped the run (CheckpointError" in err  # and rank 1's

    _two_ranks(topology, broken, "ep", 2, "--resume")
    a, b = load_checkpoint(whole), load_checkpoint(broken)
    assert a["epoch"] == b["epoch"] == 2
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)

    def without_seconds(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert without_seconds(whole) == without_seconds(broken)
    assert hostile.temp_files(broken) == []


def test_a_rank_stopped_by_torchrun_says_so(monkeypatch):
    import argparse

    from topo_ep.cli import _interrupted
    from topo_ep.interrupts import Terminated

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = argparse.Namespace(command="train", out="runs/x")
    said = _interrupted(args, Terminated())
    assert said.startswith("rank 1: terminated (SIGTERM) (torchrun stops every rank when one")
    assert "runs/x keeps the last finished epoch" in said and "--resume" in said
    assert "torchrun stops" not in _interrupted(args, KeyboardInterrupt())


@pytest.mark.parametrize("method", ["ep", "implicit"])
def test_two_ranks_stop_converged_phases_together_and_match_one_process(tmp_path, method):
    """At a tolerance each phase stops on the maximum over the batch of the per-example
    criterion; the ranks all-reduce it (MAX) at every check, so every rank stops at the step
    one process stops at, and the weights match it to 1e-12. Implicit differentiation agrees
    both its free phase and its adjoint iteration (per-example relative change). Without the
    agreement the ranks stop at their own steps: EP's weights were 6.3e-9 apart (check every 2
    steps), implicit's 3.9e-9 (check every step, as here)."""
    text = hostile.TINY_TOPOLOGY.replace("batch_size: 10", f"batch_size: {BATCH}").replace(
        "free_steps: 8, nudged_steps: 4, tolerance: 1e-4, check_every: 2",
        "free_steps: 60, nudged_steps: 30, tolerance: 1e-5, check_every: 1",
    )
    topology = hostile.write(tmp_path / "converging.yaml", text)
    out = tmp_path / "run"
    _two_ranks(topology, out, method)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["free_steps"] < 60  # stopped early
    if method == "ep":
        assert record["nudged_steps"] < 2 * 30
    single = _single_process(topology, method)
    _assert_close(load_checkpoint(out)["model"], single.net.state_dict())
    _assert_same_metrics(record, single.metrics[0])


def test_two_ranks_with_warm_starts_match_one_process(tmp_path):
    """With ``training.warm_start`` each rank stores the free states of its shards' examples
    and the ranks merge them after every epoch, so in epoch 2 every example starts from its own
    epoch-1 state whichever rank relaxes it (the shuffle moves examples between ranks): the
    weights and the warm starts of 2 epochs match one process to 1e-12 (a rank that kept only
    its own rows would start the examples it did not see from zero)."""
    text = hostile.TINY_TOPOLOGY.replace("batch_size: 10", f"batch_size: {BATCH}").replace(
        "free_steps: 8, nudged_steps: 4, tolerance: 1e-4",
        "free_steps: 60, nudged_steps: 30, tolerance: 1e-5",
    )
    text = text.replace("epochs: 2}", "epochs: 2, warm_start: true}")
    topology = hostile.write(tmp_path / "warm.yaml", text)
    out = tmp_path / "run"
    _two_ranks(topology, out, "ep", 2)
    payload = load_checkpoint(out)
    single = _single_process(topology, "ep", epochs=2)
    assert single.warm_starts is not None
    _assert_close(payload["model"], single.net.state_dict())
    _assert_close({"warm": payload["warm_states"]}, {"warm": single.warm_starts.states})
    for found, expected in zip(payload["metrics"], single.metrics, strict=True):
        _assert_same_metrics(found, expected)
