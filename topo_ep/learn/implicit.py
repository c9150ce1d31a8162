"""Implicit differentiation (recurrent backprop) at the free fixed point.

The free phase settles at s* = rho(h*) with h* = M s* + d(theta), where M is the gain-scaled
hidden operator (every block j -> k contributes g A_jk) and d the input drive plus biases. The
loss L = mean cross-entropy of softmax(W_out s*_top) depends on theta through s*. Differentiating
the fixed-point equation, with D = diag(rho'(h*)),

    ds* = D (M ds* + dM s* + dd)   =>   ds* = (I - D M)^{-1} D (dM s* + dd).

The adjoint lambda solves the transposed system

    (I - M^T D) lambda = dL/ds,   i.e. the fixed point of   lambda <- M^T (D lambda) + dL/ds,

and with v = D lambda (the adjoint of the pre-activation h)

    dL/dtheta = v . dh/dtheta |_{s = s*}   (the state held at s*),

which autograd evaluates as the gradient of sum(h(theta; s*) * v) with s* detached. Tied
feedback is handled by that last step: a tied weight appears in its forward and its transposed
block, and both terms land in its gradient. The readout gets the exact cross-entropy gradient.

The adjoint is solved "with the same engine": the iteration applies each block's ``adjoint``
(g A^T), in the groups of the forward schedule taken in reverse order. ``synchronous`` gives
the Jacobi iteration above; ``sweep`` gives Gauss-Seidel in reverse feedforward order, which is
exact after one pass when there is no feedback (it is then plain backprop). Both converge when
the spectral radius of M^T D (that of D M, the Jacobian of the synchronous free step) is < 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from topo_ep.blocks import Block, Joined
from topo_ep.compiler import CompiledNetwork, Schedule
from topo_ep.engine import Agree, PhaseStats, free_phase, solve
from topo_ep.errors import DivergenceError
from topo_ep.learn.base import (
    BatchResult,
    Gradients,
    cross_entropy_and_correct,
    write_gradients,
)
from topo_ep.learn.registry import METHODS
from topo_ep.spec import TopologySpec


@dataclass(frozen=True)
class ImplicitResult:
    """Gradients and diagnostics of one implicit differentiation.

    Attributes
    ----------
    grads
        dL/dtheta per learned tensor, L being the mean cross-entropy over the batch.
    free
        The free fixed point s*, one (batch, n_k) tensor per layer.
    adjoint
        lambda, the solution of (I - M^T D) lambda = dL/ds, per layer.
    logits
        Readout logits at s*.
    free_stats, adjoint_stats
        What the free relaxation and the adjoint iteration did.
    """

    grads: Gradients
    free: list[Tensor]
    adjoint: list[Tensor]
    logits: Tensor
    free_stats: PhaseStats
    adjoint_stats: PhaseStats


def preactivations(
    net: CompiledNetwork, state: Sequence[Tensor], drives: Sequence[Tensor]
) -> list[Tensor]:
    """h_k = drive_k + sum_{j->k} g A_jk s_j for every hidden layer k."""
    return [net.preactivation(k, list(state), drives[k]) for k in range(len(state))]


def outgoing_blocks(net: CompiledNetwork) -> list[list[tuple[int, Block]]]:
    """For each layer j, the hidden-to-hidden blocks j -> k as ``(k, block)`` pairs."""
    out: list[list[tuple[int, Block]]] = [[] for _ in net.layout.names]
    for target, pairs in enumerate(net.incoming):
        for source, block in pairs:
            out[source].append((target, block))
    return out


def adjoint_schedule(schedule: Schedule) -> Schedule:
    """The forward schedule's groups in reverse order (the adjoint flows top-down)."""
    return tuple(reversed(schedule))


