"""Does a topology have an energy, and if not, why not.

An energy exists (:func:`topo_ep.graph.energy_scales`) when every hidden-to-hidden forward or
skip edge A->B (gain alpha) has a tied feedback partner B->A (gain beta), no other feedback edge
exists, and scales c with (c_B / c_A)^2 = beta / alpha exist consistently around every cycle.
Then u_k = c_k s_k makes the coupling symmetric and block updates never increase E. Without an
energy only contraction arguments (Jacobian, Lyapunov exponent) describe the dynamics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from topo_ep.graph import energy_scales, feedforward_order
from topo_ep.spec import INPUT, TopologySpec


@dataclass(frozen=True)
class BalanceReport:
    """Whether the topology has an energy.

    Attributes
    ----------
    balanced
        An energy exists.
    reason
        One sentence: why it exists or which edge prevents it.
    scales
        The scales c_k when balanced, else ``None``.
    """

    balanced: bool
    reason: str
    scales: dict[str, float] | None


def _tied_partner_gain(spec: TopologySpec, source: str, target: str) -> float | None:
    for edge in spec.edges:
        if (edge.source, edge.target, edge.kind) == (target, source, "feedback") and edge.is_tied:
            return edge.gain
    return None


def balance_report(spec: TopologySpec) -> BalanceReport:
    """Say whether ``spec`` has an energy, and name the first edge that breaks it.

    Uses :func:`topo_ep.graph.analyse_balance` when the installed graph module has it (it names
    the breaking cycle), else :func:`reference_balance_report`.
    """
    from topo_ep import graph

    analyse = getattr(graph, "analyse_balance", None)
    if analyse is None:
        return reference_balance_report(spec)
    balance = analyse(spec)
    scales = dict(balance.scales) if balance.scales is not None else None
    return BalanceReport(bool(balance.balanced), balance.reason.rstrip("."), scales)


def reference_balance_report(spec: TopologySpec) -> BalanceReport:
    """:func:`balance_report` from :func:`topo_ep.graph.energy_scales` alone."""
    scales = energy_scales(spec)
    if scales is not None:
        return BalanceReport(
            True,
            "tied feedback with gains balanced around every cycle: u_k = c_k s_k makes the "
            "coupling symmetric and an energy exists",
            dict(scales),
        )
    for edge in spec.edges:
        if edge.kind == "feedback" and not edge.is_tied:
            return BalanceReport(
                False,
                f"feedback edge {edge.key} is fixed random, not the transpose of a forward "
                "weight, so the coupling cannot be symmetrised",
                None,
            )
    ratios: dict[tuple[str, str], float] = {}
    for edge in spec.edges:
        if edge.source == INPUT or edge.kind == "feedback":
            continue
        partner = _tied_partner_gain(spec, edge.source, edge.target)
        if partner is None:
            return BalanceReport(
                False,
                f"edge {edge.key} has no tied feedback partner {edge.target}->{edge.source}",
                None,
            )
        if partner <= 0 or edge.gain <= 0:
            return BalanceReport(False, f"edge {edge.key} or its partner has gain <= 0", None)
        ratios[(edge.source, edge.target)] = math.sqrt(partner / edge.gain)
    found: dict[str, float] = {}
    for root in feedforward_order(spec):
        if root in found:
            continue
        found[root] = 1.0
        changed = True
        while changed:
            changed = False
            for (a, b), ratio in ratios.items():
                if a in found and b not in found:
                    found[b] = found[a] * ratio
                    changed = True
                elif b in found and a not in found:
                    found[a] = found[b] / ratio
                    changed = True
                elif (
                    a in found
                    and b in found
                    and not math.isclose(found[b], found[a] * ratio, rel_tol=1e-9)
                ):
                    return BalanceReport(
                        False,
                        f"gains are not balanced around a cycle through {a}->{b}: the other "
                        f"path gives (c_{b}/c_{a})^2 = {(found[b] / found[a]) ** 2:.3g}, this "
                        f"edge's feedback/forward gains give {ratio**2:.3g}",
                        None,
                    )
    return BalanceReport(False, "gains are not balanced around a cycle", None)
