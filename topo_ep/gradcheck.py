"""Check EP's update against the true gradient, edge by edge (``topo-ep check-gradients``).

For a topology, a seeded random batch (x uniform in [0, 1), labels uniform) and the network's
initial weights, both sides are computed on the same compiled tensors:

- the EP gradient ``g_EP = -dW / (nudge * batch)`` that :class:`~topo_ep.learn.ep.
  EquilibriumPropagation` writes into ``.grad`` (the chosen rule, nudging and error mode);
- the true gradient ``g = dL/dW`` of L = mean cross-entropy of softmax(W_out s*_top) at the
  free fixed point s*, by implicit differentiation (:mod:`topo_ep.learn.implicit`).

Every phase (free, nudged, adjoint) relaxes to a tight tolerance: by default 16 eps of the
dtype, the floor of :func:`topo_ep.engine.effective_tolerance`. Per learned tensor the check
reports

- ``1 - cos(g_EP, g)``, computed as ||g_EP/|g_EP| - g/|g| ||^2 / 2, which equals 1 - cos and
  keeps its relative accuracy far below the float64 epsilon;
- the raw norm ratio |g_EP| / |g|;
- the predicted ratio c_top^2 / c_j^2 of the EP theorem (j: the target layer; for a chain the
  product, over the links from j up to the top, of each link's feedback gain over its forward
  gain), or ``None`` ("n/a") where the theory
  makes no prediction: the topology has no energy (random feedback, unbalanced gains), or the
  readout's nudge feedback is random (the nudge is then not -dL/ds). With gain compensation the
  predicted ratio is 1;
- the sign agreement: the fraction of entries where sign(g_EP) == sign(g);
- the signal: how far the nudge moved the target layer relative to its norm
  (:func:`ep_signals`); rounding limits the EP estimate to about eps / signal.

The verdict is nudge-aware. A correct EP estimate is biased by O(nudge^k): k = 2 with symmetric
nudging, k = 1 one-sided, so its 1 - cos is O(nudge^(2k)). ``max_angle`` is the threshold at
the reference nudge 1e-3 and scales with that order above it,

    threshold = max_angle * max(1, (nudge / 1e-3)^(2k)),

never below ``max_angle`` (below 1e-3 rounding, about (eps / signal)^2, dominates). Where the
threshold would exceed 1e-4 it no longer tells a correct estimate from a wrong one; the check
then tests the order itself: it repeats EP at nudge / 10 and a row passes when its 1 - cos there
is at most ``max_angle`` or has fallen at least 10^(2k-1)-fold (the expected 10^(2k), less a
decade of slack for nets outside the asymptotic regime). An entry that is not a number fails;
the check fails when any entry fails or a phase did not converge. A divergent relaxation or
adjoint is reported as not converged (exit code 1), not as a user error.

Several fixed points. The free phase of every registered schedule is run from zero; when two
settle at different states for some sample, the report says so (:mod:`topo_ep.fixed_points`).

Error mode. The default is ``reread`` (the error y - p(s) recomputed from the current state
every step), the form the EP theorem is usually stated for. ``held`` (the error frozen at its
free value e_0 = y - p(s^0), the paper's code) is equivalent for this check to first order in
the nudge: the held nudged phase is the stationary point of F + nudge * <dC/ds(s^0), s>, whose
cost term is the linearisation of C at s^0. Its gradient at s^0 is dC/ds(s^0), so
ds^nudge/dnudge at nudge = 0 is the same as with reread, and the EP theorem applied to the
linear cost gives exactly dC(s^0)/ds . ds*/dtheta = dL/dtheta. The two modes differ only in the
O(nudge^2) terms (C's curvature enters reread's second derivative, not held's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from topo_ep.balance import gain_factors, no_energy_reason
from topo_ep.compiler import CompiledNetwork, compile_topology
from topo_ep.engine import effective_tolerance
from topo_ep.errors import DivergenceError
from topo_ep.fixed_points import fixed_point_split, settled_states
from topo_ep.learn.ep import EPPhases, EquilibriumPropagation
from topo_ep.learn.implicit import implicit_gradients
from topo_ep.schedules import SCHEDULES
from topo_ep.spec import NUDGINGS, RULES, TopologySpec

#: The error modes whose nudged phase has a stationary state, so that the EP theorem applies
#: (``accumulated`` grows its drive at every step: it has none).
CHECKED_ERRORS = ("reread", "held")

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: The nudge at which ``max_angle`` is the threshold as given.
REFERENCE_NUDGE = 1e-3
#: Above this scaled threshold the check tests the order in the nudge instead.
ORDER_TEST_ABOVE = 1e-4
#: The nudge of the order test is the checked nudge divided by this.
ORDER_STEP = 10.0


@dataclass(frozen=True)
class CheckSettings:
    """Settings of one gradient check.

    Attributes
    ----------
    nudge, nudging, rule, error
        The EP variant checked (``rule``: contrast or paper; ``nudging``: symmetric or
        one-sided; ``error``: reread or held).
    dtype
        ``float64`` (default) or ``float32``.
    batch, seed
        Size of the random batch; the seed draws the batch and the initial weights.
    max_angle
        Failure threshold on 1 - cos at the reference nudge 1e-3 (see :attr:`threshold`).
    gain_compensated
        Divide each EP update by its predicted factor (needs an energy).
    schedule
        Relaxation schedule; ``None`` uses the topology's.
    max_steps
        Step limit of every phase (free, nudged, adjoint).
    tolerance
        Residual tolerance of every phase; ``None`` uses the dtype's floor 16 eps.
    check_every
        Steps between residual checks.
    """

    nudge: float = 1e-3
    nudging: str = "symmetric"
    rule: str = "contrast"
    error: str = "reread"
    dtype: str = "float64"
    batch: int = 16
    seed: int = 0
    max_angle: float = 1e-6
    gain_compensated: bool = False
    schedule: str | None = None
    max_steps: int = 20000
    tolerance: float | None = None
    check_every: int = 5

    def __post_init__(self) -> None:
        checks = (
            (self.rule in RULES, f"rule must be one of {RULES}"),
            (self.nudging in NUDGINGS, f"nudging must be one of {NUDGINGS}"),
            (self.error in CHECKED_ERRORS, f"error must be one of {CHECKED_ERRORS}"),
            (self.dtype in DTYPES, f"dtype must be one of {tuple(DTYPES)}"),
            (math.isfinite(self.nudge) and self.nudge > 0, "nudge must be a positive number"),
            (self.batch >= 1, "batch must be >= 1"),
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (self.max_angle >= 0, "max_angle must be >= 0"),
            (
                self.tolerance is None or self.tolerance > 0,
                "tolerance must be > 0 (a check needs converged phases)",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def order(self) -> int:
        """k of the O(nudge^k) bias of a correct estimate: 2 symmetric, 1 one-sided."""
        return 2 if self.nudging == "symmetric" else 1

    @property
    def threshold(self) -> float:
        """max_angle * max(1, (nudge / 1e-3)^(2k)): the 1 - cos a correct estimate may reach."""
        return self.max_angle * max(1.0, (self.nudge / REFERENCE_NUDGE) ** (2 * self.order))

    @property
    def tests_order(self) -> bool:
        """Whether the threshold is too loose to decide, so the check tests the order."""
        return self.threshold > ORDER_TEST_ABOVE

    def describe_verdict(self) -> str:
        """What a row must satisfy to pass, in words."""
        k = self.order
        bias = f"{self.nudging} nudging has an O(nudge^{k}) bias, so 1 - cos is O(nudge^{2 * k})"
        if not self.tests_order:
            return (
                f"1 - cos <= {self.threshold:.3g} ({bias}; max_angle {self.max_angle:g} at nudge "
                f"{REFERENCE_NUDGE:g}, scaled to nudge {self.nudge:g})"
            )
        small = self.nudge / ORDER_STEP
        return (
            f"order test ({bias}; at nudge {self.nudge:g} the scaled threshold "
            f"{self.threshold:.3g} cannot decide): at nudge {small:g}, 1 - cos <= "
            f"{self.max_angle:g} or fallen >= {ORDER_STEP ** (2 * k - 1):g}x"
        )


@dataclass(frozen=True)
class EdgeCheck:
    """One row of the check: a learned tensor's EP gradient against the true gradient.

    Attributes
    ----------
    name
        The edge key (``input->h1:forward``), ``bias:<layer>`` or ``readout``.
    target
        The layer the tensor drives (the readout row: ``readout``).
    one_minus_cos
        1 - cos(g_EP, g).
    norm_ratio
        |g_EP| / |g|.
    predicted_ratio
        c_top^2 / c_j^2 (1 with gain compensation and on the readout), or ``None``.
    sign_agreement
        Fraction of entries with sign(g_EP) == sign(g).
    signal
        Relative EP signal at the target layer, ||a_j - b_j|| / ||s_j^0|| for the two states
        the rule contrasts (see :func:`ep_signals`; ``nan`` on the readout). Rounding limits
        the estimate to a relative accuracy of about eps / signal.
    ep_norm, true_norm
        |g_EP| and |g|.
    passed
        The verdict (:meth:`CheckSettings.describe_verdict`).
    one_minus_cos_small
        1 - cos at nudge / 10 when the check tests the order, else ``None``.
    """

    name: str
    target: str
    one_minus_cos: float
    norm_ratio: float
    predicted_ratio: float | None
    sign_agreement: float
    signal: float
    ep_norm: float
    true_norm: float
    passed: bool
    one_minus_cos_small: float | None = None


@dataclass(frozen=True)
class GradientCheck:
    """Outcome of :func:`check_gradients`: one row per learned tensor and the diagnostics.

    Attributes
    ----------
    topology
        The topology's name.
    settings
        The settings used.
    rows
        One :class:`EdgeCheck` per learned tensor: edges in declaration order, then biases,
        then the readout.
    energy_reason
        ``None`` when the topology has an energy, else why not.
    prediction_note
        Why the predicted ratio is "n/a", or ``None`` when it is given.
    free_steps, nudged_steps, adjoint_steps
        Steps taken (``nudged_steps`` sums the one or two nudged phases).
    converged
        Whether every phase reached the tolerance.
    batch
        Number of examples checked.
    problem
        Why no comparison could be made (a divergent relaxation or adjoint), else ``None``.
    fixed_points
        A sentence when schedules settle at different fixed points, else ``None``.
    """

    topology: str
    settings: CheckSettings
    rows: tuple[EdgeCheck, ...]
    energy_reason: str | None
    prediction_note: str | None
    free_steps: int
    nudged_steps: int
    adjoint_steps: int
    converged: bool
    batch: int
    problem: str | None = None
    fixed_points: str | None = None

    @property
    def passed(self) -> bool:
        """Every row passed and every phase converged."""
        return self.converged and all(row.passed for row in self.rows)

    def row(self, name: str) -> EdgeCheck:
        """The row of the tensor called ``name``."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def format(self) -> str:
        """The report printed by ``topo-ep check-gradients``."""
        s = self.settings
        lines = [
            f"gradient check {self.topology}: rule {s.rule}, nudging {s.nudging}, nudge "
            f"{s.nudge:g}, error {s.error}, {s.dtype}, batch {self.batch}, seed {s.seed}"
            + (", gain-compensated" if s.gain_compensated else ""),
            "energy: yes" if self.energy_reason is None else f"energy: {self.energy_reason}",
        ]
        if self.prediction_note:
            lines.append(f"predicted ratio: n/a ({self.prediction_note})")
        else:
            lines.append(
                "predicted ratio: c_top^2 / c_j^2 (for a chain: the product, over the links from "
                "j up to the top, of feedback gain / forward gain)"
            )
        if self.fixed_points:
            lines.append(f"warning: {self.fixed_points}")
        state = "converged" if self.converged else "NOT CONVERGED: results are not meaningful"
        if self.problem:
            state = f"NOT CONVERGED: {self.problem}"
        lines.append(
            f"relaxation: free {self.free_steps} steps, nudged {self.nudged_steps} steps, "
            f"adjoint {self.adjoint_steps} steps, {state}"
        )
        width = max([len("edge")] + [len(row.name) for row in self.rows])
        lines.append(
            f"{'edge':<{width}}  {'1 - cos':>10}  {'norm ratio':>11}  {'predicted':>11}  "
            f"{'sign agree':>10}  {'signal':>9}  result"
        )
        for row in self.rows:
            predicted = "n/a" if row.predicted_ratio is None else f"{row.predicted_ratio:.6g}"
            lines.append(
                f"{row.name:<{width}}  {row.one_minus_cos:>10.3e}  {row.norm_ratio:>11.6g}  "
                f"{predicted:>11}  {row.sign_agreement:>10.4f}  {row.signal:>9.2e}  "
                + ("ok" if row.passed else "FAIL")
            )
        failed = [row for row in self.rows if not row.passed]
        if s.tests_order and self.rows:
            lines.append(f"{'edge':<{width}}  1 - cos at nudge {s.nudge / ORDER_STEP:g}")
            for row in self.rows:
                lines.append(f"{row.name:<{width}}  {row.one_minus_cos_small:>10.3e}")
        verdict = s.describe_verdict()
        if self.passed:
            lines.append(f"passed: every tensor has {verdict} ({len(self.rows)} tensors)")
        else:
            reasons = []
            if failed:
                reasons.append(f"{len(failed)} of {len(self.rows)} tensors fail {verdict}")
            if not self.converged:
                reasons.append("a relaxation did not converge")
            lines.append("FAILED: " + "; ".join(reasons))
        return "\n".join(lines)