def adjoint_step(
    outgoing: Sequence[Sequence[tuple[int, Block]]],
    adjoint: list[Tensor],
    derivatives: Sequence[Tensor],
    source: Sequence[Tensor],
    groups: Schedule,
    states: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """One pass of lambda_j <- dL/ds_j + sum_{blocks j->k} g A_jk^T (rho'(h_k) * lambda_k).

    The groups are updated in turn, each from the newest values (Jacobi inside a group).
    ``states`` (the fixed point s*) are what each block sees of the layers it joins.
    Returns a new list.
    """
    new = list(adjoint)
    for group in groups:
        values = []
        for j in group:
            acc = source[j]
            for k, block in outgoing[j]:
                joined = Joined(states[j], states[k]) if states is not None else None
                acc = acc + block.adjoint(derivatives[k] * new[k], joined)
            values.append(acc)
        for j, value in zip(group, values, strict=True):
            new[j] = value
    return new


def _relative_change(new: Sequence[Tensor], old: Sequence[Tensor], tolerance: float) -> Tensor:
    """max_b ||lambda_t,b - lambda_{t-1},b|| / ||lambda_t,b|| over the examples b (norms over
    all layers of one example), divided by ``tolerance``.

    A 0-d tensor (a :data:`topo_ep.engine.Criterion`): per example, 0 when both norms are zero,
    inf when only the change is nonzero. Judged per example, like the free phase's residual, so
    the decision on a shard of a batch, agreed by a MAX over the shards, is the decision on the
    whole batch (the ratio of one example does not depend on the batch's 1/B in dL/ds).
    """
    diff = torch.stack([(a - b).flatten(1).pow(2).sum(1) for a, b in zip(new, old, strict=True)])
    norm = torch.stack([a.flatten(1).pow(2).sum(1) for a in new])
    diff, norm = diff.sum(0), norm.sum(0)
    ratio = torch.where(
        norm > 0,
        diff.sqrt() / norm.sqrt().clamp(min=torch.finfo(norm.dtype).tiny),
        torch.where(diff > 0, torch.full_like(diff, math.inf), torch.zeros_like(diff)),
    )
    return ratio.amax() / tolerance


def solve_adjoint(
    net: CompiledNetwork,
    derivatives: Sequence[Tensor],
    source: Sequence[Tensor],
    schedule: Schedule,
    max_steps: int,
    tolerance: float = 0.0,
    check_every: int = 5,
    states: Sequence[Tensor] | None = None,
    agree: Agree | None = None,
) -> tuple[list[Tensor], PhaseStats]:
    """Solve lambda = M^T (D lambda) + dL/ds by iteration from lambda = dL/ds.

    Parameters
    ----------
    net
        The compiled network (its blocks give M^T through ``adjoint``).
    derivatives
        rho'(h*) per layer, the diagonal D.
    source
        dL/ds per layer.
    schedule
        The forward schedule; its groups are visited in reverse order.
    max_steps, tolerance, check_every
        As in :func:`topo_ep.engine.relax`: stop when every example's relative change
        ||lambda_t - lambda_{t-1}|| / ||lambda_t|| (:func:`_relative_change`), read every
        ``check_every`` steps, falls below max(tolerance, 16 eps); tolerance 0 runs exactly
        ``max_steps``.
    states
        The fixed point s*, seen by the blocks (:class:`~topo_ep.blocks.Joined`).
    agree
        Applied to the criterion before each decision (a data-parallel run's all-reduce MAX,
        see :func:`topo_ep.engine.convergence_decision`).

    Raises
    ------
    DivergenceError
        When the iterate turns non-finite (spectral radius of M^T D >= 1).
    """
    groups = adjoint_schedule(schedule)
    outgoing = outgoing_blocks(net)
    with torch.no_grad():  # a linear solve; never differentiated
        return solve(
            lambda adjoint: adjoint_step(outgoing, adjoint, derivatives, source, groups, states),
            [s.clone() for s in source],
            max_steps,
            tolerance,
            check_every,
            criterion=_relative_change,
            agree=agree,
            diverged=lambda t: (
                f"the adjoint iteration became non-finite at step {t}: the Jacobian "
                "rho'(h*) M at the free fixed point has spectral radius >= 1"
            ),
        )


def implicit_gradients(
    net: CompiledNetwork,
    x: Tensor,
    y: Tensor,
    *,
    schedule: str = "synchronous",
    free_steps: int = 200,
    tolerance: float = 1e-10,
    check_every: int = 5,
    adjoint_steps: int | None = None,
    adjoint_tolerance: float | None = None,
    agree: Agree | None = None,
) -> ImplicitResult:
    """dL/dtheta at the free fixed point by implicit differentiation (see the module docstring).

    Parameters
    ----------
    net
        The compiled network; its ``.grad`` fields are left alone.
    x, y
        Inputs (batch, n_in) in ``net.dtype`` and class labels (batch,).
    schedule, free_steps, tolerance, check_every
        The free relaxation, as in :func:`topo_ep.engine.relax`.
    adjoint_steps, adjoint_tolerance
        Limits of the adjoint iteration (default: ``free_steps`` and ``tolerance``).
    agree
        Applied to every stop test of both iterations (see :func:`solve_adjoint`).
    """
    groups = net.schedule(schedule)
    with torch.no_grad():
        drives = net.input_drive(x)
        free, free_stats = free_phase(
            net, drives, groups, free_steps, tolerance, check_every, agree=agree
        )
        h = preactivations(net, free, drives)
        derivatives = [act.derivative(hk) for act, hk in zip(net.activations, h, strict=True)]
    tensors = net.learned_tensors()
    readout_keys = [key for key in tensors if key.is_readout]
    with torch.enable_grad():
        top = free[net.top].detach().requires_grad_(True)
        logits = net.readout_logits(top)
        loss = torch.nn.functional.cross_entropy(logits, y)
        found = torch.autograd.grad(loss, [top] + [tensors[k] for k in readout_keys])
    source = [torch.zeros_like(s) for s in free]
    source[net.top] = found[0].detach()
    grads: Gradients = {k: g.detach() for k, g in zip(readout_keys, found[1:], strict=True)}
    try:
        adjoint, adjoint_stats = solve_adjoint(
            net,
            derivatives,
            source,
            groups,
            free_steps if adjoint_steps is None else adjoint_steps,
            tolerance if adjoint_tolerance is None else adjoint_tolerance,
            check_every,
            free,
            agree,
        )
    except DivergenceError as exc:
        state = (
            "converged"
            if free_stats.converged
            else f"had not converged (residual {free_stats.residual:.3g} after "
            f"{free_stats.steps} steps), so the state may be no fixed point at all"
        )
        raise DivergenceError(f"{exc}; the free phase {state}") from exc
    with torch.no_grad():
        v = [d * a for d, a in zip(derivatives, adjoint, strict=True)]
    hidden_keys = [key for key in tensors if key not in readout_keys]
    if hidden_keys:
        with torch.enable_grad():
            held = [s.detach() for s in free]
            h_theta = preactivations(net, held, net.input_drive(x))
            total = sum((hk * vk).sum() for hk, vk in zip(h_theta, v, strict=True))
            found = torch.autograd.grad(total, [tensors[k] for k in hidden_keys], allow_unused=True)
        for key, grad in zip(hidden_keys, found, strict=True):
            grads[key] = torch.zeros_like(tensors[key]) if grad is None else grad.detach()
    return ImplicitResult(grads, free, adjoint, logits.detach(), free_stats, adjoint_stats)


@METHODS.register("implicit")
@dataclass(frozen=True)
class ImplicitDifferentiation:
    """Recurrent backprop at the free fixed point (``--method implicit``).

    The free phase uses the topology's schedule, step limit and tolerance; the adjoint
    iteration uses ``adjoint_steps`` (default: the free step limit) and the same tolerance.
    ``agree`` is applied to the stop test of both iterations (a data-parallel run passes an
    all-reduce MAX, see :func:`topo_ep.engine.convergence_decision`).
    """

    schedule: str = "synchronous"
    free_steps: int = 20
    tolerance: float = 0.0
    check_every: int = 5
    adjoint_steps: int | None = None
    agree: Agree | None = field(default=None, compare=False)
    name: str = "implicit"

    @classmethod
    def from_spec(cls, spec: TopologySpec) -> ImplicitDifferentiation:
        d = spec.dynamics
        return cls(
            schedule=d.schedule,
            free_steps=d.free_steps,
            tolerance=d.tolerance,
            check_every=d.check_every,
        )

    def compute(self, net: CompiledNetwork, x: Tensor, y: Tensor) -> ImplicitResult:
        """The gradients and diagnostics, without touching ``.grad``."""
        return implicit_gradients(
            net,
            x,
            y,
            schedule=self.schedule,
            free_steps=self.free_steps,
            tolerance=self.tolerance,
            check_every=self.check_every,
            adjoint_steps=self.adjoint_steps,
            agree=self.agree,
        )

    def gradients(self, net: CompiledNetwork, x: Tensor, y: Tensor) -> BatchResult:
        """Write ``.grad = dL/dtheta`` (mean cross-entropy) for every learned tensor."""
        result = self.compute(net, x, y)
        write_gradients(net, result.grads)
        loss, correct = cross_entropy_and_correct(result.logits, y)
        return BatchResult(
            loss,
            correct,
            free_steps=result.free_stats.steps,
            converged=result.free_stats.converged and result.adjoint_stats.converged,
        )

    def logits(self, net: CompiledNetwork, x: Tensor) -> Tensor:
        """Readout logits at the free fixed point."""
        with torch.no_grad():
            free, _ = free_phase(
                net,
                net.input_drive(x),
                self.schedule,
                self.free_steps,
                self.tolerance,
                self.check_every,
                agree=self.agree,
            )
            return net.readout_logits(free[net.top])
