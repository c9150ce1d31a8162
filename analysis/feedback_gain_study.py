"""Feedback-gain study: a 3 x 64 chain on MNIST over feedback gains 0.001 .. 4.

For every gain g (the gain of every feedback edge, ``--set feedback_gain=g``) the study

1. analyses fresh networks (seeds 0 .. K-1): rho(M), rho(J) at the free fixed point, the
   finite-time Lyapunov exponent over T = 18 steps and the convergence time;
2. trains each seed for a few epochs of EP (synchronous, T/K = 18/10 as in the paper's Table 1
   for 3 hidden layers) and analyses the trained networks the same way, with the test accuracy.

The paper's Table S1 (3 layers, MNIST, 50 epochs): 97.41 % at gain 0.1 and 55.86 % at gain 1.

Example (what produced ``analysis/reports/feedback_gain_study``)::

    nice -n 19 python analysis/feedback_gain_study.py --data-dir ../shared/data/mnist \
        --epochs 3 --seeds 2

Training runs live in ``--runs`` (default ``runs/feedback_gain_study``, git-ignored); an
interrupted study resumes from their checkpoints and stored rows.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from topo_ep.analysis.sweep import (
    SweepSettings,
    aggregate,
    format_stats,
    plot_quantities,
    run_sweep,
    write_tables,
)

REPO = Path(__file__).resolve().parents[1]
GAINS = ("0.001", "0.01", "0.03", "0.1", "0.25", "0.5", "1", "2", "4")
#: The 3 x 64 chain: the shipped 5 x 64 chain file with depth 3 and the paper's T/K = 18/10.
CHAIN_3X64 = ("generate.depth=3", "dynamics.free_steps=18", "dynamics.nudged_steps=10")
#: Paper, Table S1 (MNIST, 3 layers): test accuracy in % by feedback gain.
PAPER_TABLE_S1 = {"0.1": 97.41, "1": 55.86}


def write_report(
    out: Path,
    fresh: list[dict],
    trained: list[dict],
    fresh_settings: SweepSettings,
    trained_settings: SweepSettings,
    command: str,
    seconds: float,
) -> Path:
    """``report.md``: both tables, the paper's numbers beside ours, the budget and the plots."""
    fresh_stats = aggregate(fresh, fresh_settings.values)
    trained_stats = aggregate(trained, trained_settings.values)
    limit, name = trained_settings.limit, trained_settings.dataset
    subset = (
        f"a random subset of {limit} {name} training examples"
        if limit
        else f"all {name} training examples"
    )
    budget = (
        f"{trained_settings.train_epochs} epochs of EP on {subset}, Adam lr 1e-3, batch 500, "
        f"{trained_settings.dtype}, {trained_settings.seeds} seeds"
    )
    lines = [
        f"# Feedback-gain study: 3 x 64 chain on {name}",
        "",
        "Hidden chain 64-64-64 with a 10-class readout, tied feedback of gain g on every "
        "feedback edge, synchronous updates with T/K = 18/10 (paper, Table 1, 3 hidden "
        "layers), one-sided nudge 0.1, paper rule, error held.",
        "",
        f"- budget: {budget}; test accuracy on the whole {name} test split",
        f"- analyses: first {trained_settings.batch} test images; schedule synchronous; "
        "Lyapunov horizon T = 18; convergence tolerance max(1e-6, 16 eps(float32)) = 1.9e-6, "
        f"step limit {trained_settings.convergence_steps}",
        f"- command: `{command}`; {seconds / 60:.0f} min of training in all (the trainer's "
        "epoch times, 2 shared CPU cores)",
        "",
        "## Fresh networks (before training)",
        "",
        "| gain | rho(M) | mean rho(J) | max rho(J) | mean Lyapunov exponent | median "
        "convergence steps | converged |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in fresh_stats:
        lines.append(
            f"| {entry['value']} | {format_stats(entry['spectral_radius'])} | "
            f"{format_stats(entry['jacobian_mean'])} | {format_stats(entry['jacobian_max'])} | "
            f"{format_stats(entry['lyapunov_mean'])} | "
            f"{format_stats(entry['convergence_median'])} | "
            f"{format_stats(entry['converged_fraction'], 100, 3)} % |"
        )
    lines += [
        "",
        f"## After training ({budget})",
        "",
        "| gain | test acc % (last epoch) | paper Table S1 % | rho(M) | mean rho(J) | mean "
        "Lyapunov exponent | median convergence steps | converged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in trained_stats:
        paper = PAPER_TABLE_S1.get(str(entry["value"]))
        lines.append(
            f"| {entry['value']} | {format_stats(entry['test_acc'], 100)} | "
            f"{paper if paper is not None else '-'} | {format_stats(entry['spectral_radius'])} | "
            f"{format_stats(entry['jacobian_mean'])} | {format_stats(entry['lyapunov_mean'])} | "
            f"{format_stats(entry['convergence_median'])} | "
            f"{format_stats(entry['converged_fraction'], 100, 3)} % |"
        )
    lines += [
        "",
        "Cells: mean over seeds [min .. max]. Per-seed numbers: `trained/sweep.csv`, "
        "`fresh/sweep.csv`.",
        "",
        "## Plots (trained networks)",
        "",
        "![test accuracy](trained/test_acc.png)",
        "",
        "![spectral radius](trained/spectral_radius.png)",
        "",
        "![Jacobian radius](trained/jacobian_mean.png)",
        "",
        "![Lyapunov exponent](trained/lyapunov_mean.png)",
        "",
        "![convergence time](trained/convergence_median.png)",
        "",
        "Fresh networks: `fresh/*.png`.",
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
    parser.add_argument("--gains", default=",".join(GAINS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="training examples (all)")
    parser.add_argument("--batch", type=int, default=64, help="test examples analysed")
    parser.add_argument("--set", action="append", default=[], help="extra --set overrides")
    parser.add_argument("--out", default=str(REPO / "analysis/reports/feedback_gain_study"))
    parser.add_argument("--runs", default=str(REPO / "runs/feedback_gain_study"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out, runs = Path(args.out), Path(args.runs)
    common = dict(
        file=str(REPO / "topologies/chain_5x64.yaml"),
        path="feedback_gain",
        values=tuple(v.strip() for v in args.gains.split(",")),
        overrides=(*CHAIN_3X64, *args.set),
        seeds=args.seeds,
        dataset=args.dataset,
        data_dir=args.data_dir,
        limit=args.limit,
        batch=args.batch,
        schedule="synchronous",
        convergence_steps=2000,
        label="3 x 64 chain",
    )
    fresh_settings = SweepSettings(
        **common, train_epochs=0, out=str(out / "fresh"), runs_dir=str(runs / "fresh")
    )
    trained_settings = SweepSettings(
        **common, train_epochs=args.epochs, out=str(out / "trained"), runs_dir=str(runs / "trained")
    )
    command = "python analysis/feedback_gain_study.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    fresh = run_sweep(fresh_settings)
    write_tables(fresh, fresh_settings, command)
    plot_quantities(fresh, fresh_settings)
    trained = run_sweep(trained_settings)
    write_tables(trained, trained_settings, command)
    plot_quantities(trained, trained_settings)
    seconds = sum(float(row.get("train_seconds") or 0.0) for row in trained)
    report = write_report(out, fresh, trained, fresh_settings, trained_settings, command, seconds)
    accuracy = {e["value"]: e["test_acc"][0] for e in aggregate(trained, trained_settings.values)}
    print(f"wrote {report}")
    print(
        "test accuracy by gain:",
        {k: round(100 * v, 2) for k, v in accuracy.items() if np.isfinite(v)},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
