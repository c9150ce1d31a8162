"""Adapters to the quantities other modules own: the implicit gradient and the energy.

The analyses call only :func:`implicit_gradient` and :func:`energy_per_sample`. Each uses the
project's implementation when it is installed (:mod:`topo_ep.learn.implicit`,
:mod:`topo_ep.energy`) and otherwise the reference implementation here, which computes the same
quantity:

- implicit gradient (recurrent backprop) at the free fixed point s* = rho(M s* + d):
  lambda = (I - J^T)^{-1} dL/ds* with J = dF/ds the Jacobian of the synchronous step, and
  dL/dtheta = lambda . dF/dtheta |_{s = s*}; L is the mean cross-entropy of softmax(W_out s*_top);
- Hopfield-type energy of a balanced topology (DESIGN, section 1), in the state s:

      E(s) = sum_k c_k^2 [ sum_i G_k(s_ki) - d_k . s_k ]
             - sum_{forward/skip edges A->B between hidden layers} c_B^2 alpha_AB s_B^T W_AB s_A,

  with G_k' = rho_k^{-1}, d_k the input drive plus bias and c the scales of
  :func:`topo_ep.graph.energy_scales`; dE/ds_k = c_k^2 (rho_k^{-1}(s_k) - h_k), so the fixed
  points are its stationary points and a block update of layers with no edge between them
  minimises E exactly in that block.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch
from torch import Tensor

from topo_ep.analysis.states import FIXED_POINT_MAX_STEPS, free_fixed_point
from topo_ep.analysis.tangent import preactivations
from topo_ep.compiler import CompiledNetwork
from topo_ep.engine import make_schedule, step
from topo_ep.graph import energy_scales
from topo_ep.spec import INPUT


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


# ---------------------------------------------------------------------- implicit gradient
def implicit_gradient(
    net: CompiledNetwork, x: Tensor, y: Tensor, max_steps: int = FIXED_POINT_MAX_STEPS
) -> dict[str, Tensor]:
    """dL/dW at the free fixed point for every learned edge weight, keyed by tensor name.

    L is the mean cross-entropy over the batch. Uses
    :func:`topo_ep.learn.implicit.implicit_gradients` when present, else
    :func:`reference_implicit_gradient`. Raises ``ArithmeticError`` when there is no converged
    fixed point or adjoint (then no implicit gradient exists to compare with).
    """
    x = x.to(device=net.device, dtype=net.dtype)
    module = _optional("topo_ep.learn.implicit")
    if module is not None and hasattr(module, "implicit_gradients"):
        tolerance = max(1e-10, 16.0 * torch.finfo(net.dtype).eps)
        result = module.implicit_gradients(
            net, x, y, schedule="sweep", free_steps=max_steps, tolerance=tolerance, check_every=1
        )
        if not (result.free_stats.converged and result.adjoint_stats.converged):
            raise ArithmeticError(
                f"no converged fixed point or adjoint within {max_steps} steps (free residual "
                f"{result.free_stats.residual:.3g}, adjoint change "
                f"{result.adjoint_stats.residual:.3g})"
            )
        return {name: result.grads[name] for name in net.weights}
    return reference_implicit_gradient(net, x, y, max_steps)


def reference_implicit_gradient(
    net: CompiledNetwork, x: Tensor, y: Tensor, max_steps: int = FIXED_POINT_MAX_STEPS
) -> dict[str, Tensor]:
    """Implicit gradient by fixed-point iteration of the adjoint lambda <- g + J^T lambda.

    J^T lambda is a vector-Jacobian product of one synchronous step at s*; the iteration
    converges when rho(J) < 1. Raises ``ArithmeticError`` when the free relaxation or the
    adjoint iteration does not converge.
    """
    fixed = free_fixed_point(net, x, max_steps=max_steps)
    if not fixed.converged:
        raise ArithmeticError(
            f"no converged free fixed point within {max_steps} steps (residual "
            f"{fixed.residual:.3g})"
        )
    groups = make_schedule(net, "synchronous")
    params = dict(net.weights.items())
    tol = max(1e-10, 16.0 * torch.finfo(net.dtype).eps)
    with torch.enable_grad():
        held = [s.detach().requires_grad_(True) for s in fixed.state]
        logits = net.readout_logits(held[net.top])
        loss = torch.nn.functional.cross_entropy(logits, y)
        source = torch.autograd.grad(loss, held[net.top])[0]
        g = [torch.zeros_like(s) for s in held]
        g[net.top] = source
        image = step(net, held, net.input_drive(x), groups)
        adjoint = [t.clone() for t in g]
        for _ in range(max_steps):
            pulled = torch.autograd.grad(image, held, adjoint, retain_graph=True)
            new = [a + b for a, b in zip(g, pulled, strict=True)]
            change = sum(float((a - b).pow(2).sum()) for a, b in zip(new, adjoint, strict=True))
            norm = sum(float(a.pow(2).sum()) for a in new)
            adjoint = new
            if change <= (tol**2) * max(norm, 1e-300):
                break
        else:
            raise ArithmeticError("the adjoint iteration did not converge (rho(J) >= 1?)")
        found = torch.autograd.grad(image, list(params.values()), adjoint, allow_unused=True)
    return {
        name: torch.zeros_like(p) if grad is None else grad.detach()
        for (name, p), grad in zip(params.items(), found, strict=True)
    }


# ---------------------------------------------------------------------- energy
def has_energy(net: CompiledNetwork) -> bool:
    """Whether the topology is balanced, so that an energy exists."""
    return energy_scales(net.spec) is not None


def energy_per_sample(
    net: CompiledNetwork, state: Sequence[Tensor], drives: Sequence[Tensor]
) -> Tensor:
    """E(s) of each sample (module docstring), shape (batch,).

    Uses :class:`topo_ep.energy.Energy` when present, else :func:`reference_energy`.

    Raises
    ------
    ValueError
        When the topology is not balanced (no energy exists).
    """
    module = _optional("topo_ep.energy")
    if module is not None and hasattr(module, "Energy"):
        return module.Energy(net)(list(state), list(drives))
    return reference_energy(net, state, drives)


def reference_energy(
    net: CompiledNetwork, state: Sequence[Tensor], drives: Sequence[Tensor]
) -> Tensor:
    """E(s) per sample from the balance scales c_k (see the module docstring)."""
    scales = energy_scales(net.spec)
    if scales is None:
        raise ValueError(f"topology {net.spec.name!r} is not balanced: it has no energy")
    layout = net.layout
    total = state[0].new_zeros(state[0].shape[0])
    for k, name in enumerate(layout.names):
        c2 = scales[name] ** 2
        potential = net.activations[k].potential(state[k]).sum(dim=-1)
        total = total + c2 * (potential - (drives[k] * state[k]).sum(dim=-1))
    for binding in net.bindings.values():
        edge = binding.edge
        if edge.kind == "feedback" or edge.source == INPUT:
            continue
        block = net.blocks[binding.block]
        source, target = layout.index(edge.source), layout.index(edge.target)
        coupling = (block.apply(state[source]) * state[target]).sum(dim=-1)
        total = total - scales[edge.target] ** 2 * coupling
    return total


def stationarity_defect(
    net: CompiledNetwork, state: Sequence[Tensor], drives: Sequence[Tensor]
) -> float:
    """max |s - rho(h(s))|, how far ``state`` is from a fixed point (0 at a stationary point)."""
    with torch.no_grad():
        pre = preactivations(net, state, drives)
        return max(
            float((s - net.activations[k].fn(h)).abs().max())
            for k, (s, h) in enumerate(zip(state, pre, strict=True))
        )
