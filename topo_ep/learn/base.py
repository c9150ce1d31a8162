"""The interface every learning method implements, and the one writer of gradients.

A method's ``gradients(net, x, y)`` computes its gradient of every learned tensor, keyed by
:class:`~topo_ep.params.ParamKey`, and puts them into ``.grad`` with :func:`write_gradients`,
so every ``torch.optim`` optimizer applies them. Methods are registered by name in
:data:`topo_ep.learn.registry.METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from topo_ep.compiler import CompiledNetwork
from topo_ep.params import ParamKey
from topo_ep.spec import TopologySpec

#: Gradients of a method, one per learned tensor.
Gradients = dict[ParamKey, Tensor]


@dataclass(frozen=True)
class BatchResult:
    """Outcome of one gradient computation on a batch.

    ``loss`` (mean cross-entropy) and ``correct`` (count) stay tensors so that the training loop
    syncs with the device once per epoch, not once per batch. ``free_state`` is the free
    fixed point, one tensor per hidden layer, for methods that have one (EP), else ``None``; a
    warm-started run stores it (:mod:`topo_ep.warm_start`); it takes no part in equality.
    """

    loss: Tensor
    correct: Tensor
    free_steps: int = 0
    nudged_steps: int = 0
    converged: bool = True
    free_state: list[Tensor] | None = field(default=None, compare=False, repr=False)


class Method(Protocol):
    """A training method: writes gradients into ``.grad`` and defines the prediction.

    ``x`` is always the raw batch; the method passes it through
    :meth:`~topo_ep.compiler.CompiledNetwork.prepare_input` (via ``input_drive``).
    """

    name: str

    @classmethod
    def from_spec(cls, spec: TopologySpec) -> Method: ...

    def gradients(self, net: CompiledNetwork, x: Tensor, y: Tensor) -> BatchResult: ...

    def logits(self, net: CompiledNetwork, x: Tensor) -> Tensor: ...


def cross_entropy_and_correct(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy -log p_y and the number of argmax hits."""
    loss = torch.nn.functional.cross_entropy(logits, y)
    correct = (logits.argmax(dim=-1) == y).sum()
    return loss.detach(), correct


def autograd_gradients(net: CompiledNetwork, loss: Tensor) -> Gradients:
    """d loss / d theta for every learned tensor (zero where the loss does not reach)."""
    tensors = net.learned_tensors()
    found = torch.autograd.grad(loss, list(tensors.values()), allow_unused=True)
    return {
        key: torch.zeros_like(tensor) if grad is None else grad.detach()
        for (key, tensor), grad in zip(tensors.items(), found, strict=True)
    }


def write_gradients(net: CompiledNetwork, grads: Gradients) -> None:
    """Set ``.grad`` of every learned tensor from ``grads``.

    A tensor missing from ``grads`` gets a zero gradient, so an optimizer step never reuses a
    stale one. The gradients are stored detached.
    """
    for key, tensor in net.learned_tensors().items():
        grad = grads.get(key)
        tensor.grad = torch.zeros_like(tensor) if grad is None else grad.detach()
