"""Short screen of the feedback gain of topologies/conv_mnist.yaml (the paper's 0.01, 0.1, 1).

For each gain: the topology with that gain on its feedback edge, seed 0, float32, EP as the
topology declares it, trained for ``--batches`` batches (one pass, no repeat) of the training
split's first examples in a fixed shuffled order, with the topology's optimizer: SGD at the
paper's per-layer rates in topo-ep's convention (conv1 and the h1 bias 0.015, conv2 and the h2
bias 0.035, the readout 0.9; weight decay 1e-5), then the accuracy of the free phase on the
first ``--val`` examples of the validation split. The test split is never read. One JSON line
per gain.

    nice python analysis/conv_mnist_gain_screen.py --data-dir /work/shared/data/mnist \
        --batches 12 --val 500 --gains 0.01 0.1 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from topo_ep.compiler import CompiledNetwork, compile_topology
from topo_ep.data import load_dataset
from topo_ep.learn import make_method
from topo_ep.loader import load_topology
from topo_ep.train import make_optimizer

TOPOLOGY = "topologies/conv_mnist.yaml"


def accuracy(method, net: CompiledNetwork, x: torch.Tensor, y: torch.Tensor) -> float:
    correct = 0
    for start in range(0, len(y), 500):
        logits = method.logits(net, x[start : start + 500])
        correct += int((logits.argmax(-1) == y[start : start + 500]).sum())
    return correct / len(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--batches", type=int, default=25)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--gains", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    args = parser.parse_args()
    torch.manual_seed(0)
    base = load_topology(TOPOLOGY)
    data = load_dataset("mnist", args.data_dir)
    batch = base.training.batch_size
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    order = order[: args.batches * batch]
    val_x, val_y = data.val.x[: args.val], data.val.y[: args.val]
    for gain in args.gains:
        spec = load_topology(TOPOLOGY, overrides=[f"feedback_gain={gain}"])
        net = compile_topology(spec, seed=0)
        method = make_method("ep", spec)
        optimizer = make_optimizer(net, spec)
        start = time.perf_counter()
        losses = []
        for b in range(args.batches):
            index = order[b * batch : (b + 1) * batch]
            optimizer.zero_grad(set_to_none=True)
            result = method.gradients(net, data.train.x[index], data.train.y[index])
            optimizer.step()
            losses.append(float(result.loss))
        seconds = time.perf_counter() - start
        line = {
            "gain": gain,
            "train_examples": len(order),
            "val_examples": len(val_y),
            "val_acc": accuracy(method, net, val_x, val_y),
            "first_batch_loss": losses[0],
            "last5_mean_loss": sum(losses[-5:]) / len(losses[-5:]),
            "train_seconds": round(seconds, 1),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
