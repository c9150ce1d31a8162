"""EP's contrast per layer in float32 rounding units, r_k / eps = ||c_k|| / (eps ||s_k^nudged||),
c_k = s_k^nudged - s_k^free, on the first 500 MNIST test images, for each checkpoint given, with
the net in float32 and in float64 (the same weights). Output: contrast_units.txt.

    python contrast_units.py CHECKPOINT [CHECKPOINT ...]
"""

from __future__ import annotations

import sys

import torch

from topo_ep.checkpoint import load_checkpoint
from topo_ep.compiler import compile_topology
from topo_ep.data import load_dataset
from topo_ep.learn import make_method
from topo_ep.validate import spec_from_dict

EPS32 = torch.finfo(torch.float32).eps
data = load_dataset("mnist", "/work/shared/data/mnist")
x, y = data.test.x[:500], data.test.y[:500]
for path in sys.argv[1:]:
    payload = load_checkpoint(path)
    spec = spec_from_dict(payload["spec"], filename=path)
    for dtype in (torch.float32, torch.float64):
        net = compile_topology(spec, dtype=dtype, feedback_scale=payload.get("feedback_scale"))
        net.load_state_dict(payload["model"])
        method = make_method("ep", spec)
        after, before = method.contrasted(method.estimate(net, x.to(dtype), y).phases)
        pairs = zip(after, before, strict=True)
        units = [float((a - b).norm() / a.norm()) / EPS32 for a, b in pairs]
        print(path, dtype, "units:", " ".join(f"{u:.3g}" for u in units))
