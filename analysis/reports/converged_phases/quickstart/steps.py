"""Steps per batch of the quick start's EP on its first 80 digits training batches (batch 16,
seed 0), for the README of analysis/reports/converged_phases. Run it with this checkout's
topo_ep, then with the old criterion's (main before the converge branch) first on the path:

    python analysis/reports/converged_phases/quickstart/steps.py
    PYTHONPATH=/path/to/old/checkout python analysis/reports/converged_phases/quickstart/steps.py
"""

from pathlib import Path

import torch

import topo_ep
from topo_ep.compiler import compile_topology
from topo_ep.data import load_dataset
from topo_ep.learn import make_method
from topo_ep.loader import load_topology
from topo_ep.param_groups import make_optimizer

BATCH, BATCHES = 16, 80

torch.set_num_threads(1)
spec = load_topology(Path(__file__).resolve().parents[4] / "topologies" / "quickstart.yaml")
net = compile_topology(spec, seed=0)
method = make_method("ep", spec)
optimizer = make_optimizer(net, spec)
data = load_dataset("digits")
order = torch.randperm(len(data.train.y), generator=torch.Generator().manual_seed(0))
free = nudged = converged = 0
for start in range(0, BATCH * BATCHES, BATCH):
    chosen = order[start : start + BATCH]
    optimizer.zero_grad()
    result = method.gradients(net, data.train.x[chosen], data.train.y[chosen])
    optimizer.step()
    free += result.free_steps
    nudged += result.nudged_steps
    converged += result.converged
print(topo_ep.__file__)
print(
    f"batches {BATCHES}: free {free / BATCHES:.2f} nudged {nudged / BATCHES:.2f} "
    f"converged {converged}/{BATCHES}"
)
