"""Equilibrium Propagation on a compiled network.

Free phase: relax from s = 0 with the input clamped. Nudged phase: relax from the free state with
the output error injected into the readout's source layer,

    h_top += nudge * (y - p) B_f,

where p = softmax(W_out s_top) and B_f is W_out^T (tied) or a fixed random matrix. By default the
error is held at its free-phase value (the paper's layered code); ``error: reread`` recomputes
it from the current state every step; ``error: accumulated`` holds it and adds the drive once
more at every step, so that nudged step t gets t * nudge * (y - p^0) B_f (the authors' graph
code for the residual and AGT nets, ``models_LN_G.py``; the nudged phase then has no fixed
point, so it runs exactly ``nudged_steps``). Symmetric nudging runs two nudged phases at +nudge
and -nudge.

Updates for a learned edge src -> dst with gain g, summed over the batch; ``a`` and ``b`` are
the nudged and free states (one-sided, factor 1) or the +nudge and -nudge states (symmetric,
factor 1/2). With ``outer`` the edge's block's bilinear primitive (for a dense W,
outer(post, pre) = post^T pre; for a sparse block the same at its mask, as its stored values;
:class:`~topo_ep.blocks.base.Block`), shaped like the block's own parameter:

- ``paper``:    dW = g * factor * outer(a_dst - b_dst, s_src^0)
- ``contrast``: dW = g * factor * (outer(a_dst, a_src) - outer(b_dst, b_src))

and the gradient written for the optimizer is ``W.grad = -dW / (nudge * batch)``. Biases get
db = factor * sum_b (a_k - b_k), also summed over each channel's positions for a per-channel
bias (:meth:`~topo_ep.blocks.bias.LayerBias.outer`). The presynaptic state of an input edge is
the prepared batch (:meth:`~topo_ep.compiler.CompiledNetwork.prepare_input`). The readout gets
its exact cross-entropy gradient ``W_out.grad = outer(p - y, s_top^0) / batch`` (the readout is
a block too); with ``readout_error: nudged`` p is read from the nudged phase's last state
instead, as the authors' graph code does (not a gradient then). This module computes no
matrix product of its own.

Gain compensation. On a balanced topology with tied feedback (an energy exists, see
:func:`topo_ep.balance.gain_factors` and :func:`topo_ep.balance.analyse_balance`) the EP
theorem gives, for an edge into layer j,

    -dW / (nudge * batch)  ->  (c_top^2 / c_j^2) * dL/dW   as nudge -> 0,

where u_k = c_k s_k makes the coupling symmetric; for a chain c_top^2 / c_j^2 is the product of
the feedback gains between layer j and the top hidden layer. ``gain_compensated`` divides each
edge's update (and each bias's) by that factor, so the update estimates the gradient in norm
too. Without an energy the factor is undefined and gain compensation is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from topo_ep.balance import require_gain_factors
from topo_ep.blocks import Joined
from topo_ep.chunks import ChunkRunner
from topo_ep.compiler import CompiledNetwork
from topo_ep.engine import (
    Agree,
    ChunkSource,
    PhaseStats,
    StateDrive,
    bounded_states,
    contrast_criterion,
    free_phase,
    relax,
)
from topo_ep.errors import TopoEpError
from topo_ep.learn.base import BatchResult, Gradients, cross_entropy_and_correct, write_gradients
from topo_ep.learn.registry import METHODS
from topo_ep.params import READOUT_BIAS, READOUT_WEIGHT, ParamKey
from topo_ep.spec import INPUT, TopologySpec


@dataclass(frozen=True)
class EPPhases:
    """States and statistics of one EP evaluation on a batch.

    ``inputs`` is the prepared batch (:meth:`~topo_ep.compiler.CompiledNetwork.prepare_input`),
    the presynaptic state of every input edge.
    """

    inputs: Tensor
    free: list[Tensor]
    nudged: tuple[list[Tensor], ...]
    logits: Tensor
    free_stats: PhaseStats
    nudged_stats: tuple[PhaseStats, ...]


@dataclass(frozen=True)
class EPEstimate:
    """EP's gradient estimate of every learned tensor, with the phases it came from.

    ``grads`` holds what :meth:`EquilibriumPropagation.gradients` writes into ``.grad``:
    ``-dW / (nudge * batch)`` per edge and bias, the exact gradient of the readout.
    """

    grads: Gradients
    phases: EPPhases
    result: BatchResult


@METHODS.register("ep")
@dataclass(frozen=True)
class EquilibriumPropagation:
    """EP with the settings of a topology's ``dynamics`` and ``training`` sections.

    At ``tolerance`` > 0 the free phase stops on the per-example state residual; at
    ``nudged_tolerance`` > 0 (``None``: ``tolerance``) the nudged phases stop on it and on
    every layer's contrast (:func:`topo_ep.engine.contrast_criterion`); the step limits are
    caps. ``nudged_schedule`` (``None``: ``schedule``) runs the nudged phases.
    ``agree`` is applied to every convergence criterion before the decision (a data-parallel
    run passes an all-reduce MAX, see :func:`topo_ep.engine.convergence_decision`).
    ``chunks`` runs the steps between checks of every phase (``dynamics.execution``:
    a :class:`topo_ep.chunks.ChunkRunner`; ``None``: eager steps).
    """

    nudge: float = 0.1
    nudging: str = "one-sided"
    rule: str = "paper"
    error: str = "held"
    readout_error: str = "free"
    schedule: str = "synchronous"
    free_steps: int = 20
    nudged_steps: int = 10
    tolerance: float = 0.0
    check_every: int = 5
    gain_compensated: bool = False
    nudged_schedule: str | None = None
    nudged_tolerance: float | None = None
    agree: Agree | None = field(default=None, compare=False)
    chunks: ChunkSource | None = field(default=None, compare=False)
    name: str = "ep"

    def __post_init__(self) -> None:
        if self.readout_error == "nudged" and self.nudging != "one-sided":
            raise TopoEpError("readout_error 'nudged' needs one-sided nudging (one nudged phase)")
        if self.error == "accumulated" and self.nudged_phase_tolerance > 0:
            raise TopoEpError(
                "error 'accumulated' grows the nudge drive at every nudged step, so the nudged "
                "phase has no fixed point: it needs a nudged tolerance of 0 (exactly "
                f"nudged_steps), not {self.nudged_phase_tolerance:g}"
            )

    @classmethod
    def from_spec(cls, spec: TopologySpec) -> EquilibriumPropagation:
        d, t = spec.dynamics, spec.training
        if t.gain_compensated:
            require_gain_factors(spec)
        return cls(
            nudge=t.nudge,
            nudging=t.nudging,
            rule=t.rule,
            error=t.error,
            readout_error=t.readout_error,
            schedule=d.schedule,
            free_steps=d.free_steps,
            nudged_steps=d.nudged_steps,
            tolerance=d.tolerance,
            check_every=d.check_every,
            gain_compensated=t.gain_compensated,
            nudged_schedule=d.nudged_schedule,
            nudged_tolerance=d.nudged_tolerance,
            chunks=None if d.execution == "eager" else ChunkRunner(d.execution),
        )

    @property
    def nudged_phase_tolerance(self) -> float:
        """The nudged phases' tolerance: ``nudged_tolerance``, else ``tolerance``."""
        return self.tolerance if self.nudged_tolerance is None else self.nudged_tolerance

    # ------------------------------------------------------------------ phases
    def free_phase(self, net: CompiledNetwork, x: Tensor) -> tuple[list[Tensor], PhaseStats]:
        """Relax from zero with the raw batch ``x`` clamped and no nudge."""
        with torch.no_grad():
            return self._free(net, net.input_drive(x))

    def _free(
        self, net: CompiledNetwork, drives: list[Tensor], start: list[Tensor] | None = None
    ) -> tuple[list[Tensor], PhaseStats]:
        """:func:`topo_ep.engine.free_phase` with this method's schedule and limits, from
        ``start`` (a warm start) or from zero."""
        return free_phase(
            net,
            drives,
            self.schedule,
            self.free_steps,
            self.tolerance,
            self.check_every,
            agree=self.agree,
            start=start,
            chunk_source=self.chunks,
        )

    def nudged_phase(
        self,
        net: CompiledNetwork,
        free: list[Tensor],
        drives: list[Tensor],
        target: Tensor,
        probabilities: Tensor,
        nudge: float,
    ) -> tuple[list[Tensor], PhaseStats]:
        """Relax from the free state with nudge * (y - p) B_f added to the top layer
        (B_f: the readout's feedback block, :attr:`~topo_ep.compiler.CompiledNetwork.head`),
        under ``nudged_schedule``; at :attr:`nudged_phase_tolerance` > 0 it stops when the state
        and every layer's contrast s - s^0 have settled
        (:func:`topo_ep.engine.contrast_criterion`).

        B_f sees the top layer's state (:class:`~topo_ep.blocks.Joined`): the free state's when
        the error is held, the current state's when it is re-read."""
        head = net.head
        top = net.top
        tolerance = self.nudged_phase_tolerance
        groups = net.schedule(self.nudged_schedule or self.schedule)
        state_drive: StateDrive | None = None
        nudged_drives = list(drives)
        held = Joined(None, free[top])
        if self.error == "held":
            nudged_drives[top] = head.nudge(drives[top], target - probabilities, nudge, held)
        elif self.error == "accumulated":
            step_drive = nudge * head.feedback_of(target - probabilities, held)
            state_drive = accumulated_drive(top, step_drive, len(groups))
        else:

            def state_drive(state: list[Tensor]) -> dict[int, Tensor]:
                error = target - net.readout(state)
                return {top: nudge * head.feedback_of(error, Joined(None, state[top]))}

        return relax(
            net,
            free,
            nudged_drives,
            groups,
            self.nudged_steps,
            tolerance,
            self.check_every,
            state_drive,
            criterion=(
                contrast_criterion(free, bounded_states(net, groups)) if tolerance > 0 else None
            ),
            agree=self.agree,
            chunk_source=self.chunks,
        )

    def phases(
        self, net: CompiledNetwork, x: Tensor, y: Tensor, start: list[Tensor] | None = None
    ) -> EPPhases:
        """Run the free phase (from ``start``, a warm start, or from zero) and the one or two
        nudged phases on the raw batch ``x``."""
        with torch.no_grad():
            inputs = net.prepare_input(x)
            drives = net.input_drive(inputs, prepared=True)
            free, free_stats = self._free(net, drives, start)
            logits = net.readout_logits(free[net.top])
            probabilities = torch.softmax(logits, dim=-1)
            target = torch.nn.functional.one_hot(y, net.spec.readout.size).to(inputs.dtype)
            signs = (1.0,) if self.nudging == "one-sided" else (1.0, -1.0)
            results = [
                self.nudged_phase(net, free, drives, target, probabilities, s * self.nudge)
                for s in signs
            ]
        return EPPhases(
            inputs,
            free,
            tuple(r[0] for r in results),
            logits,
            free_stats,
            tuple(r[1] for r in results),
        )

    # ------------------------------------------------------------------ updates
    def contrasted(self, phases: EPPhases) -> tuple[list[Tensor], list[Tensor]]:
        """The two states whose difference EP learns from: (nudged, free) for one-sided
        nudging, (+nudge, -nudge) for symmetric."""
        if self.nudging == "one-sided":
            return phases.nudged[0], phases.free
        return phases.nudged[0], phases.nudged[1]

    def updates(self, net: CompiledNetwork, phases: EPPhases) -> Gradients:
        """dW per learned edge and hidden bias, keyed by :class:`~topo_ep.params.ParamKey`.

        Not yet divided by nudge * batch; see the module docstring for the rules. With
        ``gain_compensated`` each is divided by its target layer's gain factor
        (:attr:`~topo_ep.compiler.CompiledNetwork.gain_factors`).
        """
        factors = net.gain_factors if self.gain_compensated else None
        plus, minus = self.contrasted(phases)
        factor = 1.0 if self.nudging == "one-sided" else 0.5
        free = phases.free
        layout = net.layout
        out: Gradients = {}
        contrasts: dict[int, Tensor] = {}  # a - b of a layer, shared by its edges and bias

        def contrast(k: int) -> Tensor:
            if k not in contrasts:
                contrasts[k] = plus[k] - minus[k]
            return contrasts[k]

        with torch.no_grad():
            for binding in net.learned_bindings():
                edge = binding.edge
                block = net.blocks[binding.block]
                dst = layout.index(edge.target)
                scale = factor * edge.gain
                if edge.source == INPUT:
                    pre_plus = pre_minus = pre_free = phases.inputs
                else:
                    src = layout.index(edge.source)
                    pre_plus, pre_minus, pre_free = plus[src], minus[src], free[src]
                if self.rule == "paper":
                    delta = block.outer(contrast(dst), pre_free, Joined(pre_free, free[dst]))
                else:
                    delta = block.outer(plus[dst], pre_plus, Joined(pre_plus, plus[dst]))
                    delta.sub_(block.outer(minus[dst], pre_minus, Joined(pre_minus, minus[dst])))
                if factors is not None:
                    scale /= factors[edge.target]
                out[ParamKey.edge(edge)] = _scaled(delta, scale)
            for name in net.biases:
                k = layout.index(name)
                scale = factor if factors is None else factor / factors[name]
                out[ParamKey.bias(name)] = _scaled(net.bias_of(name).outer(contrast(k)), scale)
        return out

    def estimate(
        self, net: CompiledNetwork, x: Tensor, y: Tensor, start: list[Tensor] | None = None
    ) -> EPEstimate:
        """EP's gradient of every learned tensor, ``-dW / (nudge * batch)``, and the exact
        cross-entropy gradient of the readout; ``.grad`` is left alone. ``start``: the free
        phase's warm start (``None``: zero)."""
        phases = self.phases(net, x, y, start)
        batch = x.shape[0]
        scale = -1.0 / (self.nudge * batch)
        # the updates are this call's own tensors: scaled in place, the bits of delta * scale
        grads = {key: delta.mul_(scale) for key, delta in self.updates(net, phases).items()}
        with torch.no_grad():
            logits = phases.logits
            if self.readout_error == "nudged":
                logits = net.readout_logits(phases.nudged[0][net.top])
            probabilities = torch.softmax(logits, dim=-1)
            target = torch.nn.functional.one_hot(y, net.spec.readout.size).to(probabilities.dtype)
            error = (probabilities - target) / batch
            top = phases.free[net.top]
            grads[READOUT_WEIGHT] = net.head.block.outer(error, top, Joined(top, None))
            if net.readout_bias is not None:
                grads[READOUT_BIAS] = error.sum(dim=0)
        loss, correct = cross_entropy_and_correct(phases.logits, y)
        # phases with a tolerance must have converged; at tolerance 0 none has (fixed steps)
        tolerances = [(phases.free_stats, self.tolerance)]
        tolerances += [(stats, self.nudged_phase_tolerance) for stats in phases.nudged_stats]
        judged = [stats for stats, tolerance in tolerances if tolerance > 0]
        result = BatchResult(
            loss,
            correct,
            free_steps=phases.free_stats.steps,
            nudged_steps=sum(s.steps for s in phases.nudged_stats),
            converged=bool(judged) and all(stats.converged for stats in judged),
            free_state=phases.free,
        )
        return EPEstimate(grads, phases, result)

    def gradients(
        self, net: CompiledNetwork, x: Tensor, y: Tensor, start: list[Tensor] | None = None
    ) -> BatchResult:
        """Write :meth:`estimate`'s gradients into ``.grad`` of every learned tensor; the
        free phase starts from ``start`` (a warm start) or from zero."""
        estimate = self.estimate(net, x, y, start)
        write_gradients(net, estimate.grads)
        return estimate.result

    def logits(self, net: CompiledNetwork, x: Tensor) -> Tensor:
        """Readout logits at the free fixed point."""
        with torch.no_grad():
            free, _ = self.free_phase(net, x)
            return net.readout_logits(free[net.top])


def accumulated_drive(top: int, step_drive: Tensor, groups: int) -> StateDrive:
    """The nudge drive of ``error: accumulated``: at nudged step t (1-based) the top layer gets

        t * nudge * (y - p^0) B_f,

    summed as the authors' graph code sums it: ``step_drive`` added once more at the start of
    every step (one new tensor per step). :func:`~topo_ep.engine.step` asks a state drive once
    per group of the schedule, so a step starts every ``groups`` calls; every group of a step
    sees the same sum.
    """
    calls = 0
    total = torch.zeros_like(step_drive)

    def drive(state: list[Tensor]) -> dict[int, Tensor]:
        nonlocal calls, total
        if calls % groups == 0:
            total = total + step_drive
        calls += 1
        return {top: total}

    return drive


def _scaled(delta: Tensor, scale: float) -> Tensor:
    """delta * scale in place (``delta`` is a new tensor from ``outer``; see
    :class:`~topo_ep.blocks.base.Block`), skipped at scale 1, which changes no bit."""
    return delta if scale == 1.0 else delta.mul_(scale)
