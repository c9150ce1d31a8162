"""Backprop baseline through the feedforward part of the same compiled parameters.

In feedforward order, h_k = sum_{input edges} g W x + b_k + sum_{forward/skip j->k} g W s_j and
s_k = rho(h_k); feedback edges are left out. The loss is the cross-entropy of
softmax(W_out s_top) and autograd writes ``.grad`` of the same tensors EP trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from topo_ep.compiler import CompiledNetwork
from topo_ep.learn.base import BatchResult, cross_entropy_and_correct


def feedforward_state(net: CompiledNetwork, x: Tensor) -> list[Tensor]:
    """States of the feedforward pass (feedback edges removed), one tensor per layer."""
    drives = net.input_drive(x)
    state: list[Tensor] = list(drives)
    for k in net.order:
        acc = drives[k]
        for source, block in net.feedforward_incoming[k]:
            acc = block.accumulate(acc, state[source])
        state[k] = net.activations[k].fn(acc)
    return state


@dataclass(frozen=True)
class FeedforwardBackprop:
    """Feedforward BP on the compiled parameters (``--method bp``)."""

    name: str = "bp"

    def gradients(self, net: CompiledNetwork, x: Tensor, y: Tensor) -> BatchResult:
        with torch.enable_grad():
            logits = net.readout_logits(feedforward_state(net, x)[net.top])
            loss = torch.nn.functional.cross_entropy(logits, y)
            loss.backward()
        loss_value, correct = cross_entropy_and_correct(logits.detach(), y)
        return BatchResult(loss_value, correct)

    def logits(self, net: CompiledNetwork, x: Tensor) -> Tensor:
        with torch.no_grad():
            return net.readout_logits(feedforward_state(net, x)[net.top])
