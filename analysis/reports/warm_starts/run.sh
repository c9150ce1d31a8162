#!/usr/bin/env bash
# Steps per phase and validation accuracy with and without training.warm_start.
# Runs from the repository root; outputs under ${OUT:-/tmp/warm_runs}, metrics copied here.
set -euo pipefail
OUT=${OUT:-/tmp/warm_runs}
DATA=${DATA:-/work/shared/data/mnist}
HERE=analysis/reports/warm_starts
# the copies here drop the "seconds" field: this machine was loaded, timings mean nothing
strip_seconds() {
  python -c 'import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("".join(json.dumps({k: v for k, v in r.items() if k != "seconds"}) + "\n" for r in rows), end="")' "$1" > "$2"
}
CONVERGED=(--set dynamics.schedule=sweep --set dynamics.nudged_schedule=top-down-sweep
  --set dynamics.free_steps=10 --set dynamics.nudged_steps=10 --set dynamics.tolerance=1e-4
  --set dynamics.nudged_tolerance=1e-3 --set dynamics.check_every=1)
for warm in false true; do
  # quick start as shipped (20 epochs, tolerance 1e-4, check_every 2), seed 0
  topo-ep train topologies/quickstart.yaml --quiet --overwrite --seed 0 \
    --set training.warm_start=$warm --out "$OUT/quickstart_warm_$warm"
  strip_seconds "$OUT/quickstart_warm_$warm/metrics.jsonl" "$HERE/quickstart_warm_$warm.jsonl"
done
for warm in false true; do
  # fre_2x512 with the converged settings of its comment, 2 epochs on 10 000 MNIST examples
  topo-ep train topologies/fre_2x512.yaml --quiet --overwrite --seed 0 --epochs 2 \
    --limit 10000 --data-dir "$DATA" "${CONVERGED[@]}" \
    --set training.warm_start=$warm --out "$OUT/fre_2x512_warm_$warm"
  strip_seconds "$OUT/fre_2x512_warm_$warm/metrics.jsonl" "$HERE/fre_2x512_warm_$warm.jsonl"
done
