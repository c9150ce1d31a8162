"""Spectrum of the gain-scaled hidden-to-hidden operator M.

(M s)_k = sum_{j->k} g_jk A_jk s_j over hidden-to-hidden blocks (the input only adds a constant
drive). Theory: for a chain with tied feedback of uniform gain g, D = diag(g^{k/2}) gives
D M D^{-1} = sqrt(g) S with S symmetric and independent of g, so

    rho(M(g)) = sqrt(g) rho(M(1)).

Small feedback gains therefore mean a small radius; a radius < 1 with a 1-Lipschitz activation
makes the update map a contraction (in the norm in which D M D^{-1} is symmetric).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from topo_ep import spectral
from topo_ep.compiler import CompiledNetwork, compile_topology
from topo_ep.spec import TopologySpec


@dataclass(frozen=True)
class OperatorSpectrum:
    """Spectral radius and eigenvalues of M.

    Attributes
    ----------
    radius
        rho(M) = max_i |lambda_i(M)|.
    method
        ``exact`` (all eigenvalues, LAPACK) or ``arpack`` (the largest in modulus only).
    size
        N, the number of hidden units.
    eigenvalues
        All eigenvalues (exact) or the largest in modulus (ARPACK), for the scatter plot.
    feedback_gains
        The distinct gains of the feedback edges.
    radius_at_unit_gain
        rho(M) with every feedback gain set to 1 and the same weights.
    balanced
        Whether the topology has an energy (tied feedback, gains balanced around every cycle).
    """

    radius: float
    method: str
    size: int
    eigenvalues: np.ndarray
    feedback_gains: tuple[float, ...]
    radius_at_unit_gain: float
    balanced: bool

    @property
    def sqrt_gain_prediction(self) -> float | None:
        """sqrt(g) rho(M(1)) when every feedback gain equals one value g, else ``None``.

        Exact for balanced chains; for other topologies only a reference value.
        """
        if len(self.feedback_gains) != 1:
            return None
        return float(np.sqrt(self.feedback_gains[0]) * self.radius_at_unit_gain)


def feedback_gains(spec: TopologySpec) -> tuple[float, ...]:
    """The distinct gains of the feedback edges, sorted."""
    return tuple(sorted({edge.gain for edge in spec.edges if edge.kind == "feedback"}))


def with_feedback_gain(net: CompiledNetwork, gain: float) -> CompiledNetwork:
    """A copy of ``net`` (same weights) whose feedback edges all have ``gain``."""
    spec = net.spec
    edges = tuple(
        replace(edge, gain=float(gain)) if edge.kind == "feedback" else edge for edge in spec.edges
    )
    other = compile_topology(replace(spec, edges=edges), dtype=net.dtype, device=net.device)
    other.load_state_dict(net.state_dict())
    return other


def operator_spectrum(
    net: CompiledNetwork, method: str = "auto", k: int | None = None
) -> OperatorSpectrum:
    """Spectral radius and eigenvalues of the gain-scaled hidden operator M of ``net``.

    Parameters
    ----------
    method
        ``auto`` (exact up to :data:`topo_ep.spectral.EXACT_LIMIT` units, else ARPACK),
        ``exact`` or ``arpack``; see :mod:`topo_ep.spectral`.
    k
        Eigenvalues kept for the scatter (default: all when exact, 40 with ARPACK).
    """
    n = net.layout.total
    values = spectral.spectrum(net, k=k, method=method)
    exact = spectral.uses_exact(method, n, spectral.EXACT_LIMIT)
    radius = float(np.abs(values).max()) if len(values) else 0.0
    unit = spectral.spectral_radius(with_feedback_gain(net, 1.0), method=method)
    return OperatorSpectrum(
        radius=radius,
        method="exact" if exact else "arpack",
        size=n,
        eigenvalues=values,
        feedback_gains=feedback_gains(net.spec),
        radius_at_unit_gain=unit,
        balanced=net.balance.balanced,
    )
