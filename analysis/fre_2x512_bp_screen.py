"""Screen of input scaling, initialisation and learning-rate schedule for fre_2x512 with BP.

The network is the feedforward part of topologies/fre_2x512.yaml, written in plain torch:
784-512-512-10, tanh, no biases, softmax cross-entropy, Adam lr 1e-3, batch 500, 10 epochs,
on topo-ep's MNIST split (55000 / 5000 / 10000). Each configuration runs 2 seeds and prints one
JSON line per seed with the final validation and test accuracy. Choose on validation accuracy.

Configurations are ``INIT,INPUTS,SCHEDULE``: INIT ``glorot`` (topo-ep's), ``default``
(PyTorch's ``nn.Linear``, U(+-1/sqrt(fan_in))) or ``lecun`` (U(+-sqrt(3/fan_in))); INPUTS ``raw``
(pixels in [0, 1]) or ``std`` ((x - mean) / std over the training split); SCHEDULE
``constant`` or ``cosine``.

    python analysis/fre_2x512_bp_screen.py --data-dir ../shared/data/mnist \
        glorot,raw,constant glorot,raw,cosine default,raw,constant glorot,std,constant
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from topo_ep.data import load_dataset

SIZES = (784, 512, 512, 10)


def initial_weights(init: str, generator: torch.Generator) -> list[torch.Tensor]:
    """U(-a, a) weights of the three layers, a from ``init``."""
    weights = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:], strict=True):
        bound = {
            "glorot": math.sqrt(6 / (fan_in + fan_out)),
            "default": 1 / math.sqrt(fan_in),
            "lecun": math.sqrt(3 / fan_in),
        }[init]
        weight = (torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound
        weights.append(weight.requires_grad_())
    return weights


def run(data, config: str, seed: int, epochs: int = 10, lr: float = 1e-3, batch: int = 500):
    """Final (validation, test) accuracy of one configuration and seed."""
    init, inputs, schedule = config.split(",")
    generator = torch.Generator().manual_seed(seed)
    weights = initial_weights(init, generator)
    mean, std = (data.train.x.mean(), data.train.x.std()) if inputs == "std" else (0.0, 1.0)

    def logits(x: torch.Tensor) -> torch.Tensor:
        s = (x - mean) / std
        for weight in weights[:-1]:
            s = torch.tanh(s @ weight)
        return s @ weights[-1]

    optimizer = torch.optim.Adam(weights, lr=lr)
    n = len(data.train)
    total, step = epochs * math.ceil(n / batch), 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch):
            index = order[start : start + batch]
            if schedule == "cosine":
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            x, y = data.train.x[index], data.train.y[index]
            loss = torch.nn.functional.cross_entropy(logits(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    with torch.no_grad():
        val = (logits(data.val.x).argmax(1) == data.val.y).float().mean().item()
        test = (logits(data.test.x).argmax(1) == data.test.y).float().mean().item()
    return val, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", help="INIT,INPUTS,SCHEDULE")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist", args.data_dir, seed=0)
    for config in args.configs:
        for seed in args.seeds:
            start = time.time()
            val, test = run(data, config, seed)
            record = {"config": config, "seed": seed, "val": round(100 * val, 2)}
            record.update(test=round(100 * test, 2), seconds=round(time.time() - start))
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
