"""Relaxation engine: iterate s <- rho(M s + drive) to a fixed point.

A schedule (:mod:`topo_ep.schedules`) is an ordered tuple of groups of layers, built once per
compiled network (:meth:`CompiledNetwork.schedule`). One step updates the groups in turn; the
layers of one group are updated together from the current state.

Every iteration runs through one solver with one signature, as in torchdeq:
``solve(step_fn, start, max_steps, tolerance, check_every) -> (state, PhaseStats)``.
:func:`relax` is that solver over the network's :func:`step`, :func:`free_phase` is
:func:`relax` from zero; the adjoint solve (:mod:`topo_ep.learn.implicit`) and the analyses'
trajectories call :func:`solve` with their own step.

Convergence is judged per example and decided for the batch by the worst example:

- free phase (:func:`state_criterion`): the max-norm of the last step's change of example b,

      r_b = max_i |s_t - s_{t-1}|_{b,i} / max(max_i |s_t|_{b,i}, 1),

  absolute for bounded activations (tanh, sigmoids), relative for large states;
- nudged phase (:func:`contrast_criterion`): also the change of every layer's contrast
  c_k = s_k - s_k^0 relative to its own size, ||Delta c_{b,k}|| <= tol ||c_{b,k}||, since the
  lower layers' contrast is about the product of the gains times the top's.

A criterion returns one 0-d tensor, the maximum over the batch already divided by the tolerance;
:func:`convergence_decision` passes it through ``agree`` (a data-parallel run's all-reduce MAX)
and compares it with 1. So when a phase stops depends on the batch only through that maximum.
It is read on the host only every ``check_every`` steps (one device sync per check), which keeps
the other steps free of host syncs on GPU. Tolerance 0 runs exactly the step limit (the paper's
fixed T/K) and reads the criterion once, after the last step.

Between two checks the steps run as one chunk (:data:`Chunks`): k = ``check_every`` steps, or
fewer up to the step limit. By default a chunk calls the step function k times
(:func:`eager_chunks`), the same calls in the same order as a loop of single steps; a caller may
hand :func:`solve` another runner of the same chunks, such as a CUDA graph of k captured steps
or a ``torch.compile`` of them (:mod:`topo_ep.chunks`, ``dynamics.execution``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from topo_ep.compiler import CompiledNetwork, Schedule
from topo_ep.errors import DivergenceError

#: Extra drive that depends on the state (e.g. an error re-read every step): state -> {k: term}.
StateDrive = Callable[[list[Tensor]], dict[int, Tensor]]
#: A stopping criterion: (z_t, z_{t-1}, tolerance) -> 0-d tensor, the maximum over the batch of
#: the per-example criterion divided by ``tolerance`` (the phase has converged when it is <= 1).
Criterion = Callable[[list[Tensor], list[Tensor], float], Tensor]
#: Agreement of data-parallel workers on a criterion (e.g. an all-reduce MAX): 0-d -> 0-d.
Agree = Callable[[Tensor], Tensor]
#: Called after every step with (t, z_t, z_{t-1}); True stops the solve.
Observer = Callable[[int, list[Tensor], list[Tensor]], bool]
#: Runs k >= 1 steps from z_t: (z_t, k) -> (z_{t+k}, z_{t+k-1}); the states between checks.
Chunks = Callable[[list[Tensor], int], tuple[list[Tensor], list[Tensor]]]
#: Builds a phase's :data:`Chunks` over :func:`step` from (net, schedule, drives); ``None`` from
#: it means "step by step" (:func:`eager_chunks`).
ChunkSource = Callable[[CompiledNetwork, Schedule, Sequence[Tensor]], Chunks | None]


@dataclass(frozen=True)
class PhaseStats:
    """What one relaxation phase did.

    Attributes
    ----------
    steps
        Steps taken.
    residual
        The last criterion read on the host, on the scale of the tolerance: the 0-d value
        of the :data:`Criterion` times the tolerance (at tolerance 0, the criterion at
        tolerance 1). ``nan`` if none was read.
    converged
        Whether the criterion fell to the tolerance (always ``False`` at tolerance 0).
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
    zero: Collection[int] = (),
) -> list[Tensor]:
    """One step of the schedule: s_k <- rho_k(h_k) for each group in turn.

    ``zero``: layers whose states are exactly zero at the start of the step (the free phase's
    first step); their blocks are skipped until their group is updated, which saves the
    products with zero and changes no bit. Returns a new list; neither the input list nor its
    tensors are modified.

    A pre-activation that :meth:`~topo_ep.compiler.CompiledNetwork.preactivation` created
    (it is not the drive itself) is turned into the state in place (:meth:`~topo_ep.
    activations.Activation.fn_`), the same bits without one allocation per layer.
    """
    new = list(state)
    still_zero = set(zero) if zero else zero
    activations = net.activations
    for group in schedule:
        extra = state_drive(new) if state_drive is not None else None
        pre = []
        for k in group:
            drive = drives[k] if extra is None or k not in extra else drives[k] + extra[k]
            pre.append((k, drives[k], net.preactivation(k, new, drive, still_zero)))
        for k, given, h in pre:
            new[k] = activations[k].fn(h) if h is given else activations[k].fn_(h)
        if still_zero:
            still_zero.difference_update(group)
    return new


