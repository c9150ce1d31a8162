"""The cross-validation study that chose the quick-start settings never sees the test split."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from topo_ep.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("quickstart_cv", REPO / "analysis/quickstart_cv.py")
quickstart_cv = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(quickstart_cv)


def test_the_pool_is_exactly_the_train_and_validation_splits():
    data = load_dataset("digits")
    pool = quickstart_cv.pooled_digits()
    assert torch.equal(pool.train.x, torch.cat([data.train.x, data.val.x]))
    assert torch.equal(pool.train.y, torch.cat([data.train.y, data.val.y]))
    assert pool.test is pool.train and len(pool.train) == 1437


def test_a_fold_trains_on_the_rest_and_scores_the_held_out_part():
    pool = quickstart_cv.pooled_digits()
    data = quickstart_cv.fold_dataset(pool, [0, 2, 3], [1, 4])
    assert torch.equal(data.train.x, pool.train.x[[0, 2, 3]])
    assert torch.equal(data.val.y, pool.train.y[[1, 4]]) and data.test is data.val


def test_run_fold_counts_held_out_predictions_of_a_real_run():
    tiny = "layers.h1.size=16,layers.h2.size=16,training.epochs=3"
    job = (str(REPO / "topologies/quickstart.yaml"), tiny, "bp", 5, 0, 0)
    record = quickstart_cv.run_fold(job)
    assert record["held_out"] in (287, 288)  # 1437 / 5, stratified
    assert record["held_out"] * 0.8 < record["correct"] <= record["held_out"]


def test_summary_is_pooled_accuracy_and_paired_difference_to_base():
    def run(candidate, seed, fold, correct):
        return {
            "candidate": candidate,
            "seed": seed,
            "fold": fold,
            "held_out": 10,
            "correct": correct,
            "seconds": 1.0,
        }

    records = [
        run("base", 0, 0, 9),
        run("base", 0, 1, 8),
        run("x", 0, 0, 10),
        run("x", 0, 1, 9),
        run("base", 1, 0, 7),
        run("base", 1, 1, 7),
        run("x", 1, 0, 6),
        run("x", 1, 1, 7),
    ]
    rows = {row["candidate"]: row for row in quickstart_cv.summarise(records, ["base", "x"])}
    assert rows["base"]["cv_acc_per_seed"] == [0.85, 0.7]
    assert rows["x"]["cv_acc_per_seed"] == [0.95, 0.65]
    assert rows["x"]["examples_vs_base_per_seed"] == [2, -1]
    assert rows["x"]["cv_acc"] == 0.8
