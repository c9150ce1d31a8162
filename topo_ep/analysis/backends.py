"""The quantities the analyses borrow from other modules: the implicit gradient and the energy.

- Implicit gradient (recurrent backprop) at the free fixed point s* = rho(M s* + d):
  :func:`topo_ep.learn.implicit.implicit_gradients`, run here to a tight tolerance and refused
  when the fixed point or the adjoint did not converge (then no gradient exists to compare with).
- Energy of a balanced topology: :class:`topo_ep.energy.Energy`,

      E(s) = sum_k w_k [ sum_i G_k(s_ki) - d_k . s_k ] - 1/2 sum_{k,j} w_k s_k . M_kj s_j,

  with w_k = c_k^2 from :func:`topo_ep.balance.analyse_balance`; dE/ds_k = w_k (rho_k^{-1}(s_k) -
  h_k), so the fixed points are its stationary points and block updates of uncoupled layers
  never raise it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from topo_ep.analysis.states import FIXED_POINT_MAX_STEPS, FIXED_POINT_TOLERANCE
from topo_ep.compiler import CompiledNetwork
from topo_ep.energy import Energy
from topo_ep.learn.base import Gradients
from topo_ep.learn.implicit import implicit_gradients


def implicit_gradient(
    net: CompiledNetwork, x: Tensor, y: Tensor, max_steps: int = FIXED_POINT_MAX_STEPS
) -> Gradients:
    """dL/dtheta at the free fixed point for every learned tensor, by its ParamKey.

    L is the mean cross-entropy over the batch. The free relaxation (sweep schedule) and the
    adjoint iteration run to max(1e-10, 16 eps(dtype)) within ``max_steps`` steps.

    Raises
    ------
    ArithmeticError
        When the fixed point or the adjoint did not converge.
    topo_ep.errors.DivergenceError
        When either became non-finite.
    """
    x = x.to(device=net.device, dtype=net.dtype)
    # relax and the adjoint solve both raise the tolerance to the dtype's floor, 16 eps
    result = implicit_gradients(
        net,
        x,
        y,
        schedule="sweep",
        free_steps=max_steps,
        tolerance=FIXED_POINT_TOLERANCE,
        check_every=1,
    )
    if not (result.free_stats.converged and result.adjoint_stats.converged):
        raise ArithmeticError(
            f"no converged fixed point or adjoint within {max_steps} steps (free residual "
            f"{result.free_stats.residual:.3g}, adjoint change "
            f"{result.adjoint_stats.residual:.3g})"
        )
    return result.grads


def energy_per_sample(
    net: CompiledNetwork, state: Sequence[Tensor], drives: Sequence[Tensor]
) -> Tensor:
    """E(s) of each sample (module docstring), shape (batch,).

    Raises
    ------
    topo_ep.energy.NoEnergyError
        When the topology is not balanced (no energy exists).
    """
    return Energy(net)(list(state), list(drives))
