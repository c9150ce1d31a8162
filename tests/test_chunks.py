"""Chunks of relaxation steps between convergence checks (:mod:`topo_ep.chunks`).

The chunked solve must take the same steps as single steps, bit for bit, and stop at the same
step with the same decision; the static-buffer chunks that a CUDA graph replays are run here
eagerly (``capture=False``), so their buffer handling is tested on the CPU; the captured graph
itself and ``torch.compile`` are tested where a CUDA device or a C++ compiler is present.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from tests.test_engine import chain
from topo_ep import validate
from topo_ep.chunks import EXECUTIONS, ChunkRunner, cpp_compiler_available
from topo_ep.compiler import compile_topology
from topo_ep.engine import chunk_length, relax
from topo_ep.errors import TopoEpError
from topo_ep.learn.ep import EquilibriumPropagation
from topo_ep.validate import spec_from_dict

F64 = torch.float64


def _setup(batch: int = 6, seed: int = 0, dtype=F64, device: str = "cpu"):
    spec = chain(sizes=(5, 9, 8, 7), gain=0.3)
    net = compile_topology(spec, seed=seed, dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 5, generator=gen, dtype=F64).to(device=device, dtype=dtype)
    y = torch.randint(0, 3, (batch,), generator=gen).to(device)
    return spec, net, x, y


def _relax(net, x, max_steps, tolerance, check_every, **options):
    drives = net.input_drive(x)
    start = net.layout.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    groups = net.schedule("sweep")
    with torch.no_grad():
        return relax(
            net,
            start,
            drives,
            groups,
            max_steps,
            tolerance,
            check_every,
            zero_start=True,
            **options,
        )


def _single_steps(*_args) -> bool:
    """An observer that never stops: it makes :func:`solve` take one step at a time."""
    return False


def _assert_same_bits(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert u.dtype == v.dtype and torch.equal(u, v)


def test_chunk_length_runs_to_the_next_check_or_the_limit():
    assert [chunk_length(t, 12, 5) for t in (0, 5, 10)] == [5, 5, 2]
    assert chunk_length(3, 12, 5) == 2
    assert chunk_length(0, 3, 5) == 3
    assert chunk_length(7, 8, 1) == 1


@pytest.mark.parametrize(
    ("max_steps", "tolerance", "check_every"),
    [(11, 0.0, 4), (60, 1e-9, 3), (60, 1e-3, 5), (7, 1e-9, 10), (9, 0.0, 1)],
)
def test_chunked_solve_equals_single_steps_bit_for_bit(max_steps, tolerance, check_every):
    _, net, x, _ = _setup()
    chunked, chunked_stats = _relax(net, x, max_steps, tolerance, check_every)
    single, single_stats = _relax(net, x, max_steps, tolerance, check_every, observe=_single_steps)
    _assert_same_bits(chunked, single)
    assert chunked_stats == single_stats
    if tolerance == 1e-3:  # a stop before the limit, at a check
        assert chunked_stats.converged and chunked_stats.steps < max_steps
        assert chunked_stats.steps % check_every == 0


@pytest.mark.parametrize(("tolerance", "check_every"), [(0.0, 4), (1e-9, 3), (1e-4, 5)])
def test_static_buffer_chunks_equal_single_steps(tolerance, check_every):
    """The chunks a CUDA graph replays (copy in, drives bound, clone out), run eagerly."""
    _, net, x, _ = _setup()
    runner = ChunkRunner("cuda-graph")
    source = functools.partial(runner.static_chunks, capture=False)
    static, static_stats = _relax(net, x, 13, tolerance, check_every, chunk_source=source)
    single, single_stats = _relax(net, x, 13, tolerance, check_every, observe=_single_steps)
    _assert_same_bits(static, single)
    assert static_stats == single_stats
    # a second phase of the same shapes reuses the chunks and gives the same bits again
    again, _ = _relax(net, x, 13, tolerance, check_every, chunk_source=source)
    _assert_same_bits(again, single)
    assert len(runner.graphs) == (1 if 13 % check_every == 0 else 2)


@pytest.mark.parametrize("nudging", ["one-sided", "symmetric"])
def test_ep_over_static_chunks_equals_eager_ep(nudging):
    """Free and nudged phases share the static chunks (one schedule, one shape): the free state
    the nudged phases start from and are judged against must not be overwritten by them."""
    spec, net, x, y = _setup()
    eager = EquilibriumPropagation(
        free_steps=30, nudged_steps=17, tolerance=1e-7, check_every=4, nudging=nudging
    )
    runner = ChunkRunner("cuda-graph")
    static = dataclasses.replace(
        eager, chunks=functools.partial(runner.static_chunks, capture=False)
    )
    expected = eager.estimate(net, x, y)
    for _ in range(2):  # the second batch rebinds the drives of every cached chunk
        got = static.estimate(net, x, y)
        assert got.grads.keys() == expected.grads.keys()
        for key, value in expected.grads.items():
            assert torch.equal(got.grads[key], value), key
        assert got.result == expected.result
        _assert_same_bits(got.phases.free, expected.phases.free)
    assert runner.graphs


def test_a_changed_gain_or_batch_shape_gets_new_chunks():
    _, net, x, _ = _setup()
    runner = ChunkRunner("cuda-graph")
    source = functools.partial(runner.static_chunks, capture=False)
    _relax(net, x, 8, 0.0, 4, chunk_source=source)
    _relax(net, x[:4], 8, 0.0, 4, chunk_source=source)
    assert len(runner.graphs) == 2
    feedback = next(b for b in net.blocks if getattr(b, "gain", 1.0) != 1.0)
    feedback.gain = feedback.gain * 0.5
    state, _ = _relax(net, x, 8, 0.0, 4, chunk_source=source)
    expected, _ = _relax(net, x, 8, 0.0, 4, observe=_single_steps)
    _assert_same_bits(state, expected)
    assert len(runner.graphs) == 3


def test_cuda_graph_off_cuda_runs_eagerly_with_one_warning():
    spec, net, x, y = _setup()
    eager = EquilibriumPropagation.from_spec(spec)
    graph_spec = dataclasses.replace(
        spec, dynamics=dataclasses.replace(spec.dynamics, execution="cuda-graph")
    )
    method = EquilibriumPropagation.from_spec(graph_spec)
    assert isinstance(method.chunks, ChunkRunner) and eager.chunks is None
    with pytest.warns(RuntimeWarning, match="cuda-graph needs a CUDA device") as caught:
        got = method.estimate(net, x, y)
        method.estimate(net, x, y)
    assert len(caught) == 1
    expected = eager.estimate(net, x, y)
    for key, value in expected.grads.items():
        assert torch.equal(got.grads[key], value)


def _declared(execution):
    data = chain().to_dict()
    data["dynamics"]["execution"] = execution
    return data


def test_execution_is_validated_and_round_trips():
    assert validate.EXECUTIONS == EXECUTIONS
    spec = spec_from_dict(_declared("cuda-graph"))
    assert spec.dynamics.execution == "cuda-graph"
    assert spec_from_dict(spec.to_dict()) == spec
    assert "execution" not in chain().to_dict()["dynamics"]  # the default is not written
    with pytest.raises(TopoEpError, match=r"dynamics\.execution.*'turbo'.*eager, cuda-graph"):
        spec_from_dict(_declared("turbo"))
    with pytest.raises(ValueError, match="not one of"):
        ChunkRunner("turbo")


def test_compile_without_a_cpp_compiler_says_so(monkeypatch):
    monkeypatch.setattr("topo_ep.chunks.cpp_compiler_available", lambda: False)
    _, net, x, _ = _setup()
    with pytest.raises(TopoEpError, match="needs a C\\+\\+ compiler"):
        _relax(net, x, 4, 0.0, 2, chunk_source=ChunkRunner("compile"))


@pytest.mark.slow
@pytest.mark.skipif(not cpp_compiler_available(), reason="torch.compile on CPU needs c++/g++")
def test_compiled_chunk_is_close_to_eager_and_stops_at_the_same_step():
    _, net, x, _ = _setup(batch=4)
    runner = ChunkRunner("compile")
    compiled, compiled_stats = _relax(net, x, 12, 1e-6, 3, chunk_source=runner)
    eager, eager_stats = _relax(net, x, 12, 1e-6, 3)
    assert compiled_stats.steps == eager_stats.steps
    assert compiled_stats.converged == eager_stats.converged
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("tolerance", [0.0, 1e-9])
def test_cuda_graph_replay_matches_eager_on_cuda(tolerance):
    spec, net, x, y = _setup(batch=64, device="cuda")
    runner = ChunkRunner("cuda-graph")
    captured, captured_stats = _relax(net, x, 23, tolerance, 5, chunk_source=runner)
    eager, eager_stats = _relax(net, x, 23, tolerance, 5)
    assert captured_stats.steps == eager_stats.steps
    for a, b in zip(captured, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    method = EquilibriumPropagation(free_steps=25, nudged_steps=12, tolerance=tolerance)
    graphed = dataclasses.replace(method, chunks=runner)
    expected = method.estimate(net, x, y)
    for _ in range(2):
        got = graphed.estimate(net, x, y)
        for key, value in expected.grads.items():
            torch.testing.assert_close(got.grads[key], value, rtol=1e-10, atol=1e-12)
        assert got.result.free_steps == expected.result.free_steps
