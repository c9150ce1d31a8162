"""``topo-ep analyze`` output: ``report.md``, ``analysis.json`` and PNG plots in one folder.

The Markdown report shows the topology graph, says whether the topology has an energy and gives
every quantity of :class:`~topo_ep.analysis.run.NetworkAnalysis` with a one-line interpretation
and the plots embedded; ``analysis.json`` holds every number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from topo_ep.analysis import plots
from topo_ep.analysis.convergence import ConvergenceTimes
from topo_ep.analysis.drawing import draw_topology
from topo_ep.analysis.gradient_flow import GradientFlow
from topo_ep.analysis.lyapunov import LyapunovExponents
from topo_ep.analysis.run import NetworkAnalysis
from topo_ep.spec import TopologySpec


@dataclass(frozen=True)
class ReportContext:
    """Where the analysed network and data came from, for the report's header.

    Attributes
    ----------
    source
        ``fresh network (seed S)`` or the checkpoint path and epoch.
    data
        The batch: dataset, split and size.
    command
        The command line that produced the report.
    """

    source: str
    data: str
    command: str


def _f(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def _operator_lines(result: NetworkAnalysis) -> list[str]:
    op = result.operator
    if op is None:
        return []
    lines = ["## Spectral radius of the gain-scaled hidden operator M", ""]
    lines.append(
        f"rho(M) = **{_f(op.radius)}** ({op.method} eigenvalues, N = {op.size}); with every "
        f"feedback gain set to 1 (same weights) rho = {_f(op.radius_at_unit_gain)}."
    )
    prediction = op.sqrt_gain_prediction
    if prediction is not None:
        g = op.feedback_gains[0]
        rel = abs(prediction - op.radius) / max(op.radius, 1e-300)
        exact = "exact theory for a balanced chain" if op.balanced else "a reference only"
        lines.append(
            f"sqrt(gain) x rho(M at gain 1) = sqrt({g:g}) x {_f(op.radius_at_unit_gain)} = "
            f"{_f(prediction)} (relative difference {rel:.2g}; {exact})."
        )
    if op.radius < 1 and op.balanced:
        verdict = (
            "rho(M) < 1 and M is symmetrisable (u = C s): in the norm ||C s|| the update map "
            "is a contraction for any activation with 0 <= rho' <= 1, so the relaxation "
            "converges from any start (a global statement)."
        )
    elif op.radius < 1:
        verdict = (
            "rho(M) < 1, but M is not symmetrisable, so this alone bounds neither the Jacobian "
            "nor the transient growth; the Jacobian and Lyapunov sections decide."
        )
    else:
        verdict = (
            "rho(M) >= 1: the coupling alone expands; settling then depends on the activation "
            "saturating (see the Jacobian and the Lyapunov exponent)."
        )
    lines += ["", f"*Interpretation:* {verdict}", "", "![eigenvalues](eigenvalues.png)", ""]
    return lines


def _jacobian_lines(result: NetworkAnalysis) -> list[str]:
    if not result.jacobian:
        return []
    fp = result.fixed_point or {}
    lines = ["## Jacobian at the free fixed point", ""]
    state = "converged" if fp.get("converged") else "NOT converged"
    lines.append(
        f"Free fixed point s* of each sample: reached in {fp.get('steps')} sweep steps, residual "
        f"{_f(fp.get('residual', float('nan')), 3)} ({state})."
    )
    lines += [
        "J = diag(rho'(h*)) M for the synchronous map (the composed group maps for grouped "
        "schedules); rho(J) is the local convergence rate per step.",
        "",
        "| schedule | mean rho(J) | max rho(J) | samples with rho(J) < 1 | method |",
        "|---|---|---|---|---|",
    ]
    for name, j in result.jacobian.items():
        lines.append(
            f"| {name} | {_f(j.mean)} | {_f(j.max)} | {100 * j.fraction_contracting:.0f} % | "
            f"{j.method} |"
        )
    verdicts = []
    for name, j in result.jacobian.items():
        if j.locally_contracting:
            verdicts.append(f"{name}: locally contracting at every sample's fixed point")
        else:
            verdicts.append(
                f"{name}: not locally contracting at {100 * (1 - j.fraction_contracting):.0f} % "
                "of the samples"
            )
    lines += [
        "",
        f"*Interpretation:* {'; '.join(verdicts)}. This is a local statement: it holds near s*; "
        "whether the relaxation from s = 0 gets there is measured below.",
        "",
        "![jacobian](jacobian.png)",
        "",
    ]
    return lines


def _convergence_lines(result: NetworkAnalysis) -> list[str]:
    if not result.convergence:
        return []
    first = next(iter(result.convergence.values()))
    lines = ["## Convergence time", ""]
    lines.append(
        f"Steps until the residual r_t = ||s_t - s_(t-1)||_rms / max(||s_t||_rms, 1) stays below "
        f"{first.tolerance:.2g} (max(1e-6, 16 eps({result.dtype}))) for 3 steps, from s = 0, "
        f"step limit {first.max_steps}. The topology runs T = {result.free_steps} free steps."
    )
    lines += [
        "",
        "| schedule | converged | median steps | mean steps | within T | measured rate "
        "| rate rho(J) predicts |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in result.convergence.items():
        within = float(np.mean(np.nan_to_num(c.times, nan=np.inf) <= result.free_steps))
        predicted = (
            float(np.median(result.jacobian[name].radii))
            if name in result.jacobian
            else float("nan")
        )
        lines.append(
            f"| {name} | {100 * c.fraction_converged:.0f} % | {_f(c.median_time)} | "
            f"{_f(c.mean_time)} | {100 * within:.0f} % | {_f(c.median_rate, 3)} | "
            f"{_f(predicted, 3)} |"
        )
    notes = []
    for name, c in result.convergence.items():
        if name in result.jacobian and math.isfinite(c.median_rate):
            predicted = float(np.median(result.jacobian[name].radii))
            notes.append(
                f"{name}: the Jacobian predicts the residual to shrink by {_f(predicted, 3)} per "
                f"step near s*, measured {_f(c.median_rate, 3)}"
            )
        elif not math.isfinite(c.median_rate):
            notes.append(f"{name}: no sample converged, so no rate was measured")
    best = min(result.convergence.items(), key=lambda kv: kv[1].median_time)
    notes.append(f"fastest schedule: {best[0]} (median {_f(best[1].median_time)} steps)")
    notes.append(result.fixed_points or "every converged schedule settles at the same fixed point")
    lines += ["", f"*Interpretation:* {'; '.join(notes)}.", "", "![residuals](residuals.png)", ""]
    return lines


def _lyapunov_lines(result: NetworkAnalysis) -> list[str]:
    if not result.lyapunov:
        return []
    lines = ["## Finite-time maximal Lyapunov exponent", ""]
    steps = next(iter(result.lyapunov.values())).steps
    lines += [
        f"Tangent delta <- rho'(h_t) * (M delta) along the free trajectory from s = 0, "
        f"renormalised each step; lambda_T = mean log growth over T = {steps} steps.",
        "",
        "| schedule | mean lambda_T | max lambda_T | exp(mean) | samples with lambda_T > 0 |",
        "|---|---|---|---|---|",
    ]
    for name, ly in result.lyapunov.items():
        lines.append(
            f"| {name} | {_f(ly.mean)} | {_f(ly.max)} | {_f(math.exp(ly.mean))} | "
            f"{100 * ly.fraction_positive:.0f} % |"
        )
    sync = result.lyapunov.get("synchronous") or next(iter(result.lyapunov.values()))
    if sync.max < 0:
        verdict = (
            "every lambda_T < 0: nearby trajectories converge (no chaos); exp(lambda_T) is the "
            "mean contraction per step over the whole trajectory, transient included, so it "
            "can exceed rho(J)"
        )
    else:
        verdict = (
            f"{100 * sync.fraction_positive:.0f} % of the samples have lambda_T > 0: nearby "
            "trajectories separate, the dynamics do not settle within T steps (chaotic or "
            "oscillating)"
        )
    lines += ["", f"*Interpretation ({sync.schedule}):* {verdict}.", ""]
    short = _horizon_too_short(sync, result.convergence.get(sync.schedule))
    if short:
        lines += [f"*Horizon:* {short}", ""]
    return lines


def _horizon_too_short(ly: LyapunovExponents, times: ConvergenceTimes | None) -> str:
    """A warning when samples with lambda_T > 0 settle after T steps (the transient dominates
    lambda_T, which then cannot tell chaos from a slow approach), else an empty string."""
    if times is None or ly.max < 0:
        return ""
    positive = ly.exponents > 0
    settled = np.isfinite(times.times)
    late = positive & settled & (np.nan_to_num(times.times, nan=0.0) > ly.steps)
    if not late.any():
        return ""
    median = float(np.median(times.times[late]))
    return (
        f"{int(late.sum())} of the {int(positive.sum())} samples with lambda_T > 0 do settle, "
        f"but only after T = {ly.steps} steps (median {median:.0f} steps in the convergence "
        "table): over this horizon the transient dominates and lambda_T cannot tell chaos "
        f"from a slow approach. Rerun with a horizon several times the settling time "
        f"(`topo-ep analyze --lyapunov-steps {max(10 * ly.steps, int(4 * median))}`)."
    )


def _flow_tables(
    flow: GradientFlow,
    control: GradientFlow | None,
    dtype: str,
    agreement: dict[str, float] | None = None,
) -> list[str]:
    lines = [
        f"| layer | RMS s^n - s^0 ({dtype}) | float64 control | relative to top | "
        f"predicted factor ({flow.factor_basis}) |",
        "|---|---|---|---|---|",
    ]
    top = next(row.rms for row in flow.layers if row.layer == flow.top)
    ctrl = {row.layer: row for row in control.layers} if control else {}
    for row in flow.layers:
        other = _f(ctrl[row.layer].rms, 3) if row.layer in ctrl else "-"
        rel = row.rms / top if top > 0 else float("nan")
        lines.append(
            f"| {row.layer} | {_f(row.rms, 3)} | {other} | {_f(rel, 3)} | "
            f"{_f(row.predicted_factor, 3)} |"
        )
    lines += [
        "",
        f"| edge | cos(EP, implicit) {dtype} | float64 control | cos(EP {dtype}, EP float64) | "
        "cos(EP, BP) | EP norm / implicit norm | predicted factor |",
        "|---|---|---|---|---|---|---|",
    ]
    ctrl_edges = {row.edge: row for row in control.edges} if control else {}
    agreement = agreement or {}
    for row in flow.edges:
        other = _f(ctrl_edges[row.edge].cos_implicit, 6) if row.edge in ctrl_edges else "-"
        same = _f(agreement[row.edge], 6) if row.edge in agreement else "-"
        lines.append(
            f"| {row.edge} | {_f(row.cos_implicit, 6)} | {other} | {same} | "
            f"{_f(row.cos_bp, 6)} | {_f(row.norm_ratio, 3)} | {_f(row.predicted_factor, 3)} |"
        )
    return lines


def _flow_lines(result: NetworkAnalysis) -> list[str]:
    flow = result.gradient_flow
    if flow is None:
        return []
    control = result.gradient_flow_float64
    lines = ["## Gradient flow", ""]
    phase = "converged" if flow.free_converged else "fixed step count"
    lines.append(
        f"EP as configured: {flow.nudging} nudging, rule {flow.rule}, nudge {flow.nudge:g}, "
        f"free phase {flow.free_steps} steps ({phase}). "
        "EP's estimate -dW / (nudge batch) is compared with the implicit gradient of the "
        "recurrent net at its free fixed point and with feedforward BP (feedback removed). The "
        "predicted factor is the product of gains from the top layer to the edge's target."
    )
    if flow.implicit_note:
        lines.append(f"Note: {flow.implicit_note}.")
    lines += [""] + _flow_tables(flow, control, result.dtype, result.float64_agreement) + [""]
    bottom = flow.layers[0]
    top = next(row for row in flow.layers if row.layer == flow.top)
    rel = bottom.rms / top.rms if top.rms > 0 else float("nan")
    cos = [r.cos_implicit for r in flow.edges if math.isfinite(r.cos_implicit)]
    parts = [
        f"the signal in the lowest layer ({bottom.layer}) is {_f(rel, 3)} of the top's, the "
        f"product of gains predicts {_f(bottom.predicted_factor, 3)}"
    ]
    if cos:
        parts.append(
            f"EP's cosine with the implicit gradient ranges {min(cos):.5f}..{max(cos):.5f}"
        )
    if control is not None:
        ccos = [r.cos_implicit for r in control.edges if math.isfinite(r.cos_implicit)]
        if ccos and cos and min(ccos) - min(cos) > 0.05:
            parts.append(
                f"in float64 the worst cosine is {min(ccos):.5f}: {result.dtype} rounding, not "
                "EP, loses the signal on the lowest edges"
            )
        elif ccos:
            parts.append(f"float64 gives the same picture (worst cosine {min(ccos):.5f})")
    lines += [
        f"*Interpretation:* {'; '.join(parts)}.",
        "",
        "![signal by layer](layer_signal.png)",
        "",
        "![EP cosine by edge](edge_cosines.png)",
        "",
    ]
    return lines


def _energy_lines(result: NetworkAnalysis) -> list[str]:
    lines = ["## Energy along the trajectory", ""]
    if not result.balance.balanced:
        measures = (
            "the contraction measures above (Jacobian, Lyapunov exponent)"
            if result.jacobian or result.lyapunov
            else "the convergence times above"
        )
        return lines + [
            f"No energy exists: {result.balance.reason}. Only {measures} describe the dynamics.",
            "",
        ]
    if not result.energy:
        return lines + ["Not computed.", ""]
    lines += [
        "| schedule | E(s_0) | E(s_T) | largest rise in one step | relative to max abs E |",
        "|---|---|---|---|---|",
    ]
    for name, trace in result.energy.items():
        lines.append(
            f"| {name} | {_f(trace.mean[0])} | {_f(trace.mean[-1])} | {_f(trace.largest_rise, 3)}"
            f" | {_f(trace.relative_largest_rise, 3)} |"
        )
    parts = []
    rounding = 64.0 * float(np.finfo(result.dtype).eps)
    for name, trace in result.energy.items():
        if trace.relative_largest_rise <= rounding:
            parts.append(f"{name}: E never rose beyond rounding")
        else:
            parts.append(f"{name}: E rose by up to {_f(trace.largest_rise, 3)} in one step")
    lines += [
        "",
        f"*Interpretation:* {'; '.join(parts)} (block updates of uncoupled layers, such as the "
        "sweep, cannot raise E; the synchronous schedule can).",
        "",
        "![energy](energy.png)",
        "",
    ]
    return lines


def render_markdown(result: NetworkAnalysis, spec: TopologySpec, context: ReportContext) -> str:
    """The text of ``report.md``."""
    lines = [
        f"# Analysis of `{spec.name}`",
        "",
        f"{spec.description}" if spec.description else "",
        "",
        f"- network: {context.source}; {result.dtype}",
        f"- data: {context.data}",
        f"- schedules analysed: {', '.join(result.schedules)}",
        f"- command: `{context.command}`",
        "",
        "![topology](topology.png)",
        "",
        "## Energy",
        "",
        f"**{'Has an energy' if result.balance.balanced else 'No energy'}**: "
        f"{result.balance.reason}.",
        "",
    ]
    for note in result.notes:
        lines += [f"> Note: {note}", ""]
    lines += _operator_lines(result)
    lines += _jacobian_lines(result)
    lines += _convergence_lines(result)
    lines += _lyapunov_lines(result)
    lines += _flow_lines(result)
    lines += _energy_lines(result)
    lines.append("All numbers are in `analysis.json`.")
    return "\n".join(lines) + "\n"


def write_report(
    result: NetworkAnalysis, spec: TopologySpec, context: ReportContext, out_dir: str | Path
) -> Path:
    """Write ``report.md``, ``analysis.json`` and the PNG plots into ``out_dir``; returns the
    report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    draw_topology(spec, out / "topology.png")
    if result.operator is not None:
        plots.plot_eigenvalues(result, out / "eigenvalues.png")
    if result.jacobian:
        plots.plot_jacobian(result, out / "jacobian.png")
    if result.convergence:
        plots.plot_residuals(result, out / "residuals.png")
    if result.gradient_flow is not None:
        plots.plot_layer_signal(result, out / "layer_signal.png")
        plots.plot_edge_cosines(result, out / "edge_cosines.png")
    if result.energy:
        plots.plot_energy(result, out / "energy.png")
    document = result.to_dict()
    document["source"] = context.source
    document["data"] = context.data
    document["command"] = context.command
    (out / "analysis.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    report = out / "report.md"
    report.write_text(render_markdown(result, spec, context), encoding="utf-8")
    return report
