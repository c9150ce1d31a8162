"""Cross-validated selection of quick-start settings on digits, without the test split.

The fixed digits validation split has 144 examples, so one example is 0.69 points and
settings that differ by a few examples cannot be told apart on it. This study pools the
1437 non-test examples (train and validation) and scores each candidate by stratified
k-fold cross-validation: every pooled example is held out once per seed, and a candidate's
score is the fraction of the 1437 held-out predictions it gets right after the topology's
full training run on the other folds. The test split is never loaded into a run: each fold's
held-out part stands in for both the validation and the test split of the Trainer.

A candidate is a comma-separated list of ``--set`` overrides (``base`` for none). Each
candidate is compared with ``base`` on the same folds and seeds; the table gives the mean
score and the paired difference in held-out examples.

    python analysis/quickstart_cv.py training.lr=1e-3 layers.h1.size=256,layers.h2.size=256 \
        --folds 5 --seeds 0 1 --workers 2 --out analysis/reports/quickstart_cv
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from sklearn.model_selection import StratifiedKFold

from topo_ep.data import Dataset, Split, load_dataset
from topo_ep.loader import load_topology
from topo_ep.train import RunSettings, Trainer

REPO = Path(__file__).resolve().parents[1]
BASE = "base"


def pooled_digits() -> Dataset:
    """The digits dataset whose train split holds every non-test example (train + val)."""
    data = load_dataset("digits")
    pool = Split(
        torch.cat([data.train.x, data.val.x]),
        torch.cat([data.train.y, data.val.y]),
    )
    return replace(data, train=pool, val=pool, test=pool)


def fold_dataset(pool: Dataset, train_idx: list[int], held_idx: list[int]) -> Dataset:
    """Train on ``train_idx`` of the pool; the held-out fold is both val and test."""
    x, y = pool.train.x, pool.train.y
    held = Split(x[held_idx], y[held_idx])
    return replace(
        pool,
        train=Split(x[train_idx], y[train_idx]),
        val=held,
        test=held,
        description=(
            f"digits cross-validation fold: train {len(train_idx)}, held out {len(held_idx)}"
        ),
    )


def overrides_of(candidate: str) -> list[str]:
    """The ``--set`` overrides a candidate stands for."""
    return [] if candidate == BASE else candidate.split(",")


def run_fold(job: tuple[str, str, str, int, int, int]) -> dict:
    """Train one candidate on one fold with one seed; count correct held-out predictions."""
    topology, candidate, method, folds, fold, seed = job
    torch.set_num_threads(1)
    # The study scores accuracy only; one bounded non-convergence warning per epoch of
    # hundreds of runs would bury its table.
    warnings.filterwarnings("ignore", message=r"epoch \d+: .* reached the step limit")
    spec = load_topology(topology, overrides_of(candidate))
    pool = pooled_digits()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    train_idx, held_idx = list(splitter.split(pool.train.x.numpy(), pool.train.y.numpy()))[fold]
    data = fold_dataset(pool, train_idx.tolist(), held_idx.tolist())
    settings = RunSettings(method=method, epochs=spec.training.epochs, seed=seed, device="cpu")
    started = time.perf_counter()
    metrics = Trainer(spec, data, settings, progress=False, log=lambda _: None).run()
    held_acc = metrics[-1]["val_acc"]
    return {
        "candidate": candidate,
        "method": method,
        "fold": fold,
        "seed": seed,
        "held_out": len(held_idx),
        "correct": round(held_acc * len(held_idx)),
        "seconds": time.perf_counter() - started,
    }


def summarise(records: list[dict], candidates: list[str]) -> list[dict]:
    """Per candidate: mean held-out accuracy over seeds and the paired difference to base."""
    seeds = sorted({r["seed"] for r in records})

    def runs_of(candidate: str, seed: int) -> list[dict]:
        return [r for r in records if r["candidate"] == candidate and r["seed"] == seed]

    rows = []
    for candidate in candidates:
        per_seed = []
        diffs = []
        for seed in seeds:
            runs = runs_of(candidate, seed)
            correct = sum(r["correct"] for r in runs)
            per_seed.append(correct / sum(r["held_out"] for r in runs))
            base = runs_of(BASE, seed)
            if base:
                diffs.append(correct - sum(r["correct"] for r in base))
        rows.append(
            {
                "candidate": candidate,
                "cv_acc_per_seed": per_seed,
                "cv_acc": statistics.fmean(per_seed),
                "examples_vs_base_per_seed": diffs,
                "seconds_per_run": statistics.median(
                    r["seconds"] for r in records if r["candidate"] == candidate
                ),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="+", help="comma-separated --set lists, or 'base'")
    parser.add_argument("--topology", default=str(REPO / "topologies" / "quickstart.yaml"))
    parser.add_argument("--method", default="ep", choices=("ep", "bp"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="directory for results.json")
    args = parser.parse_args()

    candidates = list(dict.fromkeys([BASE, *args.candidates]))
    jobs = [
        (args.topology, candidate, args.method, args.folds, fold, seed)
        for candidate in candidates
        for seed in args.seeds
        for fold in range(args.folds)
    ]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        records = list(pool.map(run_fold, jobs))
    rows = summarise(records, candidates)

    print(
        f"{args.method}, {args.folds}-fold CV on the 1437 non-test digits examples, "
        f"seeds {args.seeds}"
    )
    print(
        f"{'candidate':<60} {'cv acc %':>9} {'per seed':>20} {'vs base (examples)':>20} "
        f"{'s/run':>6}"
    )
    for row in rows:
        per_seed = " ".join(f"{100 * a:.2f}" for a in row["cv_acc_per_seed"])
        diffs = " ".join(f"{d:+d}" for d in row["examples_vs_base_per_seed"])
        print(
            f"{row['candidate']:<60} {100 * row['cv_acc']:>9.2f} {per_seed:>20} {diffs:>20} "
            f"{row['seconds_per_run']:>6.1f}"
        )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        arguments = {key: str(value) for key, value in vars(args).items()}
        payload = {"args": arguments, "rows": rows, "runs": records}
        (args.out / "results.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
