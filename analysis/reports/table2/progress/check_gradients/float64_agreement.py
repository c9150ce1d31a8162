"""The cosine of EP's float32 update with its float64 control, per learned tensor, on the first
64 MNIST training images (topo_ep.precision_check.float64_agreement), for each checkpoint given.
Output: float64_agreement.txt.

    python float64_agreement.py CHECKPOINT [CHECKPOINT ...]
"""

from __future__ import annotations

import sys

import torch

from topo_ep.checkpoint import load_checkpoint
from topo_ep.compiler import compile_topology
from topo_ep.data import load_dataset
from topo_ep.precision_check import float64_agreement
from topo_ep.validate import spec_from_dict

data = load_dataset("mnist", "/work/shared/data/mnist")
x, y = data.train.x[:64], data.train.y[:64]
for path in sys.argv[1:]:
    payload = load_checkpoint(path)
    spec = spec_from_dict(payload["spec"], filename=path)
    net = compile_topology(spec, dtype=torch.float32, feedback_scale=payload.get("feedback_scale"))
    net.load_state_dict(payload["model"])
    cosines = float64_agreement(net, x, y)
    print(path, " ".join(f"{key.split(':')[0]}={value:.3f}" for key, value in cosines.items()))
