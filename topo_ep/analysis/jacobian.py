"""Spectral radius of the Jacobian of the update map at the free fixed point.

At a fixed point s* = rho(M s* + d) of one sample, the synchronous update map
F(s) = rho(M s + d) has the Jacobian

    J = diag(rho'(h*)) M,   h* = M s* + d,

and errors shrink locally like rho(J)^t. Grouped schedules (the sweep) have the Jacobian of
their composed group maps (:func:`topo_ep.analysis.tangent.tangent_step`). A fixed point with
rho(J) < 1 is *locally* contracting: iterates that start close enough converge to it at rate
rho(J). This says nothing about states far from s* (the relaxation starts at 0), which is what
the convergence-time and Lyapunov analyses measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from topo_ep import spectral
from topo_ep.analysis.states import FixedPoint, free_fixed_point
from topo_ep.analysis.tangent import tangent_step
from topo_ep.compiler import CompiledNetwork

#: Largest N for which per-sample Jacobians get exact eigenvalues under ``method="auto"``.
JACOBIAN_EXACT_LIMIT = 700


@dataclass(frozen=True)
class JacobianRadii:
    """Per-sample spectral radii of one schedule's Jacobian at the free fixed point.

    Attributes
    ----------
    schedule
        The schedule whose update map is linearised.
    radii
        rho(J) of each sample, shape (batch,).
    method
        ``exact`` or ``arpack``.
    fixed_point_converged
        Whether the free relaxation reached its fixed point; otherwise J is taken at the last
        state and is not a fixed-point Jacobian.
    """

    schedule: str
    radii: np.ndarray
    method: str
    fixed_point_converged: bool

    @property
    def mean(self) -> float:
        """Mean of rho(J) over the batch."""
        return float(np.mean(self.radii))

    @property
    def max(self) -> float:
        """Largest rho(J) in the batch."""
        return float(np.max(self.radii))

    @property
    def fraction_contracting(self) -> float:
        """Fraction of samples whose fixed point is locally contracting (rho(J) < 1)."""
        return float(np.mean(self.radii < 1.0))

    @property
    def locally_contracting(self) -> bool:
        """rho(J) < 1 for every sample: each fixed point is locally (not globally) attracting."""
        return bool(self.max < 1.0)


def _sample_derivative(fixed: FixedPoint, index: int) -> list[Tensor]:
    return [d[index : index + 1] for d in fixed.derivative]


def jacobian_radius_at(
    net: CompiledNetwork,
    derivative: Sequence[Tensor],
    schedule: str = "synchronous",
    method: str = "auto",
    exact_limit: int = JACOBIAN_EXACT_LIMIT,
    operator: np.ndarray | None = None,
) -> float:
    """rho(J) for one sample, J the schedule's Jacobian with rho'(h) = ``derivative``.

    Parameters
    ----------
    derivative
        rho_k'(h_k) of one sample, one (1, n_k) tensor per layer.
    schedule
        ``synchronous`` (J = diag(rho'(h)) M) or any registered schedule
        (:mod:`topo_ep.schedules`).
    method
        ``exact``, ``arpack`` or ``auto`` (exact up to ``exact_limit`` units).
    operator
        M as a dense float64 array, reused across samples for the exact synchronous case.
    """
    groups = net.schedule(schedule)
    layout = net.layout
    n = layout.total
    flat_derivative = layout.flatten(list(derivative)).reshape(-1).detach().cpu().double()

    def apply(vector: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            v = torch.as_tensor(vector, dtype=net.dtype, device=net.device).reshape(1, -1)
            out = tangent_step(net, layout.unflatten(v), list(derivative), groups)
            return layout.flatten(out).reshape(-1).cpu().double().numpy()

    def dense() -> np.ndarray:
        if schedule == "synchronous":
            matrix = operator
            if matrix is None:
                matrix = net.hidden_operator().detach().cpu().double().numpy()
            return flat_derivative.numpy()[:, None] * matrix
        with torch.no_grad():
            eye = torch.eye(n, dtype=net.dtype, device=net.device)
            rows = tangent_step(net, layout.unflatten(eye), list(derivative), groups)
            # Row i is (J e_i)^T, so the stacked rows are J^T.
            return layout.flatten(rows).cpu().double().numpy().T

    return spectral.radius_of_map(apply, n, dense=dense, method=method, exact_limit=exact_limit)


def jacobian_radii(
    net: CompiledNetwork,
    x: Tensor,
    schedules: Sequence[str] = ("synchronous",),
    method: str = "auto",
    exact_limit: int = JACOBIAN_EXACT_LIMIT,
    fixed_point: FixedPoint | None = None,
) -> dict[str, JacobianRadii]:
    """Per-sample rho(J) at the free fixed point of each sample, for each schedule.

    J = diag(rho'(h*)) M for the synchronous schedule; for grouped schedules the Jacobian of
    the composed group updates. Report the batch mean and max; rho(J) < 1 means the fixed
    point is locally contracting under that schedule.
    """
    fixed = fixed_point if fixed_point is not None else free_fixed_point(net, x)
    n = net.layout.total
    exact = spectral.uses_exact(method, n, exact_limit)
    operator = (
        net.hidden_operator().detach().cpu().double().numpy()
        if exact and "synchronous" in schedules
        else None
    )
    batch = fixed.state[0].shape[0]
    out = {}
    for name in schedules:
        radii = np.array(
            [
                jacobian_radius_at(
                    net,
                    _sample_derivative(fixed, i),
                    name,
                    method=method,
                    exact_limit=exact_limit,
                    operator=operator,
                )
                for i in range(batch)
            ]
        )
        out[name] = JacobianRadii(name, radii, "exact" if exact else "arpack", fixed.converged)
    return out
