"""Train one topology with EP and BP over several seeds and tabulate the results.

Example (the paper's Table 1 net on MNIST, 10 epochs, 2 seeds)::

    python analysis/compare_methods.py topologies/fre_2x512.yaml --dataset mnist \
        --data-dir ../shared/data/mnist --epochs 10 --seeds 0 1 --out analysis/reports/fre_2x512

Each (method, seed) run is an ordinary ``topo-ep train`` run under ``OUT/<method>_s<seed>``; an
existing finished run is reused and an interrupted one resumes from its checkpoint (or from the
epoch in progress, with ``--checkpoint-minutes``). ``--dtype``
(float32 or float64), ``--limit``, ``--validation`` and the ``--set`` options go to every run and
must be those the runs were started with (a resumed run refuses others); ``--device`` may change
between resumes. Runs of ``--validation none`` have no test accuracy at a best validation epoch
(``-``).
The report ``OUT/report.md`` (and ``OUT/summary.json``) gives the final-epoch test accuracy,
the test accuracy at the best validation epoch, the best test accuracy of any epoch (reported
only because the paper's numbers are best-of-epochs) and the seconds per training epoch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from topo_ep.rundir import RESUMABLE
from topo_ep.train import best_validation_epoch


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def train_command(args: argparse.Namespace, method: str, seed: int, out: Path) -> list[str]:
    """The ``topo-ep train`` command of one (method, seed) run into ``out``, with ``--resume``
    where ``out`` holds a checkpoint."""
    command = [
        sys.executable, "-m", "topo_ep", "train", args.topology,
        "--dataset", args.dataset, "--method", method, "--seed", str(seed),
        "--epochs", str(args.epochs), "--dtype", args.dtype, "--out", str(out), "--quiet",
    ]  # fmt: skip
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    if args.device is not None:
        command += ["--device", args.device]
    if args.limit is not None:
        command += ["--limit", str(args.limit)]
    if args.validation != "holdout":
        command += ["--validation", args.validation]
    if args.checkpoint_minutes is not None:
        command += ["--checkpoint-minutes", str(args.checkpoint_minutes)]
    if any((out / name).is_file() for name in RESUMABLE):
        command.append("--resume")
    for override in args.set:
        command += ["--set", override]
    return command


def run_one(args: argparse.Namespace, method: str, seed: int, out: Path) -> list[dict]:
    metrics = read_metrics(out)
    if len(metrics) >= args.epochs:
        return metrics[: args.epochs]
    subprocess.run(train_command(args, method, seed, out), check=True)
    return read_metrics(out)


def summarise(metrics: list[dict]) -> dict:
    best_val = best_validation_epoch(metrics)
    return {
        "final_test_acc": metrics[-1]["test_acc"],
        "test_acc_at_best_val": None if best_val is None else best_val["test_acc"],
        "best_test_acc_any_epoch": max(m["test_acc"] for m in metrics),
        "seconds_per_epoch": statistics.median(m["seconds"] for m in metrics),
        "epochs": len(metrics),
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def parse_run(parser: argparse.ArgumentParser, text: str) -> tuple[str, int]:
    """``ep:0`` as ("ep", 0)."""
    method, _, seed = text.partition(":")
    if not method or not seed.isdigit():
        parser.error(f"--runs takes METHOD:SEED items such as ep:0; got {text!r}")
    return method, int(seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("topology")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="of every run (default float32; a float64 control of depth, see DESIGN.md)",
    )
    parser.add_argument(
        "--device", default=None, help="of every run (default: topo-ep train's, auto)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="at most N training examples (dry runs)"
    )
    parser.add_argument(
        "--validation",
        choices=("holdout", "none"),
        default="holdout",
        help="of every run: topo-ep train --validation (none: all training images)",
    )
    parser.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=None,
        help="of every run: also save the epoch in progress every M minutes (long epochs)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=["ep", "bp"])
    parser.add_argument(
        "--runs",
        nargs="+",
        default=None,
        metavar="METHOD:SEED",
        help="the (method, seed) runs, e.g. ep:0 ep:1 bp:0 (default: every method x seed)",
    )
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    words = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(words)
    out = Path(args.out)
    if args.runs is None:
        runs = [(method, seed) for seed in args.seeds for method in args.methods]
    else:
        runs = [parse_run(parser, text) for text in args.runs]
        args.methods = list(dict.fromkeys(method for method, _ in runs))
    rows = []
    for method, seed in runs:
        metrics = run_one(args, method, seed, out / f"{method}_s{seed}")
        rows.append({"method": method, "seed": seed, **summarise(metrics)})
    lines = [
        f"# {Path(args.topology).stem} on {args.dataset}: "
        + " against ".join(method.upper() for method in args.methods)
        + ("" if args.dtype == "float32" else f" ({args.dtype})"),
        "",
        f"Command: `python analysis/compare_methods.py {' '.join(words)}`",
        "",
        "| method | seed | final test acc | test acc at best val epoch | best test acc (any "
        "epoch) | s / epoch |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['seed']} | {100 * row['final_test_acc']:.2f} | "
            f"{_percent(row['test_acc_at_best_val'])} | "
            f"{100 * row['best_test_acc_any_epoch']:.2f} | {row['seconds_per_epoch']:.1f} |"
        )
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        final = statistics.mean(r["final_test_acc"] for r in mine)
        best = statistics.mean(r["best_test_acc_any_epoch"] for r in mine)
        secs = statistics.median(r["seconds_per_epoch"] for r in mine)
        lines.append(
            f"| **{method} mean** | {len(mine)} seeds | {100 * final:.2f} | | {100 * best:.2f} | "
            f"{secs:.1f} |"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
