"""Analyses of compiled networks: spectra, contraction, convergence, gradient flow, energy.

Each analysis is a function of a compiled network (and data where needed) whose docstring gives
the quantity it computes:

- :func:`~topo_ep.analysis.operator.operator_spectrum`: rho(M) and eigenvalues of the
  gain-scaled hidden operator (exact or ARPACK, :mod:`topo_ep.spectral`);
- :func:`~topo_ep.analysis.jacobian.jacobian_radii`: rho(diag(rho'(h*)) M) per sample at the
  free fixed point, per schedule;
- :func:`~topo_ep.analysis.lyapunov.lyapunov_exponents`: finite-time maximal Lyapunov exponent
  along the free relaxation;
- :func:`~topo_ep.analysis.convergence.convergence_times`: steps until the residual stays below
  a dtype-aware tolerance, per sample and schedule;
- :func:`~topo_ep.analysis.gradient_flow.gradient_flow`: |s^n - s^0| per layer and EP's
  estimate against the implicit gradient and BP per edge;
- :func:`~topo_ep.analysis.energy_trace.energy_trace`: the energy along the relaxation of a
  balanced topology;
- :func:`~topo_ep.analysis.balance.balance_report`: whether an energy exists, and why not.

:func:`~topo_ep.analysis.run.analyse` runs them all; :mod:`topo_ep.analysis.report` writes the
``topo-ep analyze`` report and :mod:`topo_ep.analysis.sweep` the ``topo-ep sweep`` tables.
"""

from topo_ep.analysis.balance import BalanceReport, balance_report
from topo_ep.analysis.convergence import ConvergenceTimes, convergence_times
from topo_ep.analysis.energy_trace import EnergyTrace, energy_trace
from topo_ep.analysis.gradient_flow import GradientFlow, gradient_flow, predicted_factors
from topo_ep.analysis.jacobian import JacobianRadii, jacobian_radii, jacobian_radius_at
from topo_ep.analysis.lyapunov import LyapunovExponents, lyapunov_exponents
from topo_ep.analysis.operator import OperatorSpectrum, operator_spectrum, with_feedback_gain
from topo_ep.analysis.run import AnalysisOptions, NetworkAnalysis, analyse
from topo_ep.analysis.states import FixedPoint, free_fixed_point

__all__ = [
    "AnalysisOptions",
    "BalanceReport",
    "ConvergenceTimes",
    "EnergyTrace",
    "FixedPoint",
    "GradientFlow",
    "JacobianRadii",
    "LyapunovExponents",
    "NetworkAnalysis",
    "OperatorSpectrum",
    "analyse",
    "balance_report",
    "convergence_times",
    "energy_trace",
    "free_fixed_point",
    "gradient_flow",
    "jacobian_radii",
    "jacobian_radius_at",
    "lyapunov_exponents",
    "operator_spectrum",
    "predicted_factors",
    "with_feedback_gain",
]
