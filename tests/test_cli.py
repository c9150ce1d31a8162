"""The ``topo-ep`` command line: compile output, overrides, errors and the module entry."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from topo_ep.blocks.masks import local_mask, row_count
from topo_ep.cli import main
from topo_ep.loader import load_topology
from topo_ep.spec import TopologySpec

REPO = Path(__file__).resolve().parents[1]
TOPOLOGY_FILES = sorted((REPO / "topologies").glob("*.yaml"))


def _expected_counts(spec: TopologySpec) -> tuple[int, int]:
    """(learned, fixed) numbers of weights, computed from the spec alone."""
    learned = fixed = 0
    for edge in spec.edges:
        if edge.kind == "feedback" and edge.feedback == "tied":
            continue  # no weights of its own
        size = spec.size_of(edge.target) * spec.size_of(edge.source)
        if edge.block.kind == "sparse":  # the entries of its mask
            if edge.block.option("pattern") == "local":
                grids = spec.grid_of(edge.source), spec.grid_of(edge.target)
                size = local_mask(*grids, edge.block.option("radius"))[1].numel()
            else:
                size = spec.size_of(edge.target) * row_count(
                    edge.block.option("density"), spec.size_of(edge.source)
                )
        if edge.block.kind == "conv":  # the kernel
            kernel = edge.block.option("kernel")
            size = spec.grid_of(edge.target)[0] * spec.grid_of(edge.source)[0] * kernel**2
        if edge.learned:
            learned += size
        else:
            fixed += size
    # one bias per unit, or per channel for a [C, H, W] layer
    learned += sum(
        layer.grid[0] if len(layer.grid) == 3 else layer.size for layer in spec.layers if layer.bias
    )
    readout = spec.readout
    top = spec.size_of(readout.source)
    if readout.block.kind == "pooled":  # W reads the pooled source
        channels, height, width = spec.grid_of(readout.source)
        size = dict(readout.block.option("pool"))["size"]
        top = channels * (height // size) * (width // size)
    learned += readout.size * top + (readout.size if readout.bias else 0)
    if readout.feedback == "random":  # a dense matrix of the whole source
        fixed += readout.size * spec.size_of(readout.source)
    return learned, fixed


def _compile(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(["compile", *args]) == 0
    return capsys.readouterr().out


def _block_lines(output: str) -> dict[str, str]:
    """Edge key -> its line in the ``blocks:`` section."""
    header = "blocks: [kind, density, backend]\n"
    lines = output.split(header, 1)[1].split("\nreadout:", 1)[0].splitlines()
    return {line.split()[0]: line for line in lines}


@pytest.mark.parametrize("path", TOPOLOGY_FILES, ids=lambda p: p.stem)
def test_compile_prints_layout_blocks_and_parameter_count(path, capsys):
    spec = load_topology(path)
    out = _compile(capsys, str(path))
    total = sum(layer.size for layer in spec.layers)
    assert f"topology {spec.name}: {total} hidden units" in out
    offset = 0
    for layer in spec.layers:
        pattern = rf"^\s+{layer.name}\s+\[{offset}:{offset + layer.size}\]\s+size {layer.size}\b"
        assert re.search(pattern, out, re.M), layer.name
        offset += layer.size
    blocks = _block_lines(out)
    assert set(blocks) == {edge.key for edge in spec.edges}
    for edge in spec.edges:
        line = blocks[edge.key]
        assert f"gain={edge.gain:g}" in line
        kind = edge.block.kind if not edge.is_tied else spec.tied_partner(edge).block.kind
        assert f"[{kind}, " in line
        if edge.is_tied:
            assert "TransposeBlock(" in line and "tied to" in line
        else:
            assert f"{kind.capitalize()}Block(" in line
            assert line.rstrip().endswith("learned" if edge.learned else "fixed")
    learned, fixed = _expected_counts(spec)
    assert f"parameters: {learned} learned, {fixed} fixed" in out
    assert f"nudge feedback {spec.readout.feedback}" in out


def test_parameter_count_of_the_paper_network():
    # 784-512-512-10 without biases: 784*512 + 512*512 + 512*10
    assert _expected_counts(load_topology(REPO / "topologies" / "fre_2x512.yaml")) == (
        784 * 512 + 512 * 512 + 512 * 10,
        0,
    )


@pytest.mark.parametrize("path", TOPOLOGY_FILES, ids=lambda p: p.stem)
def test_feedback_gain_override_changes_the_printed_gains(path, capsys):
    spec = load_topology(path)
    before = _block_lines(_compile(capsys, str(path)))
    after = _block_lines(_compile(capsys, str(path), "--set", "feedback_gain=0.5"))
    feedback = [edge for edge in spec.edges if edge.kind == "feedback"]
    assert feedback
    assert all(edge.gain != 0.5 for edge in feedback)
    for edge in spec.edges:
        if edge.kind == "feedback":
            assert f"gain={edge.gain:g}" in before[edge.key]
            assert "gain=0.5" in after[edge.key]
        else:
            assert after[edge.key] == before[edge.key]


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_unknown_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["compile", str(TOPOLOGY_FILES[0]), "--bogus-flag"])
    assert info.value.code == 2
    assert "unrecognized arguments: --bogus-flag" in capsys.readouterr().err


def test_missing_command_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_bad_override_exits_2_without_traceback(capsys):
    code = main(["compile", str(TOPOLOGY_FILES[0]), "--set", "no_equals_sign"])
    err = capsys.readouterr().err
    assert code == 2 and "[override]" in err and "Traceback" not in err


def test_compile_of_a_missing_file_exits_2(tmp_path, capsys):
    code = main(["compile", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "[path]" in err and "Traceback" not in err


def test_evaluate_missing_checkpoint_exits_2_without_traceback(tmp_path, capsys):
    missing = tmp_path / "run" / "checkpoint.pt"
    code = main(["evaluate", str(missing), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "no checkpoint found" in err
    assert "Traceback" not in err


def test_evaluate_corrupt_checkpoint_exits_2_without_traceback(tmp_path, capsys):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"this is not a checkpoint")
    code = main(["evaluate", str(bad), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "not a readable topo-ep checkpoint" in err
    assert "Traceback" not in err


def test_python_dash_m_help_works():
    result = subprocess.run(
        [sys.executable, "-m", "topo_ep", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: topo-ep")
    for command in ("validate", "compile", "train", "evaluate"):
        assert command in result.stdout


def test_closed_pipe_gives_no_traceback():
    """`topo-ep compile FILE | head -1`: the reader leaves early; no traceback reaches the user."""
    process = subprocess.Popen(
        # 1000 layers print ~250 kB, more than a pipe holds: the writer meets the closed pipe
        [sys.executable, "-m", "topo_ep", "compile", "topologies/chain_10x64.yaml"]
        + ["--set", "generate.depth=1000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.readline()
    process.stdout.close()  # the reader goes away, as `head -1` does
    stderr = process.stderr.read().decode()
    process.wait(timeout=120)
    assert "Traceback" not in stderr
    assert process.returncode in (0, 1)
