"""benchmarks/ab_interleaved.py: two copies of topo-ep in one process, steps alternated."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "ab_interleaved", REPO / "benchmarks" / "ab_interleaved.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tree_against_itself_trains_the_same_bits(capsys):
    """This checkout as its own base: both runners take the same steps to the same weights,
    the base is imported from the renamed copy, and the temporary path is removed again."""
    path_before = list(sys.path)
    code = _script().main(
        [
            str(REPO / "topologies" / "quickstart.yaml"),
            "--base",
            str(REPO),
            "--pairs",
            "2",
            "--batch-size",
            "8",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "same weights after all steps: True" in out
    assert "quickstart ep, 1 thread(s), 2 pairs" in out
    assert sys.modules["topo_ep_base.bench"].__file__ != sys.modules["topo_ep.bench"].__file__
    assert sys.path == path_before
