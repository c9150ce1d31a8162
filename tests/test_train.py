"""Training runs on digits: run directory contents, resume, determinism, evaluation,
atomic checkpoints and the dataset-size check.

The topology is quickstart.yaml shrunk with ``--set`` overrides (16 units per layer); runs use
``--limit 200`` and 2 epochs. Most runs are made once per module (fixture ``runs``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

import topo_ep.train as train_module
from topo_ep.checkpoint import load_checkpoint, save_atomic
from topo_ep.cli import main
from topo_ep.data import load_dataset
from topo_ep.evaluate import evaluate_checkpoint
from topo_ep.loader import loads_topology, save_topology
from topo_ep.spec import TopologySpec
from topo_ep.train import RunSettings, Trainer
from topo_ep.validate import spec_from_dict

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["layers.h1.size=16", "layers.h2.size=16", "training.batch_size=50"]
LIMIT = 200
METHODS = ("ep", "bp")
REQUIRED_KEYS = {
    "epoch",
    "train_loss",
    "train_acc",
    "val_acc",
    "test_acc",
    "seconds",
    "free_steps",
    "nudged_steps",
}


def _tiny_spec() -> TopologySpec:
    text = (REPO / "topologies" / "quickstart.yaml").read_text(encoding="utf-8")
    return loads_topology(text, "quickstart.yaml", overrides=OVERRIDES)


def _with_epochs(spec: TopologySpec, epochs: int) -> TopologySpec:
    return dataclasses.replace(spec, training=dataclasses.replace(spec.training, epochs=epochs))


def _train(topology: Path, out: Path, *extra: str) -> int:
    return main(
        ["train", str(topology), "--limit", str(LIMIT), "--quiet", "--out", str(out), *extra]
    )


def _metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _model(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint.pt")["model"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _trainer(spec, method: str, epochs: int, out: Path) -> Trainer:
    settings = RunSettings(
        method=method, epochs=epochs, seed=0, device="cpu", dataset="digits", limit=LIMIT
    )
    dataset = load_dataset("digits", seed=0, limit=LIMIT)
    return Trainer(spec, dataset, settings, out_dir=out, progress=False, log=lambda _: None)


@pytest.fixture(scope="module")
def topology(tmp_path_factory) -> tuple[Path, TopologySpec]:
    spec = _tiny_spec()
    path = tmp_path_factory.mktemp("topology") / "tiny.yaml"
    save_topology(spec, path)
    return path, spec


@pytest.fixture(scope="module")
def runs(topology, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Run directories keyed by (method, kind)."""
    path, spec = topology
    root = tmp_path_factory.mktemp("runs")
    out: dict[tuple[str, str], Path] = {}
    for method in METHODS:
        common = ["--epochs", "2", "--method", method]
        for kind, seed in (("full", "0"), ("again", "0"), ("other", "1")):
            run = root / f"{method}-{kind}"
            assert _train(path, run, *common, "--seed", seed) == 0
            out[(method, kind)] = run
        # interrupted after epoch 1, resumed to 2 (through the Trainer; the command-line
        # path is test_cli_resume_with_more_epochs)
        run = root / f"{method}-resumed"
        _trainer(_with_epochs(spec, 2), method, 1, run).run()
        assert len(_metrics(run)) == 1
        trainer = _trainer(_with_epochs(spec, 2), method, 2, run)
        trainer.resume(run)
        assert trainer.start_epoch == 2
        trainer.run()
        out[(method, "resumed")] = run
    return out


