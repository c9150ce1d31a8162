#!/bin/bash
# The 10-epoch check of topologies/conv_mnist.yaml on MNIST (issue 12): EP seeds 0 and 1, BP
# seed 0, in one table (report.md, summary.json) under $OUT. Runs from a snapshot of this
# checkout's HEAD (git archive into $OUT/code), so later edits do not change a running check;
# rerunning the script resumes interrupted runs and reuses finished ones (compare_methods).
# Launch in the background:
#   nohup bash analysis/reports/conv_mnist/run.sh > /work/runs/conv_mnist.log 2>&1 &
# Settings: EPOCHS (10), OUT (/work/runs/conv_mnist), DATA (/work/shared/data/mnist),
# PY (this checkout's .venv/bin/python), OMP_NUM_THREADS (1), RUNS ("ep:0 ep:1 bp:0": which
# runs this process does; two processes with disjoint RUNS share the two cores, e.g.
#   RUNS=ep:0 nohup bash run.sh > ep0.log 2>&1 &  RUNS="ep:1 bp:0" nohup bash run.sh > ep1.log 2>&1 &
# and a last call with every run writes the table of all three), SETS (unset: the file as
# shipped; else --set options for every run, e.g. the screen's `authors` variant:
#   OUT=/work/runs/conv_authors RUNS="ep:0 ep:1" SETS="--set feedback_gain=0.01 ..." bash run.sh),
# CHECKPOINT_MINUTES (10: every run also saves its epoch in progress that often, so that a
# killed run resumes mid-epoch; an epoch takes 10-30 minutes on this CPU).
# One torch thread: on this shared 2-core machine (load average 3-4) one synchronous step of
# this net on a batch of 128 took 44 ms median with 1 thread and 160 ms with 2 (the second
# thread's waits dominate every small op); see the conv branch's report.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
DATA=${DATA:-/work/shared/data/mnist}
OUT=${OUT:-/work/runs/conv_mnist}
EPOCHS=${EPOCHS:-10}
RUNS=${RUNS:-ep:0 ep:1 bp:0}
SETS=${SETS:-}
CHECKPOINT_MINUTES=${CHECKPOINT_MINUTES:-10}
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
# shellcheck disable=SC2086  # RUNS and SETS are words
"$PY" analysis/compare_methods.py topologies/conv_mnist.yaml --dataset mnist \
    --data-dir "$DATA" --epochs "$EPOCHS" --runs $RUNS $SETS --out "$OUT" \
    --checkpoint-minutes "$CHECKPOINT_MINUTES"
echo "end $(date -Is); $(uptime)"
