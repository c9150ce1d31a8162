"""Gain-radius study: chain_5x64 on MNIST with its feedback gains set by a target spectral radius.

For every target r (``--set feedback_gain.spectral_radius=r``: one scale c on every feedback
gain, solved at compile time so that the gain-scaled hidden operator has rho(M) = r; by the
sqrt law on this chain) the study

1. analyses fresh networks (seeds 0 .. K-1): the gain chosen, rho(M), rho(J) at the free fixed
   point, the finite-time Lyapunov exponent and the convergence time from s = 0;
2. trains them for a few epochs of EP with the scale solved once, at compile time (``fixed``),
   and analyses the trained networks the same way: test accuracy, and how far training moved
   rho(M) from r;
3. trains seed 0 with ``every_epoch: true`` (``every_epoch``): the scale is solved again after
   each epoch, so rho(M) stays at r; the gains it chose per epoch are in each run's metrics.

Training is the topology's own: synchronous, T/K = 50/25 (10L/5L, paper Table 2), one-sided
nudge 0.1, Adam lr 1e-3, batch 500, float32. The declared gain of the shipped file, 0.1, gives
rho(M) of about 0.82 for seed 0; the paper's 5 x 64 chain reaches 97.64 % on MNIST after 50
epochs.

Example (what produced ``analysis/reports/gain_radius``)::

    nice -n 19 python analysis/gain_radius_study.py --data-dir ../shared/data/mnist \\
        --limit 10000 --epochs 3 --seeds 2

Training runs live in ``--runs`` (default ``runs/gain_radius_study``, git-ignored); an
interrupted study resumes from their checkpoints and stored rows.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from topo_ep import spectral
from topo_ep.analysis.sweep import (
    SweepSettings,
    aggregate,
    format_stats,
    plot_quantities,
    run_sweep,
    write_tables,
)
from topo_ep.checkpoint import load_checkpoint
from topo_ep.compiler import compile_topology
from topo_ep.loader import load_topology

REPO = Path(__file__).resolve().parents[1]
TOPOLOGY = REPO / "topologies/chain_5x64.yaml"
RADII = ("0.1", "0.3", "0.5", "0.7", "0.9", "1.2")
PATH = "feedback_gain.spectral_radius"
#: The declared feedback gain of chain_5x64.yaml, which the scale multiplies.
DECLARED_GAIN = 0.1


def _gains(settings: SweepSettings, value: str) -> list[list[float]]:
    """Per seed, the feedback gain after each epoch (0.1 x the checkpoint's or metrics' scale)."""
    out = []
    for seed in range(settings.seeds):
        run = settings.point_dir(value, seed)
        lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        scales = [json.loads(line).get("feedback_scale") for line in lines]
        if None in scales:  # solved once: the checkpoint holds the compile-time scale
            scales = [load_checkpoint(run / "checkpoint.pt")["feedback_scale"]] * len(scales)
        out.append([DECLARED_GAIN * scale for scale in scales])
    return out


def _declared_radii(seeds: int) -> list[float]:
    """rho(M) of chain_5x64.yaml as shipped (feedback gain 0.1), per seed."""
    spec = load_topology(TOPOLOGY)
    return [spectral.spectral_radius(compile_topology(spec, seed=seed)) for seed in range(seeds)]


def _plot(
    out: Path, fixed: list[dict], every: list[dict], fresh: list[dict], values: tuple[str, ...]
) -> list[str]:
    """Test accuracy and convergence steps against the target radius, both trainings."""
    x = np.array([float(v) for v in values])
    names = []
    for key, label, sources in (
        ("test_acc", "test accuracy (last epoch)", (("fixed", fixed), ("every_epoch", every))),
        (
            "convergence_median",
            "median convergence steps from s = 0",
            (("fresh", fresh), ("fixed, trained", fixed), ("every_epoch, trained", every)),
        ),
    ):
        fig = Figure(figsize=(5.6, 3.8))
        ax = fig.subplots()
        for name, rows in sources:
            stats = aggregate(rows, values)
            mean = np.array([entry[key][0] for entry in stats])
            ax.plot(x, mean, "o-", label=name)
            for row in rows:
                ax.plot(float(row["value"]), row.get(key) or np.nan, "k.", markersize=4)
        ax.set_xlabel("target spectral radius r")
        ax.set_ylabel(label)
        ax.set_title(f"chain_5x64: {label}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{key}.png", dpi=110)
        names.append(f"{key}.png")
    return names


def write_report(
    out: Path,
    settings: dict[str, SweepSettings],
    rows: dict[str, list[dict]],
    declared: list[float],
    command: str,
) -> Path:
    """``report.md``: one table by radius over the three parts, the budget and the plots."""
    values = settings["fixed"].values
    stats = {name: aggregate(part, values) for name, part in rows.items()}
    trained = settings["fixed"]
    subset = f"a random subset of {trained.limit}" if trained.limit else "all"
    budget = (
        f"{trained.train_epochs} epochs of EP on {subset} {trained.dataset} training examples "
        f"(seeds 0 .. {trained.seeds - 1}; `every_epoch` seed 0 only)"
    )
    seconds = sum(float(r.get("train_seconds") or 0.0) for part in rows.values() for r in part)
    lines = [
        f"# Gain-radius study: chain_5x64 on {trained.dataset}",
        "",
        "Feedback gains chosen by a target spectral radius r of the gain-scaled hidden operator "
        "(`feedback_gain: {spectral_radius: r}`; sqrt law, exact on this chain). Hidden chain "
        "5 x 64, tied feedback, synchronous updates, T/K = 50/25, one-sided nudge 0.1, Adam lr "
        "1e-3, batch 500, float32.",
        "",
        f"- budget: {budget}; test accuracy on the whole {trained.dataset} test split",
        f"- analyses: first {trained.batch} test images; Lyapunov horizon T = 50; convergence "
        "tolerance max(1e-6, 16 eps(float32)) = 1.9e-6, step limit "
        f"{trained.convergence_steps}",
        f"- the shipped gain 0.1 gives rho(M) = {', '.join(f'{r:.4f}' for r in declared)} "
        f"(seeds 0 .. {len(declared) - 1}) before training",
        f"- command: `{command}`; {seconds / 60:.1f} min of training in all (the trainer's "
        "epoch times, on 2 CPU cores shared with other jobs: not a timing)",
        "",
        "## Fresh networks",
        "",
        "| r | gain chosen | rho(M) | mean rho(J) | mean Lyapunov exponent | median convergence "
        "steps | converged |",
        "|---|---|---|---|---|---|---|",
    ]
    for value, entry in zip(values, stats["fresh"], strict=True):
        gains = [g[0] for g in _gains(trained, value)]
        gain = (float(np.mean(gains)), min(gains), max(gains), len(gains))
        lines.append(
            f"| {value} | {format_stats(gain)} | {format_stats(entry['spectral_radius'])} | "
            f"{format_stats(entry['jacobian_mean'])} | {format_stats(entry['lyapunov_mean'])} | "
            f"{format_stats(entry['convergence_median'])} | "
            f"{format_stats(entry['converged_fraction'], 100, 3)} % |"
        )
    lines += [
        "",
        f"## Trained ({budget})",
        "",
        "`fixed`: the scale solved once, at compile time. `every_epoch`: solved again after each "
        "epoch (the gain shown is the last epoch's).",
        "",
        "| r | fixed: test acc % | fixed: rho(M) after | fixed: median convergence steps | "
        "every_epoch: test acc % | every_epoch: gain | every_epoch: rho(M) after | "
        "every_epoch: median convergence steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for value, fixed, every in zip(values, stats["fixed"], stats["every_epoch"], strict=True):
        last = [g[-1] for g in _gains(settings["every_epoch"], value)]
        lines.append(
            f"| {value} | {format_stats(fixed['test_acc'], 100)} | "
            f"{format_stats(fixed['spectral_radius'])} | "
            f"{format_stats(fixed['convergence_median'])} | "
            f"{format_stats(every['test_acc'], 100)} | "
            f"{float(np.mean(last)):.4g} | {format_stats(every['spectral_radius'])} | "
            f"{format_stats(every['convergence_median'])} |"
        )
    lines += [
        "",
        "Cells: mean over seeds [min .. max]. Per-seed numbers and the other quantities: "
        "`fresh/sweep.csv`, `fixed/sweep.csv`, `every_epoch/sweep.csv`; per-epoch gains of the "
        "`every_epoch` runs: `every_epoch/gains.json`.",
        "",
        "![test accuracy](test_acc.png)",
        "",
        "![convergence steps](convergence_median.png)",
        "",
    ]
    notes = out / "notes.md"
    if notes.is_file():
        lines += ["## Findings", "", notes.read_text(encoding="utf-8").strip(), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--radii", default=",".join(RADII))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=10000, help="training examples")
    parser.add_argument("--batch", type=int, default=64, help="test examples analysed")
    parser.add_argument("--out", default=str(REPO / "analysis/reports/gain_radius"))
    parser.add_argument("--runs", default=str(REPO / "runs/gain_radius_study"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out, runs = Path(args.out), Path(args.runs)
    common: dict[str, Any] = dict(
        file=str(TOPOLOGY),
        path=PATH,
        values=tuple(v.strip() for v in args.radii.split(",")),
        dataset=args.dataset,
        data_dir=args.data_dir,
        limit=args.limit,
        batch=args.batch,
        schedule="synchronous",
        convergence_steps=2000,
        label="chain_5x64",
    )
    parts = {
        "fresh": SweepSettings(**common, seeds=args.seeds, train_epochs=0),
        "fixed": SweepSettings(**common, seeds=args.seeds, train_epochs=args.epochs),
        "every_epoch": SweepSettings(
            **common,
            seeds=1,
            train_epochs=args.epochs,
            overrides=("feedback_gain.every_epoch=true",),
        ),
    }
    parts = {
        name: replace(settings, out=str(out / name), runs_dir=str(runs / name))
        for name, settings in parts.items()
    }
    command = "python analysis/gain_radius_study.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    rows = {}
    for name, settings in parts.items():
        rows[name] = run_sweep(settings)
        write_tables(rows[name], settings, command)
        plot_quantities(rows[name], settings)
    gains = {v: _gains(parts["every_epoch"], v) for v in parts["every_epoch"].values}
    (out / "every_epoch" / "gains.json").write_text(json.dumps(gains, indent=1) + "\n", "utf-8")
    _plot(out, rows["fixed"], rows["every_epoch"], rows["fresh"], parts["fixed"].values)
    report = write_report(out, parts, rows, _declared_radii(args.seeds), command)
    values = parts["fixed"].values
    accuracy = {e["value"]: e["test_acc"][0] for e in aggregate(rows["fixed"], values)}
    print(f"wrote {report}")
    print("test accuracy by radius:", {k: round(100 * v, 2) for k, v in accuracy.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
