"""Print the steps per phase and the validation accuracy of the runs of run.sh, with and without
warm starts, as Markdown tables (from the metrics.jsonl copies in this directory)."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read(name: str) -> list[dict]:
    path = HERE / f"{name}.jsonl"
    if not path.exists():  # a run still going: its run directory's metrics so far
        path = Path("/tmp/warm_runs") / name / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def table(net: str) -> str:
    cold, warm = read(f"{net}_warm_false"), read(f"{net}_warm_true")
    rows = [
        f"### {net}",
        "",
        "| epoch | free steps, cold | free steps, warm | nudged steps, cold | nudged steps, warm "
        "| val acc, cold | val acc, warm |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, w in zip(cold, warm, strict=False):  # the epochs both runs finished
        rows.append(
            f"| {c['epoch']} | {c['free_steps']:.2f} | {w['free_steps']:.2f} "
            f"| {c['nudged_steps']:.2f} | {w['nudged_steps']:.2f} "
            f"| {100 * c['val_acc']:.2f} | {100 * w['val_acc']:.2f} |"
        )
    common = min(len(cold), len(warm))
    mean = [
        sum(r["free_steps"] for r in runs[1:common]) / max(1, common - 1) for runs in (cold, warm)
    ]
    rows += [
        "",
        f"Mean free steps of epochs 2 to {common}: cold {mean[0]:.2f}, warm {mean[1]:.2f}.",
    ]
    rows += [""]
    return "\n".join(rows)


if __name__ == "__main__":
    for net in ("quickstart", "fre_2x512"):
        try:
            print(table(net))
        except FileNotFoundError as missing:
            print(f"### {net}: no run yet ({missing.filename})")
