"""``topo-ep sweep``: the analysis (and optionally a short training) over a grid of one parameter.

For each value V of ``PATH`` (a ``--set`` path; typically ``feedback_gain``, the gain of every
feedback edge) and each seed, the topology is loaded with ``--set PATH=V``, compiled with that
seed, optionally trained for a few epochs (an ordinary training run under
``OUT/runs/<tag>/``, resumed from its checkpoint when interrupted) and analysed on a batch of the
test split. Each (value, seed) row is stored as ``OUT/runs/<tag>/row.json`` and reused, so an
interrupted sweep resumes. The results are one table (``sweep.csv`` with every seed,
``sweep.md`` with mean and min..max over seeds) and one plot per quantity with the seed spread.

Quantities per row (schedule: the topology's, unless given):

- ``spectral_radius``: rho(M) of the gain-scaled hidden operator;
- ``jacobian_mean``, ``jacobian_max``: rho(diag(rho'(h*)) M) at the free fixed point;
- ``lyapunov_mean``: finite-time maximal Lyapunov exponent over T = free_steps;
- ``convergence_median``, ``converged_fraction``: convergence time from s = 0;
- ``signal_bottom_over_top``, ``min_cos_implicit``: gradient flow;
- after training: ``test_acc`` (last epoch), ``best_test_acc`` (best epoch), ``val_acc``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from topo_ep.analysis.gradient_flow import summary
from topo_ep.analysis.inputs import analysis_batch
from topo_ep.analysis.run import AnalysisOptions, analyse
from topo_ep.compiler import CompiledNetwork, compile_topology
from topo_ep.data import check_compatible, load_dataset
from topo_ep.errors import TopoEpError
from topo_ep.loader import load_topology
from topo_ep.train import DTYPES, RunSettings, Trainer

#: Quantities of every row, in table order, with a label for tables and plots.
QUANTITIES = {
    "spectral_radius": "rho(M)",
    "jacobian_mean": "mean rho(J) at fixed point",
    "jacobian_max": "max rho(J) at fixed point",
    "lyapunov_mean": "mean Lyapunov exponent",
    "convergence_median": "median convergence steps",
    "converged_fraction": "fraction converged",
    "signal_bottom_over_top": "EP signal bottom / top",
    "min_cos_implicit": "min cos(EP, implicit)",
    "test_acc": "test accuracy (last epoch)",
    "best_test_acc": "test accuracy (best epoch)",
}


@dataclass(frozen=True)
class SweepSettings:
    """Everything one sweep needs.

    Attributes
    ----------
    file
        The topology file.
    path, values
        The ``--set`` path and the values (YAML text) of the grid.
    overrides
        Further ``--set`` overrides applied to every point.
    seeds
        Seeds 0 .. seeds - 1.
    train_epochs
        Epochs of training per point (0: analyse fresh networks).
    dataset, data_dir, limit
        Data of the training runs (``limit`` training examples) and of the analysis batch.
    dtype
        ``float32`` or ``float64``.
    batch
        Test examples the analysis uses.
    schedule
        Schedule of the convergence, Jacobian and Lyapunov columns (default: the topology's).
    method
        Training method (``ep`` by default).
    convergence_steps
        Step limit of the convergence-time measurement.
    out
        Output folder of the tables and plots.
    runs_dir
        Folder of the per-point training runs and rows (default ``OUT/runs``).
    label
        Name of the network in titles (default: the topology file's stem).
    """

    file: str
    path: str
    values: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    seeds: int = 1
    train_epochs: int = 0
    dataset: str = "digits"
    data_dir: str | None = None
    limit: int | None = None
    dtype: str = "float32"
    batch: int = 64
    schedule: str | None = None
    method: str = "ep"
    convergence_steps: int = 1000
    out: str = "runs/sweep"
    runs_dir: str | None = None
    label: str | None = None

    def point_dir(self, value: str, seed: int) -> Path:
        """The run folder of one (value, seed) point."""
        root = Path(self.runs_dir) if self.runs_dir else Path(self.out) / "runs"
        return root / _tag(self.path, value, seed)


def parse_set_values(text: str) -> tuple[str, tuple[str, ...]]:
    """Split ``PATH=V1,V2,...`` into the path and the value texts.

    Raises
    ------
    TopoEpError
        When there is no ``=`` or no value.
    """
    if "=" not in text:
        raise TopoEpError(f"--set-values takes PATH=V1,V2,..., got {text!r}")
    path, _, rest = text.partition("=")
    values = tuple(v.strip() for v in rest.split(",") if v.strip())
    if not path.strip() or not values:
        raise TopoEpError(f"--set-values needs a path and at least one value, got {text!r}")
    return path.strip(), values


def _tag(path: str, value: str, seed: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{path}={value}")
    return f"{safe}_s{seed}"


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def analysis_row(
    net: CompiledNetwork, x: torch.Tensor, y: torch.Tensor, schedule: str, steps: int
) -> dict[str, float]:
    """The analysis columns of one row (module docstring) for ``net`` on (x, y)."""
    options = AnalysisOptions(
        parts=("operator", "jacobian", "lyapunov", "convergence", "gradient_flow"),
        schedules=(schedule,),
        convergence_steps=steps,
        float64_control=False,
    )
    result = analyse(net, x, y, options)
    jac, lyap, conv = (
        result.jacobian[schedule],
        result.lyapunov[schedule],
        result.convergence[schedule],
    )
    assert result.operator is not None and result.gradient_flow is not None
    flow = summary(result.gradient_flow)
    return {
        "spectral_radius": result.operator.radius,
        "jacobian_mean": jac.mean,
        "jacobian_max": jac.max,
        "lyapunov_mean": lyap.mean,
        "convergence_median": conv.median_time,
        "converged_fraction": conv.fraction_converged,
        "signal_bottom_over_top": flow["signal_bottom_over_top"],
        "min_cos_implicit": flow["min_cos_implicit"],
    }


def run_point(
    settings: SweepSettings, value: str, seed: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train (optionally) and analyse one (value, seed) point; returns its row."""
    overrides = [*settings.overrides, f"{settings.path}={value}"]
    spec = load_topology(settings.file, overrides=overrides)
    schedule = settings.schedule or spec.dynamics.schedule
    run_dir = settings.point_dir(value, seed)
    row: dict[str, Any] = {"value": value, "seed": seed, "schedule": schedule}
    if settings.train_epochs > 0:
        data = load_dataset(settings.dataset, settings.data_dir, seed=seed, limit=settings.limit)
        check_compatible(data, spec.input.size, spec.readout.size, settings.file)
        run = RunSettings(
            method=settings.method,
            epochs=settings.train_epochs,
            seed=seed,
            device="auto",
            dtype=settings.dtype,
            dataset=settings.dataset,
            data_dir=settings.data_dir,
            limit=settings.limit,
        )
        trainer = Trainer(spec, data, run, out_dir=run_dir, progress=False, log=log)
        if (run_dir / "checkpoint.pt").is_file():
            trainer.resume(run_dir)
        metrics = trainer.run()
        net = trainer.net
        row.update(
            epochs=len(metrics),
            test_acc=metrics[-1]["test_acc"] if metrics else float("nan"),
            best_test_acc=max(m["test_acc"] for m in metrics) if metrics else float("nan"),
            val_acc=metrics[-1]["val_acc"] if metrics else float("nan"),
            train_seconds=sum(m["seconds"] for m in metrics),
        )
    else:
        net = compile_topology(spec, seed=seed, dtype=DTYPES[settings.dtype])
    x, y, _ = analysis_batch(net, settings.dataset, settings.data_dir, settings.batch)
    row.update(analysis_row(net, x, y, schedule, settings.convergence_steps))
    return row


def run_sweep(settings: SweepSettings, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every (value, seed) row, computed or read back from ``OUT/runs/<tag>/row.json``."""
    rows = []
    for value in settings.values:
        for seed in range(settings.seeds):
            run_dir = settings.point_dir(value, seed)
            stored = run_dir / "row.json"
            if stored.is_file():
                row = json.loads(stored.read_text(encoding="utf-8"))
                if row.get("epochs", 0) >= settings.train_epochs:
                    rows.append(row)
                    log(f"{settings.path}={value} seed {seed}: reused {stored}")
                    continue
            log(f"{settings.path}={value} seed {seed}: running")
            row = run_point(settings, value, seed, log)
            run_dir.mkdir(parents=True, exist_ok=True)
            stored.write_text(json.dumps(_jsonable(row), indent=1) + "\n", encoding="utf-8")
            rows.append(row)
    return rows


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, (float, np.floating)):
            number = float(value)
            out[key] = number if math.isfinite(number) else None
        else:
            out[key] = value
    return out


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    present = {key for row in rows for key in row}
    return [key for key in QUANTITIES if key in present]


def aggregate(
    rows: Sequence[dict[str, Any]], values: Sequence[str]
) -> list[dict[str, tuple[float, float, float, int]]]:
    """Per value: (mean, min, max, count) of every quantity over the seeds (finite entries)."""
    out = []
    for value in values:
        mine = [row for row in rows if str(row["value"]) == str(value)]
        entry: dict[str, Any] = {"value": value}
        for key in _columns(rows):
            numbers = np.array([_float(row.get(key)) for row in mine])
            finite = numbers[np.isfinite(numbers)]
            entry[key] = (
                (float(finite.mean()), float(finite.min()), float(finite.max()), int(finite.size))
                if finite.size
                else (float("nan"), float("nan"), float("nan"), 0)
            )
        out.append(entry)
    return out


def write_tables(
    rows: Sequence[dict[str, Any]], settings: SweepSettings, command: str
) -> tuple[Path, Path]:
    """``sweep.csv`` (one line per seed) and ``sweep.md`` (mean and min..max over seeds)."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = ["value", "seed", "schedule", "epochs", *_columns(rows), "val_acc", "train_seconds"]
    keys = [k for k in dict.fromkeys(keys) if any(k in row for row in rows)]
    csv_path = out / "sweep.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in keys})
    columns = _columns(rows)
    lines = [
        f"# Sweep of `{settings.path}` over {', '.join(settings.values)}",
        "",
        f"- topology: `{settings.file}`"
        + (f" with `--set {' '.join(settings.overrides)}`" if settings.overrides else ""),
        f"- seeds: {settings.seeds}; dtype {settings.dtype}; analysis batch: first "
        f"{settings.batch} test examples of {settings.dataset}",
        (
            f"- training: {settings.train_epochs} epochs of {settings.method} on "
            + (
                f"{settings.limit} training examples"
                if settings.limit
                else "the full training split"
            )
            if settings.train_epochs
            else "- training: none (fresh networks)"
        ),
        f"- command: `{command}`",
        "",
        "Each cell: mean over seeds, [min .. max] when there are several.",
        "",
        "| " + " | ".join([settings.path, *(QUANTITIES[c] for c in columns)]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for entry in aggregate(rows, settings.values):
        cells = [str(entry["value"])]
        for key in columns:
            mean, low, high, count = entry[key]
            if count == 0:
                cells.append("n/a")
            elif count == 1 or low == high:
                cells.append(f"{mean:.4g}")
            else:
                cells.append(f"{mean:.4g} [{low:.4g} .. {high:.4g}]")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"![{QUANTITIES[c]}]({c}.png)" for c in columns), ""]
    md_path = out / "sweep.md"
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return csv_path, md_path


def plot_quantities(rows: Sequence[dict[str, Any]], settings: SweepSettings) -> list[Path]:
    """One PNG per quantity: mean over seeds against the value, min..max band, seed points."""
    out = Path(settings.out)
    numeric = [_float(v) for v in settings.values]
    is_numeric = all(math.isfinite(v) for v in numeric)
    x = np.array(numeric) if is_numeric else np.arange(len(settings.values), dtype=float)
    log_x = is_numeric and min(numeric) > 0 and max(numeric) / min(numeric) > 20
    paths = []
    for key in _columns(rows):
        fig = Figure(figsize=(5.6, 3.8))
        ax = fig.subplots()
        stats = aggregate(rows, settings.values)
        mean = np.array([e[key][0] for e in stats])
        low = np.array([e[key][1] for e in stats])
        high = np.array([e[key][2] for e in stats])
        ax.plot(x, mean, "o-", label=f"mean over {settings.seeds} seed(s)")
        if settings.seeds > 1:
            ax.fill_between(x, low, high, alpha=0.25, label="min..max over seeds")
        for row in rows:
            index = [str(v) for v in settings.values].index(str(row["value"]))
            ax.plot(x[index], _float(row.get(key)), "k.", markersize=4)
        if log_x:
            ax.set_xscale("log")
        if not is_numeric:
            ax.set_xticks(x, settings.values)
        if key in ("spectral_radius", "jacobian_mean", "jacobian_max"):
            ax.axhline(1.0, color="grey", linestyle=":")
        if key == "lyapunov_mean":
            ax.axhline(0.0, color="grey", linestyle=":")
        ax.set_xlabel(settings.path)
        ax.set_ylabel(QUANTITIES[key])
        name = settings.label or Path(settings.file).stem
        ax.set_title(f"{name}: {QUANTITIES[key]}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{key}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths
