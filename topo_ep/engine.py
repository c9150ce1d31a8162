"""Relaxation engine: iterate s <- rho(M s + drive) to a fixed point.

A schedule is an ordered tuple of groups of layers. One step updates the groups in turn; the
layers of one group are updated together from the current state:

- ``synchronous`` (the paper): one group with every layer, all computed from the previous state;
- ``sweep``: one group per layer in feedforward order, each using the newest state before it;
- ``colour``: the groups of a proper colouring of the layer graph (no edge inside a group).

Every solver has one signature, as in torchdeq:
``relax(net, state, drives, schedule, max_steps, tolerance, check_every) -> (state, PhaseStats)``.

The residual r_t = ||s_t - s_{t-1}||_rms / max(||s_t||_rms, 1) is read on the host only every
``check_every`` steps (one device sync per check), which keeps the loop free of host syncs on GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from topo_ep.compiler import CompiledNetwork
from topo_ep.errors import DivergenceError
from topo_ep.graph import update_groups
from topo_ep.spec import SCHEDULES

Schedule = tuple[tuple[int, ...], ...]
#: Extra drive that depends on the state (e.g. an error re-read every step): state -> {k: term}.
StateDrive = Callable[[list[Tensor]], dict[int, Tensor]]


@dataclass(frozen=True)
class PhaseStats:
    """What one relaxation phase did.

    Attributes
    ----------
    steps
        Steps taken.
    residual
        The last residual read on the host (``nan`` if none was read).
    converged
        Whether the residual fell below the tolerance (always ``False`` at tolerance 0).
    """

    steps: int
    residual: float
    converged: bool


def make_schedule(net: CompiledNetwork, name: str) -> Schedule:
    """Groups of layer indices for the schedule called ``name``.

    ``colour`` groups the layers by a proper colouring of the layer graph
    (:func:`topo_ep.graph.update_groups`): no edge joins two layers of one group, so on a
    balanced topology each group update minimises the energy exactly (:mod:`topo_ep.energy`);
    otherwise it is block Gauss-Seidel with a correct grouping.
    """
    if name == "synchronous":
        return (tuple(range(len(net.layout.names))),)
    if name == "sweep":
        return tuple((k,) for k in net.order)
    if name == "colour":
        return tuple(
            tuple(net.layout.index(layer) for layer in group) for group in update_groups(net.spec)
        )
    raise ValueError(
        f"unknown schedule {name!r}; expected one of {', '.join(repr(s) for s in SCHEDULES)}"
    )


def effective_tolerance(tolerance: float, dtype: torch.dtype) -> float:
    """max(tolerance, 16 eps(dtype)) for tolerance > 0; 0 keeps the fixed step count."""
    if tolerance <= 0:
        return 0.0
    return max(float(tolerance), 16.0 * torch.finfo(dtype).eps)


def step(
    net: CompiledNetwork,
    state: list[Tensor],
    drives: Sequence[Tensor],
    schedule: Schedule,
    state_drive: StateDrive | None = None,
) -> list[Tensor]:
    """One step of the schedule: s_k <- rho_k(h_k) for each group in turn.

    Returns a new list; the input list is not modified.
    """
    new = list(state)
    for group in schedule:
        extra = state_drive(new) if state_drive is not None else {}
        pre = []
        for k in group:
            drive = drives[k] + extra[k] if k in extra else drives[k]
            pre.append(net.preactivation(k, new, drive))
        for k, h in zip(group, pre, strict=True):
            new[k] = net.activations[k].fn(h)
    return new


def _residual(new: list[Tensor], old: list[Tensor]) -> Tensor:
    """||s_t - s_{t-1}||_rms / max(||s_t||_rms, 1), as a 0-d tensor (no host sync)."""
    diff = torch.stack([(a - b).pow(2).sum() for a, b in zip(new, old, strict=True)]).sum()
    norm = torch.stack([a.pow(2).sum() for a in new]).sum()
    count = sum(a.numel() for a in new)
    return torch.sqrt(diff / count) / torch.clamp(torch.sqrt(norm / count), min=1.0)


def relax(
    net: CompiledNetwork,
    state: list[Tensor],
    drives: Sequence[Tensor],
    schedule: Schedule,
    max_steps: int,
    tolerance: float = 0.0,
    check_every: int = 5,
    state_drive: StateDrive | None = None,
) -> tuple[list[Tensor], PhaseStats]:
    """Relax from ``state`` for at most ``max_steps`` steps.

    Iterates s_{t+1} = step(s_t). Every ``check_every`` steps (and after the last) the residual
    is read on the host; the phase stops once it is below
    :func:`effective_tolerance`. Non-finite states raise :class:`DivergenceError` with the
    operator's spectral radius and the gains.
    """
    tol = effective_tolerance(tolerance, net.dtype)
    check_every = max(1, int(check_every))
    residual = math.nan
    steps = 0
    for t in range(1, max_steps + 1):
        check = t == max_steps or (tol > 0 and t % check_every == 0)
        previous = state
        state = step(net, state, drives, schedule, state_drive)
        steps = t
        if check:
            residual = float(_residual(state, previous).detach())
            if not math.isfinite(residual):
                raise DivergenceError(divergence_message(net, t))
            if tol > 0 and residual < tol:
                return state, PhaseStats(steps, residual, True)
    return state, PhaseStats(steps, residual, False)


def divergence_message(net: CompiledNetwork, step_index: int) -> str:
    """Why the states turned non-finite: spectral radius of M and the gains."""
    from topo_ep.spectral import spectral_radius

    try:
        radius = f"{spectral_radius(net):.4g}"
    except Exception as exc:  # the radius is a diagnosis; never mask the divergence
        radius = f"unavailable ({exc})"
    gains = sorted({b.edge.gain for b in net.bindings.values() if b.edge.kind == "feedback"})
    gain_text = ", ".join(f"{g:g}" for g in gains) or "none"
    return (
        f"states became non-finite at step {step_index} of the relaxation; spectral radius of "
        f"the gain-scaled hidden operator = {radius}; feedback gains: {gain_text}. "
        "Lower the feedback gains (--set feedback_gain=...) or use a bounded activation."
    )
