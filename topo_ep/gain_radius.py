"""One scale for every feedback gain, chosen so that the hidden operator has a target radius.

A topology may declare ``feedback_gain: {spectral_radius: r}``
(:class:`~topo_ep.spec.FeedbackGainSpec`). Every feedback edge's declared gain g_e is then
multiplied by one scale c > 0, so their ratios are kept, with c solved such that

    rho(M(c)) = r,   M(c) = F + c B,

where F holds the forward and skip blocks between hidden layers and B the feedback blocks at
their declared gains: M(c) is the gain-scaled hidden-to-hidden operator of
:mod:`topo_ep.spectral`, whose radius ``topo-ep analyze`` reports. For tanh layers it is the
Jacobian of the synchronous update at the zero state (rho'(0) = 1), where every relaxation
starts. The radius depends on the weights, so c is solved for the network at hand: at compile
time for the initial weights, and again after each epoch with ``every_epoch``.

What the solver relies on:

- **rho(M(0)) = 0.** The forward and skip edges form an acyclic graph (validation checks it),
  so F is nilpotent. Since eigenvalues depend continuously on c, every r between 0 and the
  largest radius any scale gives is reached; in particular no target is unreachable because
  the radius "with the feedback off" already exceeds it. A target is unreachable only when the
  radius stays below it at every scale up to gains of :data:`MAX_SCALED_GAIN` (for example
  when no feedback edge closes a cycle with the forward edges: then rho(M(c)) = 0 for all c).
- **The sqrt law, exact on graded topologies.** If every hidden layer k has a level l_k with
  l_k = l_j + 1 for every forward or skip edge j->k and l_k = l_j - 1 for every feedback edge
  j->k (:func:`layer_levels`: a chain, tied or random feedback; more generally any layer graph
  whose every cycle goes up as often as it goes down), then D = diag(c^(l_k / 2)) gives
  D M(c) D^-1 = sqrt(c) M(1), so rho(M(c)) = sqrt(c) rho(M(1)) for any weights, and
  c = (r / rho(M(1)))^2: one eigensolve, and one more to measure the radius reached. Skips
  that jump several layers (``res_10x64``) and AGT links break the grading; there the radius
  grows like c^(1/4) or slower at small c.
- **Otherwise, a bracketed root.** The root of ln rho(M(e^u)) - ln r in u = ln c is
  bracketed by steps from the current scale (the first for a slope of 1/4, then each twice
  the last), then found by a safeguarded secant (:func:`_safeguarded_secant`: a step that
  would leave the bracket, or slow progress, falls back to bisection, so it cannot diverge).
  rho(M(c)) need not be monotone in c; the bracket guarantees a root, and the one found is
  reported.

Radii are computed as in :mod:`topo_ep.spectral`: exact eigenvalues (LAPACK, which balances
the matrix, so the graded operators of deep chains stay accurate at small scales) up to
:data:`topo_ep.eigen.EXACT_LIMIT` units, ARPACK over the matrix-free operator
v -> F v + c B v beyond. The radius reached is always measured, and a relative error
|rho - r| / r above :data:`TOLERANCE` is an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from topo_ep.blocks.base import Block
from topo_ep.eigen import radius_of_map, uses_exact
from topo_ep.errors import TopoEpError
from topo_ep.layout import Layout
from topo_ep.spec import INPUT, EdgeSpec, TopologySpec

#: The guarantee: the radius reached is within this relative error of the target.
TOLERANCE = 1e-3
#: The root search stops when |ln rho - ln r| is this small (a relative error of about as
#: much, far inside :data:`TOLERANCE`) or its bracket in u = ln c this narrow.
RESIDUAL_XTOL = 1e-7
SCALE_XTOL = 1e-12
#: Bracketing stops when the largest scaled feedback gain would exceed this: a target the
#: radius has not reached by then is unreachable.
MAX_SCALED_GAIN = 1e6
#: Smallest scale allowed (and tried when the radius must come down).
MIN_SCALE = 1e-30
#: Most eigensolves one solve may take (bracketing and secant steps together).
MAX_EVALUATIONS = 80
#: Name of the exact solve on graded topologies, and of the general one.
SQRT_LAW, SECANT = "sqrt law", "secant"


@dataclass(frozen=True)
class GainSolution:
    """The scale that was chosen and the radius it gives.

    Attributes
    ----------
    target
        r, the spectral radius asked for.
    scale
        c: every feedback gain is its declared value times c.
    radius
        rho(M(c)), measured.
    method
        :data:`SQRT_LAW` (graded topologies) or :data:`SECANT` (the bracketed secant).
    evaluations
        Eigensolves used.
    eigensolver
        ``exact`` or ``arpack``.
    """

    target: float
    scale: float
    radius: float
    method: str
    evaluations: int
    eigensolver: str

    @property
    def relative_error(self) -> float:
        """|rho(M(c)) - r| / r."""
        return abs(self.radius - self.target) / self.target


def layer_levels(layers: Sequence[str], edges: Sequence[EdgeSpec]) -> dict[str, int] | None:
    """Levels l_k of the hidden layers with l_k = l_j + 1 along every forward or skip edge
    j->k and l_k = l_j - 1 along every feedback edge, or ``None`` when none exist.

    Edges from the input are ignored (the input is not part of the hidden operator). Each
    connected part of the layer graph starts at level 0 at its first declared layer. When
    levels exist, rho(M(c)) = sqrt(c) rho(M(1)) exactly (see the module docstring).
    """
    steps: dict[str, list[tuple[str, int]]] = {name: [] for name in layers}
    for edge in edges:
        if edge.source == INPUT:
            continue
        up = -1 if edge.kind == "feedback" else 1
        steps[edge.source].append((edge.target, up))
        steps[edge.target].append((edge.source, -up))
    levels: dict[str, int] = {}
    for root in layers:
        if root in levels:
            continue
        levels[root] = 0
        pending = [root]
        while pending:
            here = pending.pop()
            for other, up in steps[here]:
                wanted = levels[here] + up
                if other not in levels:
                    levels[other] = wanted
                    pending.append(other)
                elif levels[other] != wanted:
                    return None
    return levels


class ScaledOperator:
    """M(c) = F + c B over the flat hidden state, for any feedback scale c.

    Parameters
    ----------
    layout
        The hidden layers' slices of the flat state.
    forward
        The forward and skip blocks between hidden layers (F).
    feedback
        The feedback blocks (B, with the gains they carry now).
    current_scale
        The scale those feedback gains already include: B is taken as their blocks divided by
        it, so that c is always relative to the declared gains.
    dtype, device
        Those of the blocks' tensors (the matrix-free products run in them).
    method
        ``auto`` (exact up to :data:`topo_ep.eigen.EXACT_LIMIT` units, else ARPACK),
        ``exact`` or ``arpack``.
    """

    def __init__(
        self,
        layout: Layout,
        forward: Sequence[Block],
        feedback: Sequence[Block],
        current_scale: float = 1.0,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
        method: str = "auto",
    ) -> None:
        self.layout = layout
        self.dtype = dtype
        self.device = torch.device(device)
        self.forward = tuple(forward)
        self.feedback = tuple(feedback)
        self.current_scale = float(current_scale)
        self.method = method
        self.exact = uses_exact(method, layout.total)
        self._parts: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def eigensolver(self) -> str:
        return "exact" if self.exact else "arpack"

    def dense_parts(self) -> tuple[np.ndarray, np.ndarray]:
        """F and B as dense float64 (N, N) arrays, assembled once."""
        if self._parts is None:
            n = self.layout.total
            parts = (np.zeros((n, n)), np.zeros((n, n)))
            for part, blocks, factor in (
                (parts[0], self.forward, 1.0),
                (parts[1], self.feedback, 1.0 / self.current_scale),
            ):
                for block in blocks:
                    rows = self.layout.slice(block.target)
                    cols = self.layout.slice(block.source)
                    part[rows, cols] += block.dense().detach().cpu().double().numpy() * factor
            self._parts = parts
        return self._parts

    def apply(self, vector: np.ndarray, scale: float) -> np.ndarray:
        """(F + c B) v for a flat float64 vector v, applying each block once."""
        relative = scale / self.current_scale
        with torch.no_grad():
            flat = torch.as_tensor(np.asarray(vector).reshape(1, -1))
            parts = self.layout.unflatten(flat.to(device=self.device, dtype=self.dtype))
            out = [torch.zeros_like(p) for p in parts]
            for blocks, factor in ((self.forward, 1.0), (self.feedback, relative)):
                for block in blocks:
                    k = self.layout.index(block.target)
                    j = self.layout.index(block.source)
                    out[k] = block.accumulate(out[k], parts[j], scale=factor)
            return self.layout.flatten(out).reshape(-1).cpu().double().numpy()

    def radius(self, scale: float) -> float:
        """rho(F + c B) at c = ``scale``."""
        n = self.layout.total
        if n == 0:
            return 0.0

        def dense() -> np.ndarray:
            forward, feedback = self.dense_parts()
            return forward + scale * feedback

        return radius_of_map(
            lambda v: self.apply(v, scale),
            n,
            dense=dense,
            method="exact" if self.exact else "arpack",
        )


class _CountedRadius:
    """ln rho(M(e^u)) - ln r, with every radius computed remembered by u."""

    def __init__(self, operator: ScaledOperator, target: float) -> None:
        self.operator = operator
        self.log_target = math.log(target)
        self.radii: dict[float, float] = {}

    def radius(self, u: float) -> float:
        if u not in self.radii:
            if len(self.radii) >= MAX_EVALUATIONS:
                raise TopoEpError(
                    f"the feedback scale was not found within {MAX_EVALUATIONS} eigensolves"
                )
            self.radii[u] = self.operator.radius(math.exp(u))
        return self.radii[u]

    def __call__(self, u: float) -> float:
        return math.log(max(self.radius(u), 1e-300)) - self.log_target


def solve_feedback_scale(
    operator: ScaledOperator,
    target: float,
    *,
    graded: bool,
    largest_gain: float,
    start: float = 1.0,
    label: str = "feedback_gain.spectral_radius",
) -> GainSolution:
    """The scale c with rho(F + c B) = ``target`` (see the module docstring).

    Parameters
    ----------
    operator
        M(c) = F + c B, B at the declared gains.
    target
        r > 0.
    graded
        Whether the layer graph has levels (:func:`layer_levels`): then the sqrt law gives c.
    largest_gain
        The largest |declared feedback gain|; bracketing stops at c = MAX_SCALED_GAIN / it.
    start
        The scale to start from (the current one, when solved again after an epoch).
    label
        Names the target in messages (topology and field).

    Raises
    ------
    TopoEpError
        When no scale up to gains of :data:`MAX_SCALED_GAIN` (or down to :data:`MIN_SCALE`)
        reaches the target, or the radius reached misses it by more than :data:`TOLERANCE`.
    """
    if not target > 0:
        raise ValueError(f"the target radius must be > 0, got {target}")
    largest_scale = MAX_SCALED_GAIN / largest_gain
    if graded:
        unit = operator.radius(1.0)
        if unit == 0.0:
            raise _unreachable(label, target, 1.0, 0.0)
        scale = (target / unit) ** 2
        if scale < MIN_SCALE:
            raise TopoEpError(
                f"{label} = {target:g} cannot be reached: it needs a feedback scale of "
                f"{scale:.3g} (rho = {unit:.4g} at the declared gains), below the smallest "
                f"scale allowed, {MIN_SCALE:g}"
            )
        if scale > largest_scale:
            radius = math.sqrt(largest_scale) * unit
            raise _unreachable(label, target, largest_scale, radius)
        solution = GainSolution(
            target, scale, operator.radius(scale), SQRT_LAW, 2, operator.eigensolver
        )
    else:
        solution = _solve_bracketed(operator, target, largest_scale, start, label)
    if solution.relative_error > TOLERANCE:
        raise TopoEpError(
            f"{label} = {target:g}: the feedback scale {solution.scale:.6g} gives a spectral "
            f"radius of {solution.radius:.6g} ({solution.method}), off by a relative "
            f"{solution.relative_error:.2g}, more than {TOLERANCE:g}: the eigensolver cannot "
            "resolve the radius at this scale; choose a larger target"
        )
    return solution


def _solve_bracketed(
    operator: ScaledOperator, target: float, largest_scale: float, start: float, label: str
) -> GainSolution:
    """Bracket the root of ln rho(M(e^u)) = ln r in u, then a safeguarded secant."""
    residual = _CountedRadius(operator, target)
    lowest, highest = math.log(MIN_SCALE), math.log(largest_scale)
    u0 = min(max(math.log(start), lowest), highest)
    g0 = residual(u0)
    if g0 != 0.0:
        # ln rho grows with slope 1/2 in u on graded graphs, about 1/4 or less at small c with
        # skips and links: a first step for slope 1/4 brackets the root at once for slopes
        # from 1/4 up
        step = -4.0 * g0
        step = math.copysign(min(max(abs(step), 1e-4), 20.0), step)
        while True:
            u1 = min(max(u0 + step, lowest), highest)
            g1 = residual(u1)
            if g1 == 0.0 or (g1 > 0) != (g0 > 0):
                break
            if u1 in (lowest, highest):
                raise _unreachable(label, target, math.exp(u1), residual.radius(u1))
            u0, g0, step = u1, g1, 2.0 * step
        u0 = u1 if g1 == 0.0 else _safeguarded_secant(residual, (u0, g0), (u1, g1))
    radius = residual.radius(u0)
    return GainSolution(
        target, math.exp(u0), radius, SECANT, len(residual.radii), operator.eigensolver
    )


def _safeguarded_secant(
    residual: Callable[[float], float], first: tuple[float, float], second: tuple[float, float]
) -> float:
    """The root of ``residual`` in the bracket of two (u, g) pairs of opposite signs.

    Each step is the secant through the last two points evaluated; a step that would leave
    the bracket, or three steps that together did not halve it, are replaced by bisection, so
    the bracket always holds a root and shrinks. Stops when |g| <= :data:`RESIDUAL_XTOL` or the
    bracket is :data:`SCALE_XTOL` wide.
    """
    (a, ga), (b, gb) = sorted((first, second))
    previous, last = first, second
    widths = [b - a]
    while True:
        (u0, g0), (u1, g1) = previous, last
        u = u1 - g1 * (u1 - u0) / (g1 - g0) if g1 != g0 else a
        if not a < u < b or (len(widths) > 3 and widths[-1] > widths[-4] / 2):
            u = 0.5 * (a + b)
        g = residual(u)
        if abs(g) <= RESIDUAL_XTOL:
            return u
        if (g > 0) == (gb > 0):
            b, gb = u, g
        else:
            a, ga = u, g
        if b - a <= SCALE_XTOL:
            return a if abs(ga) <= abs(gb) else b
        previous, last = last, (u, g)
        widths.append(b - a)


def _unreachable(label: str, target: float, scale: float, radius: float) -> TopoEpError:
    """The error for a target no scale reaches, saying why."""
    if radius == 0.0:
        why = (
            "the radius is 0 at every scale: no feedback edge closes a cycle with the forward "
            "and skip edges (or their weights are 0)"
        )
    elif radius < target:
        why = (
            f"the radius grows to only {radius:.4g} by the scale {scale:.3g}, where the "
            f"largest feedback gain reaches {MAX_SCALED_GAIN:g}"
        )
    else:
        why = (
            f"the radius is still {radius:.4g} at the scale {scale:.3g}: the target is below "
            "what the eigensolver resolves for this operator"
        )
    return TopoEpError(f"{label} = {target:g} cannot be reached: {why}")


def scale_lines(declared: TopologySpec, scale: float, solution: GainSolution | None) -> list[str]:
    """What ``topo-ep compile`` says of a target radius: the scale c, the radius reached and how
    it was solved (``solution``, or ``None`` for a scale given, such as a checkpoint's), and
    each declared feedback gain with the gain chosen."""
    target = declared.feedback_gain
    if target is None:
        return []
    head = (
        f"feedback gains: scaled by c = {scale:.6g} for the target spectral radius "
        f"{target.spectral_radius:g} of the hidden operator"
    )
    if target.every_epoch:
        head += ", solved again after every epoch"
    lines = [head]
    if solution is not None:
        lines.append(
            f"  radius reached {solution.radius:.7g} (relative error "
            f"{solution.relative_error:.1e}; {solution.method}, {solution.evaluations} "
            f"{solution.eigensolver} eigensolves)"
        )
    else:
        lines.append("  c as given (a checkpoint's); not solved here")
    chosen: dict[float, int] = {}
    for edge in declared.edges:
        if edge.kind == "feedback":
            chosen[edge.gain] = chosen.get(edge.gain, 0) + 1
    for gain, count in sorted(chosen.items()):
        lines.append(f"  declared gain {gain:g} -> {gain * scale:.6g} ({count} feedback edges)")
    return lines