def one_minus_cosine(a: Tensor, b: Tensor) -> float:
    """1 - cos(a, b) = ||a/|a| - b/|b| ||^2 / 2, accurate also when it is far below eps.

    ``nan`` when either vector is zero (the angle is undefined), unless both are (then 0).
    """
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 and nb == 0.0:
        return 0.0
    if na == 0.0 or nb == 0.0 or not (math.isfinite(na) and math.isfinite(nb)):
        return math.nan
    return 0.5 * float((a / na - b / nb).pow(2).sum())


def sign_agreement(a: Tensor, b: Tensor) -> float:
    """Fraction of entries with sign(a) == sign(b)."""
    return float((torch.sign(a) == torch.sign(b)).to(torch.float64).mean())


def ep_signals(
    net: CompiledNetwork, method: EquilibriumPropagation, phases: EPPhases
) -> dict[str, float]:
    """Per hidden layer j, ||a_j - b_j|| / ||s_j^0||: how far the nudge moved the layer.

    ``a``, ``b`` are the states the rule contrasts (the +nudge and -nudge states, or the
    nudged and the free state) and s^0 the free state. ``inf`` where s_j^0 = 0 and the layer
    moved, 0 where neither.
    """
    plus = phases.nudged[0]
    minus = phases.nudged[1] if method.nudging == "symmetric" else phases.free
    out = {}
    for k, name in enumerate(net.layout.names):
        moved = float((plus[k] - minus[k]).norm())
        size = float(phases.free[k].norm())
        out[name] = moved / size if size > 0 else (math.inf if moved > 0 else 0.0)
    return out


