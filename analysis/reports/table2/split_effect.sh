#!/bin/bash
# How much of Table 2's gap to the paper is the training split? topo-ep trains on 55 000 MNIST
# images and keeps 5 000 for validation; the paper's authors train on all 60 000. This trains BP
# (cheap: a few seconds per epoch) on NETS with `--validation none` (60 000 images), the same
# settings (settings.sh) and seeds as Table 2's BP runs, so that analysis/table2_report.py can
# set the two splits side by side. Runs go to OUT/<net>/bp_s<seed> (default
# /work/runs/table2_split); an interrupted run resumes. Usage:
#   nohup setsid bash analysis/reports/table2/split_effect.sh > /work/runs/split.log 2>&1 &
# Settings: NETS (res_10x64 res_20x64), SEEDS (0 1), EPOCHS (50), OUT, DATA, PY, OMP_NUM_THREADS.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
DATA=${DATA:-/work/shared/data/mnist}
OUT=${OUT:-/work/runs/table2_split}
EPOCHS=${EPOCHS:-50}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$REPO" || exit 1
# shellcheck source=settings.sh
. analysis/reports/table2/settings.sh
echo "start $(date -Is) commit $(git rev-parse HEAD); $(uptime)"
status=0
for net in ${NETS:-res_10x64 res_20x64}; do
    for seed in ${SEEDS:-0 1}; do
        run=$OUT/$net/bp_s$seed
        resume=()
        [ -f "$run/checkpoint.pt" ] && resume=(--resume)
        # shellcheck disable=SC2046  # the --set options are words
        "$PY" -m topo_ep train "$(table2_topology "$net")" --dataset mnist --data-dir "$DATA" \
            --method bp --seed "$seed" --epochs "$EPOCHS" --dtype "$(table2_dtype "$net")" \
            --device cpu --validation none --quiet --out "$run" "${resume[@]}" \
            $(table2_sets "$net") || { echo "FAILED: $net bp seed $seed"; status=1; }
    done
done
"$PY" analysis/table2_report.py "$OUT" --epochs "$EPOCHS"
echo "end $(date -Is); $(uptime)"
exit $status
