"""PNG plots of a :class:`~topo_ep.analysis.run.NetworkAnalysis` (matplotlib, no pyplot).

Each function writes one file and returns its path:

- :func:`plot_residuals`: residual r_t against step, by schedule (median and 10-90 % band);
- :func:`plot_layer_signal`: |s^n - s^0| by layer, with the product-of-gains prediction;
- :func:`plot_edge_cosines`: EP cosine by edge against the implicit gradient and BP, and the
  norm ratio beside the predicted factor;
- :func:`plot_eigenvalues`: eigenvalues of M in the complex plane;
- :func:`plot_jacobian`: per-sample rho(J) and exp(lambda_T) by schedule;
- :func:`plot_energy`: mean energy along the relaxation, by schedule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from topo_ep.analysis.run import NetworkAnalysis

_DPI = 110


def _save(fig: Figure, path: str | Path) -> Path:
    target = Path(path)
    fig.tight_layout()
    fig.savefig(target, dpi=_DPI)
    return target


def _finish(
    fig: Figure,
    ax: Axes,
    path: str | Path,
    title: str,
    ylabel: str,
    xlabel: str | None = None,
    legend_loc: str = "best",
    title_size: float | None = None,
) -> Path:
    """Label the axes, title and legend of a one-panel figure, then save it."""
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title_size is None:
        ax.set_title(title)
    else:
        ax.set_title(title, fontsize=title_size)
    ax.legend(fontsize=8, loc=legend_loc)
    return _save(fig, path)


def plot_residuals(result: NetworkAnalysis, path: str | Path) -> Path:
    """Residual r_t against step t for each schedule, log scale, with the tolerance and T."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    tolerance = None
    for name, conv in result.convergence.items():
        res = np.where(conv.residuals > 0, conv.residuals, np.nan)
        steps = np.arange(1, res.shape[0] + 1)
        median = np.nanmedian(res, axis=1)
        (line,) = ax.semilogy(steps, median, label=f"{name} (median)")
        low, high = np.nanpercentile(res, 10, axis=1), np.nanpercentile(res, 90, axis=1)
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        tolerance = conv.tolerance
    if tolerance is not None:
        ax.axhline(tolerance, color="grey", linestyle=":", label=f"tolerance {tolerance:.2g}")
    ax.axvline(
        result.free_steps,
        color="black",
        linestyle="--",
        linewidth=0.8,
        label=f"free_steps T = {result.free_steps}",
    )
    title = f"{result.topology}: free relaxation from s = 0 ({result.batch} samples)"
    return _finish(fig, ax, path, title, "residual r_t (relative RMS)", "step t")


def plot_layer_signal(result: NetworkAnalysis, path: str | Path) -> Path:
    """|s^n - s^0| (RMS) by layer in feedforward order, log scale, and the predicted decay."""
    flow = result.gradient_flow
    assert flow is not None
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    names = [row.layer for row in flow.layers]
    position = np.arange(len(names))
    rms = np.array([row.rms for row in flow.layers])
    ax.semilogy(position, rms, "o-", label=f"measured ({result.dtype})")
    if result.gradient_flow_float64 is not None:
        control = np.array([row.rms for row in result.gradient_flow_float64.layers])
        ax.semilogy(position, control, "s--", label="measured (float64 control)")
    top = next(row.rms for row in flow.layers if row.layer == flow.top)
    factors = np.array([row.predicted_factor for row in flow.layers])
    shown = np.where(factors > 0, factors * top, np.nan)
    ax.semilogy(position, shown, "k:", label=f"top x product of gains ({flow.factor_basis})")
    ax.set_xticks(position, names, rotation=45 if len(names) > 8 else 0)
    title = f"{result.topology}: EP signal by layer (nudge {flow.nudge:g})"
    return _finish(fig, ax, path, title, "RMS of s^n - s^0", "hidden layer (feedforward order)")


