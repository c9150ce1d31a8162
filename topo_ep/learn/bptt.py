"""Backprop through time: autograd through the unrolled free relaxation.

The free phase runs exactly T = ``free_steps`` steps of the topology's schedule from s_0 = 0,

    s_{t+1} = step(s_t)   (for ``synchronous``: s_{t+1} = rho(M s_t + d)),

on the same compiled tensors, with autograd recording every step (the engine is
autograd-transparent outside ``torch.no_grad``). The loss is the mean cross-entropy of
softmax(W_out s_T) and autograd gives dL/dtheta of the unrolled map, tied weights included.
As T grows on a contracting network this converges to the implicit gradient at the fixed
point (:mod:`topo_ep.learn.implicit`); at the paper's T it is the gradient of what the network
computes in T steps. Memory grows linearly in T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from topo_ep.compiler import CompiledNetwork
from topo_ep.engine import PhaseStats, free_phase
from topo_ep.learn.base import (
    BatchResult,
    Gradients,
    autograd_gradients,
    cross_entropy_and_correct,
    write_gradients,
)
from topo_ep.learn.registry import METHODS
from topo_ep.spec import TopologySpec


def bptt_gradients(
    net: CompiledNetwork,
    x: Tensor,
    y: Tensor,
    *,
    schedule: str = "synchronous",
    steps: int = 20,
) -> tuple[Gradients, Tensor, PhaseStats]:
    """dL/dtheta through ``steps`` unrolled steps of ``schedule`` from zero.

    Returns the gradients (every learned tensor; zero for a tensor the loss does not reach),
    the logits at s_T and the phase statistics. ``.grad`` is left alone.
    """
    with torch.enable_grad():
        state, stats = free_phase(net, net.input_drive(x), schedule, steps)
        logits = net.readout_logits(state[net.top])
        loss = torch.nn.functional.cross_entropy(logits, y)
        grads = autograd_gradients(net, loss)
    return grads, logits.detach(), stats


@METHODS.register("bptt")
@dataclass(frozen=True)
class BackpropThroughTime:
    """BPTT through the free phase (``--method bptt``): the topology's schedule, exactly
    ``free_steps`` steps (the tolerance is not used: the unrolled graph has a fixed length)."""

    schedule: str = "synchronous"
    free_steps: int = 20
    name: str = "bptt"

    @classmethod
    def from_spec(cls, spec: TopologySpec) -> BackpropThroughTime:
        return cls(schedule=spec.dynamics.schedule, free_steps=spec.dynamics.free_steps)

    def gradients(self, net: CompiledNetwork, x: Tensor, y: Tensor) -> BatchResult:
        """Write ``.grad = dL/dtheta`` of the unrolled relaxation for every learned tensor."""
        grads, logits, stats = bptt_gradients(
            net, x, y, schedule=self.schedule, steps=self.free_steps
        )
        write_gradients(net, grads)
        loss, correct = cross_entropy_and_correct(logits, y)
        return BatchResult(loss, correct, free_steps=stats.steps)

    def logits(self, net: CompiledNetwork, x: Tensor) -> Tensor:
        """Readout logits after ``free_steps`` steps from zero (the state BPTT trains)."""
        with torch.no_grad():
            state, _ = free_phase(net, net.input_drive(x), self.schedule, self.free_steps)
            return net.readout_logits(state[net.top])
