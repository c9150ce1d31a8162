"""Converged phases: the per-example criterion, the one decision per check and its ``agree``
hook, the nudged phase's contrast test, the fixed-step path at tolerance 0, the top-down sweep
and ``dynamics.nudged_schedule``."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from topo_ep.compiler import compile_topology
from topo_ep.engine import (
    contrast_criterion,
    convergence_decision,
    free_phase,
    relax,
    state_change,
    state_criterion,
    step,
)
from topo_ep.errors import TopologyError
from topo_ep.learn.ep import EPPhases, EquilibriumPropagation
from topo_ep.loader import loads_topology
from topo_ep.spec import TopologySpec
from topo_ep.validate import spec_from_dict

F64 = torch.float64


def chain(sizes=(6, 8, 8, 8, 5), gain: float = 0.05, classes: int = 3) -> TopologySpec:
    """input -> h1 -> ... -> hL with tied feedback of ``gain``."""
    n_in, *hidden = sizes
    names = [f"h{k + 1}" for k in range(len(hidden))]
    edges = [{"source": "input", "target": "h1"}]
    for a, b in zip(names[:-1], names[1:], strict=True):
        edges.append({"source": a, "target": b})
        edges.append({"source": b, "target": a, "kind": "feedback", "gain": gain})
    return spec_from_dict(
        {
            "name": "chain",
            "input": {"size": n_in},
            "layers": [{"name": n, "size": s} for n, s in zip(names, hidden, strict=True)],
            "readout": {"from": names[-1], "size": classes},
            "edges": edges,
        }
    )


def _batch(spec: TopologySpec, batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, spec.input.size, generator=gen, dtype=F64)
    y = torch.randint(0, spec.readout.size, (batch,), generator=gen)
    return x, y


def _strong_net(spec: TopologySpec):
    """Larger weights: slower, example-dependent convergence."""
    net = compile_topology(spec, seed=1, dtype=F64)
    with torch.no_grad():
        for weight in net.weights.values():
            weight.mul_(2.0)
    return net


# ---------------------------------------------------------------------------- the criterion
def test_state_change_is_the_per_example_max_norm():
    new = [
        torch.tensor([[0.5, -0.2], [0.1, 0.0]], dtype=F64),
        torch.tensor([[3.0], [0.3]], dtype=F64),
    ]
    old = [
        torch.tensor([[0.4, -0.2], [0.1, 0.05]], dtype=F64),
        torch.tensor([[2.0], [0.3]], dtype=F64),
    ]
    # example 0: largest change 1.0 (layer 2), largest |s| 3.0 -> relative 1/3
    # example 1: largest change 0.05, largest |s| 0.3 < 1 -> absolute 0.05
    assert torch.allclose(state_change(new, old), torch.tensor([1.0 / 3.0, 0.05], dtype=F64))
    assert float(state_criterion(new, old, 1e-2)) == pytest.approx(100.0 / 3.0)


def test_an_example_criterion_does_not_depend_on_the_other_examples():
    gen = torch.Generator().manual_seed(0)
    new = [torch.randn(6, 5, generator=gen, dtype=F64), torch.randn(6, 3, generator=gen, dtype=F64)]
    old = [a + 0.01 * torch.randn(a.shape, generator=gen, dtype=F64) for a in new]
    whole = state_change(new, old)
    for rows in (slice(0, 2), slice(2, 6), [5, 0, 3]):
        part = state_change([a[rows] for a in new], [a[rows] for a in old])
        assert torch.equal(part, whole[rows])
    free = [a - 0.1 for a in old]
    criterion = contrast_criterion(free)
    halves = [
        contrast_criterion([a[rows] for a in free])(
            [a[rows] for a in new], [a[rows] for a in old], 1e-3
        )
        for rows in (slice(0, 3), slice(3, 6))
    ]
    assert float(criterion(new, old, 1e-3)) == pytest.approx(max(float(h) for h in halves))


def test_contrast_criterion_is_relative_to_each_layer_contrast():
    free = [torch.zeros(1, 4, dtype=F64), torch.zeros(1, 4, dtype=F64)]
    # layer 1: contrast of norm 2e-4 moving by 1e-8 (relative 5e-5); layer 2: contrast 0.5,
    # moving by 1e-8 (relative 2e-8). State change 1e-8 everywhere.
    old = [torch.full((1, 4), 1e-4, dtype=F64), torch.full((1, 4), 0.25, dtype=F64)]
    new = [a + 0.5e-8 for a in old]
    value = float(contrast_criterion(free)(new, old, 1e-4))
    # layer 1: ||change|| = 2 * 0.5e-8, ||contrast|| = 2 * (1e-4 + 0.5e-8)
    assert value == pytest.approx(1e-8 / (1e-4 * 2 * (1e-4 + 0.5e-8)), rel=1e-9)
    assert 0.4 < value < 0.6  # within 1e-4 relative on the small layer: converged
    assert float(contrast_criterion(free)(new, old, 1e-5)) > 1.0  # not within 1e-5
    # the plain state test sees only the 1e-8 change and would stop either way
    assert float(state_criterion(new, old, 1e-5)) < 1e-2


def test_a_layer_with_a_rounding_level_contrast_counts_as_settled():
    free = [torch.full((2, 3), 0.5, dtype=F64), torch.full((2, 3), 0.5, dtype=F64)]
    new = [a.clone() for a in free]
    new[1] = new[1] + 0.01
    old = [a.clone() for a in new]
    old[0] = old[0] + 1e-17  # layer 0: contrast 0, change at rounding level
    assert float(contrast_criterion(free)(new, old, 1e-6)) <= 1.0


def test_convergence_decision_applies_agree_to_the_one_tensor():
    seen = []

    def agree(value: torch.Tensor) -> torch.Tensor:
        seen.append(value)
        return torch.maximum(value, torch.tensor(1.5, dtype=value.dtype))

    assert convergence_decision(torch.tensor(0.5)) == (True, 0.5)
    assert convergence_decision(torch.tensor(1.0)) == (True, 1.0)
    assert convergence_decision(torch.tensor(0.5), agree) == (False, 1.5)
    assert len(seen) == 1 and seen[0].dim() == 0


# ---------------------------------------------------------------------------- host syncs
def test_the_criterion_is_read_only_every_check_every_steps_and_after_the_last():
    spec = chain()
    net = _strong_net(spec)
    x, _ = _batch(spec, 5)
    drives = net.input_drive(x)
    for tolerance, check_every, max_steps in ((1e-300, 4, 30), (0.0, 4, 30), (1e-9, 3, 500)):
        calls = []

        def agree(value, calls=calls):
            calls.append(value)
            return value

        _, stats = free_phase(net, drives, "sweep", max_steps, tolerance, check_every, agree=agree)
        if tolerance == 0.0:
            assert stats.steps == max_steps and len(calls) == 1  # only after the last step
        else:
            expected = stats.steps // check_every + (stats.steps % check_every != 0)
            assert len(calls) == expected
            if not stats.converged:
                assert stats.steps == max_steps


# ---------------------------------------------------------------------------- data parallel
class _AllReduceMax:
    """What a data-parallel run's ``agree`` does, for shards run in threads: every shard hands
    in its 0-d tensor and gets the maximum over the shards."""

    def __init__(self, shards: int) -> None:
        self.barrier = threading.Barrier(shards, timeout=60)
        self.values: list[torch.Tensor | None] = [None] * shards

    def agree(self, rank: int):
        def reduce(value: torch.Tensor) -> torch.Tensor:
            self.values[rank] = value.detach().clone()
            self.barrier.wait()
            out = torch.stack([v for v in self.values if v is not None]).amax()
            self.barrier.wait()
            return out

        return reduce


def _sharded_phases(method, net, shards):
    reducer = _AllReduceMax(len(shards))
    results: list[EPPhases | BaseException | None] = [None] * len(shards)

    def run(rank: int) -> None:
        try:
            sharded = dataclasses.replace(method, agree=reducer.agree(rank))
            results[rank] = sharded.phases(net, *shards[rank])
        except BaseException as exc:  # reported by the main thread
            reducer.barrier.abort()
            results[rank] = exc

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(len(shards))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def test_shards_stop_where_the_whole_batch_stops_when_they_agree_on_the_max():
    spec = chain(gain=0.1)
    net = _strong_net(spec)
    x, y = _batch(spec, 8, seed=3)
    x[4:] *= 0.05  # the second shard's examples settle much faster
    method = EquilibriumPropagation(
        nudge=0.2,
        schedule="sweep",
        nudged_schedule="top-down-sweep",
        free_steps=500,
        nudged_steps=500,
        tolerance=1e-8,
        check_every=2,
    )
    whole = method.phases(net, x, y)
    shards = [(x[:4], y[:4]), (x[4:], y[4:])]
    alone = [method.phases(net, *shard) for shard in shards]
    # without agreement the fast shard stops earlier than the whole batch: the test has teeth
    assert alone[1].free_stats.steps < whole.free_stats.steps
    assert alone[1].nudged_stats[0].steps < whole.nudged_stats[0].steps
    assert alone[0].free_stats.steps == whole.free_stats.steps  # the slow shard holds the max
    agreed = _sharded_phases(method, net, shards)
    for rank, part in enumerate(agreed):
        assert part.free_stats.steps == whole.free_stats.steps, rank
        assert part.nudged_stats[0].steps == whole.nudged_stats[0].steps, rank
        assert part.free_stats.converged and part.nudged_stats[0].converged
        rows = slice(4 * rank, 4 * rank + 4)
        for a, b in zip(part.free + part.nudged[0], whole.free + whole.nudged[0], strict=True):
            assert torch.allclose(a, b[rows], rtol=0, atol=1e-13)


# ---------------------------------------------------------------------------- tolerance 0
@pytest.mark.parametrize("nudged_schedule", [None, "top-down-sweep"])
def test_tolerance_zero_is_the_fixed_step_path_bit_for_bit(nudged_schedule):
    spec = chain(gain=0.1)
    net = compile_topology(spec, seed=2, dtype=torch.float32)
    x, y = _batch(spec, 5)
    x = x.float()
    method = EquilibriumPropagation(
        schedule="synchronous",
        nudged_schedule=nudged_schedule,
        free_steps=9,
        nudged_steps=4,
        tolerance=0.0,
        check_every=2,
    )
    phases = method.phases(net, x, y)
    assert (phases.free_stats.steps, phases.nudged_stats[0].steps) == (9, 4)
    drives = net.input_drive(x)
    state = net.layout.zeros(5, dtype=torch.float32, device=x.device)
    with torch.no_grad():
        for _ in range(9):
            state = step(net, state, drives, net.schedule("synchronous"))
        free = state
        p = torch.softmax(net.readout_logits(free[net.top]), -1)
        target = torch.nn.functional.one_hot(y, 3).float()
        nudged_drives = list(drives)
        nudged_drives[net.top] = net.head.nudge(drives[net.top], target - p, method.nudge)
        for _ in range(4):
            state = step(net, state, nudged_drives, net.schedule(nudged_schedule or "synchronous"))
    for a, b in zip(phases.free + phases.nudged[0], free + state, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("schedule", "products"), [("sweep", 3), ("synchronous", 0)])
def test_the_first_free_step_skips_the_products_with_the_zero_start(schedule, products):
    """4-layer chain, 6 hidden-to-hidden blocks: from s = 0 the sweep's first step needs only
    the 3 forward products (the feedback comes from layers still at zero), the synchronous
    step none; the states are the same bits as with every product computed."""
    spec = chain(gain=0.1)
    net = compile_topology(spec, seed=4, dtype=torch.float32)
    x, _ = _batch(spec, 5)
    drives = net.input_drive(x.float())
    calls = []
    for k, incoming in enumerate(net.incoming):
        for source, block in incoming:
            for name in ("accumulate", "accumulate_"):  # out of place, or into h_k in place
                original = getattr(block, name)

                def counted(*args, original=original, edge=(source, k), **kwargs):
                    calls.append(edge)
                    return original(*args, **kwargs)

                setattr(block, name, counted)
    assert sum(len(incoming) for incoming in net.incoming) == 6
    with torch.no_grad():
        skipped, _ = free_phase(net, drives, schedule, 1)
        assert len(calls) == products
        calls.clear()
        start = net.layout.zeros(5, dtype=torch.float32, device=x.device)
        full = step(net, start, drives, net.schedule(schedule))
        assert len(calls) == 6
        calls.clear()
        later, _ = free_phase(net, drives, schedule, 3)
        assert len(calls) == products + 2 * 6  # only the first step skips
    for a, b in zip(skipped, full, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- the nudged test
def test_the_contrast_test_stops_later_and_closer_than_the_state_test_on_small_gains():
    """Chain of 5 layers, gain 0.01: the lowest layer's contrast is ~1e-8 of the top's. The
    state test stops as soon as the state barely moves; the contrast test waits until every
    layer's contrast has settled relative to its own size."""
    spec = chain(sizes=(6, 8, 8, 8, 8, 5), gain=0.01)
    net = _strong_net(spec)
    x, y = _batch(spec, 6, seed=1)
    method = EquilibriumPropagation(
        nudge=0.1, schedule="sweep", free_steps=2000, nudged_steps=2000, check_every=1
    )
    tolerance = 1e-6
    with torch.no_grad():
        inputs = net.prepare_input(x)
        drives = net.input_drive(inputs, prepared=True)
        free, free_stats = free_phase(net, drives, "sweep", 2000, 1e-15, 1)
        logits = net.readout_logits(free[net.top])
        target = torch.nn.functional.one_hot(y, 3).to(F64)
        nudged_drives = list(drives)
        nudged_drives[net.top] = net.head.nudge(
            drives[net.top], target - torch.softmax(logits, -1), method.nudge
        )

        def nudged(tol, criterion):
            state, stats = relax(
                net, free, nudged_drives, "sweep", 2000, tol, 1, criterion=criterion
            )
            phases = EPPhases(inputs, free, (state,), logits, free_stats, (stats,))
            return stats, method.updates(net, phases)

        _, converged = nudged(1e-15, contrast_criterion(free))
        state_stats, by_state = nudged(tolerance, state_criterion)
        contrast_stats, by_contrast = nudged(tolerance, contrast_criterion(free))
    assert contrast_stats.steps > state_stats.steps
    key = next(k for k in converged if str(k).startswith("input->h1"))

    def error(update):
        return float((update[key] - converged[key]).norm() / converged[key].norm())

    assert error(by_state) > 1e-3  # the state test leaves the lowest edge's update off
    assert error(by_contrast) < error(by_state) / 100