def _rows(layers: Sequence[Tensor]) -> list[Tensor]:
    """Each layer as (batch, units): a view (``flatten(1)``) for a layer with a shape."""
    return [layer if layer.dim() == 2 else layer.flatten(1) for layer in layers]


def _largest_magnitude(layer: Tensor) -> Tensor:
    """max_i |s_{b,i}| per example of a (batch, units) layer, shape (batch,), without
    allocating |s| (two vectorised reductions; ``vector_norm`` with ``ord=inf`` is a scalar
    loop on the CPU, several times slower)."""
    return torch.maximum(layer.amax(dim=1), layer.amin(dim=1).neg())


def _over_layers(per_layer: list[Tensor]) -> Tensor:
    """The maximum over the layers of per-example values, shape (batch,)."""
    return per_layer[0] if len(per_layer) == 1 else torch.stack(per_layer).amax(dim=0)


def _largest_change(changes: list[Tensor]) -> Tensor:
    """max_i |d_{b,i}| per example over all layers of the differences ``changes``: two
    read-only reductions per layer (:func:`_largest_magnitude`), no |d| written."""
    return _over_layers([_largest_magnitude(change) for change in changes])


def state_change(new: Sequence[Tensor], old: Sequence[Tensor], bounded: bool = False) -> Tensor:
    """Per-example change of the last step, shape (batch,):

        r_b = max_i |s_t - s_{t-1}|_{b,i} / max(max_i |s_t|_{b,i}, 1).

    The max-norm bounds every unit's change, whatever the layer sizes (an RMS over all units
    would dilute a small layer that is still moving); the denominator makes it absolute for
    states in [-1, 1] and relative for larger ones. ``bounded``: the caller knows every
    |s_t| <= 1 (:func:`bounded_states`), so the denominator is 1 and |s_t| is not read; the
    value is the same. One temporary per layer (the differences of all layers in one
    ``_foreach_sub``); each max is exact, so the value does not depend on how the reductions
    are grouped.
    """
    if len(new) != len(old):
        raise ValueError(f"{len(new)} layers against {len(old)}")
    current = _rows(new)
    change = _largest_change(torch._foreach_sub(current, _rows(old)))
    if bounded:
        return change
    size = _over_layers([_largest_magnitude(layer) for layer in current])
    return change / size.clamp(min=1.0)


def state_criterion(new: list[Tensor], old: list[Tensor], tolerance: float) -> Tensor:
    """max_b r_b / tolerance (:func:`state_change`), a 0-d tensor (no host sync)."""
    return state_change(new, old).amax() / tolerance