# ---------------------------------------------------------------------------- run directory
@pytest.mark.parametrize("method", METHODS)
def test_metrics_have_one_line_per_epoch_with_required_keys(runs, topology, method):
    _, spec = topology
    dynamics = spec.dynamics
    phases = 2 if spec.training.nudging == "symmetric" else 1
    records = _metrics(runs[(method, "full")])
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert record.keys() >= REQUIRED_KEYS
        for key in ("train_acc", "val_acc", "test_acc"):
            assert 0.0 <= record[key] <= 1.0, key
        assert record["train_loss"] > 0 and record["seconds"] >= 0
        if method == "ep":  # step limits per phase; symmetric nudging runs two nudged phases
            assert 0 < record["free_steps"] <= dynamics.free_steps
            assert 0 < record["nudged_steps"] <= phases * dynamics.nudged_steps
        else:
            assert record["free_steps"] == record["nudged_steps"] == 0
    # training did something (8 Adam steps of a 16-unit net): the loss falls and the last
    # epoch beats chance (0.1) on the test split
    assert records[1]["train_loss"] < 0.97 * records[0]["train_loss"]
    assert records[-1]["test_acc"] > 0.12


@pytest.mark.parametrize("method", METHODS)
def test_config_holds_resolved_topology_run_settings_and_versions(runs, topology, method):
    _, spec = topology
    document = yaml.safe_load((runs[(method, "full")] / "config.yaml").read_text("utf-8"))
    expected = spec  # --epochs sets the run length, not the topology's training.epochs
    assert document["topology"] == expected.to_dict()
    assert document["run"]["epochs"] == 2
    assert document["topology"]["layers"][0]["size"] == 16  # the --set overrides are resolved
    assert spec_from_dict(document["topology"]) == expected
    assert document["run"]["method"] == method
    assert document["run"]["seed"] == 0 and document["run"]["limit"] == LIMIT
    versions = document["versions"]
    assert {"topo-ep", "python", "torch", "numpy"} <= versions.keys()
    assert versions["torch"] == str(torch.__version__)


@pytest.mark.parametrize("method", METHODS)
def test_checkpoint_exists_and_records_the_last_epoch(runs, method):
    run = runs[(method, "full")]
    payload = load_checkpoint(run / "checkpoint.pt")
    assert payload["epoch"] == 2 and payload["method"] == method
    assert payload["metrics"] == _metrics(run)
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt",
        "config.yaml",
        "metrics.jsonl",
    ]


# ---------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("method", METHODS)
def test_resumed_run_is_bit_identical_to_uninterrupted(runs, method):
    full, resumed = runs[(method, "full")], runs[(method, "resumed")]
    _assert_same_weights(_model(full), _model(resumed))
    a, b = _metrics(full), _metrics(resumed)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if k != "seconds"} == {
            k: v for k, v in y.items() if k != "seconds"
        }
    # optimizer state too
    opt_a = load_checkpoint(full / "checkpoint.pt")["optimizer"]["state"]
    opt_b = load_checkpoint(resumed / "checkpoint.pt")["optimizer"]["state"]
    for key in opt_a:
        for name, value in opt_a[key].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b[key][name]))


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_weights_different_seed_different_weights(runs, method):
    full = _model(runs[(method, "full")])
    _assert_same_weights(full, _model(runs[(method, "again")]))
    other = _model(runs[(method, "other")])
    assert full.keys() == other.keys()
    for key in full:
        if key.startswith("edges.") or key == "head.block.weight":
            assert not torch.equal(full[key], other[key]), key


def test_training_changed_the_weights(runs, topology):
    _, spec = topology
    initial = train_module.compile_topology(spec, seed=0).state_dict()
    trained = _model(runs[("ep", "full")])
    for key in initial:
        if key.startswith("edges.") or key == "head.block.weight":
            assert not torch.equal(initial[key], trained[key]), key