# ---------------------------------------------------------------------------- schedules, spec
def test_top_down_sweep_runs_the_layers_in_reverse_feedforward_order():
    net = compile_topology(chain(), dtype=F64)
    assert net.schedule("top-down-sweep") == ((3,), (2,), (1,), (0,))
    assert net.schedule("sweep") == ((0,), (1,), (2,), (3,))


def test_nudged_schedule_is_read_validated_and_written_back():
    text = (
        "name: c\ninput: {size: 4}\ngenerate: {family: chain, depth: 3, width: 5}\n"
        "dynamics: {schedule: sweep, nudged_schedule: top-down-sweep, tolerance: 1e-5}\n"
    )
    spec = loads_topology(text)
    assert spec.dynamics.nudged_schedule == "top-down-sweep"
    method = EquilibriumPropagation.from_spec(spec)
    assert (method.schedule, method.nudged_schedule) == ("sweep", "top-down-sweep")
    assert spec_from_dict(spec.to_dict()) == spec
    plain = loads_topology(text.replace(", nudged_schedule: top-down-sweep", ""))
    assert plain.dynamics.nudged_schedule is None
    assert "nudged_schedule" not in plain.to_dict()["dynamics"]
    with pytest.raises(TopologyError, match=r"dynamics\.nudged_schedule.*'down' is not allowed"):
        loads_topology(text.replace("nudged_schedule: top-down-sweep", "nudged_schedule: down"))


