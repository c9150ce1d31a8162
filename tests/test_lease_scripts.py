"""``analysis/reports/lease.sh``, what the device-lease scripts share: packing, and stopping the
trainings at the deadline (SIGTERM, then SIGKILL for one that ignores it), on the CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LEASE = REPO / "analysis" / "reports" / "lease.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="lease.sh is bash")


def _bash(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DEVICE", "LIMIT", "PYTHON")}
    return subprocess.run(
        ["bash", "-c", f'set -u; . "{LEASE}"; {script}'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_deadline_stops_the_runs_and_the_last_pack_holds_their_files(tmp_path):
    """Two 'trainings' outlive a 2 s deadline: one exits on SIGTERM, one traps it and is
    killed; the runs' folder is packed while they run and once more at the end."""
    script = """
    LEASE_PACK_EVERY=1 LEASE_GRACE=2
    lease_begin out 2 lease.log
    mkdir -p runs
    (trap 'echo stopped > runs/polite.txt; exit 143' TERM; echo started > runs/polite.txt;
     while :; do sleep 0.1; done) &
    polite=$!
    (trap '' TERM; echo started > runs/stubborn.txt; while :; do sleep 0.1; done) &
    stubborn=$!
    trap 'kill -KILL "$polite" "$stubborn" 2>/dev/null' EXIT  # no orphan if the stop fails
    pack() { lease_pack runs "$OUT/runs.tar.gz"; }
    lease_wait pack "$polite" "$stubborn"
    kill -0 "$polite" 2>/dev/null && echo polite-alive
    kill -0 "$stubborn" 2>/dev/null && echo stubborn-alive
    echo done
    """
    done = _bash(script, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["done"]  # neither survived
    log = (tmp_path / "out" / "lease.log").read_text()
    assert "deadline: SIGTERM to the 2 runs still training" in log and "SIGKILL to" in log
    with tarfile.open(tmp_path / "out" / "runs.tar.gz") as packed:
        polite = packed.extractfile("./polite.txt").read().decode().strip()
        assert polite == "stopped"  # the pack after the stop holds what the run wrote last
        assert packed.extractfile("./stubborn.txt").read().decode().strip() == "started"
    assert not (tmp_path / "out" / "runs.tar.gz.part").exists()


def test_runs_that_end_before_the_deadline_are_not_stopped(tmp_path):
    script = """
    LEASE_PACK_EVERY=1
    lease_begin out 60 lease.log
    mkdir -p runs
    (echo ok > runs/quick.txt) &
    pack() { lease_pack runs "$OUT/runs.tar.gz"; }
    lease_wait pack $!
    echo "$DEVICE ${#LIMIT_ARGS[@]}"
    """
    done = _bash(script, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cuda", "0"]
    assert not (tmp_path / "out" / "lease.log").exists()  # no stop was logged
    with tarfile.open(tmp_path / "out" / "runs.tar.gz") as packed:
        assert packed.extractfile("./quick.txt").read().decode().strip() == "ok"
