"""``topo-ep bench``: the table, the JSON document and its keys, and the replaced script."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch

from topo_ep.bench import JSON_KEYS, METHOD_KEYS
from topo_ep.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "topologies" / "quickstart.yaml"


def test_bench_prints_the_table_and_writes_the_documented_json(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "nested" / "bench.json"
    args = ["bench", str(QUICKSTART), "--repeats", "3", "--batches", "1", "--batch-size", "8"]
    code = main([*args, "--threads", "1", "--json", str(out), "--set", "training.lr=1e-3"])
    assert code == 0
    assert torch.get_num_threads() == threads  # put back for the rest of the process
    printed = capsys.readouterr().out
    assert "| ep |" in printed and "| bp |" in printed and "EP / BP time ratio" in printed
    document = json.loads(out.read_text("utf-8"))
    assert set(JSON_KEYS) <= set(document)
    assert document["batch_size"] == 8 and document["repeats"] == 3 and document["threads"] == 1
    assert document["overrides"] == ["training.lr=1e-3"]
    for name in ("ep", "bp"):
        row = document["methods"][name]
        assert set(row) == set(METHOD_KEYS)
        assert len(row["seconds_per_batch_all"]) == 3
        assert row["seconds_per_batch_median"] == sorted(row["seconds_per_batch_all"])[1]
        assert row["projected_seconds_per_epoch"] == row["seconds_per_batch_median"] * math.ceil(
            55000 / 8
        )
    ep, bp = document["methods"]["ep"], document["methods"]["bp"]
    assert document["ep_over_bp"] == ep["seconds_per_batch_median"] / bp["seconds_per_batch_median"]
    # quickstart: sweep, symmetric nudging, tolerance 1e-4 with limits 20 / 10 (+ 10)
    assert document["dynamics"]["nudging"] == "symmetric"
    assert 0 < ep["free_steps_mean"] <= 20 and 0 < ep["nudged_steps_mean"] <= 20
    assert bp["free_steps_mean"] == 0
    assert document["peak_memory"]["process_max_rss_bytes"] > 10 * 2**20
    assert f"{document['ep_over_bp']:.2f}" in printed


def test_fixed_steps_are_reported_as_the_step_limits(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", str(QUICKSTART), "--repeats", "1", "--batches", "1", "--batch-size", "4"]
    overrides = ["--set", "dynamics.tolerance=0", "--set", "training.nudging=one-sided"]
    assert main([*args, "--threads", "1", "--json", str(out), *overrides]) == 0
    ep = json.loads(out.read_text("utf-8"))["methods"]["ep"]
    assert (ep["free_steps_mean"], ep["nudged_steps_mean"]) == (20, 10)


def test_bench_refuses_bad_options_without_a_traceback(capsys):
    assert main(["bench", str(QUICKSTART), "--device", "tpu"]) == 2
    assert "unknown device" in capsys.readouterr().err


def test_the_old_epoch_time_script_forwards_to_bench(tmp_path, capsys):
    path = REPO / "benchmarks" / "epoch_time.py"
    loaded = importlib.util.spec_from_file_location("epoch_time", path)
    script = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(script)
    default = REPO / "benchmarks" / "results" / "epoch_time_fre_2x512.json"
    assert script.forwarded(["topologies/fre_2x512.yaml", "--repeats", "5"]) == [
        "bench", "topologies/fre_2x512.yaml", "--repeats", "5", "--json", str(default)
    ]  # fmt: skip
    out = tmp_path / "old.json"
    argv = [str(QUICKSTART), "--repeats", "1", "--batches", "1", "--batch-size", "4"]
    assert main(script.forwarded([*argv, "--threads", "1", "--json", str(out)])) == 0
    assert "EP / BP time ratio" in capsys.readouterr().out
    assert set(JSON_KEYS) <= set(json.loads(out.read_text("utf-8")))
