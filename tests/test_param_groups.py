"""Optimizer settings per edge, layer bias and readout: one parameter group per distinct
(lr, weight_decay), an SGD step that moves each tensor by its own rate, the schedule scaling
each group, exact resume, the round trips and ``topo-ep compile``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from topo_ep.checkpoint import load_checkpoint
from topo_ep.cli import main
from topo_ep.compiler import compile_topology
from topo_ep.data import load_dataset
from topo_ep.graph_io import from_graph, to_graph
from topo_ep.learn import make_method
from topo_ep.loader import dump_topology, loads_topology
from topo_ep.param_groups import make_optimizer, param_groups, schedule_factor, tensor_rate
from topo_ep.params import READOUT_BIAS, READOUT_WEIGHT, ParamKey
from topo_ep.testing import topologies
from topo_ep.train import RunSettings, Trainer
from topo_ep.validate import spec_from_dict

#: digits, 64-12-10-10, per-tensor rates: three edge/readout rates, one bias rate, one
#: weight decay. The readout and the first edge share nothing but the optimizer.
GROUPED = """\
name: grouped
input: {size: 64}
layers:
  - {name: h1, size: 12, bias: true, lr: 0.2}
  - {name: h2, size: 10}
readout: {from: h2, size: 10, bias: true, lr: 0.9}
edges:
  - {source: input, target: h1, lr: 0.015}
  - {source: h1, target: h2, lr: 0.035, weight_decay: 0.01}
  - {source: h2, target: h1, kind: feedback, gain: 0.1}
