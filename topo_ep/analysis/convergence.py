"""Convergence time of the free relaxation, per sample and per schedule.

From s_0 = 0 with x clamped, each sample's residual is the engine's relative RMS residual

    r_t = ||s_t - s_{t-1}||_rms / max(||s_t||_rms, 1),

and its convergence time is the first step t with r_t, r_{t+1}, r_{t+2} all below the
dtype-aware tolerance max(1e-6, 16 eps(dtype)) (:func:`topo_ep.analysis.states.
convergence_tolerance`; the paper used 1e-6 absolute, which float32 cannot resolve).

The measured asymptotic rate is the geometric mean of r_{t+1} / r_t over the last two decades
before convergence, (r_{t2} / r_{t1})^{1/(t2 - t1)} with t1 the first step below 100 tol and t2
the convergence time. Near a fixed point it approaches the Jacobian's spectral radius.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from topo_ep.analysis.states import convergence_tolerance
from topo_ep.compiler import CompiledNetwork
from topo_ep.engine import relax

#: Consecutive steps the residual must stay below the tolerance.
STAY_BELOW = 3


@dataclass(frozen=True)
class ConvergenceTimes:
    """Per-sample convergence times of one schedule.

    Attributes
    ----------
    schedule
        The schedule.
    tolerance
        The residual threshold used.
    max_steps
        Step limit; samples not converged by then have time ``nan``.
    times
        Convergence time of each sample (steps), ``nan`` where not converged.
    rates
        Measured asymptotic contraction of the residual per step, ``nan`` where not converged.
    residuals
        r_t of every sample, shape (steps run, batch); row t - 1 holds r_t.
    """

    schedule: str
    tolerance: float
    max_steps: int
    times: np.ndarray
    rates: np.ndarray
    residuals: np.ndarray

    @property
    def fraction_converged(self) -> float:
        """Fraction of samples that converged within ``max_steps``."""
        return float(np.mean(np.isfinite(self.times)))

    @property
    def median_time(self) -> float:
        """Median time over the batch, counting unconverged samples as ``inf``."""
        return float(np.median(np.where(np.isfinite(self.times), self.times, np.inf)))

    @property
    def mean_time(self) -> float:
        """Mean time over the converged samples (``nan`` when none converged)."""
        done = self.times[np.isfinite(self.times)]
        return float(np.mean(done)) if done.size else float("nan")

    @property
    def median_rate(self) -> float:
        """Median measured rate over the converged samples (``nan`` when none converged)."""
        done = self.rates[np.isfinite(self.rates)]
        return float(np.median(done)) if done.size else float("nan")


def per_sample_residual(new: list[Tensor], old: list[Tensor]) -> Tensor:
    """r_t of each sample: ||s_t - s_{t-1}||_rms / max(||s_t||_rms, 1), shape (batch,)."""
    count = sum(a.shape[-1] for a in new)
    diff = sum((a - b).pow(2).sum(dim=-1) for a, b in zip(new, old, strict=True))
    norm = sum(a.pow(2).sum(dim=-1) for a in new)
    return torch.sqrt(diff / count) / torch.clamp(torch.sqrt(norm / count), min=1.0)


def _first_run_below(below: np.ndarray, run: int) -> int | None:
    """Index of the first of ``run`` consecutive True values, or ``None``."""
    count = 0
    for index, flag in enumerate(below):
        count = count + 1 if flag else 0
        if count == run:
            return index - run + 1
    return None


def _rate(trace: np.ndarray, t2: int, tolerance: float) -> float:
    """(r_t2 / r_t1)^(1 / (t2 - t1)), t1 the first index below 100 tol (indices into trace)."""
    early = np.nonzero(trace[: t2 + 1] < 100.0 * tolerance)[0]
    t1 = int(early[0]) if early.size else t2
    t1 = min(t1, t2 - 1)
    if t1 < 0 or trace[t1] <= 0:
        return float("nan")
    return float((trace[t2] / trace[t1]) ** (1.0 / (t2 - t1)))


def convergence_times(
    net: CompiledNetwork,
    x: Tensor,
    schedule: str = "synchronous",
    max_steps: int = 1000,
    tolerance: float | None = None,
) -> ConvergenceTimes:
    """Steps until each sample's residual stays below the tolerance for 3 steps.

    Parameters
    ----------
    schedule
        Schedule of the relaxation (:meth:`topo_ep.compiler.CompiledNetwork.schedule`).
    max_steps
        Step limit; the loop also stops once every sample has converged.
    tolerance
        Residual threshold; default :func:`topo_ep.analysis.states.convergence_tolerance`.
    """
    tol = convergence_tolerance(net.dtype) if tolerance is None else float(tolerance)
    groups = net.schedule(schedule)
    rows: list[np.ndarray] = []
    batch = x.shape[0]
    streak = np.zeros(batch, dtype=np.int64)

    def record(_t: int, new: list[Tensor], old: list[Tensor]) -> bool:
        nonlocal streak
        residual = per_sample_residual(new, old).double().cpu().numpy()
        rows.append(residual)
        streak = np.where(residual < tol, streak + 1, 0)
        return bool(np.all(streak >= STAY_BELOW) or not np.all(np.isfinite(residual)))

    with torch.no_grad():
        drives = net.input_drive(x)
        start = net.layout.zeros(batch, dtype=net.dtype, device=net.device)
        relax(net, start, drives, groups, max_steps, observe=record)
    residuals = np.stack(rows) if rows else np.zeros((0, batch))
    times = np.full(batch, np.nan)
    rates = np.full(batch, np.nan)
    for i in range(batch):
        start = _first_run_below(residuals[:, i] < tol, STAY_BELOW)
        if start is not None:
            times[i] = start + 1  # row index t - 1 holds r_t
            rates[i] = _rate(residuals[:, i], start, tol)
    return ConvergenceTimes(schedule, tol, int(max_steps), times, rates, residuals)
