"""Two versions of topo-ep in one process, training steps alternated batch by batch.

On a shared machine the load drifts between two runs of ``topo-ep bench``, so two codes timed
one after the other are not comparable. This script imports the checked-out ``topo_ep`` and
another tree's (``--base``, e.g. a worktree of ``main``; copied to a temporary folder as the
package ``topo_ep_base``), builds one runner of ``topo_ep.bench`` per version on the same
topology, seed and random batch, and alternates their training steps (base, new, new, base,
...). Each step is timed with the thread's CPU time at 1 thread (``time.thread_time``: the time
the step ran, not the time it waited for a core), with the wall clock at more threads. It
prints the median seconds per batch of each, the median and quartiles of the per-pair ratio
new / base, the steps per phase, and whether the two networks hold the same bits after all the
steps (the same results).

With ``--json PATH`` the per-step seconds, medians and ratios are also written to PATH.

Usage (repository root, venv active)::

    python benchmarks/ab_interleaved.py --base ../wt-main topologies/res_10x64.yaml \\
        --pairs 60 --set dynamics.schedule=sweep --set dynamics.tolerance=3e-5 ...
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

BASE_PACKAGE = "topo_ep_base"


def copy_as_package(tree: Path, folder: Path) -> None:
    """Copy ``tree/topo_ep`` to ``folder/topo_ep_base``, its imports renamed."""
    target = folder / BASE_PACKAGE
    shutil.copytree(tree / "topo_ep", target, ignore=shutil.ignore_patterns("__pycache__"))
    pattern = re.compile(r"\btopo_ep\b")
    for path in target.rglob("*.py"):
        path.write_text(pattern.sub(BASE_PACKAGE, path.read_text()))


def runner(package: str, topology: Path, overrides: list[str], method: str, size: int) -> Any:
    """A ``bench._Runner`` of ``package`` (the batch of ``BenchSettings``' seed)."""
    bench = importlib.import_module(f"{package}.bench")
    loader = importlib.import_module(f"{package}.loader")
    spec = loader.load_topology(topology, overrides)
    return bench._Runner(spec, method, bench.BenchSettings(), size)


def _alternate(args: argparse.Namespace, clock: Any) -> tuple[Any, Any, dict[str, list[float]]]:
    """Build both runners and time ``args.pairs`` alternated pairs of steps."""
    new = runner("topo_ep", args.topology, args.overrides, args.method, args.batch_size)
    base = runner(BASE_PACKAGE, args.topology, args.overrides, args.method, args.batch_size)
    for version in (base, new):
        version.step()  # warm-up, not timed
    seconds: dict[str, list[float]] = {"base": [], "new": []}
    for pair in range(args.pairs):
        order = (("base", base), ("new", new))
        for name, version in order if pair % 2 == 0 else order[::-1]:
            start = clock()
            version.step()
            seconds[name].append(clock() - start)
    return base, new, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("topology", type=Path)
    parser.add_argument("--base", type=Path, required=True, help="the other tree (a checkout)")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--method", default="ep")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    with tempfile.TemporaryDirectory() as folder:
        copy_as_package(args.base.resolve(), Path(folder))
        sys.path.insert(0, folder)  # the base's lazy imports need it until the end
        try:
            base, new, seconds = _alternate(args, clock)
        finally:
            sys.path.remove(folder)
    ratios = [n / b for n, b in zip(seconds["new"], seconds["base"], strict=True)]
    quartiles = statistics.quantiles(ratios, n=4)
    same = all(
        torch.equal(a, b)
        for a, b in zip(new.net.state_dict().values(), base.net.state_dict().values(), strict=True)
    )
    print(
        f"{args.topology.stem} {args.method}, {args.threads} thread(s), {args.pairs} pairs, "
        f"{'CPU' if args.threads == 1 else 'wall'} time per batch: base "
        f"{statistics.median(seconds['base']):.4f} s, new {statistics.median(seconds['new']):.4f}"
        f" s; new / base per pair: median {statistics.median(ratios):.3f}, quartiles "
        f"{quartiles[0]:.3f}-{quartiles[2]:.3f}; steps of the last batch base "
        f"{base.free_steps[-1]} + {base.nudged_steps[-1]}, new {new.free_steps[-1]} + "
        f"{new.nudged_steps[-1]}; same weights after all steps: {same}"
    )
    if args.json is not None:
        document = {
            "topology": str(args.topology),
            "overrides": args.overrides,
            "base": str(args.base),
            "method": args.method,
            "threads": args.threads,
            "batch_size": args.batch_size,
            "pairs": args.pairs,
            "clock": "thread CPU time" if args.threads == 1 else "wall",
            "seconds": seconds,
            "median_seconds": {k: statistics.median(v) for k, v in seconds.items()},
            "ratio_new_over_base": {
                "median": statistics.median(ratios),
                "quartiles": [quartiles[0], quartiles[2]],
            },
            "same_weights": same,
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