dynamics: {free_steps: 8, nudged_steps: 4}
training: {optimizer: OPTIMIZER, lr: 0.05, batch_size: 40, lr_schedule: SCHEDULE}
"""

EDGE1 = ParamKey("edge", "input->h1:forward", "h1")
EDGE2 = ParamKey("edge", "h1->h2:forward", "h2")
BIAS1 = ParamKey.bias("h1")
RATES = {EDGE1: 0.015, EDGE2: 0.035, BIAS1: 0.2, READOUT_WEIGHT: 0.9, READOUT_BIAS: 0.9}


def _spec(optimizer: str = "sgd", schedule: str = "constant", overrides: tuple[str, ...] = ()):
    text = GROUPED.replace("OPTIMIZER", optimizer).replace("SCHEDULE", schedule)
    return loads_topology(text, "grouped.yaml", overrides=overrides)


def test_each_tensor_takes_the_rate_of_its_owner() -> None:
    spec = _spec()
    for key, lr in RATES.items():
        rate = tensor_rate(spec, key)
        assert rate.lr == lr
        assert rate.weight_decay == (0.01 if key == EDGE2 else 0.0)
    assert tensor_rate(spec, EDGE2).owner == "edges[1]"
    assert tensor_rate(spec, BIAS1).owner == "layers[0]"
    plain = _spec(overrides=("edges.h1->h2.lr=0.05", "edges.h1->h2.weight_decay=0"))
    assert tensor_rate(plain, EDGE2).owner == "edges[1]"  # set there, equal to the default


def test_one_group_per_distinct_setting_in_registration_order() -> None:
    spec = _spec()
    net = compile_topology(spec, dtype=torch.float64)
    groups = param_groups(net)
    assert [(g.lr, g.weight_decay) for g in groups] == [
        (0.9, 0.0),
        (0.015, 0.0),
        (0.035, 0.01),
        (0.2, 0.0),
    ]
    assert [g.keys for g in groups] == [
        (READOUT_WEIGHT, READOUT_BIAS),
        (EDGE1,),
        (EDGE2,),
        (BIAS1,),
    ]
    order = [id(t) for g in groups for t in g.tensors]
    assert order == [id(p) for p in net.parameters()]
    # rates equal to another group's share its group
    same = _spec(overrides=("layers.h1.lr=0.015",))
    shared = param_groups(compile_topology(same))
    assert [g.keys for g in shared] == [(READOUT_WEIGHT, READOUT_BIAS), (EDGE1, BIAS1), (EDGE2,)]


def test_without_rates_one_group_in_parameter_order() -> None:
    """The optimizer of a topology that sets no rate is the single group it always was, so the
    optimizer states of earlier checkpoints still load."""
    text = (Path(__file__).resolve().parents[1] / "topologies" / "quickstart.yaml").read_text()
    spec = loads_topology(text, "quickstart.yaml")
    net = compile_topology(spec)
    optimizer = make_optimizer(net, spec)
    assert len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert [id(p) for p in group["params"]] == [id(p) for p in net.parameters()]
    assert (group["lr"], group["weight_decay"]) == (spec.training.lr, spec.training.weight_decay)


def test_a_parameter_without_a_key_is_refused() -> None:
    """Every nn.Parameter must be a learned tensor with a ParamKey: one the learners cannot
    name would get no gradient, so the optimizer refuses it instead of skipping it silently."""
    net = compile_topology(_spec())
    net.extra = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(RuntimeError, match="parameters without a ParamKey: extra"):
        param_groups(net)


def test_sgd_step_moves_each_tensor_by_its_own_rate() -> None:
    """One SGD step after an EP gradient, float64: each tensor moves by exactly
    -lr_group * grad (plus the weight decay of its group)."""
    spec = _spec()
    net = compile_topology(spec, seed=3, dtype=torch.float64)
    optimizer = make_optimizer(net, spec)
    data = load_dataset("digits", limit=40)
    x, y = data.train.x[:40].double(), data.train.y[:40]
    make_method("ep", spec).gradients(net, x, y)
    tensors = net.learned_tensors()
    before = {key: t.detach().clone() for key, t in tensors.items()}
    grads = {key: t.grad.detach().clone() for key, t in tensors.items()}
    optimizer.step()
    for key, tensor in tensors.items():
        lr, decay = RATES[key], (0.01 if key == EDGE2 else 0.0)
        grad = grads[key] + decay * before[key] if decay else grads[key]
        assert bool(grads[key].abs().max() > 0), key
        expected = before[key].add(grad, alpha=-lr)
        assert torch.equal(tensor.detach(), expected), key
        moved = tensor.detach() - before[key]
        mask = grad.abs() > 1e-8
        ratio = moved[mask] / grad[mask]
        torch.testing.assert_close(ratio, torch.full_like(ratio, -lr), rtol=1e-6, atol=0)


def _trainer(spec, epochs: int, out: Path | None, method: str = "ep") -> Trainer:
    settings = RunSettings(
        method=method, epochs=epochs, seed=0, device="cpu", dtype="float64", limit=80
    )
    dataset = load_dataset("digits", limit=80)
    return Trainer(spec, dataset, settings, out_dir=out, progress=False, log=lambda _: None)


def test_cosine_schedule_scales_each_group() -> None:
    spec = _spec(schedule="cosine")
    trainer = _trainer(spec, epochs=4, out=None, method="bp")
    bases = [group["lr"] for group in trainer.optimizer.param_groups]
    assert bases == [0.9, 0.015, 0.035, 0.2]
    for epoch in (1, 3):
        trainer.train_epoch(epoch)
        factor = 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / 4))
        assert schedule_factor(spec, epoch, 4) == factor
        rates = [group["lr"] for group in trainer.optimizer.param_groups]
        assert rates == [base * factor for base in bases]
    assert rates[0] != bases[0]  # epoch 3 of 4 is scaled


def test_resume_with_groups_is_bit_identical(tmp_path: Path) -> None:
    spec = _spec(optimizer="adam")
    full = tmp_path / "full"
    _trainer(spec, 2, full).run()
    resumed = tmp_path / "resumed"
    _trainer(spec, 1, resumed).run()
    trainer = _trainer(spec, 2, resumed)
    trainer.resume(resumed)
    assert trainer.start_epoch == 2
    trainer.run()
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    groups_a, groups_b = a["optimizer"]["param_groups"], b["optimizer"]["param_groups"]
    assert len(groups_a) == 4 and groups_a == groups_b
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(
                torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][index][name])
            )


def test_messages_name_the_group_rates() -> None:
    trainer = _trainer(_spec(), epochs=1, out=None)
    text = trainer._rates_text(0.5)
    for part in ("0.45 (readout, readout:bias)", "0.0075 (input->h1:forward)", "0.1 (bias:h1)"):
        assert part in text
    assert "training.lr" not in text


def test_rates_survive_yaml_and_networkx_round_trips() -> None:
    spec = _spec()
    again = loads_topology(dump_topology(spec), "again.yaml")
    assert again == spec
    plain = spec.to_dict()
    graph = to_graph(spec)
    assert graph.nodes["h1"]["lr"] == 0.2 and graph.nodes["readout"]["lr"] == 0.9
    assert "lr" not in graph.nodes["h2"]
    rebuilt = from_graph(graph, dynamics=plain["dynamics"], training=plain["training"])
    assert rebuilt == spec
    data = spec.to_dict()
    assert data["edges"][1]["lr"] == 0.035 and data["edges"][1]["weight_decay"] == 0.01
    assert "lr" not in data["edges"][2] and data["layers"][0]["lr"] == 0.2
    assert data["readout"]["lr"] == 0.9 and "weight_decay" not in data["readout"]


def test_compile_prints_the_groups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "grouped.yaml"
    path.write_text(GROUPED.replace("OPTIMIZER", "sgd").replace("SCHEDULE", "cosine"))
    assert main(["compile", str(path)]) == 0
    out = capsys.readouterr().out
    assert "optimizer sgd, 4 parameter groups (base learning rate, scaled by the schedule):" in out
    for line in (
        "  lr 0.9, weight_decay 0: readout, readout:bias",
        "  lr 0.015, weight_decay 0: input->h1:forward",
        "  lr 0.035, weight_decay 0.01: h1->h2:forward",
        "  lr 0.2, weight_decay 0: bias:h1",
    ):
        assert line + "\n" in out


#: A few rates, so that draws often share one and groups merge.
_RATES = st.sampled_from([None, 0.01, 0.035, 0.9])
_DECAYS = st.sampled_from([None, 0.0, 1e-5])


@st.composite
def _with_rates(draw: st.DrawFn, spec):
    """``spec`` with drawn ``lr`` / ``weight_decay`` on its learned edges, its biased layers
    and its readout."""

    def rated(item):
        return dataclasses.replace(item, lr=draw(_RATES), weight_decay=draw(_DECAYS))

    edges = tuple(rated(edge) if edge.learned and not edge.is_tied else edge for edge in spec.edges)
    layers = tuple(rated(layer) if layer.bias else layer for layer in spec.layers)
    return dataclasses.replace(spec, edges=edges, layers=layers, readout=rated(spec.readout))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies().flatmap(_with_rates))
def test_drawn_rates_round_trip_and_group_every_tensor_once(spec) -> None:
    plain = spec.to_dict()
    assert spec_from_dict(plain) == spec
    assert loads_topology(dump_topology(spec)) == spec
    graph = to_graph(spec)
    assert from_graph(graph, None, plain["dynamics"], plain["training"]) == spec
    net = compile_topology(spec, dtype=torch.float64)
    groups = param_groups(net)
    settings_seen = [(g.lr, g.weight_decay) for g in groups]
    assert len(set(settings_seen)) == len(groups), "one group per distinct setting"
    learned = net.learned_tensors()
    placed = {key: group for group in groups for key in group.keys}
    assert sorted(map(str, placed)) == sorted(map(str, learned))
    assert sum(len(g.keys) for g in groups) == len(learned)
    t = spec.training
    for key, group in placed.items():
        if key.is_readout:
            owner = spec.readout
        elif key.kind == "bias":
            owner = spec.layer(key.name)
        else:
            owner = next(edge for edge in spec.edges if edge.key == key.name)
        assert group.lr == (t.lr if owner.lr is None else owner.lr)
        decay = t.weight_decay if owner.weight_decay is None else owner.weight_decay
        assert group.weight_decay == decay
