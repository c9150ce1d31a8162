"""The prepared GPU script's plumbing (``benchmarks/gpu_check.sh``), on the CPU.

The whole dry run (``bash benchmarks/gpu_check.sh --cpu-dry-run DATA OUT``: every step on the
CPU, shrunk) took 193 to 280 s on the loaded 2-core development machine, too long for the
suite. Here the budget (14 s) is below what any step is started with (15 s): every step must
be skipped and recorded, and the summary still written, into the three files the device tool
brings back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="the script is a bash script")
def test_gpu_check_skips_what_the_budget_cannot_hold_and_writes_the_summary(tmp_path):
    env = dict(
        os.environ,
        GPU_CHECK_BUDGET="14",
        GPU_CHECK_SKIP="tests train_ep_torchrun",
        PYTHON=sys.executable,
        TMPDIR=str(tmp_path),
    )
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-dry-run", str(tmp_path / "no-data"), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.json",
        "gpu_check.log",
        "summary.md",
    ]
    document = json.loads((out / "gpu_check.json").read_text())
    assert document["device"] == "cpu"
    steps = document["steps"]
    assert list(steps)[:3] == ["card", "tests", "bench_fre_2x512_fixed_eager"]
    assert len(steps) == 16 and "train_ep_torchrun" in steps and "bench_conv_mnist_eager" in steps
    assert all(s["exit"] == "skipped" for s in steps.values())
    assert document["bench"] == {} and document["train"] == {}
    assert "| tests | skipped | 0 |" in (out / "summary.md").read_text()
    log = (out / "gpu_check.log").read_text()
    assert "== tests: skipped (GPU_CHECK_SKIP)" in log
    assert "== train_ep_torchrun: skipped (GPU_CHECK_SKIP)" in log
    assert "== card: skipped, " in log  # the budget, not the list
    assert not list(tmp_path.glob("gpu_check.*"))  # the scratch folder is removed