def bounded_state_criterion(new: list[Tensor], old: list[Tensor], tolerance: float) -> Tensor:
    """:func:`state_criterion` of states known to lie in [-1, 1] (:func:`bounded_states`): the
    same value, without reading |s_t|."""
    return state_change(new, old, bounded=True).amax() / tolerance


def bounded_states(net: CompiledNetwork, groups: Schedule) -> bool:
    """Whether every state after a step of ``groups`` lies in [-1, 1]: the step updates every
    layer and every activation is bounded by 1 (:attr:`~topo_ep.activations.Activation.
    bound`), so the criteria may skip the denominator max(max_i |s_i|, 1) = 1."""
    updated = {k for group in groups for k in group}
    return len(updated) == len(net.activations) and all(
        activation.bound is not None and activation.bound <= 1.0 for activation in net.activations
    )


def state_criterion_for(net: CompiledNetwork, groups: Schedule) -> Criterion:
    """The free phase's criterion for a relaxation of ``net`` under ``groups``:
    :func:`bounded_state_criterion` where :func:`bounded_states`, else
    :func:`state_criterion` (the same values)."""
    return bounded_state_criterion if bounded_states(net, groups) else state_criterion


def contrast_criterion(free: Sequence[Tensor], bounded: bool = False) -> Criterion:
    """The nudged phase's criterion: the state test and, per layer k, the contrast test

        ||c_t - c_{t-1}||_{b,k} <= max(tol ||c_t||_{b,k}, 16 eps sqrt(n_k)),   c = s - s^0,

    with ``free`` = s^0 and ||.||_{b,k} the Euclidean norm over the n_k units of layer k of
    example b. The floor 16 eps sqrt(n_k) (eps of the dtype) lets a layer whose contrast is at
    rounding level count as settled. The criterion returned is

        max_b max( r_b / tol, max_k ||Delta c||_{b,k} / max(tol ||c||_{b,k}, 16 eps sqrt(n_k)) )

    with r_b of :func:`state_change` (``bounded`` as there). Per layer it allocates two
    temporaries, the change s_t - s_{t-1} and the contrast s_t - s^0 (each set in one
    ``_foreach_sub``), and reduces them to per-example numbers; the per-layer ratios are
    formed for all layers at once. When s_{t-1} is s^0 itself (the same tensors: a check after
    the first step of the phase), the contrast is the change and is not computed again.
    """
    starts = list(free)
    references = _rows(free)
    if not references or references[0].shape[0] == 0:
        return bounded_state_criterion if bounded else state_criterion
    reference = references[0]
    eps = torch.finfo(reference.dtype).eps
    floors = torch.tensor(
        [[16.0 * eps * math.sqrt(ref.shape[1])] for ref in references],
        dtype=reference.dtype,
        device=reference.device,
    )

    def criterion(new: list[Tensor], old: list[Tensor], tolerance: float) -> Tensor:
        if not len(new) == len(old) == len(references):
            raise ValueError(f"{len(new)} and {len(old)} layers against {len(references)}")
        current, previous = _rows(new), _rows(old)
        changes = torch._foreach_sub(current, previous)
        change_norms = torch.stack([torch.linalg.vector_norm(c, dim=1) for c in changes])
        if all(o is f for o, f in zip(old, starts, strict=True)):
            # the first step from s^0 itself: the contrast s_t - s^0 is the change
            contrast_norms = change_norms
        else:
            contrasts = torch._foreach_sub(current, references)
            contrast_norms = torch.stack([torch.linalg.vector_norm(c, dim=1) for c in contrasts])
        layers = change_norms / torch.clamp(tolerance * contrast_norms, min=floors)
        change = _largest_change(changes)
        if not bounded:
            size = _over_layers([_largest_magnitude(layer) for layer in current])
            change = change / size.clamp(min=1.0)
        states = change.amax() / tolerance
        return torch.maximum(layers.amax(), states)

    return criterion


