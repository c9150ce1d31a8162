"""Run every analysis of a compiled network on one batch and collect the numbers.

:func:`analyse` is what ``topo-ep analyze`` and ``topo-ep sweep`` call. Its result,
:class:`NetworkAnalysis`, keeps the full results (per-sample arrays, traces) for plots, and
:meth:`NetworkAnalysis.to_dict` turns every number into JSON-ready data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from topo_ep.analysis.balance import BalanceReport, balance_report
from topo_ep.analysis.convergence import ConvergenceTimes, convergence_times
from topo_ep.analysis.energy_trace import EnergyTrace, energy_trace
from topo_ep.analysis.gradient_flow import GradientFlow, gradient_flow
from topo_ep.analysis.jacobian import JacobianRadii, jacobian_radii
from topo_ep.analysis.lyapunov import LyapunovExponents, lyapunov_exponents
from topo_ep.analysis.operator import OperatorSpectrum, operator_spectrum
from topo_ep.analysis.states import FixedPoint, fixed_point_tolerance, free_fixed_point
from topo_ep.balance import state_dependent_couplings
from topo_ep.compiler import CompiledNetwork, recompiled
from topo_ep.fixed_points import fixed_point_split, settled_states
from topo_ep.precision_check import float64_agreement
from topo_ep.schedules import SCHEDULES

#: Parts of the analysis that :func:`analyse` can run.
PARTS = ("operator", "jacobian", "lyapunov", "convergence", "gradient_flow", "energy")
#: Parts that need the hidden operator to be a fixed linear map (no max pooling between layers).
LINEAR_PARTS = ("operator", "jacobian", "lyapunov")


def available_schedules(net: CompiledNetwork) -> tuple[str, ...]:
    """The schedules :meth:`topo_ep.compiler.CompiledNetwork.schedule` knows for this network."""
    names = []
    for name in SCHEDULES.names():
        try:
            net.schedule(name)
        except ValueError:
            continue
        names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class AnalysisOptions:
    """What :func:`analyse` runs and how long.

    Attributes
    ----------
    parts
        Subset of :data:`PARTS`.
    schedules
        Schedules to analyse; ``None``: every schedule the engine knows.
    lyapunov_steps
        Horizon T of the Lyapunov exponent; ``None``: the topology's ``free_steps``.
    convergence_steps
        Step limit of the convergence-time measurement.
    spectral_method
        ``auto``, ``exact`` or ``arpack``.
    float64_control
        For a float32 network, also compute the gradient flow in float64 (same weights).
    seed
        Seeds the Lyapunov tangents.
    """

    parts: tuple[str, ...] = PARTS
    schedules: tuple[str, ...] | None = None
    lyapunov_steps: int | None = None
    convergence_steps: int = 1000
    spectral_method: str = "auto"
    float64_control: bool = True
    seed: int = 0


@dataclass
class NetworkAnalysis:
    """Everything :func:`analyse` measured (``None`` for parts not run)."""

    topology: str
    dtype: str
    batch: int
    schedules: tuple[str, ...]
    free_steps: int
    balance: BalanceReport
    operator: OperatorSpectrum | None = None
    fixed_point: dict[str, Any] | None = None
    jacobian: dict[str, JacobianRadii] = field(default_factory=dict)
    lyapunov: dict[str, LyapunovExponents] = field(default_factory=dict)
    convergence: dict[str, ConvergenceTimes] = field(default_factory=dict)
    gradient_flow: GradientFlow | None = None
    gradient_flow_float64: GradientFlow | None = None
    #: Per learned tensor, the cosine of EP's update with its float64 recomputation
    #: (:func:`topo_ep.precision_check.float64_agreement`); empty without a float64 control.
    float64_agreement: dict[str, float] = field(default_factory=dict)
    energy: dict[str, EnergyTrace] = field(default_factory=dict)
    fixed_points: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Every number, as JSON-ready data (``nan``/``inf`` become ``None``)."""
        out: dict[str, Any] = {
            "topology": self.topology,
            "dtype": self.dtype,
            "batch": self.batch,
            "schedules": list(self.schedules),
            "free_steps": self.free_steps,
            "balance": asdict(self.balance),
            "fixed_points": self.fixed_points,
            "notes": list(self.notes),
        }
        if self.operator is not None:
            op = self.operator
            out["operator"] = {
                "radius": op.radius,
                "method": op.method,
                "size": op.size,
                "feedback_gains": list(op.feedback_gains),
                "radius_at_unit_gain": op.radius_at_unit_gain,
                "sqrt_gain_prediction": op.sqrt_gain_prediction,
                "balanced": op.balanced,
                "eigenvalues_real": op.eigenvalues.real.tolist(),
                "eigenvalues_imag": op.eigenvalues.imag.tolist(),
            }
        if self.fixed_point is not None:
            out["fixed_point"] = dict(self.fixed_point)
        out["jacobian"] = {
            name: {
                "mean": j.mean,
                "max": j.max,
                "fraction_contracting": j.fraction_contracting,
                "locally_contracting": j.locally_contracting,
                "method": j.method,
                "fixed_point_converged": j.fixed_point_converged,
                "per_sample": j.radii.tolist(),
            }
            for name, j in self.jacobian.items()
        }
        out["lyapunov"] = {
            name: {
                "steps": ly.steps,
                "mean": ly.mean,
                "max": ly.max,
                "fraction_positive": ly.fraction_positive,
                "per_sample": ly.exponents.tolist(),
            }
            for name, ly in self.lyapunov.items()
        }
        out["convergence"] = {
            name: {
                "tolerance": c.tolerance,
                "max_steps": c.max_steps,
                "fraction_converged": c.fraction_converged,
                "median_time": c.median_time,
                "mean_time": c.mean_time,
                "median_rate": c.median_rate,
                "per_sample_time": c.times.tolist(),
                "per_sample_rate": c.rates.tolist(),
                "residual_median": np.median(c.residuals, axis=1).tolist(),
                "residual_max": np.max(c.residuals, axis=1).tolist(),
            }
            for name, c in self.convergence.items()
        }
        for key, flow in (
            ("gradient_flow", self.gradient_flow),
            ("gradient_flow_float64", self.gradient_flow_float64),
        ):
            if flow is not None:
                out[key] = asdict(flow)
        if self.float64_agreement:
            out["float64_agreement"] = dict(self.float64_agreement)
        out["energy"] = {
            name: {
                "mean": e.mean.tolist(),
                "largest_rise": e.largest_rise,
                "relative_largest_rise": e.relative_largest_rise,
            }
            for name, e in self.energy.items()
        }
        return _clean(out)


