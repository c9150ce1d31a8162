"""Follow a conv_mnist EP run batch by batch from a checkpoint, beside the BPTT gradient.

The one-sided nudge made ``topologies/conv_mnist.yaml`` collapse to chance in its second epoch
on a GPU (``analysis/reports/conv_mnist/README.md``). This script resumes a run directory's
checkpoint with the settings it was trained with, trains the next epoch exactly as ``topo-ep
train`` does (the same batch order, rates and optimizer), and logs after every batch:

- the batch's loss and accuracy at the free state;
- per learned tensor: the norm of the weights and of the EP gradient;
- every ``--every`` batches, the gradient of the same batch's loss at the same weights by
  backprop through the same T-step free relaxation (:mod:`topo_ep.learn.bptt`: the gradient EP
  estimates) and, per tensor, the cosine ``<g_EP, g_BPTT> / (|g_EP| |g_BPTT|)`` and the norm
  ratio ``|g_EP| / |g_BPTT|``.

One JSON line per batch into ``--out``; it stops after ``--batches`` batches or once the loss has
stayed above ``--stop-loss`` for 20 batches.

    nice -n 10 python analysis/conv_mnist_collapse.py /work/runs/conv_mnist/ep_s0 \
        --data-dir /work/shared/data/mnist --set training.nudging=one-sided \
        --out analysis/reports/conv_mnist/collapse/ep_s0_epoch2.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from topo_ep.data import iterate_indexed_batches, load_dataset
from topo_ep.learn import make_method
from topo_ep.loader import load_topology
from topo_ep.param_groups import schedule_factor
from topo_ep.train import RunSettings, Trainer, epoch_generator

TOPOLOGY = "topologies/conv_mnist.yaml"


def gradients(net) -> dict[str, torch.Tensor]:
    """A copy of every learned tensor's ``.grad``, by name."""
    return {str(key): t.grad.detach().clone() for key, t in net.learned_tensors().items()}


def compare(ep: dict[str, torch.Tensor], bp: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per tensor: the cosine of the EP and BPTT gradients and the ratio of their norms."""
    rows = {}
    for name, g in ep.items():
        h = bp[name]
        norms = float(g.norm()), float(h.norm())
        cosine = float((g * h).sum()) / (norms[0] * norms[1]) if min(norms) > 0 else float("nan")
        rows[name] = {"cosine": cosine, "norm_ratio": norms[0] / norms[1] if norms[1] else None}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the run directory (its checkpoint.pt and config)")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--set", action="append", default=[], help="the run's --set options")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=10**9)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--stop-loss", type=float, default=5.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    spec = load_topology(TOPOLOGY, args.set)
    data = load_dataset("mnist", args.data_dir)
    settings = RunSettings(
        method="ep", epochs=10, seed=args.seed, device="cpu", dataset="mnist",
        data_dir=args.data_dir,
    )  # fmt: skip
    trainer = Trainer(spec, data, settings, out_dir=None, progress=False)
    trainer.resume(Path(args.run) / "checkpoint.pt")
    epoch = trainer.start_epoch
    net, optimizer, method = trainer.net, trainer.optimizer, trainer.method
    backprop = make_method("bptt", spec)
    factor = schedule_factor(spec, epoch, settings.epochs)
    for group, base in zip(optimizer.param_groups, trainer.param_groups, strict=True):
        group["lr"] = base.lr * factor
    split = trainer.dataset.train
    batches = iterate_indexed_batches(
        split, spec.training.batch_size, epoch_generator(settings.seed, epoch)
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    high = 0
    with out.open("w", encoding="utf-8") as log:
        for batch, (_, x, y) in enumerate(batches):
            if batch >= args.batches or high >= 20:
                break
            began = time.perf_counter()
            row: dict = {"epoch": epoch, "batch": batch}
            if batch % args.every == 0:
                optimizer.zero_grad(set_to_none=True)
                backprop.gradients(net, x, y)
                bp = gradients(net)
            optimizer.zero_grad(set_to_none=True)
            result = method.gradients(net, x, y)
            ep = gradients(net)
            if batch % args.every == 0:
                row["ep_vs_bptt"] = compare(ep, bp)
            row["loss"] = float(result.loss)
            row["accuracy"] = int(result.correct) / len(y)
            tensors = net.learned_tensors().items()
            row["weight_norm"] = {str(k): float(t.detach().norm()) for k, t in tensors}
            row["ep_grad_norm"] = {n: float(g.norm()) for n, g in ep.items()}
            optimizer.step()
            row["seconds"] = round(time.perf_counter() - began, 2)
            high = high + 1 if row["loss"] > args.stop_loss else 0
            log.write(json.dumps(row) + "\n")
            log.flush()


if __name__ == "__main__":
    main()
