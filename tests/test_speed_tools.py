"""benchmarks/ab_interleaved.py (two copies of topo-ep in one process, steps alternated) and
benchmarks/profile_ep.py (torch.profiler over training steps)."""

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


def test_the_profile_lists_the_relaxation_products(capsys):
    """benchmarks/profile_ep.py on the quick start: the table has the step's products."""
    spec = importlib.util.spec_from_file_location(
        "profile_ep", REPO / "benchmarks" / "profile_ep.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(
        [str(REPO / "topologies" / "quickstart.yaml"), "--batches", "1", "--batch-size", "8"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "quickstart ep, 1 thread(s), batch 8, 1 batches profiled" in out
    assert "aten::addmm" in out