def plot_edge_cosines(result: NetworkAnalysis, path: str | Path) -> Path:
    """Per edge: cosine of EP's estimate with the implicit gradient and BP; norm ratio."""
    flow = result.gradient_flow
    assert flow is not None
    edges = [row.edge.replace(":forward", "").replace(":skip", " (skip)") for row in flow.edges]
    position = np.arange(len(edges))
    fig = Figure(figsize=(max(6.4, 0.5 * len(edges)), 6.4))
    top, bottom = fig.subplots(2, 1, sharex=True)
    width = 0.27
    top.bar(
        position - width,
        [r.cos_implicit for r in flow.edges],
        width,
        label=f"EP vs implicit ({result.dtype})",
    )
    if result.gradient_flow_float64 is not None:
        top.bar(
            position,
            [r.cos_implicit for r in result.gradient_flow_float64.edges],
            width,
            label="EP vs implicit (float64 control)",
        )
    top.bar(position + width, [r.cos_bp for r in flow.edges], width, label="EP vs feedforward BP")
    top.axhline(1.0, color="grey", linewidth=0.6)
    shown = [r.cos_implicit for r in flow.edges] + [r.cos_bp for r in flow.edges]
    if result.gradient_flow_float64 is not None:
        shown += [r.cos_implicit for r in result.gradient_flow_float64.edges]
    finite = [c for c in shown if np.isfinite(c)]
    lowest = min(finite) if finite else 0.0
    # Zoom in when every cosine is close to 1, so the differences are visible.
    floor = max(-1.05, lowest - 0.15 * (1.0 - lowest) - 1e-3)
    if floor < 0:
        top.axhline(0.0, color="black", linewidth=0.6)
    top.set_ylim(floor, 1.0 + 0.05 * (1.0 - floor))
    top.set_ylabel("cosine")
    top.legend(fontsize=7, loc="lower left")
    top.set_title(f"{result.topology}: EP gradient estimate by edge")
    ratio = np.array([r.norm_ratio for r in flow.edges], dtype=float)
    factor = np.array([r.predicted_factor for r in flow.edges], dtype=float)
    bottom.semilogy(position, ratio, "o", label="||EP|| / ||implicit||")
    bottom.semilogy(
        position,
        np.where(factor > 0, factor, np.nan),
        "k_",
        markersize=14,
        label=f"predicted factor ({flow.factor_basis})",
    )
    bottom.set_ylabel("norm ratio")
    bottom.legend(fontsize=7)
    bottom.set_xticks(position, edges, rotation=60, ha="right", fontsize=7)
    return _save(fig, path)


def plot_eigenvalues(result: NetworkAnalysis, path: str | Path) -> Path:
    """Eigenvalues of M in the complex plane with the unit circle and the spectral radius."""
    op = result.operator
    assert op is not None
    fig = Figure(figsize=(5.0, 5.0))
    ax = fig.subplots()
    ax.scatter(op.eigenvalues.real, op.eigenvalues.imag, s=8, alpha=0.7)
    angle = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(angle), np.sin(angle), color="grey", linewidth=0.8, label="unit circle")
    ax.plot(
        op.radius * np.cos(angle),
        op.radius * np.sin(angle),
        "r--",
        linewidth=0.8,
        label=f"rho(M) = {op.radius:.4g}",
    )
    # Zoom in on small spectra (the unit circle then lies outside the frame).
    limit = 1.15 * (max(1.0, op.radius) if op.radius > 0.5 else max(op.radius, 1e-12))
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    which = "all" if op.method == "exact" else f"{len(op.eigenvalues)} largest (ARPACK)"
    title = f"eigenvalues of M ({which}, N = {op.size})"
    return _finish(
        fig, ax, path, title, "Im lambda", "Re lambda", legend_loc="upper right", title_size=9
    )


def plot_jacobian(result: NetworkAnalysis, path: str | Path) -> Path:
    """Per-sample rho(J) at the free fixed point and exp(lambda_T), by schedule."""
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    names = list(result.jacobian)
    for i, name in enumerate(names):
        radii = result.jacobian[name].radii
        ax.scatter(
            np.full(radii.shape, i - 0.1),
            radii,
            s=10,
            alpha=0.6,
            label="rho(J) at fixed point" if i == 0 else None,
        )
        if name in result.lyapunov:
            growth = np.exp(result.lyapunov[name].exponents)
            ax.scatter(
                np.full(growth.shape, i + 0.1),
                growth,
                s=10,
                alpha=0.6,
                marker="x",
                color="tab:red",
                label="exp(lambda_T)" if i == 0 else None,
            )
    ax.axhline(1.0, color="grey", linestyle=":")
    ax.set_xticks(range(len(names)), names)
    ax.set_yscale("log")
    title = f"{result.topology}: local contraction (rho(J)) and Lyapunov growth"
    return _finish(fig, ax, path, title, "contraction per step")


def plot_energy(result: NetworkAnalysis, path: str | Path) -> Path:
    """Energy along the free relaxation, by schedule: E(s_t) minus each sample's lowest value
    (batch mean, log scale), so that the descent stays visible after the first steps."""
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    for name, trace in result.energy.items():
        gap = (trace.energies - trace.energies.min(axis=0, keepdims=True)).mean(axis=1)
        steps = np.arange(trace.energies.shape[0])
        ax.semilogy(steps, np.where(gap > 0, gap, np.nan), "o-", markersize=3, label=name)
    title = f"{result.topology}: energy along the free relaxation"
    return _finish(fig, ax, path, title, "mean of E(s_t) - min_t E(s_t)", "step t")
