"""Where an EP (or BP) training step spends its time: ``torch.profiler`` over a few batches.

The runner is ``topo-ep bench``'s (same seed, random batch, optimizer step included). After
two untimed batches it profiles ``--batches`` training steps and prints the operators by self
CPU time with their call counts, and the steps per phase of the last batch. Call counts are
exact whatever the machine's load; the times are those of a loaded machine when it is loaded
(prefer ``--threads 1``: one thread's time is not inflated by waits for a second core).

Usage (repository root, venv active)::

    python benchmarks/profile_ep.py topologies/res_10x64.yaml --threads 1 \\
        --set dynamics.schedule=sweep --set dynamics.tolerance=3e-5 ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from topo_ep.bench import BenchSettings, _Runner
from topo_ep.loader import load_topology


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("topology", type=Path)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--method", default="ep")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = load_topology(args.topology, args.overrides)
    runner = _Runner(spec, args.method, BenchSettings(), args.batch_size)
    runner.step()
    runner.step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(args.batches):
            runner.step()
    print(
        f"{spec.name} {args.method}, {args.threads} thread(s), batch {args.batch_size}, "
        f"{args.batches} batches profiled; steps of the last batch: "
        f"{runner.free_steps[-1]} + {runner.nudged_steps[-1]}"
    )
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
