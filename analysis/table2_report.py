"""The paper's Table 2 from the run folders of ``analysis/reports/table2/run.sh``.

Reads ``OUT/<net>/<method>_s<seed>/metrics.jsonl`` (and ``config.yaml`` for the device and the
dtype) of every run there, finished or not, and writes ``OUT/report.md`` and
``OUT/summary.json``: per run the epochs done, the final-epoch test accuracy, the test accuracy
at the best validation epoch (none for a run trained with ``--validation none``), the best test
accuracy of any epoch and the median seconds per training epoch; per net and method the means
over seeds, with the paper's number (best of 50 epochs, DESIGN.md section 1) and the issue-13
target (final epoch, mean of 2 seeds) beside them.
A mean of runs that are not finished is marked as such and never judged against a target.

Example::

    python analysis/table2_report.py /work/runs/table2 --epochs 50
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from topo_ep.train import best_validation_epoch

#: The nets of Table 2 (``*_float64``: float64 controls of the chain and of res_20x64;
#: ``res_10x64_fixed``: res_10x64 at the paper's fixed synchronous steps, a control of the
#: converged phases; ``*_authors``: the net trained as the authors' graph code does, see
#: ``analysis/reports/table2/settings.sh``).
NETS = (
    "chain_10x64",
    "chain_10x64_float64",
    "res_10x64",
    "res_10x64_fixed",
    "res_10x64_authors",
    "res_20x64",
    "res_20x64_float64",
    "res_20x64_authors",
    "agt_10x64",
    "agt_10x64_authors",
)
#: The paper's test accuracy, best of 50 epochs, by (net, method); None: not in the paper.
PAPER = {
    ("chain_10x64", "ep"): 92.49,
    ("chain_10x64", "bp"): 97.61,  # the paper gives one BP number for the 10 x 64 nets
    ("chain_10x64_float64", "ep"): 92.49,
    ("res_10x64", "ep"): 97.49,
    ("res_10x64", "bp"): 97.61,
    ("res_10x64_fixed", "ep"): 97.49,
    ("res_20x64", "ep"): 95.95,
    ("res_20x64", "bp"): 97.48,
    ("res_20x64_float64", "ep"): 95.95,
    ("agt_10x64", "ep"): 96.87,
    ("agt_10x64", "bp"): None,  # the paper compares AGT with feedback alignment (94.52)
    ("res_10x64_authors", "ep"): 97.49,
    ("res_20x64_authors", "ep"): 95.95,
    ("agt_10x64_authors", "ep"): 96.87,
}
#: The final-epoch (epoch 50) EP test accuracy, mean of the 5 runs that the paper's authors'
#: own notebooks print (github.com/Zero0Hero/FRE-RNN-EP, read 2026-11-30; all 60 000 training
#: images, float32): res_10x64 Layered_L10_res 97.16 97.29 97.38 97.48 97.46 (and 97.20 97.05
#: 97.44 97.27 97.36 in Layered_LN+_res); res_20x64 Layered_LN+_res 95.82 93.91 95.95 89.49
#: 90.33 (three of the five collapse part-way); agt_10x64 Layered_L10_AGT 96.42 96.59 96.06
#: 96.52 96.76 (their own random graphs).
AUTHORS_FINAL = {"res_10x64": 97.35, "res_20x64": 93.10, "agt_10x64": 96.47}


def authors_final(net: str, method: str) -> float | None:
    """:data:`AUTHORS_FINAL` of the net a run trains (suffixes stripped); EP only."""
    if method != "ep":
        return None
    for suffix in ("_float64", "_fixed", "_authors"):
        net = net.removesuffix(suffix)
    return AUTHORS_FINAL.get(net)


#: Issue 13's targets: final-epoch test accuracy, mean of 2 seeds, EP; the nets trained as the
#: authors' code trains them (``*_authors``) are judged against their net's target too.
TARGETS = {
    (net + variant, "ep"): target
    for net, target in (("res_10x64", 97.3), ("res_20x64", 95.5), ("agt_10x64", 96.5))
    for variant in ("", "_authors")
}


@dataclass(frozen=True)
class Run:
    """One run folder's numbers (accuracies in percent)."""

    net: str
    method: str
    seed: int
    epochs: int
    final_test: float
    test_at_best_val: float | None  # None: no validation split (``--validation none``)
    best_test: float
    seconds_per_epoch: float
    device: str
    dtype: str


def read_run(net: str, folder: Path) -> Run | None:
    """The run in ``folder`` (``<method>_s<seed>``), or None when it has no finished epoch."""
    method, _, seed = folder.name.rpartition("_s")
    path = folder / "metrics.jsonl"
    if not method or not seed.isdigit() or not path.is_file():
        return None
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    if not lines:
        return None
    config_path = folder / "config.yaml"
    run = {}
    if config_path.is_file():
        run = yaml.safe_load(config_path.read_text(encoding="utf-8")).get("run", {})
    best_val = best_validation_epoch(lines)
    return Run(
        net=net,
        method=method,
        seed=int(seed),
        epochs=len(lines),
        final_test=100 * lines[-1]["test_acc"],
        test_at_best_val=None if best_val is None else 100 * best_val["test_acc"],
        best_test=100 * max(m["test_acc"] for m in lines),
        seconds_per_epoch=statistics.median(m["seconds"] for m in lines),
        device=str(run.get("device", "?")),
        dtype=str(run.get("dtype", "?")),
    )


