"""Milliseconds per synchronous step of topologies/conv_mnist.yaml on a batch of 128, float32.

Three warm-up steps, then the median and the minimum of ten timed steps of the free phase
(``topo_ep.engine.step``), and the seconds of one whole EP batch (20 free and 10 nudged steps
with the error re-read, and the updates), the mean of three. The thread count is torch's
(``OMP_NUM_THREADS``):

    OMP_NUM_THREADS=1 python benchmarks/conv_step.py
"""

from __future__ import annotations

import statistics
import time

import torch

from topo_ep.compiler import compile_topology
from topo_ep.engine import step
from topo_ep.learn import make_method
from topo_ep.loader import load_topology


def main() -> None:
    spec = load_topology("topologies/conv_mnist.yaml")
    net = compile_topology(spec, seed=0)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(128, 784, generator=generator)
    y = torch.randint(0, 10, (128,), generator=generator)
    drives = net.input_drive(x)
    groups = net.schedule("synchronous")
    state = net.layout.zeros(128, dtype=torch.float32, device="cpu")
    times = []
    with torch.no_grad():
        for _ in range(3):
            state = step(net, state, drives, groups)
        for _ in range(10):
            start = time.perf_counter()
            state = step(net, state, drives, groups)
            times.append(time.perf_counter() - start)
    print(
        f"synchronous step: median {1e3 * statistics.median(times):.1f} ms, "
        f"min {1e3 * min(times):.1f} ms ({torch.get_num_threads()} threads)"
    )
    method = make_method("ep", spec)
    method.gradients(net, x, y)
    start = time.perf_counter()
    for _ in range(3):
        method.gradients(net, x, y)
    print(f"EP batch: {(time.perf_counter() - start) / 3:.2f} s")


if __name__ == "__main__":
    main()