def test_nudged_tolerance_is_read_validated_and_written_back():
    text = (
        "name: c\ninput: {size: 4}\ngenerate: {family: chain, depth: 3, width: 5}\n"
        "dynamics: {schedule: sweep, tolerance: 1e-6, nudged_tolerance: 1e-3}\n"
    )
    spec = loads_topology(text)
    assert spec.dynamics.nudged_tolerance == 1e-3
    method = EquilibriumPropagation.from_spec(spec)
    assert (method.tolerance, method.nudged_phase_tolerance) == (1e-6, 1e-3)
    assert spec_from_dict(spec.to_dict()) == spec
    plain = loads_topology(text.replace(", nudged_tolerance: 1e-3", ""))
    assert plain.dynamics.nudged_tolerance is None
    assert EquilibriumPropagation.from_spec(plain).nudged_phase_tolerance == 1e-6
    assert "nudged_tolerance" not in plain.to_dict()["dynamics"]
    explicit = loads_topology(text.replace("nudged_tolerance: 1e-3", "nudged_tolerance: null"))
    assert explicit == plain  # null means "as the free phase", as an absent key does
    with pytest.raises(TopologyError, match=r"dynamics\.nudged_tolerance"):
        loads_topology(text.replace("nudged_tolerance: 1e-3", "nudged_tolerance: -1"))


def test_the_nudged_phase_runs_at_its_own_tolerance():
    spec = chain(gain=0.1)
    net = _strong_net(spec)
    x, y = _batch(spec, 6, seed=2)
    tight = EquilibriumPropagation(
        nudge=0.2, schedule="sweep", free_steps=500, nudged_steps=500, tolerance=1e-9
    )
    loose = dataclasses.replace(tight, nudged_tolerance=1e-3)
    a, b = tight.estimate(net, x, y), loose.estimate(net, x, y)
    assert a.result.free_steps == b.result.free_steps
    assert b.result.nudged_steps < a.result.nudged_steps
    assert a.result.converged and b.result.converged
    # a fixed free phase and a converged nudged phase: converged is judged on the nudged one
    mixed = dataclasses.replace(tight, tolerance=0.0, free_steps=60, nudged_tolerance=1e-6)
    result = mixed.estimate(net, x, y).result
    assert result.free_steps == 60 and result.nudged_steps < 500 and result.converged
    fixed = dataclasses.replace(tight, tolerance=0.0, free_steps=60, nudged_steps=7)
    result = fixed.estimate(net, x, y).result
    assert (result.free_steps, result.nudged_steps, result.converged) == (60, 7, False)
