"""A topology declares the data it is written for (``input.dataset``); the commands use it
when no ``--dataset`` is given, and where the files are comes from --data-dir or $TOPO_EP_DATA,
never from the topology."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import mnist_dir
from topo_ep.cli import main
from topo_ep.errors import TopologyError
from topo_ep.graph_io import from_graph, to_graph
from topo_ep.loader import dump_topology, load_topology, loads_topology

TOPOLOGIES = Path(__file__).resolve().parents[1] / "topologies"
MNIST_NETS = ["fre_2x512", "fre_3x512", "chain_5x64", "chain_10x64", "res_10x64", "res_20x64"]


@pytest.mark.parametrize("name", [*MNIST_NETS, "agt_10x64"])
def test_every_shipped_mnist_topology_declares_its_dataset(name):
    spec = load_topology(TOPOLOGIES / f"{name}.yaml")
    assert spec.input.dataset == "mnist" and spec.input.size == 784
    assert load_topology(TOPOLOGIES / "quickstart.yaml").input.dataset == "digits"


def test_the_dataset_field_is_validated_and_round_trips():
    spec = load_topology(TOPOLOGIES / "res_10x64.yaml")
    assert loads_topology(dump_topology(spec)) == spec
    assert from_graph(to_graph(spec), dynamics=spec.to_dict()["dynamics"],
                      training=spec.to_dict()["training"]) == spec  # fmt: skip
    with pytest.raises(TopologyError, match="did you mean 'mnist'") as info:
        load_topology(TOPOLOGIES / "res_10x64.yaml", ["input.dataset=mnsit"])
    assert info.value.field == "input.dataset"


def test_train_uses_the_declared_dataset_and_names_where_to_put_its_files(tmp_path, capsys):
    empty = tmp_path / "no-data"
    empty.mkdir()
    argv = ["train", str(TOPOLOGIES / "res_10x64.yaml"), "--data-dir", str(empty)]
    assert main([*argv, "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mnist:") and "--data-dir or $TOPO_EP_DATA" in err


@pytest.mark.skipif(mnist_dir() is None, reason="MNIST IDX files not present (shared/data/mnist)")
def test_analyze_runs_a_shipped_mnist_topology_with_its_file_alone(tmp_path, monkeypatch, capsys):
    """`topo-ep analyze topologies/res_10x64.yaml` with no --dataset analysed digits (64
    features against the topology's 784) and failed; it now reads the MNIST it declares."""
    monkeypatch.setenv("TOPO_EP_DATA", str(mnist_dir()))
    out = tmp_path / "analysis"
    argv = ["analyze", str(TOPOLOGIES / "res_10x64.yaml"), "--out", str(out), "--batch", "4"]
    assert main([*argv, "--max-steps", "50", "--lyapunov-steps", "5"]) == 0
    report = (out / "report.md").read_text("utf-8")
    assert "mnist, first 4 examples of the test split" in report