def check_batch(
    spec: TopologySpec, batch: int, seed: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The seeded check batch: x uniform in [0, 1), labels uniform over the classes."""
    generator = torch.Generator().manual_seed(int(seed))
    x = torch.rand(batch, spec.input.size, generator=generator, dtype=torch.float64).to(dtype)
    y = torch.randint(0, spec.readout.size, (batch,), generator=generator)
    return x, y


def predicted_ratios(spec: TopologySpec) -> tuple[dict[str, float] | None, str | None]:
    """Per hidden layer c_top^2 / c_j^2 and ``None``, or ``None`` and why there is none."""
    if no_energy_reason(spec) is not None:
        return None, "the topology has no energy"
    if spec.readout.feedback != "tied":
        return None, "the readout's nudge feedback is random, so the nudge is not -dL/ds"
    return gain_factors(spec), None


def check_gradients(
    spec: TopologySpec,
    settings: CheckSettings | None = None,
    *,
    net: CompiledNetwork | None = None,
    data: tuple[Tensor, Tensor] | None = None,
) -> GradientCheck:
    """Compare EP's update with the implicit gradient for every learned tensor.

    Parameters
    ----------
    spec
        The topology.
    settings
        What to check (defaults: symmetric contrast EP, nudge 1e-3, float64, batch 16).
    net
        A compiled network of ``spec`` to check instead of a fresh one (compiled with
        ``settings.seed``); its ``.grad`` fields are left alone.
    data
        ``(x, y)`` to use instead of the seeded batch of :func:`check_batch`.

    Raises
    ------
    TopoEpError
        ``gain_compensated`` on a topology with no energy, or an unknown schedule.
    """
    s = settings or CheckSettings()
    dtype = DTYPES[s.dtype]
    if net is None:
        net = compile_topology(spec, seed=s.seed, dtype=dtype)
    else:
        dtype = net.dtype
    x, y = check_batch(spec, s.batch, s.seed, dtype) if data is None else data
    x = x.to(device=net.device, dtype=dtype)
    y = y.to(net.device)
    schedule = s.schedule or spec.dynamics.schedule
    net.schedule(schedule)  # an unknown name is a TopoEpError that lists the valid ones
    tolerance = effective_tolerance(1e-300 if s.tolerance is None else s.tolerance, dtype)

    def method_at(nudge: float) -> EquilibriumPropagation:
        return EquilibriumPropagation(
            nudge=nudge,
            nudging=s.nudging,
            rule=s.rule,
            error=s.error,
            schedule=schedule,
            free_steps=s.max_steps,
            nudged_steps=s.max_steps,
            tolerance=tolerance,
            check_every=s.check_every,
            gain_compensated=s.gain_compensated,
        )

    method = method_at(s.nudge)
    names = (schedule, *(name for name in SCHEDULES.names() if name != schedule))
    header = dict(
        topology=spec.name, settings=s, energy_reason=no_energy_reason(spec), batch=int(x.shape[0])
    )

    def not_converged(problem: str, free_steps: int = 0) -> GradientCheck:
        return GradientCheck(
            rows=(),
            prediction_note=None,
            free_steps=free_steps,
            nudged_steps=0,
            adjoint_steps=0,
            converged=False,
            problem=problem,
            **header,
        )

    try:
        settled = settled_states(net, net.input_drive(x), names, s.max_steps, tolerance)
    except DivergenceError as exc:
        return not_converged(str(exc))
    split = fixed_point_split(settled)
    header["fixed_points"] = None if split is None else split.describe()
    free_stats = settled[schedule][1]
    if not free_stats.converged:  # no fixed point: nothing to differentiate at
        return not_converged(
            f"the free phase ({schedule}) did not settle within {free_stats.steps} steps "
            f"(residual {free_stats.residual:.3g}): there is no fixed point to compare "
            "gradients at",
            free_stats.steps,
        )
    try:
        estimate = method.estimate(net, x, y)
        small = method_at(s.nudge / ORDER_STEP).estimate(net, x, y) if s.tests_order else None
        truth = implicit_gradients(
            net,
            x,
            y,
            schedule=schedule,
            free_steps=s.max_steps,
            tolerance=tolerance,
            check_every=s.check_every,
        )
    except DivergenceError as exc:
        return not_converged(str(exc), free_stats.steps)
    ep_result, ep = estimate.result, estimate.grads
    signals = ep_signals(net, method, estimate.phases)
    factors, note = predicted_ratios(spec)
    rows = []
    for key in net.learned_tensors():
        target = key.target
        predicted = 1.0 if key.is_readout or factors is None else factors[target]
        if factors is None and not key.is_readout:
            predicted = None
        if s.gain_compensated and predicted is not None:
            predicted = 1.0
        if note is not None and target != "readout":
            predicted = None
        a, b = ep[key], truth.grads[key]
        angle = one_minus_cosine(a, b)
        angle_small = None if small is None else one_minus_cosine(small.grads[key], b)
        ep_norm, true_norm = float(a.norm()), float(b.norm())
        rows.append(
            EdgeCheck(
                name=str(key),
                target=target,
                one_minus_cos=angle,
                norm_ratio=ep_norm / true_norm if true_norm > 0 else math.nan,
                predicted_ratio=predicted,
                sign_agreement=sign_agreement(a, b),
                signal=signals.get(target, math.nan),
                ep_norm=ep_norm,
                true_norm=true_norm,
                passed=_row_passes(s, angle, angle_small),
                one_minus_cos_small=angle_small,
            )
        )
    converged = bool(
        ep_result.converged
        and (small is None or small.result.converged)
        and truth.free_stats.converged
        and truth.adjoint_stats.converged
    )
    return GradientCheck(
        rows=tuple(rows),
        prediction_note=note,
        free_steps=ep_result.free_steps,
        nudged_steps=ep_result.nudged_steps,
        adjoint_steps=truth.adjoint_stats.steps,
        converged=converged,
        **header,
    )


def _row_passes(s: CheckSettings, angle: float, angle_small: float | None) -> bool:
    """The nudge-aware verdict of one row (:meth:`CheckSettings.describe_verdict`); a ``nan``
    angle fails."""
    if angle_small is None:
        return angle <= s.threshold
    fall = ORDER_STEP ** (2 * s.order - 1)
    return angle_small <= s.max_angle or angle_small * fall <= angle
