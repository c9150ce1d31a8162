"""``topo-ep sweep --workers N``, ``--shard I/N`` and ``topo-ep sweep-merge``: a grid run in
worker processes, or in shares merged afterwards, gives the table of the plain sweep."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from topo_ep.analysis.sweep import (
    SweepSettings,
    format_stats,
    grid_points,
    parse_shard,
    shard_points,
)
from topo_ep.cli import main
from topo_ep.errors import TopoEpError


def _topology(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(
        "name: small\ninput: {size: 64}\n"
        "generate: {family: chain, depth: 2, width: 8, gain: 0.1}\n"
        "readout: {size: 10}\n"
        "dynamics: {free_steps: 8, nudged_steps: 4}\n"
        "training: {batch_size: 50}\n",
        encoding="utf-8",
    )
    return path


def _sweep(topology: Path, out: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        str(topology),
        "--set-values",
        "feedback_gain=0.05,0.5",
        "--seeds",
        "1",
        "--batch",
        "4",
        "--max-steps",
        "100",
        "--out",
        str(out),
        *extra,
    ]


def _table(out: Path) -> list[dict[str, str]]:
    with (out / "sweep.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _assert_same_table(a: list[dict[str, str]], b: list[dict[str, str]]) -> None:
    assert len(a) == len(b) == 2
    for left, right in zip(a, b, strict=True):
        assert left.keys() == right.keys()
        for key, text in left.items():
            try:
                x, y = float(text), float(right[key])
            except ValueError:
                assert text == right[key], key
                continue
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-9), key


def test_the_shares_cover_the_grid_once_and_each_holds_every_value():
    settings = SweepSettings(file="x.yaml", path="feedback_gain", values=("0.1", "1", "3"), seeds=2)
    points = grid_points(settings)
    shares = [shard_points(points, i, 4) for i in range(1, 5)]
    assert sorted(p for share in shares for p in share) == sorted(points)
    assert [len(s) for s in shares] == [2, 2, 1, 1]
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "3", "a/b", "1/0"):
        with pytest.raises(TopoEpError, match="I/N"):
            parse_shard(bad)


def test_workers_and_merged_shares_give_the_table_of_one_process(tmp_path, capsys):
    topology = _topology(tmp_path)
    plain, workers = tmp_path / "plain", tmp_path / "workers"
    assert main(_sweep(topology, plain)) == 0, capsys.readouterr().err
    assert main(_sweep(topology, workers, "--workers", "2")) == 0, capsys.readouterr().err
    assert "in 2 worker processes" in capsys.readouterr().out
    _assert_same_table(_table(workers), _table(plain))

    shares = [tmp_path / "share1", tmp_path / "share2"]
    for index, folder in enumerate(shares, start=1):
        assert main(_sweep(topology, folder, "--shard", f"{index}/2")) == 0
        assert not (folder / "sweep.csv").exists()
        assert (folder / f"sweep.shard-{index}-of-2.json").is_file()
    merged = tmp_path / "merged"
    assert main(["sweep-merge", *map(str, shares), "--out", str(merged)]) == 0
    _assert_same_table(_table(merged), _table(plain))
    assert (merged / "spectral_radius.png").is_file()
    assert "| feedback_gain |" in (merged / "sweep.md").read_text(encoding="utf-8")

    capsys.readouterr()
    assert main(["sweep-merge", str(shares[0]), "--out", str(tmp_path / "half")]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 points of the sweep have no row" in err and "0.5 seed 0: share 2/2" in err

    manifest = shares[1] / "sweep.shard-2-of-2.json"
    document = json.loads(manifest.read_text(encoding="utf-8"))
    document["settings"]["seeds"] = 3
    manifest.write_text(json.dumps(document), encoding="utf-8")
    assert main(["sweep-merge", *map(str, shares), "--out", str(tmp_path / "x")]) == 2
    assert "different sweeps: seeds: 1 in" in capsys.readouterr().err


def test_format_stats_shows_the_spread_only_when_seeds_differ() -> None:
    """One cell of a sweep table: the mean, [min .. max] when seeds differ, n/a without data."""
    assert format_stats((0.5, 0.4, 0.6, 2)) == "0.5 [0.4 .. 0.6]"
    assert format_stats((0.97, 0.97, 0.97, 2), 100, 3) == "97"
    assert format_stats((0.25, 0.25, 0.25, 1)) == "0.25"
    assert format_stats((float("nan"), float("nan"), float("nan"), 0)) == "n/a"
