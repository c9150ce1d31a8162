"""Seconds per training batch of EP and BP on one topology, interleaved, medians of repeats.

Usage::

    python benchmarks/epoch_time.py topologies/fre_2x512.yaml --batches 10 --repeats 5

Each repeat times ``--batches`` optimizer steps of EP, then of BP, on random inputs of the
topology's batch size, so both methods see the same machine load; the table gives the median
seconds per batch, the projected seconds per epoch for ``--train-size`` examples and the EP/BP
ratio. The JSON goes to ``--json`` (default ``benchmarks/results/epoch_time_<topology>.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from topo_ep.compiler import compile_topology
from topo_ep.learn import make_method
from topo_ep.loader import load_topology
from topo_ep.train import make_optimizer, resolve_device


def time_batches(spec, method_name: str, device: torch.device, batches: int, seed: int) -> float:
    """Seconds per optimizer step, averaged over ``batches`` steps after one warm-up step."""
    net = compile_topology(spec, seed=seed, device=device)
    method = make_method(method_name, spec)
    optimizer = make_optimizer(net, spec)
    generator = torch.Generator().manual_seed(seed)
    size = spec.training.batch_size
    x = torch.rand(size, spec.input.size, generator=generator).to(device)
    y = torch.randint(0, spec.readout.size, (size,), generator=generator).to(device)

    def one_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        method.gradients(net, x, y)
        optimizer.step()

    one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("topology")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=55000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    spec = load_topology(args.topology)
    device = resolve_device(args.device)
    samples: dict[str, list[float]] = {"ep": [], "bp": []}
    for repeat in range(args.repeats):
        for method in ("ep", "bp"):
            samples[method].append(time_batches(spec, method, device, args.batches, repeat))
    batches_per_epoch = math.ceil(args.train_size / spec.training.batch_size)
    rows = {}
    for method, values in samples.items():
        median = statistics.median(values)
        rows[method] = {
            "seconds_per_batch_median": median,
            "seconds_per_batch_all": values,
            "projected_seconds_per_epoch": median * batches_per_epoch,
        }
    ratio = rows["ep"]["seconds_per_batch_median"] / rows["bp"]["seconds_per_batch_median"]
    name = Path(args.topology).stem
    print(
        f"{name} on {device} ({platform.processor() or platform.machine()}), "
        f"batch {spec.training.batch_size}, {args.repeats} repeats x {args.batches} batches"
    )
    print("| method | s / batch (median) | projected s / epoch |")
    print("|---|---|---|")
    for method, row in rows.items():
        print(
            f"| {method} | {row['seconds_per_batch_median']:.4f} | "
            f"{row['projected_seconds_per_epoch']:.1f} |"
        )
    print(f"EP / BP time ratio: {ratio:.2f}")
    out = Path(args.json or Path(__file__).parent / "results" / f"epoch_time_{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "topology": args.topology,
        "device": str(device),
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "batch_size": spec.training.batch_size,
        "batches": args.batches,
        "repeats": args.repeats,
        "train_size": args.train_size,
        "methods": rows,
        "ep_over_bp": ratio,
    }
    out.write_text(json.dumps(document, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
