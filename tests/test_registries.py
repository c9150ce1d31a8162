"""Learning methods and schedules are registered by name, and everything reads the registries:
the CLI's choices, the validator's allowed values, the factory and the documentation."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from topo_ep.cli import build_parser
from topo_ep.compiler import compile_topology
from topo_ep.engine import free_phase
from topo_ep.errors import TopologyError
from topo_ep.learn import METHODS, make_method
from topo_ep.learn.bp import FeedforwardBackprop
from topo_ep.loader import load_topology
from topo_ep.registry import Registry, UnknownNameError
from topo_ep.schedules import SCHEDULES

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "topologies" / "quickstart.yaml"


def test_registry_rejects_unknown_and_duplicate_names():
    registry: Registry[int] = Registry("thing")
    registry.register("one")(1)
    assert registry.get("one") == 1 and registry.names() == ("one",) and "one" in registry
    with pytest.raises(UnknownNameError, match="unknown thing 'onne'.*did you mean 'one'"):
        registry.get("onne")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("one")(2)


def test_the_shipped_entries_are_registered():
    assert set(METHODS.names()) == {"ep", "bp", "bptt", "implicit"}
    assert SCHEDULES.names() == ("synchronous", "sweep", "colour", "top-down-sweep")


def test_a_new_method_is_one_class_and_its_registration(monkeypatch):
    """Registered under a new name, a method is a CLI choice and the factory builds it."""

    @dataclasses.dataclass(frozen=True)
    class Halved(FeedforwardBackprop):
        name: str = "halved"

    monkeypatch.setitem(METHODS._entries, "halved", Halved)
    parser = build_parser()
    assert parser.parse_args(["train", "f.yaml", "--method", "halved"]).method == "halved"
    assert isinstance(make_method("halved", load_topology(QUICKSTART)), Halved)
    monkeypatch.delitem(METHODS._entries, "halved")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "f.yaml", "--method", "halved"])


def test_a_new_schedule_is_one_function_and_its_registration(monkeypatch):
    """Registered under a new name, a schedule is valid in YAML and on the command line, and
    the compiled network runs it."""

    def top_down(spec):
        return tuple((name,) for name in reversed(spec.layer_names))

    with pytest.raises(TopologyError, match="'top-down' is not allowed"):
        load_topology(QUICKSTART, ["dynamics.schedule=top-down"])
    monkeypatch.setitem(SCHEDULES._entries, "top-down", top_down)
    spec = load_topology(QUICKSTART, ["dynamics.schedule=top-down"])
    assert build_parser().parse_args(["analyze", "f.yaml", "--schedule", "top-down"]).schedule
    net = compile_topology(spec, dtype=torch.float64)
    assert net.schedule("top-down") == ((1,), (0,))
    x = torch.rand(3, 64, dtype=torch.float64)
    _, stats = free_phase(net, net.input_drive(x), "top-down", 4)
    assert stats.steps == 4


def test_schedules_are_built_once_per_network(monkeypatch):
    net = compile_topology(load_topology(QUICKSTART))
    calls = []

    def counted(spec):
        calls.append(spec.name)
        return (spec.layer_names,)

    monkeypatch.setitem(SCHEDULES._entries, "counted", counted)
    first = net.schedule("counted")
    assert net.schedule("counted") is first and calls == ["quickstart"]
    assert net.balance is net.balance and net.gain_factors is net.gain_factors


def test_the_docs_list_every_registered_name():
    schema = (REPO / "docs" / "topology-schema.md").read_text("utf-8")
    row = next(line for line in schema.splitlines() if line.startswith("| `schedule` |"))
    assert re.findall(r"`([a-z-]+)`", row.split("|")[2]) == list(SCHEDULES.names())
    readme = (REPO / "README.md").read_text("utf-8")
    train = next(line for line in readme.splitlines() if line.startswith("| `topo-ep train"))
    listed = re.search(r"--method ([a-z|\\]+)", train).group(1).replace("\\", "").split("|")
    assert sorted(listed) == sorted(METHODS.names())