def convergence_decision(scaled: Tensor, agree: Agree | None = None) -> tuple[bool, float]:
    """Whether a phase has converged, decided from one 0-d tensor: agree(scaled) <= 1.

    Parameters
    ----------
    scaled
        The maximum over the batch of the per-example criterion divided by the tolerance
        (what a :data:`Criterion` returns).
    agree
        Applied to ``scaled`` before the comparison; a data-parallel run passes an all-reduce
        MAX, so that every worker takes the same decision at the same step.

    Returns
    -------
    converged, value
        ``value`` is agree(scaled) read on the host (the one sync of a check).
    """
    agreed = scaled if agree is None else agree(scaled)
    value = float(agreed.detach())
    return value <= 1.0, value


def solve(
    step_fn: Callable[[list[Tensor]], list[Tensor]],
    start: list[Tensor],
    max_steps: int,
    tolerance: float = 0.0,
    check_every: int = 5,
    *,
    criterion: Criterion | None = state_criterion,
    agree: Agree | None = None,
    diverged: Callable[[int], str] | None = None,
    observe: Observer | None = None,
    chunks: Chunks | None = None,
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
        Every ``check_every`` steps, and after the last, ``criterion(z_t, z_{t-1}, tol)`` is
        read on the host with tol = :func:`effective_tolerance` (of the dtype of ``start``);
        the solve stops once :func:`convergence_decision` says so. A tolerance of 0 reads the
        criterion at tolerance 1 only after the last step (the states are those of exactly
        ``max_steps`` steps).
    criterion
        The stopping criterion (:data:`Criterion`); ``None`` reads none (nor checks
        finiteness).
    agree
        Applied to the criterion before every decision (:func:`convergence_decision`).
    diverged
        Message for a non-finite residual at step t (raised as :class:`DivergenceError`).
    observe
        Called after every step as ``observe(t, z_t, z_{t-1})``; returning ``True`` stops the
        solve (unconverged) at that step. An observer runs the steps one at a time.
    chunks
        Runs the steps between two checks, k at a time (:data:`Chunks`), with k the distance
        to the next multiple of ``check_every`` or to ``max_steps``; ``None``:
        :func:`eager_chunks` of ``step_fn``. It must compute what k calls of ``step_fn`` would.
    """
    if observe is not None and chunks is not None:
        raise ValueError("an observer sees every step: solve it without chunks")
    tol = effective_tolerance(tolerance, start[0].dtype) if start else 0.0
    check_every = max(1, int(check_every))
    run = eager_chunks(step_fn) if chunks is None else chunks
    value = math.nan
    state = start
    t = 0
    while t < max_steps:
        if observe is not None:
            previous = state
            state = step_fn(state)
            t += 1
            if observe(t, state, previous):
                return state, PhaseStats(t, value, False)
        else:
            length = chunk_length(t, max_steps, check_every)
            state, previous = run(state, length)
            t += length
        if criterion is None or not (t == max_steps or (tol > 0 and t % check_every == 0)):
            continue
        unit = tol if tol > 0 else 1.0
        done, scaled = convergence_decision(criterion(state, previous, unit), agree)
        value = scaled * unit
        if not math.isfinite(value):
            message = diverged(t) if diverged is not None else f"non-finite at step {t}"
            raise DivergenceError(message)
        if tol > 0 and done:
            return state, PhaseStats(t, value, True)
    return state, PhaseStats(max(0, max_steps), value, False)


def chunk_length(done: int, max_steps: int, check_every: int) -> int:
    """Steps of the next chunk after ``done`` steps: up to the next multiple of
    ``check_every``, at most to ``max_steps``,

        k = min(check_every - done mod check_every, max_steps - done).

    So every chunk but the last of a phase has ``check_every`` steps, with or without a
    tolerance (at tolerance 0 nothing is read between chunks).
    """
    return min(check_every - done % check_every, max_steps - done)


def eager_chunks(step_fn: Callable[[list[Tensor]], list[Tensor]]) -> Chunks:
    """The :data:`Chunks` that call ``step_fn`` k times: z_{t+1} = step_fn(z_t), returning the
    last two states. The same calls in the same order as single steps, so the same bits."""

    def run(state: list[Tensor], steps: int) -> tuple[list[Tensor], list[Tensor]]:
        if steps < 1:
            raise ValueError(f"a chunk runs at least one step, not {steps}")
        previous = state
        for _ in range(steps):
            previous = state
            state = step_fn(state)
        return state, previous

    return run


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
    *,
    criterion: Criterion | None = None,
    agree: Agree | None = None,
    zero_start: bool = False,
    chunk_source: ChunkSource | None = None,
) -> tuple[list[Tensor], PhaseStats]:
    """Relax the network from ``state`` for at most ``max_steps`` steps of ``schedule``.

    ``zero_start``: ``state`` is all zeros (the free phase), so the first step skips the
    products with layers not yet updated (:func:`step`; the states are the same bits).

    :func:`solve` over :func:`step`: s_{t+1} = step(s_t), stopping on ``criterion``
    (``None``: :func:`state_criterion_for` the network and schedule; the nudged phase passes
    :func:`contrast_criterion`),
    each decision through ``agree``. ``chunk_source`` (:data:`ChunkSource`) may run the steps
    between checks another way (a CUDA graph, a compiled chunk; :mod:`topo_ep.chunks`); a
    phase with an observer or a ``state_drive`` runs eagerly all the same, since those are
    Python called on every step. Non-finite states raise :class:`DivergenceError` with
    the operator's spectral radius and the gains. ``schedule`` is a name
    (:meth:`CompiledNetwork.schedule`) or its groups; ``observe`` sees every step, as in
    :func:`solve` (the analyses record trajectories so).
    """
    groups = net.schedule(schedule) if isinstance(schedule, str) else schedule
    if criterion is None:
        criterion = state_criterion_for(net, groups)
    first = range(len(state)) if zero_start else ()
    steps_taken = 0

    def advance(current: list[Tensor]) -> list[Tensor]:
        nonlocal steps_taken
        steps_taken += 1
        return step(net, current, drives, groups, state_drive, first if steps_taken == 1 else ())

    chunks = None
    if chunk_source is not None and observe is None and state_drive is None:
        chunks = chunk_source(net, groups, drives)
    return solve(
        advance,
        state,
        max_steps,
        tolerance,
        check_every,
        criterion=criterion,
        agree=agree,
        diverged=lambda t: divergence_message(net, t),
        observe=observe,
        chunks=chunks,
    )


def free_phase(
    net: CompiledNetwork,
    drives: Sequence[Tensor],
    schedule: Schedule | str,
    max_steps: int,
    tolerance: float = 0.0,
    check_every: int = 5,
    *,
    agree: Agree | None = None,
    start: list[Tensor] | None = None,
    chunk_source: ChunkSource | None = None,
) -> tuple[list[Tensor], PhaseStats]:
    """The free phase: relax from s = 0 (or from ``start``) with the input clamped and no
    nudge.

    ``drives`` is :meth:`CompiledNetwork.input_drive` of the batch; the start state has its
    batch size, dtype and device. Every learner and analysis starts its free phase here. It
    stops on :func:`state_criterion`, each decision through ``agree``; from zero its first step
    skips the products with layers still at zero (``zero_start`` of :func:`relax`);
    ``chunk_source`` as in :func:`relax`. ``start``: a warm start, one tensor per layer
    (:mod:`topo_ep.warm_start`); ``None`` is the zero state.
    """
    zero_start = start is None
    if start is None:
        first = drives[0]
        start = net.layout.zeros(first.shape[0], dtype=first.dtype, device=first.device)
    return relax(
        net,
        start,
        drives,
        schedule,
        max_steps,
        tolerance,
        check_every,
        agree=agree,
        zero_start=zero_start,
        chunk_source=chunk_source,
    )


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
