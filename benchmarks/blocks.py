"""Milliseconds per product, update and whole EP training step of a sparse block, per backend.

Usage::

    python benchmarks/blocks.py                       # 2048 x 2048, batch 256, float32, 2 threads
    python benchmarks/blocks.py --size 512 --repeats 3 --json /tmp/blocks.json   # a quick look

For each density (``--densities``, default 1, 5, 20, 50 and 100 %) a random mask is drawn
(:func:`topo_ep.blocks.masks.random_mask`) and one :class:`~topo_ep.blocks.sparse.SparseBlock`
is timed on each backend (``dense``: the masked dense matrix; ``torch.sparse``: CSR;
``torch-sparse``: the optional package, skipped when it is not installed):

- ``accumulate``: h + g x A^T for a (batch, size) x;
- ``adjoint``: g y A, the tied transpose's product, from the precomputed permutation of the
  values; for ``torch.sparse`` also through the CSR transpose view ``csr.t()`` (no copy), the
  alternative the block does not use;
- ``update``: ``outer(post, pre)`` with each kernel (``sampled``: ``torch.sparse.
  sampled_addmm``; ``masked-dense``: post^T pre read at the mask), whatever the backend;
- ``step``: one whole EP training step (free phase 10 and nudged phase 5 synchronous steps,
  the paper's update, an Adam step) of ``input(64) -> h1 -> h2 -> readout(10)`` whose h1 -> h2
  edge is the block (tied feedback, gain 0.1); the input edge and the readout are small and
  dense. The ``auto`` row runs the same step with ``backend: auto``
  (:func:`topo_ep.blocks.dispatch.choose_plan`).

A plain dense block (``DenseBlock``, no mask) is timed too, as the reference of a dense edge.
Repeats are interleaved over the backends and the medians reported, so every backend sees the
same machine load. The load average before and after is recorded: time on a quiet machine. The
table goes to stdout, the numbers to ``--json`` (default ``benchmarks/results/blocks.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from topo_ep.blocks import BlockContext, DenseBlock, SparseBlock
from topo_ep.blocks.dispatch import choose_plan, torch_sparse_available
from topo_ep.compiler import compile_topology
from topo_ep.learn import make_method
from topo_ep.spec import BlockSpec
from topo_ep.train import make_optimizer
from topo_ep.validate import spec_from_dict

BACKENDS = ("dense", "torch.sparse", "torch-sparse")


def timed(fn: Callable[[], object]) -> float:
    """Milliseconds of one call."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def sparse_block(size: int, density: float, backend: str) -> SparseBlock:
    options = (("pattern", "random"), ("density", density), ("seed", 0), ("backend", backend))
    context = BlockContext(
        name="h1->h2:forward",
        source="h1",
        target="h2",
        rows=size,
        cols=size,
        source_grid=(size,),
        target_grid=(size,),
        gain=1.0,
        learned=True,
        init="glorot_uniform",
        block=BlockSpec("sparse", options),
        seed=0,
        dtype=torch.float32,
    )
    return SparseBlock.build(context)


def topology(size: int, density: float, backend: str | None, batch: int) -> dict:
    """The training-step net; ``backend`` None: a plain dense h1 -> h2 edge."""
    edge: dict = {"source": "h1", "target": "h2"}
    if backend is not None:
        edge["block"] = {"kind": "sparse", "density": density, "backend": backend}
    return {
        "name": "bench",
        "input": {"size": 64},
        "layers": [{"name": "h1", "size": size}, {"name": "h2", "size": size}],
        "readout": {"from": "h2", "size": 10},
        "edges": [
            {"source": "input", "target": "h1"},
            edge,
            {"source": "h2", "target": "h1", "kind": "feedback", "gain": 0.1},
        ],
        "dynamics": {"schedule": "synchronous", "free_steps": 10, "nudged_steps": 5},
        "training": {"batch_size": batch},
    }


def step_timer(data: dict, batch: int) -> Callable[[], float]:
    spec = spec_from_dict(data)
    net = compile_topology(spec, seed=0)
    method = make_method("ep", spec)
    optimizer = make_optimizer(net, spec)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 64, generator=generator)
    y = torch.randint(0, 10, (batch,), generator=generator)

    def one() -> None:
        optimizer.zero_grad(set_to_none=True)
        method.gradients(net, x, y)
        optimizer.step()

    one()
    return lambda: timed(one)


