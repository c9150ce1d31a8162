"""Milliseconds of one sweep step against one convergence check (state test and contrast test)
on fre_2x512 and res_10x64, batch 500, float32, 1 thread, fresh weights, random inputs: the
best of 5 rounds. Run from the repository root:

    python analysis/reports/converged_phases/bench/check_cost.py
"""

import time

import torch

from topo_ep.compiler import compile_topology
from topo_ep.engine import contrast_criterion, state_criterion, step
from topo_ep.loader import load_topology


def best_ms(call, repeats: int) -> float:
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        rounds.append((time.perf_counter() - start) / repeats)
    return min(rounds) * 1e3


def measure(name: str) -> dict[str, float]:
    net = compile_topology(load_topology(f"topologies/{name}.yaml"))
    drives = net.input_drive(torch.rand(500, 784, generator=torch.Generator().manual_seed(0)))
    groups = net.schedule("sweep")
    state = net.layout.zeros(500, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        for _ in range(5):
            state = step(net, state, drives, groups)
        previous, state = state, step(net, state, drives, groups)
        contrast = contrast_criterion(previous)
        return {
            "step": best_ms(lambda: step(net, state, drives, groups), 50),
            "state check": best_ms(lambda: float(state_criterion(state, previous, 1e-4)), 200),
            "contrast check": best_ms(lambda: float(contrast(state, previous, 1e-4)), 200),
        }


torch.set_num_threads(1)
for name in ("res_10x64", "fre_2x512"):
    timings = measure(name)
    print(name, ", ".join(f"{key} {value:.2f} ms" for key, value in timings.items()))
