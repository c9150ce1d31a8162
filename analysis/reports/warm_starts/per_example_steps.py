"""Per-example free-phase steps, cold (from zero) and warm (from the stored state), at the final
weights of the warm-started fre_2x512 run of run.sh: how many steps each example needs until its
own residual r_b (topo_ep.engine.state_change) is <= 1e-4, against the batch's maximum that
decides when the phase stops.

    python analysis/reports/warm_starts/per_example_steps.py /tmp/warm_runs/fre_2x512_warm_true
"""

from __future__ import annotations

import sys

import torch

from topo_ep.checkpoint import load_checkpoint
from topo_ep.compiler import compile_topology
from topo_ep.data import load_dataset
from topo_ep.engine import relax, state_change
from topo_ep.validate import spec_from_dict


def steps_per_example(net, drives, start, schedule, tolerance=1e-4, limit=30):
    """First step t at which each example's residual is <= tolerance."""
    first = torch.full((drives[0].shape[0],), limit + 1)

    def observe(t, new, old):
        done = (state_change(new, old) <= tolerance) & (first > limit)
        first[done] = t
        return bool((first <= limit).all())

    relax(net, start, drives, schedule, limit, 0.0, 1, observe=observe, zero_start=start is None)
    return first


def main(run: str) -> None:
    payload = load_checkpoint(run)
    spec = spec_from_dict(payload["spec"])
    net = compile_topology(spec, seed=0)
    net.load_state_dict(payload["model"])
    data = load_dataset("mnist", "/work/shared/data/mnist", seed=0, limit=10000)
    index = torch.arange(500)
    with torch.no_grad():
        drives = net.input_drive(data.train.x[index])
        zeros = net.layout.zeros(500, dtype=torch.float32, device=torch.device("cpu"))
        warm = net.layout.unflatten(payload["warm_states"][index])
        for name, start in (("cold", None), ("warm", warm)):
            steps = steps_per_example(net, drives, start or zeros, spec.dynamics.schedule)
            print(
                f"{name}: per-example steps mean {steps.float().mean():.2f}, median "
                f"{steps.median():.0f}, max {steps.max():.0f} (the phase stops at the max)"
            )


if __name__ == "__main__":
    main(sys.argv[1])
