"""Equilibrium Propagation on a compiled network.

Free phase: relax from s = 0 with the input clamped. Nudged phase: relax from the free state with
the output error injected into the readout's source layer,

    h_top += nudge * (y - p) B_f,

where p = softmax(W_out s_top) and B_f is W_out^T (tied) or a fixed random matrix. By default the
error is held at its free-phase value (the paper's layered code); ``error: reread`` recomputes
it from the current state every step. Symmetric nudging runs two nudged phases at +nudge and
-nudge.

Updates for a learned edge src -> dst with gain g (W has shape (n_dst, n_src)), summed over the
batch; ``a`` and ``b`` are the nudged and free states (one-sided, factor 1) or the +nudge and
-nudge states (symmetric, factor 1/2):

- ``paper``:    dW = g * factor * (a_dst - b_dst)^T s_src^0
- ``contrast``: dW = g * factor * (a_dst^T a_src - b_dst^T b_src)

and the gradient written for the optimizer is ``W.grad = -dW / (nudge * batch)``. Biases get
db = factor * sum(a_k - b_k). The readout gets its exact cross-entropy gradient
``W_out.grad = (p - y)^T s_top^0 / batch``.

Gain compensation. On a balanced topology with tied feedback (an energy exists, see
:func:`gain_factors` and :func:`topo_ep.graph.analyse_balance`) the EP theorem gives, for an
edge into layer j,

    -dW / (nudge * batch)  ->  (c_top^2 / c_j^2) * dL/dW   as nudge -> 0,

where u_k = c_k s_k makes the coupling symmetric; for a chain c_top^2 / c_j^2 is the product of
the feedback gains between layer j and the top hidden layer. ``gain_compensated`` divides each
edge's update (and each bias's) by that factor, so the update estimates the gradient in norm
too. Without an energy the factor is undefined and gain compensation is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from topo_ep.compiler import CompiledNetwork
from topo_ep.engine import PhaseStats, StateDrive, make_schedule, relax
from topo_ep.errors import TopoEpError
from topo_ep.graph import analyse_balance
from topo_ep.learn.base import BatchResult, cross_entropy_and_correct
from topo_ep.spec import INPUT, TopologySpec


def no_energy_reason(spec: TopologySpec) -> str | None:
    """Why the topology has no energy (the sentence of :func:`topo_ep.graph.analyse_balance`,
    which names the one-way coupling or the cycle that breaks the balance), or ``None``."""
    balance = analyse_balance(spec)
    return None if balance.balanced else balance.reason


def gain_factors(spec: TopologySpec) -> dict[str, float] | None:
    """Predicted ratio |EP update| / |dL/dW| per hidden layer j: c_top^2 / c_j^2.

    With u_k = c_k s_k the balanced coupling is symmetric, a Hopfield energy exists, and the EP
    theorem gives EP -> (c_top^2 / c_j^2) dL/dW as the nudge goes to 0 for every edge (and bias)
    into layer j. For a chain with forward gains 1 it is the product of the feedback gains
    between j and the top hidden layer. ``None`` when the topology has no energy (see
    :func:`no_energy_reason`).
    """
    scales = analyse_balance(spec).scales
    if scales is None:
        return None
    top = scales[spec.readout.source]
    return {name: (top / c) ** 2 for name, c in scales.items()}


def require_gain_factors(spec: TopologySpec) -> dict[str, float]:
    """:func:`gain_factors`, or a :class:`~topo_ep.errors.TopoEpError` saying why there are none."""
    factors = gain_factors(spec)
    if factors is None:
        raise TopoEpError(
            f"gain compensation needs an energy; topology {spec.name!r}: "
            f"{no_energy_reason(spec)}. Without an energy the EP update is not a rescaled "
            "gradient and no per-edge factor exists; train without gain_compensated"
        )
    return factors


@dataclass(frozen=True)
class EPPhases:
    """States and statistics of one EP evaluation on a batch."""

    free: list[Tensor]
    nudged: tuple[list[Tensor], ...]
    logits: Tensor
    free_stats: PhaseStats
    nudged_stats: tuple[PhaseStats, ...]


@dataclass(frozen=True)
class EquilibriumPropagation:
    """EP with the settings of a topology's ``dynamics`` and ``training`` sections."""

    nudge: float = 0.1
    nudging: str = "one-sided"
    rule: str = "paper"
    error: str = "held"
    schedule: str = "synchronous"
    free_steps: int = 20
    nudged_steps: int = 10
    tolerance: float = 0.0
    check_every: int = 5
    gain_compensated: bool = False
    name: str = "ep"

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
            schedule=d.schedule,
            free_steps=d.free_steps,
            nudged_steps=d.nudged_steps,
            tolerance=d.tolerance,
            check_every=d.check_every,
            gain_compensated=t.gain_compensated,
        )

    # ------------------------------------------------------------------ phases
    def free_phase(
        self, net: CompiledNetwork, x: Tensor, drives: list[Tensor] | None = None
    ) -> tuple[list[Tensor], PhaseStats]:
        """Relax from zero with the input clamped and no nudge."""
        with torch.no_grad():
            drives = net.input_drive(x) if drives is None else drives
            start = net.layout.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            schedule = make_schedule(net, self.schedule)
            return relax(
                net, start, drives, schedule, self.free_steps, self.tolerance, self.check_every
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
        """Relax from the free state with nudge * (y - p) B_f added to the top layer."""
        matrix = net.nudge_matrix()
        top = net.top
        state_drive: StateDrive | None = None
        nudged_drives = list(drives)
        if self.error == "held":
            nudged_drives[top] = torch.addmm(
                drives[top], target - probabilities, matrix, alpha=nudge
            )
        else:

            def state_drive(state: list[Tensor]) -> dict[int, Tensor]:
                error = target - net.readout(state)
                return {top: nudge * (error @ matrix)}

        schedule = make_schedule(net, self.schedule)
        return relax(
            net,
            free,
            nudged_drives,
            schedule,
            self.nudged_steps,
            self.tolerance,
            self.check_every,
            state_drive,
        )

    def phases(self, net: CompiledNetwork, x: Tensor, y: Tensor) -> EPPhases:
        """Run the free phase and the one or two nudged phases."""
        with torch.no_grad():
            drives = net.input_drive(x)
            free, free_stats = self.free_phase(net, x, drives)
            logits = net.readout_logits(free[net.top])
            probabilities = torch.softmax(logits, dim=-1)
            target = torch.nn.functional.one_hot(y, net.spec.readout.size).to(x.dtype)
            signs = (1.0,) if self.nudging == "one-sided" else (1.0, -1.0)
            results = [
                self.nudged_phase(net, free, drives, target, probabilities, s * self.nudge)
                for s in signs
            ]
        return EPPhases(
            free,
            tuple(r[0] for r in results),
            logits,
            free_stats,
            tuple(r[1] for r in results),
        )

    # ------------------------------------------------------------------ updates
    def updates(self, net: CompiledNetwork, x: Tensor, phases: EPPhases) -> dict[str, Tensor]:
        """dW per learned tensor name (weights by edge, ``bias:<layer>`` for biases).

        Not yet divided by nudge * batch; see the module docstring for the rules. With
        ``gain_compensated`` each is divided by its target layer's :func:`gain_factors`.
        """
        factors = require_gain_factors(net.spec) if self.gain_compensated else None
        if self.nudging == "one-sided":
            plus, minus, factor = phases.nudged[0], phases.free, 1.0
        else:
            plus, minus, factor = phases.nudged[0], phases.nudged[1], 0.5
        free = phases.free
        layout = net.layout
        out: dict[str, Tensor] = {}
        with torch.no_grad():
            for binding in net.learned_bindings():
                edge = binding.edge
                dst = layout.index(edge.target)
                scale = factor * edge.gain
                if edge.source == INPUT:
                    pre_plus = pre_minus = pre_free = x
                else:
                    src = layout.index(edge.source)
                    pre_plus, pre_minus, pre_free = plus[src], minus[src], free[src]
                if self.rule == "paper":
                    delta = (plus[dst] - minus[dst]).t() @ pre_free
                else:
                    delta = plus[dst].t() @ pre_plus - minus[dst].t() @ pre_minus
                if factors is not None:
                    scale /= factors[edge.target]
                out[binding.tensor] = delta * scale
            for name in net.biases:
                k = layout.index(name)
                scale = factor if factors is None else factor / factors[name]
                out[f"bias:{name}"] = (plus[k] - minus[k]).sum(dim=0) * scale
        return out

    def gradients(self, net: CompiledNetwork, x: Tensor, y: Tensor) -> BatchResult:
        """Write ``.grad = -dW / (nudge * batch)`` for every learned tensor, and the exact
        cross-entropy gradient of the readout."""
        phases = self.phases(net, x, y)
        batch = x.shape[0]
        scale = -1.0 / (self.nudge * batch)
        for name, delta in self.updates(net, x, phases).items():
            if name.startswith("bias:"):
                net.biases[name[5:]].grad = delta * scale
            else:
                net.weights[name].grad = delta * scale
        with torch.no_grad():
            probabilities = torch.softmax(phases.logits, dim=-1)
            target = torch.nn.functional.one_hot(y, net.spec.readout.size).to(x.dtype)
            error = (probabilities - target) / batch
            net.readout_weight.grad = error.t() @ phases.free[net.top]
            if net.readout_bias is not None:
                net.readout_bias.grad = error.sum(dim=0)
        loss, correct = cross_entropy_and_correct(phases.logits, y)
        return BatchResult(
            loss,
            correct,
            free_steps=phases.free_stats.steps,
            nudged_steps=sum(s.steps for s in phases.nudged_stats),
            converged=phases.free_stats.converged and all(s.converged for s in phases.nudged_stats),
        )

    def logits(self, net: CompiledNetwork, x: Tensor) -> Tensor:
        """Readout logits at the free fixed point."""
        with torch.no_grad():
            free, _ = self.free_phase(net, x)
            return net.readout_logits(free[net.top])
