"""Relaxation engine: iterate s <- rho(M s + drive) to a fixed point.

A schedule (:mod:`topo_ep.schedules`) is an ordered tuple of groups of layers, built once per
compiled network (:meth:`CompiledNetwork.schedule`). One step updates the groups in turn; the
layers of one group are updated together from the current state.

Every iteration runs through one solver with one signature, as in torchdeq:
``solve(step_fn, start, max_steps, tolerance, check_every) -> (state, PhaseStats)``.
:func:`relax` is that solver over the network's :func:`step`, :func:`free_phase` is
:func:`relax` from zero; the adjoint solve (:mod:`topo_ep.learn.implicit`) and the analyses'
trajectories call :func:`solve` with their own step.

The residual r_t = ||s_t - s_{t-1}||_rms / max(||s_t||_rms, 1) is read on the host only every
``check_every`` steps (one device sync per check), which keeps the loop free of host syncs on GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from topo_ep.compiler import CompiledNetwork, Schedule
from topo_ep.errors import DivergenceError

#: Extra drive that depends on the state (e.g. an error re-read every step): state -> {k: term}.
StateDrive = Callable[[list[Tensor]], dict[int, Tensor]]
#: A residual read on the host: (z_t, z_{t-1}) -> float.
Residual = Callable[[list[Tensor], list[Tensor]], float]
#: Called after every step with (t, z_t, z_{t-1}); True stops the solve.
Observer = Callable[[int, list[Tensor], list[Tensor]], bool]


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


def state_residual(new: list[Tensor], old: list[Tensor]) -> float:
    """The engine's residual read on the host (one sync): :func:`_residual` as a float."""
    return float(_residual(new, old).detach())


def solve(
    step_fn: Callable[[list[Tensor]], list[Tensor]],
    start: list[Tensor],
    max_steps: int,
    tolerance: float = 0.0,
    check_every: int = 5,
    *,
    residual: Residual | None = state_residual,
    diverged: Callable[[int], str] | None = None,
    observe: Observer | None = None,
) -> tuple[list[Tensor], PhaseStats]:
    """The one fixed-point iteration of topo-ep: z_{t+1} = step_fn(z_t) from ``start``.

    As in torchdeq, every solve has this signature, whatever the step: the free and nudged
    phases (:func:`relax`), the adjoint solve of implicit differentiation and the analyses'
    trajectories all call it.

    Parameters
    ----------
    step_fn
        One step; returns a new list (the input is not modified).
    start
        z_0, one tensor per layer.
    max_steps
        Step limit (the number of steps exactly when ``tolerance`` is 0).
    tolerance, check_every
        Every ``check_every`` steps, and after the last, ``residual(z_t, z_{t-1})`` is read on
        the host; the solve stops once it is below :func:`effective_tolerance` (of the dtype of
        ``start``). A tolerance of 0 reads it only after the last step.
    residual
        The residual as a host float; ``None`` reads none (nor checks finiteness).
    diverged
        Message for a non-finite residual at step t (raised as :class:`DivergenceError`).
    observe
        Called after every step as ``observe(t, z_t, z_{t-1})``; returning ``True`` stops the
        solve (unconverged) at that step.
    """
    tol = effective_tolerance(tolerance, start[0].dtype) if start else 0.0
    check_every = max(1, int(check_every))
    value = math.nan
    state = start
    for t in range(1, max_steps + 1):
        previous = state
        state = step_fn(state)
        if observe is not None and observe(t, state, previous):
            return state, PhaseStats(t, value, False)
        if residual is None or not (t == max_steps or (tol > 0 and t % check_every == 0)):
            continue
        value = residual(state, previous)
        if not math.isfinite(value):
            message = diverged(t) if diverged is not None else f"non-finite at step {t}"
            raise DivergenceError(message)
        if tol > 0 and value < tol:
            return state, PhaseStats(t, value, True)
    return state, PhaseStats(max(0, max_steps), value, False)


def relax(
    net: CompiledNetwork,
    state: list[Tensor],
    drives: Sequence[Tensor],
    schedule: Schedule | str,
    max_steps: int,
    tolerance: float = 0.0,
    check_every: int = 5,
    state_drive: StateDrive | None = None,
    observe: Observer | None = None,
) -> tuple[list[Tensor], PhaseStats]:
    """Relax the network from ``state`` for at most ``max_steps`` steps of ``schedule``.

    :func:`solve` over :func:`step`: s_{t+1} = step(s_t), residual :func:`_residual`.
    Non-finite states raise :class:`DivergenceError` with the operator's spectral radius and
    the gains. ``schedule`` is a name (:meth:`CompiledNetwork.schedule`) or its groups;
    ``observe`` sees every step, as in :func:`solve` (the analyses record trajectories so).
    """
    groups = net.schedule(schedule) if isinstance(schedule, str) else schedule
    return solve(
        lambda current: step(net, current, drives, groups, state_drive),
        state,
        max_steps,
        tolerance,
        check_every,
        diverged=lambda t: divergence_message(net, t),
        observe=observe,
    )


def free_phase(
    net: CompiledNetwork,
    drives: Sequence[Tensor],
    schedule: Schedule | str,
    max_steps: int,
    tolerance: float = 0.0,
    check_every: int = 5,
) -> tuple[list[Tensor], PhaseStats]:
    """The free phase: relax from s = 0 with the input clamped and no nudge.

    ``drives`` is :meth:`CompiledNetwork.input_drive` of the batch; the start state has its
    batch size, dtype and device. Every learner and analysis starts its free phase here.
    """
    first = drives[0]
    start = net.layout.zeros(first.shape[0], dtype=first.dtype, device=first.device)
    return relax(net, start, drives, schedule, max_steps, tolerance, check_every)


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
