"""The interface every learning method implements, and the factory that picks one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from topo_ep.compiler import CompiledNetwork
from topo_ep.spec import TopologySpec

METHODS = ("ep", "bp")


@dataclass(frozen=True)
class BatchResult:
    """Outcome of one gradient computation on a batch.

    ``loss`` (mean cross-entropy) and ``correct`` (count) stay tensors so that the training loop
    syncs with the device once per epoch, not once per batch.
    """

    loss: Tensor
    correct: Tensor
    free_steps: int = 0
    nudged_steps: int = 0
    converged: bool = True


class Method(Protocol):
    """A training method: writes gradients into ``.grad`` and defines the prediction."""

    name: str

    def gradients(self, net: CompiledNetwork, x: Tensor, y: Tensor) -> BatchResult: ...

    def logits(self, net: CompiledNetwork, x: Tensor) -> Tensor: ...


def cross_entropy_and_correct(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy -log p_y and the number of argmax hits."""
    loss = torch.nn.functional.cross_entropy(logits, y)
    correct = (logits.argmax(dim=-1) == y).sum()
    return loss.detach(), correct


def make_method(name: str, spec: TopologySpec) -> Method:
    """The method called ``name`` (``ep`` or ``bp``) configured from the spec."""
    if name == "ep":
        from topo_ep.learn.ep import EquilibriumPropagation

        return EquilibriumPropagation.from_spec(spec)
    if name == "bp":
        from topo_ep.learn.bp import FeedforwardBackprop

        return FeedforwardBackprop()
    raise ValueError(f"unknown method {name!r}; expected one of {METHODS}")
