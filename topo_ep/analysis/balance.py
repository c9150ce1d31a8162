"""Does a topology have an energy, and if not, why not.

An energy exists when the couplings between hidden layers can be symmetrised by a diagonal
rescaling u_k = c_k s_k: every coupling tied (feedback = transposed forward weight) and the gains
balanced around every cycle of the layer graph (:func:`topo_ep.balance.analyse_balance`). Then
block updates never increase E. Without an energy only contraction arguments (Jacobian, Lyapunov
exponent) describe the dynamics.
"""

from __future__ import annotations

from dataclasses import dataclass

from topo_ep.balance import analyse_balance
from topo_ep.spec import TopologySpec


@dataclass(frozen=True)
class BalanceReport:
    """Whether the topology has an energy.

    Attributes
    ----------
    balanced
        An energy exists.
    reason
        One sentence: why it exists, or which coupling or cycle prevents it.
    scales
        The scales c_k when balanced, else ``None``.
    """

    balanced: bool
    reason: str
    scales: dict[str, float] | None


def balance_report(spec: TopologySpec) -> BalanceReport:
    """Say whether ``spec`` has an energy, naming the coupling or cycle that breaks it."""
    balance = analyse_balance(spec)
    scales = dict(balance.scales) if balance.scales is not None else None
    return BalanceReport(bool(balance.balanced), balance.reason.rstrip("."), scales)
