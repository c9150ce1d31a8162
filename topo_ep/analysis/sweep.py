"""``topo-ep sweep``: the analysis (and optionally a short training) over a grid of one parameter.

For each value V of ``PATH`` (a ``--set`` path; typically ``feedback_gain``, the gain of every
feedback edge) and each seed, the topology is loaded with ``--set PATH=V``, compiled with that
seed, optionally trained for a few epochs (an ordinary training run under
``OUT/runs/<tag>/``, resumed from its checkpoint when interrupted) and analysed on a batch of the
test split. Each (value, seed) row is stored as ``OUT/runs/<tag>/row.json`` and reused, so an
interrupted sweep resumes. The results are one table (``sweep.csv`` with every seed,
``sweep.md`` with mean and min..max over seeds) and one plot per quantity with the seed spread.

Scaling out: ``workers`` > 1 runs the points in that many processes of this machine (each with
its share of the CPU threads); :func:`shard_points` gives one share ``i/n`` of the grid (every
n-th point, from the i-th), so that a large sweep is split across machines. Each run writes a
manifest (``sweep.json``, or ``sweep.shard-I-of-N.json`` for a share) with its settings;
:func:`merge_sweeps` (``topo-ep sweep-merge``) reads the manifests and rows of the shards'
folders, checks that they belong to one sweep and cover its grid, and writes one table and one
set of plots.

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
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
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


#: A point of the grid: (value text, seed).
Point = tuple[str, int]


def grid_points(settings: SweepSettings) -> list[Point]:
    """Every (value, seed) of the grid, values in the order given, seeds 0 .. seeds - 1."""
    return [(value, seed) for value in settings.values for seed in range(settings.seeds)]


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (1 <= I <= N) of ``--shard``.

    Raises
    ------
    TopoEpError
        For anything else, saying what is expected.
    """
    index, slash, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i = n = 0
    if not slash or n < 1 or not 1 <= i <= n:
        raise TopoEpError(
            f"--shard {text!r}: expected I/N with 1 <= I <= N, e.g. --shard 1/3 for the first "
            "of three shares"
        )
    return i, n


def shard_points(points: Sequence[Point], index: int, count: int) -> list[Point]:
    """Share ``index`` of ``count`` (1-based): every ``count``-th point from the ``index``-th,
    so that each share holds every value and the shares differ by at most one point."""
    return list(points[index - 1 :: count])


def _stored_row(settings: SweepSettings, value: str, seed: int) -> dict[str, Any] | None:
    """The row of a point read back from its ``row.json``, if it is there and trained enough."""
    stored = settings.point_dir(value, seed) / "row.json"
    if not stored.is_file():
        return None
    row = json.loads(stored.read_text(encoding="utf-8"))
    return row if row.get("epochs", 0) >= settings.train_epochs else None


