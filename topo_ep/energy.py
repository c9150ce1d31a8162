"""The Hopfield-type energy of a balanced topology.

Dynamics (per layer k, states as row vectors): s_k = rho_k(h_k) with

    h_k = sum_{j->k} g_jk A_jk s_j + d_k,    d_k = sum_{input edges} g W x + b_k (+ nudge term),

i.e. h = M s + d with M the gain-scaled hidden operator. When the gains balance
(:func:`analyse_balance`), positive weights w_k = c_k^2 satisfy w_k M_kj = w_j M_jk^T for
every pair of layers, and

    E(s) = sum_k w_k [ sum_i G_k(s_ki) - d_k . s_k ] - 1/2 sum_{k,j} w_k s_k . M_kj s_j,

with G_k' = rho_k^{-1} (:attr:`topo_ep.activations.Activation.potential`). In the rescaled
variables u_k = c_k s_k this is the familiar form

    E(u) = sum_k c_k^2 sum_i G_k(u_ki / c_k) - 1/2 u^T A u - b'^T u,
    A_kj = (c_k / c_j) M_kj (symmetric),  b'_k = c_k d_k.

Its partial gradient is dE/ds_k = w_k (rho_k^{-1}(s_k) - h_k). Minimising E over a group of
layers with no edge inside it decouples into one strictly convex problem per unit, whose
minimiser is s_k = rho_k(h_k): exactly the group update of the ``colour`` (and ``sweep``)
schedule. So E never rises under those schedules, whatever the skips.

The nudged phase with the error held at its free value adds the constant drive
nudge * (y - p(s_top^0)) B_f to the top layer (:func:`held_nudge_term`); it enters E as one more
linear term, -w_top nudge (y - p^0) B_f . s_top, and the descent still holds. With the error
re-read every step the update is no longer an exact minimisation, and no such guarantee holds.

G for tanh is 1/2 [(1+s) ln(1+s) + (1-s) ln(1-s)], finite at |s| = 1 (tanh(19.5) == 1.0 in
float64), so E is finite at saturated states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from topo_ep.balance import Balance
from topo_ep.blocks import Joined
from topo_ep.compiler import CompiledNetwork, Schedule
from topo_ep.engine import relax
from topo_ep.errors import TopoEpError

__all__ = [
    "Energy",
    "EnergyTerms",
    "NoEnergyError",
    "energy",
    "energy_trace",
    "held_nudge_term",
]


class NoEnergyError(TopoEpError):
    """The topology has no energy; the message says which cycle or coupling breaks it."""

    def __init__(self, balance: Balance) -> None:
        self.balance = balance
        super().__init__(balance.reason)


@dataclass(frozen=True)
class EnergyTerms:
    """The three parts of E(s), each one value per sample, shape (batch,).

    Attributes
    ----------
    potential
        sum_k w_k sum_i G_k(s_ki).
    drive
        -sum_k w_k d_k . s_k.
    interaction
        -1/2 sum_{k,j} w_k s_k . M_kj s_j.
    """

    potential: Tensor
    drive: Tensor
    interaction: Tensor

    @property
    def total(self) -> Tensor:
        """E = potential + drive + interaction."""
        return self.potential + self.drive + self.interaction

    @property
    def magnitude(self) -> Tensor:
        """|potential| + |drive| + |interaction|: the size of the rounding error of E."""
        return self.potential.abs() + self.drive.abs() + self.interaction.abs()


class Energy:
    """The energy E(s) of a compiled network whose topology is balanced.

    The weights w_k = c_k^2 depend only on the gains, so one :class:`Energy` stays valid while
    the network learns (its blocks are read at every call).

    Parameters
    ----------
    net
        The compiled network.
    balance
        The result of :func:`analyse_balance` for ``net.spec``, if already computed.

    Raises
    ------
    NoEnergyError
        The topology is not balanced; the message names the breaking cycle or coupling.

    Examples
    --------
    >>> energy_of = Energy(net)                       # doctest: +SKIP
    >>> drives = energy_of.drives(x)                  # doctest: +SKIP
    >>> energy_of(state, drives)                      # one value per sample  # doctest: +SKIP
    """

    def __init__(self, net: CompiledNetwork, balance: Balance | None = None) -> None:
        balance = net.balance if balance is None else balance
        if not balance.balanced or balance.scales is None:
            raise NoEnergyError(balance)
        self.net = net
        self.balance = balance
        #: w_k = c_k^2 in layout order.
        self.weights: tuple[float, ...] = tuple(
            balance.scales[name] ** 2 for name in net.layout.names
        )

    @property
    def scales(self) -> dict[str, float]:
        """c_k per layer name (u_k = c_k s_k)."""
        assert self.balance.scales is not None
        return dict(self.balance.scales)

    def drives(self, x: Tensor, nudge_term: Tensor | None = None) -> list[Tensor]:
        """d_k per layer: the input drive, plus ``nudge_term`` on the readout's source layer."""
        drives = self.net.input_drive(x)
        if nudge_term is not None:
            drives[self.net.top] = drives[self.net.top] + nudge_term
        return drives

    def terms(self, state: Sequence[Tensor], drives: Sequence[Tensor]) -> EnergyTerms:
        """The potential, drive and interaction parts of E(s) (see :class:`EnergyTerms`).

        Parameters
        ----------
        state
            s_k per layer, (batch, n_k), in layout order.
        drives
            d_k per layer, (batch, n_k), e.g. from :meth:`drives`.
        """
        net = self.net
        potential = drive = interaction = None
        for k, weight in enumerate(self.weights):
            s = state[k]
            coupled = net.preactivation(k, list(state), torch.zeros_like(s))  # (M s)_k
            parts = (
                weight * net.activations[k].potential(s).sum(dim=-1),
                -weight * (drives[k] * s).sum(dim=-1),
                -0.5 * weight * (coupled * s).sum(dim=-1),
            )
            if potential is None:
                potential, drive, interaction = parts
            else:
                potential = potential + parts[0]
                drive = drive + parts[1]
                interaction = interaction + parts[2]
        assert potential is not None and drive is not None and interaction is not None
        return EnergyTerms(potential, drive, interaction)

    def __call__(self, state: Sequence[Tensor], drives: Sequence[Tensor]) -> Tensor:
        """E(s), one value per sample, shape (batch,)."""
        return self.terms(state, drives).total


