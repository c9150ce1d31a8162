"""Throughput of data-parallel training: R ranks of T threads against 1 process of R x T threads.

Usage::

    python benchmarks/data_parallel.py topologies/fre_2x512.yaml --data-dir ../shared/data/mnist \
        --ranks 2 --epochs 1 --repeats 1

Each repeat runs, one after the other so that both see the same machine load,

- ``torchrun --standalone --nproc-per-node R -m topo_ep train FILE`` with
  ``OMP_NUM_THREADS=T`` (every rank one shard of every batch, gloo on the CPU), and
- ``topo-ep train FILE`` in one process with ``OMP_NUM_THREADS=R*T``,

each for ``--epochs`` epochs of EP into its own run directory under ``--out``, then reads the
training seconds of every epoch (``metrics.jsonl``: the epoch loop, without start-up and
evaluation) and the final test accuracy. The table and ``--json`` give both, with the
speed-up (single-process seconds / data-parallel seconds). Both runs train the same network on
the same batches, so their accuracies agree up to rounding.

On a machine with fewer cores than R x T, or one shared with other jobs, this is a sanity figure,
not a measurement of scaling; the JSON records the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def train(command: list[str], threads: int, out: Path) -> dict[str, float]:
    """Run one training command with ``threads`` OpenMP threads; its epoch seconds and accuracy."""
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "train_seconds": sum(r["seconds"] for r in records),
        "wall_seconds": wall,
        "test_acc": records[-1]["test_acc"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per rank (1)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default="runs/data_parallel")
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    args = parser.parse_args()

    train_args = [args.file, "--epochs", str(args.epochs), "--quiet", "--device", "cpu"]
    if args.data_dir:
        train_args += ["--data-dir", args.data_dir]
    out = Path(args.out)
    results = []
    load_before = os.getloadavg()
    for repeat in range(args.repeats):
        ranks_out = out / f"ranks{args.ranks}_r{repeat}"
        single_out = out / f"single_r{repeat}"
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launch += ["--nproc-per-node", str(args.ranks), "-m", "topo_ep", "train"]
        parallel = train([*launch, *train_args, "--out", str(ranks_out)], args.threads, ranks_out)
        single_command = [sys.executable, "-m", "topo_ep", "train", *train_args]
        single = train(
            [*single_command, "--out", str(single_out)], args.ranks * args.threads, single_out
        )
        results.append({"repeat": repeat, "data_parallel": parallel, "single": single})
        print(
            f"repeat {repeat}: {args.ranks} ranks x {args.threads} thread(s) "
            f"{parallel['train_seconds']:.1f} s (test acc {parallel['test_acc']:.4f}); "
            f"1 process x {args.ranks * args.threads} threads {single['train_seconds']:.1f} s "
            f"(test acc {single['test_acc']:.4f}); speed-up "
            f"{single['train_seconds'] / parallel['train_seconds']:.2f}"
        )
    document = {
        "file": args.file,
        "ranks": args.ranks,
        "threads_per_rank": args.threads,
        "epochs": args.epochs,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": platform.platform(),
        "results": results,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