def product_timers(block, batch: int) -> dict[str, Callable[[], float]]:
    size = block.size[1] if isinstance(block, SparseBlock) else block.weight.shape[1]
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(batch, size, generator=generator)
    acc = torch.rand(batch, size, generator=generator)
    post = torch.rand(batch, size, generator=generator)
    tied = block.transpose("h2", "h1", 0.1)
    out: dict[str, Callable[[], float]] = {
        "accumulate": lambda: timed(lambda: block.accumulate(acc, x)),
        "adjoint": lambda: timed(lambda: tied.accumulate(acc, x)),
    }
    if isinstance(block, SparseBlock) and block.requested == "torch.sparse":
        # The alternative to the permutation: the CSR matrix's transpose view (CSC, no copy),
        # in the same fused addmm the block runs.
        values = block.values.detach()
        csr = torch.sparse_csr_tensor(block.csr_crow, block.csr_col, values, block.size)
        view = csr.t()
        out["adjoint (view)"] = lambda: timed(
            lambda: torch.addmm(acc.t(), view, x.t(), alpha=0.1).t()
        )
    if isinstance(block, SparseBlock) and block.requested == "dense":
        out["update sampled"] = lambda: timed(lambda: block.outer_sampled(post, x))
        out["update masked-dense"] = lambda: timed(lambda: block.outer_masked_dense(post, x))
    if isinstance(block, DenseBlock):
        out["update"] = lambda: timed(lambda: block.outer(post, x))
    return out


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.01, 0.05, 0.2, 0.5, 1.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median)")
    parser.add_argument("--step-repeats", type=int, default=5, help="timed training steps")
    parser.add_argument("--json", default="benchmarks/results/blocks.json")
    parser.add_argument(
        "--without-torch-sparse",
        action="store_true",
        help="leave the torch-sparse backend out even when it is installed (as on CI)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with_torch_sparse = torch_sparse_available() and not args.without_torch_sparse
    backends = [b for b in BACKENDS if b != "torch-sparse" or with_torch_sparse]
    load_before = load_average()
    rows = []
    for density in args.densities:
        with torch.no_grad():
            blocks = {b: sparse_block(args.size, density, b) for b in backends}
            reference = DenseBlock(
                "h1", "h2", blocks["dense"].masked_dense(blocks["dense"].values), 1.0
            )
            timers = {("sparse", b): product_timers(blocks[b], args.batch) for b in backends}
            timers[("dense block", "dense")] = product_timers(reference, args.batch)
            samples: dict = {key: {name: [] for name in t} for key, t in timers.items()}
            for _ in range(args.repeats):
                for key, named in timers.items():
                    for name, timer in named.items():
                        timer()  # warm
                        samples[key][name].append(timer())
        steps = {
            ("sparse", b): step_timer(topology(args.size, density, b, args.batch), args.batch)
            for b in backends
        }
        steps[("sparse", "auto")] = step_timer(
            topology(args.size, density, "auto", args.batch), args.batch
        )
        steps[("dense block", "dense")] = step_timer(
            topology(args.size, density, None, args.batch), args.batch
        )
        step_samples = {key: [] for key in steps}
        for _ in range(args.step_repeats):
            for key, timer in steps.items():
                step_samples[key].append(timer())
        plan = choose_plan("auto", blocks["dense"].density, "cpu", warn=False)
        for key in list(samples) + [("sparse", "auto")]:
            row = {
                "density": density,
                "nnz": blocks["dense"].nnz,
                "kind": key[0],
                "backend": key[1],
            }
            for name, values in samples.get(key, {}).items():
                row[f"{name} ms"] = statistics.median(values)
            row["step ms"] = statistics.median(step_samples[key])
            if key[1] == "auto":
                row["auto picks"] = f"{plan.backend}, update {plan.update}"
            rows.append(row)
        print(f"density {density:g} done (load {load_average():.2f})", flush=True)
    load_after = load_average()
    print_table(rows)
    verdict = check_auto(rows)
    print(verdict)
    result = {
        "size": args.size,
        "batch": args.batch,
        "dtype": "float32",
        "threads": args.threads,
        "repeats": args.repeats,
        "step_repeats": args.step_repeats,
        "torch": torch.__version__,
        "torch_sparse": torch_sparse_version() if with_torch_sparse else None,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "rows": rows,
        "auto_check": verdict,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


def torch_sparse_version() -> str | None:
    if not torch_sparse_available():
        return None
    import torch_sparse

    return getattr(torch_sparse, "__version__", "unknown")


COLUMNS = (
    "accumulate ms",
    "adjoint ms",
    "adjoint (view) ms",
    "update sampled ms",
    "update masked-dense ms",
    "update ms",
    "step ms",
)


def print_table(rows: list[dict]) -> None:
    header = ["density", "block", "backend", *(c.removesuffix(" ms") for c in COLUMNS)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{100 * row['density']:g} %", row["kind"], row["backend"]]
        cells += [f"{row[c]:.2f}" if c in row else "" for c in COLUMNS]
        if "auto picks" in row:
            cells[2] = f"auto ({row['auto picks']})"
        print("| " + " | ".join(cells) + " |")


def check_auto(rows: list[dict]) -> str:
    """``auto``'s training step against the best sparse backend's, at every density."""
    lines = []
    worst = 0.0
    for density in sorted({row["density"] for row in rows}):
        here = [r for r in rows if r["density"] == density and r["kind"] == "sparse"]
        best = min(r["step ms"] for r in here if r["backend"] != "auto")
        auto = next(r["step ms"] for r in here if r["backend"] == "auto")
        worst = max(worst, auto / best)
        lines.append(
            f"{100 * density:g} %: auto {auto:.1f} ms, best {best:.1f} ms, x{auto / best:.2f}"
        )
    status = "PASS" if worst <= 1.2 else "FAIL"
    return (
        f"auto / best backend (training step), worst x{worst:.2f} ({status}, limit 1.2): "
        + "; ".join(lines)
    )


if __name__ == "__main__":
    main()
