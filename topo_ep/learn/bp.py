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
from topo_ep.learn.base import (
    BatchResult,
    Gradients,
    autograd_gradients,
    cross_entropy_and_correct,
    write_gradients,
)
from topo_ep.learn.registry import METHODS
from topo_ep.spec import TopologySpec


def feedforward_state(net: CompiledNetwork, x: Tensor) -> list[Tensor]:
    """States of the feedforward pass (feedback edges removed) of the raw batch ``x``."""
    drives = net.input_drive(x)
    state: list[Tensor] = list(drives)
    for k in net.order:
        state[k] = net.activations[k].fn(net.feedforward_preactivation(k, state, drives[k]))
    return state


def bp_gradients(net: CompiledNetwork, x: Tensor, y: Tensor) -> tuple[Gradients, Tensor]:
    """dL/dtheta of the feedforward pass for every learned tensor, and the logits.

    L is the mean cross-entropy of softmax(W_out s_top); ``.grad`` is left alone.
    """
    with torch.enable_grad():
        logits = net.readout_logits(feedforward_state(net, x)[net.top])
        loss = torch.nn.functional.cross_entropy(logits, y)
        grads = autograd_gradients(net, loss)
    return grads, logits.detach()


@METHODS.register("bp")
@dataclass(frozen=True)
class FeedforwardBackprop:
    """Feedforward BP on the compiled parameters (``--method bp``)."""

    name: str = "bp"

    @classmethod
    def from_spec(cls, spec: TopologySpec) -> FeedforwardBackprop:
        """BP has no settings of its own: feedback edges and dynamics are not used."""
        return cls()

    def gradients(self, net: CompiledNetwork, x: Tensor, y: Tensor) -> BatchResult:
        """Write ``.grad = dL/dtheta`` of the feedforward pass for every learned tensor."""
        grads, logits = bp_gradients(net, x, y)
        write_gradients(net, grads)
        loss_value, correct = cross_entropy_and_correct(logits, y)
        return BatchResult(loss_value, correct)

    def logits(self, net: CompiledNetwork, x: Tensor) -> Tensor:
        with torch.no_grad():
            return net.readout_logits(feedforward_state(net, x)[net.top])
