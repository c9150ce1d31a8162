#!/bin/bash
# Issue 13, "accuracy holds": fre_2x512 on MNIST, 10 epochs, EP, seeds 0 and 1, with the
# paper's fixed T/K (as shipped) and with the converged settings of
# analysis/reports/converged_phases (sweep / top-down sweep, tolerance 1e-4 / 1e-3), same code,
# same seeds, one after the other. Runs from a snapshot of HEAD (git archive) under $OUT/code.
#   nohup bash analysis/reports/fre_2x512_converged/run.sh > /work/runs/fre_2x512_converged.log 2>&1 &
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
DATA=${DATA:-/work/shared/data/mnist}
OUT=${OUT:-/work/runs/fre_2x512_converged}
CODE=$OUT/code
if [ ! -d "$CODE" ]; then
    mkdir -p "$CODE"
    git -C "$REPO" archive HEAD | tar -x -C "$CODE"
    git -C "$REPO" rev-parse HEAD > "$CODE/COMMIT"
fi
cd "$CODE"
export PYTHONPATH=$CODE
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
echo "start $(date -Is) commit $(cat COMMIT); $(uptime)"
for seed in 0 1; do
    "$PY" analysis/compare_methods.py topologies/fre_2x512.yaml --dataset mnist --data-dir "$DATA" \
        --epochs 10 --seeds "$seed" --methods ep --out "$OUT/fixed"
    "$PY" analysis/compare_methods.py topologies/fre_2x512.yaml --dataset mnist --data-dir "$DATA" \
        --epochs 10 --seeds "$seed" --methods ep --out "$OUT/converged" \
        --set dynamics.schedule=sweep --set dynamics.nudged_schedule=top-down-sweep \
        --set dynamics.nudged_steps=10 --set dynamics.tolerance=1e-4 \
        --set dynamics.nudged_tolerance=1e-3 --set dynamics.check_every=1
done
# the tables of both seeds
"$PY" analysis/compare_methods.py topologies/fre_2x512.yaml --dataset mnist --data-dir "$DATA" \
    --epochs 10 --seeds 0 1 --methods ep --out "$OUT/fixed"
"$PY" analysis/compare_methods.py topologies/fre_2x512.yaml --dataset mnist --data-dir "$DATA" \
    --epochs 10 --seeds 0 1 --methods ep --out "$OUT/converged" \
    --set dynamics.schedule=sweep --set dynamics.nudged_schedule=top-down-sweep \
    --set dynamics.nudged_steps=10 --set dynamics.tolerance=1e-4 \
    --set dynamics.nudged_tolerance=1e-3 --set dynamics.check_every=1
echo "end $(date -Is); $(uptime)"