# ---------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("method", METHODS)
def test_evaluate_reports_the_last_test_accuracy(runs, method, capsys):
    run = runs[(method, "full")]
    last = _metrics(run)[-1]
    capsys.readouterr()
    assert main(["evaluate", str(run / "checkpoint.pt"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"test acc {last['test_acc']:.4f}" in printed
    assert f"val acc {last['val_acc']:.4f}" in printed
    report = evaluate_checkpoint(run, device="cpu")  # a run directory works too
    assert report.test_acc == last["test_acc"]
    assert report.val_acc == last["val_acc"]
    assert (report.epoch, report.method) == (2, method)


# ---------------------------------------------------------------------------- checkpoints
def _partial_then_fail(exception: BaseException):
    def fake_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise exception

    return fake_save


def test_failed_checkpoint_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    spec = _with_epochs(_tiny_spec(), 2)
    run = tmp_path / "run"
    _trainer(spec, "bp", 1, run).run()
    before = (run / "checkpoint.pt").read_bytes()
    trainer = _trainer(spec, "bp", 2, run)
    trainer.resume(run)
    monkeypatch.setattr(torch, "save", _partial_then_fail(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        trainer.run()
    monkeypatch.undo()
    assert (run / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(run)["epoch"] == 1
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt",
        "config.yaml",
        "metrics.jsonl",
    ]
    # resuming again drops the metrics line of the epoch whose checkpoint was lost
    trainer = _trainer(spec, "bp", 2, run)
    trainer.resume(run)
    trainer.run()
    assert [r["epoch"] for r in _metrics(run)] == [1, 2]


@pytest.mark.parametrize("exception", [RuntimeError("boom"), KeyboardInterrupt()])
def test_save_atomic_leaves_no_temporary_file(tmp_path, monkeypatch, exception):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"spec": {}, "model": {}, "epoch": 1, "method": "ep"}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _partial_then_fail(exception))
    with pytest.raises(type(exception)):
        save_atomic({"spec": {}, "model": {}, "epoch": 2, "method": "ep"}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert load_checkpoint(path)["epoch"] == 1


# ---------------------------------------------------------------------------- dataset checks
def test_topology_input_size_must_match_the_dataset(tmp_path, capsys):
    out = tmp_path / "run"
    code = _train(
        REPO / "topologies" / "chain_5x64.yaml", out, "--epochs", "1", "--dataset", "digits"
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "[dataset-size]" in err and "784" in err and "64" in err
    assert "Traceback" not in err
    assert not (out / "checkpoint.pt").exists()


def test_readout_smaller_than_the_classes_is_rejected(topology, tmp_path, capsys):
    path, _ = topology
    code = _train(path, tmp_path / "run", "--epochs", "1", "--set", "readout.size=5")
    err = capsys.readouterr().err
    assert code == 2 and "[dataset-size]" in err and "readout" in err


# ---------------------------------------------------------------------------- regressions
def test_train_and_evaluate_without_workaround(topology, tmp_path):
    path, _ = topology
    run = tmp_path / "run"
    assert _train(path, run, "--epochs", "1", "--method", "bp") == 0
    versions = yaml.safe_load((run / "config.yaml").read_text("utf-8"))["versions"]
    assert versions["torch"] == str(torch.__version__)
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0


@pytest.mark.parametrize("method", METHODS)
def test_cli_resume_with_more_epochs(runs, topology, tmp_path, monkeypatch, method):
    path, _ = topology
    run = tmp_path / "run"
    assert _train(path, run, "--epochs", "1", "--method", method) == 0
    assert _train(path, run, "--epochs", "2", "--method", method, "--resume") == 0
    assert len(_metrics(run)) == 2
    _assert_same_weights(_model(runs[(method, "full")]), _model(run))


def test_track_flow_records_every_epoch_and_does_not_change_training(runs, topology, tmp_path):
    path, _ = topology
    run = tmp_path / "run"
    assert _train(path, run, "--epochs", "2", "--track-flow", "8") == 0
    records = [json.loads(line) for line in (run / "flow.jsonl").read_text("utf-8").splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    edges = {e["edge"] for e in records[-1]["edges"]}
    assert "input->h1:forward" in edges
    assert all(-1.0 <= e["cos_implicit"] <= 1.0 for e in records[-1]["edges"])
    # measuring the flow must not disturb the training (same seed, same weights)
    _assert_same_weights(_model(runs[("ep", "full")]), _model(run))


def test_input_standardisation_is_applied_to_every_split(topology, tmp_path):
    """Declaring input mean/std trains exactly as the same topology without them (mean 0, std 1)
    on data standardised by hand, and evaluate applies the same constants."""
    _, tiny = topology
    spec = dataclasses.replace(tiny, input=dataclasses.replace(tiny.input, mean=0.0, std=1.0))
    mean, std = 0.25, 0.5
    declared = dataclasses.replace(spec, input=dataclasses.replace(spec.input, mean=mean, std=std))
    data = load_dataset("digits", seed=0, limit=LIMIT)
    by_hand = dataclasses.replace(
        data,
        **{
            name: dataclasses.replace(split, x=(split.x - mean) / std)
            for name, split in (("train", data.train), ("val", data.val), ("test", data.test))
        },
    )
    settings = RunSettings(method="ep", epochs=1, seed=0, device="cpu", limit=LIMIT)
    quiet = {"progress": False, "log": lambda _: None}
    a = Trainer(declared, data, settings, out_dir=tmp_path / "declared", **quiet)
    b = Trainer(spec, by_hand, settings, out_dir=tmp_path / "by_hand", **quiet)
    plain = Trainer(spec, data, settings, out_dir=tmp_path / "plain", **quiet)
    metrics = a.run()
    b.run()
    plain.run()
    _assert_same_weights(_model(tmp_path / "declared"), _model(tmp_path / "by_hand"))
    assert not torch.equal(a.net.readout_weight, plain.net.readout_weight)
    report = evaluate_checkpoint(tmp_path / "declared", device="cpu")
    assert report.test_acc == pytest.approx(metrics[-1]["test_acc"], abs=1e-9)


def test_check_gradients_of_a_trained_checkpoint_on_its_dataset(runs, topology, capsys):
    path, _ = topology
    run = runs[("ep", "full")]
    assert main(["check-gradients", str(path), "--checkpoint", str(run), "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert f"network: checkpoint {run} (epoch 2, method ep)" in out
    assert "data: digits, first 4 examples of the test split" in out
    assert "passed: every tensor has 1 - cos <= 1e-06" in out
    # the trained weights are checked, not a fresh network's: the EP norms differ
    assert main(["check-gradients", str(path), "--batch", "4", "--dataset", "digits"]) == 0
    fresh = capsys.readouterr().out
    assert "fresh network" in fresh
    row = [line for line in out.splitlines() if line.startswith("input->h1")]
    fresh_row = [line for line in fresh.splitlines() if line.startswith("input->h1")]
    assert row and fresh_row and row != fresh_row


def test_validation_none_trains_on_the_holdout_and_keeps_the_protocol(topology, tmp_path, capsys):
    """``--validation none``: the validation images join the training split (no val accuracy),
    the protocol is stored, a resume under the other protocol is refused, and ``evaluate``
    rebuilds the same splits."""
    path, _ = topology
    run = tmp_path / "run"
    code = main(["train", str(path), "--quiet", "--out", str(run), "--epochs", "1",
                 "--method", "bp", "--validation", "none"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    whole, holdout = load_dataset("digits", val_fraction=0.0), load_dataset("digits")
    assert f"({len(whole.train)} train / 0 val / " in out
    assert len(whole.train) == len(holdout.train) + len(holdout.val)
    assert "no validation split to pick an epoch on" in out
    (row,) = _metrics(run)
    assert row["val_acc"] is None and row["test_acc"] is not None
    assert load_checkpoint(run)["settings"]["validation"] == "none"
    code = main(["train", str(path), "--quiet", "--out", str(run), "--epochs", "2",
                 "--method", "bp", "--resume"])  # fmt: skip
    assert code == 2
    assert "--validation: 'none' in the checkpoint, 'holdout' now" in capsys.readouterr().err
    report = evaluate_checkpoint(run, device="cpu")
    assert report.val_acc is None and report.test_acc == pytest.approx(row["test_acc"])
