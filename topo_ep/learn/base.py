"""The interface every learning method implements, and the factory that picks one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from topo_ep.compiler import CompiledNetwork
from topo_ep.spec import TopologySpec

METHODS = ("ep", "bp", "bptt", "implicit")
#: Key of the readout weight W_out in gradient dictionaries (see :func:`learned_tensors`).
READOUT_WEIGHT = "readout"
#: Key of the readout bias in gradient dictionaries.
READOUT_BIAS = "readout:bias"


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


def learned_tensors(net: CompiledNetwork) -> dict[str, Tensor]:
    """Every learned tensor of ``net`` under the keys the learners use for gradients.

    Weights by their tensor name (``net.weights`` keys, e.g. ``input->h1:forward``), hidden
    biases as ``bias:<layer>``, the readout weight as :data:`READOUT_WEIGHT` and its bias as
    :data:`READOUT_BIAS`. Edge tensor names contain ``->``, so the keys never collide.
    """
    out: dict[str, Tensor] = dict(net.weights.items())
    out.update({f"bias:{name}": bias for name, bias in net.biases.items()})
    out[READOUT_WEIGHT] = net.readout_weight
    if net.readout_bias is not None:
        out[READOUT_BIAS] = net.readout_bias
    return out


def write_gradients(net: CompiledNetwork, grads: dict[str, Tensor]) -> None:
    """Set ``.grad`` of every learned tensor from ``grads`` (keys of :func:`learned_tensors`).

    A tensor missing from ``grads`` gets a zero gradient, so an optimizer step never reuses a
    stale one. Gradients are detached copies.
    """
    for key, tensor in learned_tensors(net).items():
        grad = grads.get(key)
        tensor.grad = torch.zeros_like(tensor) if grad is None else grad.detach().clone()


def make_method(name: str, spec: TopologySpec) -> Method:
    """The method called ``name`` (one of :data:`METHODS`) configured from the spec."""
    if name == "ep":
        from topo_ep.learn.ep import EquilibriumPropagation

        return EquilibriumPropagation.from_spec(spec)
    if name == "bp":
        from topo_ep.learn.bp import FeedforwardBackprop

        return FeedforwardBackprop()
    if name == "bptt":
        from topo_ep.learn.bptt import BackpropThroughTime

        return BackpropThroughTime.from_spec(spec)
    if name == "implicit":
        from topo_ep.learn.implicit import ImplicitDifferentiation

        return ImplicitDifferentiation.from_spec(spec)
    raise ValueError(f"unknown method {name!r}; expected one of {METHODS}")
