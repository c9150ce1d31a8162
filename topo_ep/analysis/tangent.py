"""The relaxation step and its linearisation (tangent map), for every schedule.

One step of a schedule updates the groups of layers in turn (see :mod:`topo_ep.engine`):

    s_k <- rho_k(h_k),   h_k = d_k + (M s)_k   for k in the group, s the newest state.

Its derivative, applied to a tangent vector delta, follows the same order:

    delta_k <- rho_k'(h_k) * (M delta)_k   for k in the group, delta the newest tangent.

For the synchronous schedule (one group) this is delta <- diag(rho'(h)) M delta, the Jacobian
J = diag(rho'(h)) M of the paper's update map; for the sweep it is the Gauss-Seidel Jacobian,
the product of the group maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from topo_ep.balance import state_dependent_couplings
from topo_ep.compiler import CompiledNetwork, Schedule
from topo_ep.errors import TopoEpError


def operator_rows(net: CompiledNetwork, k: int, vector: list[Tensor]) -> Tensor:
    """(M v)_k = sum_{j->k} g A_kj v_j for a batch of per-layer vectors v (no drive).

    Raises
    ------
    TopoEpError
        When a coupling depends on the state (a max pooling): there is no fixed M to apply to
        a tangent vector, and applying the blocks to it would pool at the tangent's argmax.
    """
    dependent = state_dependent_couplings(net.spec)
    if dependent:
        raise TopoEpError(
            f"the linearised dynamics need a fixed hidden operator, but {'; '.join(dependent)}: "
            "the operator depends on the state (no Jacobian or Lyapunov exponent from it)"
        )
    zero = vector[k].new_zeros(vector[k].shape[0], net.layout.sizes[k])
    return net.preactivation(k, vector, zero)


def preactivations(
    net: CompiledNetwork, state: Sequence[Tensor], drives: Sequence[Tensor]
) -> list[Tensor]:
    """h_k = d_k + (M s)_k of every layer, all from the same state ``s``."""
    parts = list(state)
    return [net.preactivation(k, parts, drives[k]) for k in range(len(parts))]


def derivatives(net: CompiledNetwork, pre: Sequence[Tensor]) -> list[Tensor]:
    """rho_k'(h_k) of every layer."""
    return [net.activations[k].derivative(h) for k, h in enumerate(pre)]


def tangent_step(
    net: CompiledNetwork,
    tangent: Sequence[Tensor],
    derivative: Sequence[Tensor],
    schedule: Schedule,
) -> list[Tensor]:
    """Apply the schedule's Jacobian at a fixed point to a batch of tangent vectors.

    For each group in turn, delta_k <- rho_k'(h_k) * (M delta)_k with the newest delta.
    ``derivative`` holds rho_k'(h_k) at the fixed point, each (batch, n_k) or (1, n_k).
    """
    new = list(tangent)
    for group in schedule:
        rows = [operator_rows(net, k, new) for k in group]
        for k, row in zip(group, rows, strict=True):
            new[k] = derivative[k] * row
    return new


def step_with_tangent(
    net: CompiledNetwork,
    state: Sequence[Tensor],
    tangent: Sequence[Tensor],
    drives: Sequence[Tensor],
    schedule: Schedule,
) -> tuple[list[Tensor], list[Tensor]]:
    """One step of the schedule and of its linearisation along the trajectory.

    Returns the new state (identical to :func:`topo_ep.engine.step`) and the tangent
    delta_k <- rho_k'(h_k) * (M delta)_k, with h_k the pre-activation the step used.
    """
    new_state, new_tangent = list(state), list(tangent)
    for group in schedule:
        pre = [net.preactivation(k, new_state, drives[k]) for k in group]
        rows = [operator_rows(net, k, new_tangent) for k in group]
        for k, h, row in zip(group, pre, rows, strict=True):
            activation = net.activations[k]
            new_state[k] = activation.fn(h)
            new_tangent[k] = activation.derivative(h) * row
    return new_state, new_tangent


def per_sample_norm(parts: Sequence[Tensor]) -> Tensor:
    """Euclidean norm of each sample's flat vector, shape (batch,)."""
    return torch.sqrt(sum(p.pow(2).sum(dim=-1) for p in parts))