def compute_point(
    settings: SweepSettings, value: str, seed: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """:func:`run_point`, then its row stored as ``OUT/runs/<tag>/row.json``."""
    log(f"{settings.path}={value} seed {seed}: running")
    row = run_point(settings, value, seed, log)
    run_dir = settings.point_dir(value, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    stored = run_dir / "row.json"
    stored.write_text(json.dumps(_jsonable(row), indent=1) + "\n", encoding="utf-8")
    log(f"{settings.path}={value} seed {seed}: done")
    return row


def _worker_start(threads: int, flush_denormal: bool) -> None:
    """Set up a worker process: its share of the CPU threads, subnormals as in the parent."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(flush_denormal)


def _worker_point(settings: SweepSettings, value: str, seed: int) -> dict[str, Any]:
    own = f"{settings.path}={value} seed {seed}"

    def log(line: str) -> None:  # the trainer's lines do not say which point they belong to
        print(line if line.startswith(own) else f"[{own}] {line}", flush=True)

    return compute_point(settings, value, seed, log)


def _flush_denormal_on() -> bool:
    return float(torch.tensor(1e-300, dtype=torch.float64) * 1e-10) == 0.0


def run_sweep(
    settings: SweepSettings,
    log: Callable[[str], None] = print,
    *,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Every (value, seed) row of the grid (or of its share ``shard = (i, n)``), computed or
    read back from ``OUT/runs/<tag>/row.json``, in grid order.

    ``workers`` > 1 computes the missing points in that many processes, each with
    cpu_count / workers threads. Writes the manifest :func:`manifest_path` first.
    """
    points = grid_points(settings)
    if shard is not None:
        points = shard_points(points, *shard)
    write_manifest(settings, shard)
    rows: dict[Point, dict[str, Any]] = {}
    missing = []
    for value, seed in points:
        row = _stored_row(settings, value, seed)
        if row is None:
            missing.append((value, seed))
        else:
            rows[(value, seed)] = row
            log(f"{settings.path}={value} seed {seed}: reused {settings.point_dir(value, seed)}")
    if workers <= 1 or len(missing) <= 1:
        for value, seed in missing:
            rows[(value, seed)] = compute_point(settings, value, seed, log)
    else:
        import multiprocessing

        count = min(workers, len(missing))
        threads = max(1, (os.cpu_count() or 1) // count)
        log(f"{len(missing)} points in {count} worker processes of {threads} thread(s) each")
        with ProcessPoolExecutor(
            max_workers=count,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_start,
            initargs=(threads, _flush_denormal_on()),
        ) as pool:
            futures = {
                point: pool.submit(_worker_point, settings, point[0], point[1]) for point in missing
            }
            for point, future in futures.items():
                rows[point] = future.result()
    return [rows[point] for point in points]


#: The settings that may differ between the shards of one sweep (where each one writes).
_PLACE_SETTINGS = ("out", "runs_dir")


def manifest_path(out: str | os.PathLike[str], shard: tuple[int, int] | None) -> Path:
    """``OUT/sweep.json``, or ``OUT/sweep.shard-I-of-N.json`` for share I of N."""
    name = "sweep.json" if shard is None else f"sweep.shard-{shard[0]}-of-{shard[1]}.json"
    return Path(out) / name


def write_manifest(settings: SweepSettings, shard: tuple[int, int] | None) -> Path:
    """The sweep's settings and share, for :func:`merge_sweeps`."""
    path = manifest_path(settings.out, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"settings": asdict(settings), "shard": list(shard) if shard else None}
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return path


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in _PLACE_SETTINGS}


def merge_sweeps(
    folders: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]
) -> tuple[SweepSettings, list[dict[str, Any]]]:
    """The settings and every row of one sweep run in shares, read from the shards' folders.

    Each folder holds one or more manifests (:func:`write_manifest`) and the rows under its
    ``runs`` folder. Returns the settings with ``out`` set to ``out`` (where the merged table
    and plots go) and the rows in grid order.

    Raises
    ------
    TopoEpError
        When a folder has no manifest, the manifests come from different sweeps (naming the
        settings that differ), or points of the grid have no row (naming them and the share
        that owns them).
    """
    manifests: list[tuple[Path, dict[str, Any]]] = []
    for folder in folders:
        found = sorted(Path(folder).glob("sweep*.json"))
        if not found:
            raise TopoEpError(
                f"{folder}: no sweep manifest (sweep.json or sweep.shard-I-of-N.json); is this "
                "the --out folder of a topo-ep sweep?"
            )
        for path in found:
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
                settings = document["settings"]
                settings["values"] = tuple(settings["values"])
                settings["overrides"] = tuple(settings["overrides"])
                SweepSettings(**settings)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise TopoEpError(f"{path}: not a readable sweep manifest ({exc})") from None
            manifests.append((path, document))
    first_path, first = manifests[0]
    reference = _comparable(first["settings"])
    for path, document in manifests[1:]:
        other = _comparable(document["settings"])
        differ = [k for k in reference if reference[k] != other.get(k)]
        if differ:
            listed = "; ".join(
                f"{k}: {reference[k]!r} in {first_path}, {other.get(k)!r} in {path}" for k in differ
            )
            raise TopoEpError(f"the folders hold different sweeps: {listed}")
    counts = {tuple(d["shard"])[1] for _, d in manifests if d["shard"]}
    settings = SweepSettings(**first["settings"])
    rows: dict[Point, dict[str, Any]] = {}
    for path, document in manifests:
        placed = SweepSettings(**document["settings"])
        place = replace(placed, out=str(path.parent)) if placed.runs_dir is None else placed
        for value, seed in grid_points(settings):
            if (value, seed) not in rows:
                row = _stored_row(place, value, seed)
                if row is not None:
                    rows[(value, seed)] = row
    points = grid_points(settings)
    absent = [point for point in points if point not in rows]
    if absent:
        owners = ""
        if len(counts) == 1:
            n = counts.pop()
            owners = (
                " ("
                + ", ".join(
                    f"{v} seed {s}: share {points.index((v, s)) % n + 1}/{n}" for v, s in absent[:8]
                )
                + ")"
            )
        raise TopoEpError(
            f"{len(absent)} of {len(points)} points of the sweep have no row in "
            f"{', '.join(str(f) for f in folders)}{owners}: run the missing shares first"
        )
    return replace(settings, out=str(out), runs_dir=None), [rows[point] for point in points]


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


def format_stats(
    stats: tuple[float, float, float, int], scale: float = 1.0, digits: int = 4
) -> str:
    """One cell of a sweep table: ``scale * mean`` of an :func:`aggregate` entry, with
    ``[min .. max]`` when several seeds differ, ``n/a`` when none had a finite value."""
    mean, low, high, count = stats
    if count == 0:
        return "n/a"
    if count == 1 or low == high:
        return f"{scale * mean:.{digits}g}"
    return f"{scale * mean:.{digits}g} [{scale * low:.{digits}g} .. {scale * high:.{digits}g}]"


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
        cells = [str(entry["value"]), *(format_stats(entry[key]) for key in columns)]
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
