"""Finite-time maximal Lyapunov exponent along the free relaxation.

Along the trajectory s_{t+1} = F(s_t) from s_0 = 0 (input clamped, no nudge), a tangent vector
follows the linearised step, delta <- rho'(h_t) * (M delta) for the synchronous schedule (group
by group for others, :func:`topo_ep.analysis.tangent.step_with_tangent`), and is renormalised
after every step:

    lambda_T = (1 / T) sum_{t=0}^{T-1} log(||delta'_t|| / ||delta_t||),   ||delta_t|| = 1.

lambda_T < 0: nearby trajectories converge (exp(lambda_T) is the mean contraction per step);
lambda_T > 0: they separate (chaotic or oscillating dynamics, no settling). When the trajectory
converges to a fixed point, lambda_T -> log rho(J) as T grows (J the Jacobian there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from topo_ep.analysis.tangent import per_sample_norm, step_with_tangent
from topo_ep.compiler import CompiledNetwork
from topo_ep.engine import solve


@dataclass(frozen=True)
class LyapunovExponents:
    """Per-sample finite-time maximal Lyapunov exponents.

    Attributes
    ----------
    schedule
        The schedule of the trajectory.
    steps
        T, the horizon.
    exponents
        lambda_T of each sample, shape (batch,), in nats per step.
    """

    schedule: str
    steps: int
    exponents: np.ndarray

    @property
    def mean(self) -> float:
        """Mean of lambda_T over the batch."""
        return float(np.mean(self.exponents))

    @property
    def max(self) -> float:
        """Largest lambda_T in the batch."""
        return float(np.max(self.exponents))

    @property
    def fraction_positive(self) -> float:
        """Fraction of samples with lambda_T > 0 (separating trajectories)."""
        return float(np.mean(self.exponents > 0))


def lyapunov_exponents(
    net: CompiledNetwork,
    x: Tensor,
    steps: int,
    schedule: str = "synchronous",
    seed: int = 0,
) -> LyapunovExponents:
    """lambda_T for each sample of ``x`` along the free relaxation from s = 0.

    Parameters
    ----------
    steps
        T, the number of steps (the paper uses the free-phase length).
    schedule
        Schedule of the relaxation (:meth:`topo_ep.compiler.CompiledNetwork.schedule`).
    seed
        Seeds the random unit initial tangent of each sample.

    Notes
    -----
    A tangent that becomes exactly zero (e.g. hard-sigmoid units all saturated) contributes
    log of the smallest normal number of the dtype and stays at a fresh random direction.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    groups = net.schedule(schedule)
    layout = net.layout
    generator = torch.Generator().manual_seed(int(seed))
    tiny = torch.finfo(net.dtype).tiny
    n = len(layout.names)
    with torch.no_grad():
        batch = x.shape[0]
        drives = net.input_drive(x)
        state = layout.zeros(batch, dtype=net.dtype, device=net.device)

        def unit(size: int) -> list[Tensor]:
            raw = torch.randn(size, layout.total, generator=generator, dtype=torch.float64)
            raw = raw / raw.norm(dim=1, keepdim=True)
            return layout.unflatten(raw.to(device=net.device, dtype=net.dtype))

        total = torch.zeros(batch, dtype=torch.float64, device=net.device)

        def advance(pair: list[Tensor]) -> list[Tensor]:
            """One step of the state and its tangent; log growth into ``total``."""
            nonlocal total
            state, tangent = step_with_tangent(net, pair[:n], pair[n:], drives, groups)
            norm = per_sample_norm(tangent).double()
            dead = norm <= tiny
            total = total + torch.log(torch.clamp(norm, min=tiny))
            scale = torch.where(dead, torch.ones_like(norm), 1.0 / norm).to(net.dtype)
            tangent = [t * scale[:, None] for t in tangent]
            if bool(dead.any()):
                fresh = unit(batch)
                tangent = [
                    torch.where(dead[:, None], f, t) for f, t in zip(fresh, tangent, strict=True)
                ]
            return state + tangent

        solve(advance, state + unit(batch), steps, criterion=None)
    exponents = (total / steps).cpu().numpy()
    return LyapunovExponents(schedule, int(steps), exponents)