def energy(
    net: CompiledNetwork,
    state: Sequence[Tensor],
    x: Tensor,
    nudge_term: Tensor | None = None,
) -> Tensor:
    """E(s) of ``state`` with input ``x`` clamped, one value per sample.

    Parameters
    ----------
    net
        A compiled network with a balanced topology.
    state
        s_k per layer, (batch, n_k), in layout order.
    x
        The input, (batch, n_input).
    nudge_term
        The held nudge drive of the top layer (:func:`held_nudge_term`), or ``None`` for the
        free phase.

    Raises
    ------
    NoEnergyError
        When the topology has no energy.
    """
    energy_of = Energy(net)
    return energy_of(state, energy_of.drives(x, nudge_term))


def held_nudge_term(
    net: CompiledNetwork, free: Sequence[Tensor], y: Tensor, nudge: float
) -> Tensor:
    """nudge * (onehot(y) - softmax(W_out s_top^0)) B_f: the nudged phase's constant top drive.

    The same term :class:`topo_ep.learn.ep.EquilibriumPropagation` adds with ``error: held``.

    Parameters
    ----------
    net
        The compiled network.
    free
        The free-phase state.
    y
        Class labels, (batch,).
    nudge
        The signed nudge strength.
    """
    with torch.no_grad():
        probabilities = net.readout(list(free))
        target = torch.nn.functional.one_hot(y, net.spec.readout.size).to(probabilities.dtype)
        top = free[net.top]
        return nudge * net.head.feedback_of(target - probabilities, Joined(None, top))


def energy_trace(
    net: CompiledNetwork,
    drives: Sequence[Tensor],
    schedule: Schedule,
    steps: int,
    start: Sequence[Tensor] | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """E after each of ``steps`` steps of ``schedule``, and the final state.

    Parameters
    ----------
    net
        A compiled network with a balanced topology.
    drives
        d_k per layer (:meth:`Energy.drives`), nudge term included for a nudged phase.
    schedule
        Groups of layer indices (:meth:`~topo_ep.compiler.CompiledNetwork.schedule`, or any
        grouping).
    steps
        Number of steps.
    start
        The start state (default zero).

    Returns
    -------
    trace, state
        ``trace`` has shape (steps + 1, batch): E of the start state, then after every step.
    """
    energy_of = Energy(net)
    batch = drives[0].shape[0]
    state = (
        net.layout.zeros(batch, dtype=net.dtype, device=net.device)
        if start is None
        else list(start)
    )
    with torch.no_grad():
        values = [energy_of(state, drives)]

        def record(_t: int, new: list[Tensor], _old: list[Tensor]) -> bool:
            values.append(energy_of(new, drives))
            return False

        state, _ = relax(net, state, drives, schedule, steps, observe=record)
    return torch.stack(values), state