def _clean(value: Any) -> Any:
    """Replace non-finite floats by ``None`` and numpy scalars by Python ones, recursively."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _fixed_point_summary(fixed: FixedPoint) -> dict[str, Any]:
    return {"steps": fixed.steps, "residual": fixed.residual, "converged": fixed.converged}


def as_float64(net: CompiledNetwork) -> CompiledNetwork:
    """A float64 copy of ``net`` with the same weights (a float64 control)."""
    return recompiled(net, torch.float64)


def analyse(
    net: CompiledNetwork,
    x: Tensor,
    y: Tensor,
    options: AnalysisOptions | None = None,
    log: Any = None,
) -> NetworkAnalysis:
    """Run the analyses of ``options.parts`` on the batch (x, y).

    Parameters
    ----------
    net
        The compiled network (fresh or trained).
    x, y
        A batch of inputs and labels (e.g. 64 test examples).
    options
        What to run; default :class:`AnalysisOptions`.
    log
        Called with a short progress line per part (e.g. ``print``), or ``None``.
    """
    options = options or AnalysisOptions()
    unknown = set(options.parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown analysis parts {sorted(unknown)}; expected some of {PARTS}")
    say = log or (lambda _line: None)
    spec = net.spec
    x = x.to(device=net.device, dtype=net.dtype)
    y = y.to(net.device)
    schedules = options.schedules or available_schedules(net)
    result = NetworkAnalysis(
        topology=spec.name,
        dtype=str(net.dtype).replace("torch.", ""),
        batch=int(x.shape[0]),
        schedules=tuple(schedules),
        free_steps=spec.dynamics.free_steps,
        balance=balance_report(spec),
    )
    parts: Sequence[str] = options.parts
    dependent = state_dependent_couplings(spec)
    linear_only = [part for part in LINEAR_PARTS if part in parts]
    if dependent and linear_only:
        result.notes.append(
            f"no fixed operator: {'; '.join(dependent)}. The spectrum of the hidden operator, "
            "the Jacobian at the fixed point and the Lyapunov exponents need a state-"
            f"independent linear map, so {', '.join(linear_only)} were not computed; "
            "convergence and gradient flow are"
        )
        parts = [part for part in parts if part not in LINEAR_PARTS]
    if "operator" in parts:
        say("spectrum of the gain-scaled hidden operator")
        result.operator = operator_spectrum(net, method=options.spectral_method)
    if "jacobian" in parts:
        say("Jacobian at the free fixed point")
        fixed = free_fixed_point(net, x)
        result.fixed_point = _fixed_point_summary(fixed)
        if not fixed.converged:
            result.notes.append(
                f"the free relaxation did not reach a fixed point in {fixed.steps} steps "
                f"(residual {fixed.residual:.3g}): Jacobians are taken at the last state"
            )
        result.jacobian = jacobian_radii(
            net, x, schedules, method=options.spectral_method, fixed_point=fixed
        )
    if "lyapunov" in parts:
        say("Lyapunov exponents")
        steps = options.lyapunov_steps or spec.dynamics.free_steps
        result.lyapunov = {
            name: lyapunov_exponents(net, x, steps, name, seed=options.seed) for name in schedules
        }
    if "convergence" in parts:
        say("convergence times")
        result.convergence = {
            name: convergence_times(net, x, name, options.convergence_steps) for name in schedules
        }
        drives = net.input_drive(x)
        tolerance = fixed_point_tolerance(net.dtype)
        settled = settled_states(net, drives, schedules, options.convergence_steps, tolerance)
        split = fixed_point_split(settled)
        result.fixed_points = None if split is None else split.describe()
    if "gradient_flow" in parts:
        say("gradient flow")
        result.gradient_flow = gradient_flow(net, x, y)
        if options.float64_control and net.dtype != torch.float64:
            say("gradient flow, float64 control")
            result.gradient_flow_float64 = gradient_flow(as_float64(net), x, y)
            result.float64_agreement = float64_agreement(net, x, y)
    if "energy" in parts and result.balance.balanced:
        say("energy along the trajectory")
        result.energy = {
            name: energy_trace(net, x, spec.dynamics.free_steps, name) for name in schedules
        }
    return result