def read_runs(out: Path) -> list[Run]:
    """Every run under ``out/<net>/`` for the nets of :data:`NETS`, in table order."""
    runs = []
    for net in NETS:
        for folder in sorted((out / net).glob("*_s*")):
            if folder.is_dir() and (run := read_run(net, folder)) is not None:
                runs.append(run)
    order = {net: index for index, net in enumerate(NETS)}
    return sorted(runs, key=lambda r: (order[r.net], r.method != "ep", r.method, r.seed))


def groups(runs: list[Run], epochs: int) -> list[dict]:
    """Per (net, method): the means over seeds, the paper's number and the target."""
    rows = []
    for key in dict.fromkeys((r.net, r.method) for r in runs):
        mine = [r for r in runs if (r.net, r.method) == key]
        finished = all(r.epochs >= epochs for r in mine)
        final = statistics.mean(r.final_test for r in mine)
        target = TARGETS.get(key)
        rows.append(
            {
                "net": key[0],
                "method": key[1],
                "seeds": [r.seed for r in mine],
                "finished": finished,
                "epochs": [r.epochs for r in mine],
                "mean_final_test": final,
                "mean_best_test": statistics.mean(r.best_test for r in mine),
                "mean_test_at_best_val": _mean_or_none([r.test_at_best_val for r in mine]),
                "seconds_per_epoch": statistics.median(r.seconds_per_epoch for r in mine),
                "paper_best_of_epochs": PAPER.get(key),
                "authors_final": authors_final(*key),
                "target_final": target,
                "meets_target": None if target is None or not finished else final >= target,
            }
        )
    return rows


def _mean_or_none(values: list[float | None]) -> float | None:
    """The mean, or None when any value is None (a run without a validation split)."""
    return None if any(v is None for v in values) else statistics.mean(values)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_report(out: Path, epochs: int) -> str:
    """Write ``out/report.md`` and ``out/summary.json``; returns the report."""
    runs = read_runs(out)
    rows = groups(runs, epochs)
    lines = [
        f"# Table 2: deep nets on full MNIST, {epochs} epochs",
        "",
        f"Runs under `{out}`; written by `python analysis/table2_report.py {out} --epochs "
        f"{epochs}`. Accuracies in %, test split. `final`: the last epoch done; `best`: the "
        "best epoch (what the paper reports: mean of 5 runs, best of 50 epochs); `at best val`: "
        "the test accuracy at the epoch of best validation accuracy. A mean over runs that "
        "have not reached the last epoch is marked `(n/N epochs)` and is not judged.",
        "",
        "| net | method | seeds | final (mean) | best (mean) | at best val (mean) | paper "
        "(best) | authors (final) | target (final) | meets | s / epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        done = "" if row["finished"] else f" ({min(row['epochs'])}/{epochs} epochs)"
        meets = {None: "-", True: "yes", False: "**no**"}[row["meets_target"]]
        target = "report" if row["target_final"] is None else f">= {row['target_final']}"
        if row["method"] != "ep":
            target = "-"
        lines.append(
            f"| {row['net']} | {row['method']} | {' '.join(map(str, row['seeds']))} | "
            f"{_number(row['mean_final_test'])}{done} | {_number(row['mean_best_test'])} | "
            f"{_number(row['mean_test_at_best_val'])} | {_number(row['paper_best_of_epochs'])} | "
            f"{_number(row['authors_final'])} | {target} | {meets} | "
            f"{row['seconds_per_epoch']:.1f} |"
        )
    lines += [
        "",
        "The paper's BP column: one number (97.61) for the 10 x 64 symmetric nets; for AGT the "
        "paper reports feedback alignment (94.52), not BP. `authors (final)`: the final-epoch "
        "EP test accuracy, mean of 5 runs, that the authors' own notebooks print "
        "(`AUTHORS_FINAL` in analysis/table2_report.py, with the runs and the notebooks).",
        "",
        "## Runs",
        "",
        "| net | method | seed | epochs | final | best | at best val | s / epoch | device | "
        "dtype |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run.net} | {run.method} | {run.seed} | {run.epochs} | {run.final_test:.2f} | "
            f"{run.best_test:.2f} | {_number(run.test_at_best_val)} | "
            f"{run.seconds_per_epoch:.1f} | {run.device} | {run.dtype} |"
        )
    lines += [
        "",
        "Seconds per epoch: the median over a run's epochs of its training time (no "
        "evaluation), on the device named (the one of its last start); runs side by side on "
        "one machine share it, and a run resumed on another device mixes both.",
        "",
    ]
    report = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report, encoding="utf-8")
    summary = {"epochs": epochs, "groups": rows, "runs": [run.__dict__ for run in runs]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the OUT folder of analysis/reports/table2/run.sh")
    parser.add_argument("--epochs", type=int, default=50, help="the epochs of a finished run")
    args = parser.parse_args(argv)
    print(write_report(Path(args.out), args.epochs))


if __name__ == "__main__":
    main()
