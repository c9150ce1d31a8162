"""The README's Python example runs as written (from the repository root)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text("utf-8"), re.S)


def test_readme_has_a_python_example():
    assert BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_example_runs(index, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})
    out = capsys.readouterr().out
    assert "parameters:" in out  # net.describe() printed the compiled network
