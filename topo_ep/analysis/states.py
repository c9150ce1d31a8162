"""Free fixed points and the tolerances the analyses use.

Tolerances are dtype-aware (DESIGN: an absolute 1e-6 sits on float32's rounding floor). The
residual is the engine's relative RMS residual

    r_t = ||s_t - s_{t-1}||_rms / max(||s_t||_rms, 1),

and the thresholds are max(requested, 16 eps(dtype)) (:func:`topo_ep.engine.effective_tolerance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from topo_ep.analysis.tangent import derivatives, preactivations
from topo_ep.compiler import CompiledNetwork
from topo_ep.engine import effective_tolerance, free_phase

#: Requested residual below which a relaxation counts as converged (the paper's 1e-6).
CONVERGENCE_TOLERANCE = 1e-6
#: Requested residual for fixed points the Jacobian is evaluated at.
FIXED_POINT_TOLERANCE = 1e-10
#: Step limit when searching a free fixed point.
FIXED_POINT_MAX_STEPS = 2000


def convergence_tolerance(dtype: torch.dtype) -> float:
    """max(1e-6, 16 eps(dtype)): 1e-6 in float64, 1.9e-6 in float32."""
    return effective_tolerance(CONVERGENCE_TOLERANCE, dtype)


def fixed_point_tolerance(dtype: torch.dtype) -> float:
    """max(1e-10, 16 eps(dtype)): 1e-10 in float64, 1.9e-6 in float32."""
    return effective_tolerance(FIXED_POINT_TOLERANCE, dtype)


@dataclass(frozen=True)
class FixedPoint:
    """A free fixed point s* = rho(M s* + d) of a batch, and the quantities at it.

    Attributes
    ----------
    state
        s*, one (batch, n_k) tensor per layer.
    preactivation
        h* = d + M s*, per layer.
    derivative
        rho'(h*), per layer.
    steps
        Relaxation steps taken.
    residual
        The last residual r_t.
    converged
        Whether r_t fell below :func:`fixed_point_tolerance`; when not, the quantities are those
        of the last state.
    """

    state: list[Tensor]
    preactivation: list[Tensor]
    derivative: list[Tensor]
    steps: int
    residual: float
    converged: bool


def free_fixed_point(
    net: CompiledNetwork,
    x: Tensor,
    *,
    schedule: str = "sweep",
    max_steps: int = FIXED_POINT_MAX_STEPS,
) -> FixedPoint:
    """Relax from s = 0 with x clamped and no nudge until r_t < :func:`fixed_point_tolerance`.

    The fixed points of every schedule are the same set; the ``sweep`` (Gauss-Seidel in
    feedforward order) reaches them in the fewest steps when feedback gains are small.
    """
    with torch.no_grad():
        drives = net.input_drive(x)
        state, stats = free_phase(
            net, drives, schedule, max_steps, fixed_point_tolerance(net.dtype), check_every=1
        )
        pre = preactivations(net, state, drives)
        return FixedPoint(
            state, pre, derivatives(net, pre), stats.steps, stats.residual, stats.converged
        )
