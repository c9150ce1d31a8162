"""``analysis/compare_methods.py`` passes the run settings to every run (``--dtype`` for the
float64 control of Table 2), and reuses a finished run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location(
    "compare_methods", REPO / "analysis/compare_methods.py"
)
compare_methods = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(compare_methods)

TINY = ["--set", "layers.h1.size=8", "--set", "layers.h2.size=8"]


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_train_command_carries_dtype_device_limit_and_sets(tmp_path):
    args = compare_methods.build_parser().parse_args(
        ["t.yaml", "--dtype", "float64", "--device", "cuda", "--limit", "64", "--out", "o"]
        + ["--set", "dynamics.schedule=sweep"]
    )
    command = compare_methods.train_command(args, "ep", 1, tmp_path / "ep_s1")
    assert command[:5] == [sys.executable, "-m", "topo_ep", "train", "t.yaml"]
    assert _option(command, "--dtype") == "float64"
    assert _option(command, "--device") == "cuda"
    assert _option(command, "--limit") == "64"
    assert _option(command, "--seed") == "1" and _option(command, "--method") == "ep"
    assert _option(command, "--set") == "dynamics.schedule=sweep"
    assert "--resume" not in command
    (tmp_path / "ep_s1").mkdir()
    (tmp_path / "ep_s1" / "checkpoint.pt").write_bytes(b"")
    assert "--resume" in compare_methods.train_command(args, "ep", 1, tmp_path / "ep_s1")


def test_defaults_are_float32_with_the_device_left_to_train():
    args = compare_methods.build_parser().parse_args(["t.yaml", "--out", "o"])
    command = compare_methods.train_command(args, "bp", 0, Path("o/bp_s0"))
    assert _option(command, "--dtype") == "float32"
    assert "--device" not in command and "--limit" not in command
    assert "--validation" not in command  # train's default: the holdout
    assert "--checkpoint-minutes" not in command


def test_checkpoint_minutes_go_to_every_run_and_a_mid_epoch_checkpoint_is_resumed(tmp_path):
    args = compare_methods.build_parser().parse_args(
        ["t.yaml", "--out", "o", "--checkpoint-minutes", "7.5"]
    )
    run = tmp_path / "ep_s0"
    command = compare_methods.train_command(args, "ep", 0, run)
    assert _option(command, "--checkpoint-minutes") == "7.5" and "--resume" not in command
    run.mkdir()
    (run / "checkpoint.partial.pt").write_bytes(b"")  # a run killed in its first epoch
    assert "--resume" in compare_methods.train_command(args, "ep", 0, run)


def test_a_float64_run_trains_in_float64_and_is_reused_when_finished(tmp_path):
    out = tmp_path / "out"
    argv = [str(REPO / "topologies/quickstart.yaml"), "--dataset", "digits", "--epochs", "1"]
    argv += ["--runs", "bp:0", "--dtype", "float64", "--limit", "64", "--out", str(out), *TINY]
    compare_methods.main(argv)
    run = out / "bp_s0"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["run"]["dtype"] == "float64" and config["run"]["limit"] == 64
    payload = torch.load(run / "checkpoint.pt", weights_only=False)
    weights = list(payload["model"].values())  # the model's (Adam's step counter stays float32)
    assert weights and all(t.dtype == torch.float64 for t in weights)
    assert "(float64)" in (out / "report.md").read_text().splitlines()[0]
    metrics = (run / "metrics.jsonl").read_text()
    compare_methods.main(argv)  # finished: reused, not trained again
    assert (run / "metrics.jsonl").read_text() == metrics


def test_runs_without_validation_are_trained_so_and_tabulated_with_a_dash(tmp_path):
    out = tmp_path / "out"
    argv = [str(REPO / "topologies/quickstart.yaml"), "--dataset", "digits", "--epochs", "1"]
    argv += ["--runs", "bp:0", "--validation", "none", "--limit", "64", "--out", str(out), *TINY]
    compare_methods.main(argv)
    config = yaml.safe_load((out / "bp_s0" / "config.yaml").read_text())
    assert config["run"]["validation"] == "none"
    (row,) = json.loads((out / "summary.json").read_text())
    assert row["test_acc_at_best_val"] is None and row["final_test_acc"] is not None
    (line,) = [x for x in (out / "report.md").read_text().splitlines() if x.startswith("| bp | 0")]
    assert line.split(" | ")[3] == "-"  # no test accuracy at a best validation epoch
