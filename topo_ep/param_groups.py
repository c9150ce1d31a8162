"""Optimizer settings per learned tensor, and the optimizer's parameter groups.

Every learned tensor takes its learning rate and weight decay from the part of the topology
that owns it, else from ``training``:

- an edge's tensors (its weight W, and any other tensor its block learns): the edge's ``lr`` /
  ``weight_decay``;
- a hidden layer's bias: the layer's;
- W_out and the readout bias: the readout's.

:func:`param_groups` gathers the tensors of :meth:`CompiledNetwork.learned_tensors
<topo_ep.compiler.CompiledNetwork.learned_tensors>` into one group per distinct
(lr, weight_decay). The order is deterministic: the tensors in the network's registration order
(:meth:`torch.nn.Module.parameters`), the groups in the order of their first tensor. A topology
that sets no rate therefore gives one group in exactly the order of the single group built
before per-tensor rates existed, so earlier optimizer states still load.

The learning-rate schedule scales each group's own base rate:
lr_g(e) = lr_g * factor(e), with factor = 1 (``constant``) or (1 + cos(pi (e - 1) / E)) / 2
(``cosine``), e = 1 .. E (:func:`schedule_factor`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from topo_ep.compiler import CompiledNetwork
from topo_ep.params import ParamKey
from topo_ep.spec import TopologySpec


@dataclass(frozen=True)
class TensorRate:
    """The optimizer settings of one learned tensor.

    Attributes
    ----------
    lr
        Base learning rate (before the schedule).
    weight_decay
        Weight decay.
    owner
        Where the setting comes from: ``edges[i]``, ``layers[i]``, ``readout`` (set there), or
        ``training`` (the default).
    """

    lr: float
    weight_decay: float
    owner: str


@dataclass(frozen=True)
class ParamGroup:
    """One optimizer parameter group: the tensors that share a (lr, weight_decay).

    Attributes
    ----------
    lr
        The group's base learning rate, which the schedule scales.
    weight_decay
        The group's weight decay.
    keys
        The tensors' names, in the group's order.
    tensors
        The tensors themselves, in the same order.
    """

    lr: float
    weight_decay: float
    keys: tuple[ParamKey, ...]
    tensors: tuple[Tensor, ...]

    def describe(self) -> str:
        """``lr 0.015, weight_decay 1e-05: input->h1:forward, bias:h1``."""
        names = ", ".join(str(key) for key in self.keys)
        return f"lr {self.lr:g}, weight_decay {self.weight_decay:g}: {names}"


def tensor_rate(spec: TopologySpec, key: ParamKey) -> TensorRate:
    """The learning rate and weight decay of the learned tensor ``key``.

    The readout's tensors take the readout's settings, a hidden layer's bias the layer's, and
    every other tensor those of the edge that owns it (``key.name`` is the edge key); each
    setting left unset there is ``training``'s.

    Raises
    ------
    KeyError
        When ``key`` names no edge, layer or readout of ``spec``.
    """
    training = spec.training
    if key.is_readout:
        lr, decay, owner = spec.readout.lr, spec.readout.weight_decay, "readout"
    elif key.kind == "bias":
        index = spec.layer_names.index(key.name)
        layer = spec.layers[index]
        lr, decay, owner = layer.lr, layer.weight_decay, f"layers[{index}]"
    else:
        keys = [edge.key for edge in spec.edges]
        if key.name not in keys:
            raise KeyError(f"no edge {key.name!r} owns the learned tensor {key}")
        index = keys.index(key.name)
        edge = spec.edges[index]
        lr, decay, owner = edge.lr, edge.weight_decay, f"edges[{index}]"
    if lr is None and decay is None:
        owner = "training"
    return TensorRate(
        lr=training.lr if lr is None else lr,
        weight_decay=training.weight_decay if decay is None else decay,
        owner=owner,
    )


def param_groups(net: CompiledNetwork, spec: TopologySpec | None = None) -> list[ParamGroup]:
    """The learned tensors of ``net`` in one group per distinct (lr, weight_decay) of ``spec``
    (default: the topology ``net`` was compiled from).

    Tensors are taken in the order of ``net.parameters()``; a group comes where its first
    tensor does. Every parameter of the network must be a learned tensor (have a
    :class:`~topo_ep.params.ParamKey`), so that none is left out of the optimizer unnoticed.

    Raises
    ------
    RuntimeError
        When a parameter of ``net`` is missing from ``net.learned_tensors()`` or the reverse
        (a block that registers a tensor without naming it; a programming error).
    """
    learned = net.learned_tensors()
    key_of = {id(tensor): key for key, tensor in learned.items()}
    ordered = list(net.parameters())
    unnamed = [name for name, p in net.named_parameters() if id(p) not in key_of]
    if unnamed or len(key_of) != len(learned) or len(ordered) != len(learned):
        raise RuntimeError(
            "the network's parameters and its learned tensors differ (parameters without a "
            f"ParamKey: {', '.join(unnamed) or 'none'}): every nn.Parameter must be listed "
            "once by CompiledNetwork.learned_tensors(), under its ParamKey"
        )
    grouped: dict[tuple[float, float], list[tuple[ParamKey, Tensor]]] = {}
    for tensor in ordered:
        key = key_of[id(tensor)]
        rate = tensor_rate(net.spec if spec is None else spec, key)
        grouped.setdefault((rate.lr, rate.weight_decay), []).append((key, tensor))
    return [
        ParamGroup(
            lr=lr,
            weight_decay=decay,
            keys=tuple(key for key, _ in members),
            tensors=tuple(tensor for _, tensor in members),
        )
        for (lr, decay), members in grouped.items()
    ]


def make_optimizer(net: CompiledNetwork, spec: TopologySpec) -> torch.optim.Optimizer:
    """The optimizer named in ``training.optimizer`` (``adam`` or ``sgd``) over every learned
    tensor, with one parameter group per (lr, weight_decay) of :func:`param_groups`, in that
    order (``spec``: the topology ``net`` was compiled from)."""
    t = spec.training
    groups = [
        {"params": list(group.tensors), "lr": group.lr, "weight_decay": group.weight_decay}
        for group in param_groups(net, spec)
    ]
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(groups, lr=t.lr, weight_decay=t.weight_decay)


def schedule_factor(spec: TopologySpec, epoch: int, epochs: int) -> float:
    """The factor of the learning-rate schedule at ``epoch`` (1-based, of ``epochs``):
    1 for ``constant``, (1 + cos(pi (epoch - 1) / epochs)) / 2 for ``cosine``."""
    if spec.training.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    return 1.0


def describe_rates(groups: list[ParamGroup], factor: float = 1.0) -> str:
    """The learning rates of ``groups`` at schedule factor ``factor``, for messages:
    ``0.015 (input->h1:forward), 0.9 (readout, readout:bias)``."""
    return "; ".join(
        f"{group.lr * factor:g} ({', '.join(str(key) for key in group.keys)})" for group in groups
    )
