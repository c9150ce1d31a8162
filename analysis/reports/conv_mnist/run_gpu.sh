#!/bin/bash
# The 10-epoch check of topologies/conv_mnist.yaml (issue 12) on a lent GPU, inside a device
# lease: EP seeds 0 and 1 and BP seed 0 train side by side on one CUDA device (three processes),
# while the CUDA tests of the engine run beside them (no timing is taken there). The run
# folders are packed into OUT/conv_mnist_runs.tar.gz every 20 s and at the end, so that what
# a lease cuts short still comes back and resumes (`topo-ep train --resume` may change the
# device). Every run stops at the deadline (SECONDS_LEFT after the start; ../lease.sh).
#
#   bash analysis/reports/conv_mnist/run_gpu.sh DATA_DIR OUT_DIR SECONDS_LEFT
#   DEVICE=cpu EPOCHS=1 LIMIT=256 bash analysis/reports/conv_mnist/run_gpu.sh ...   # dry run
#
# Back here, unpack the runs into a folder and tabulate them with compare_methods, which
# reuses finished runs and resumes the others:
#   tar -xzf conv_mnist_runs.tar.gz -C /work/runs/conv_mnist_gpu
#   python analysis/compare_methods.py topologies/conv_mnist.yaml --dataset mnist \
#       --data-dir ../shared/data/mnist --epochs 10 --runs ep:0 ep:1 bp:0 \
#       --out /work/runs/conv_mnist_gpu
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lease.sh
. "$HERE/../lease.sh"
DATA=$1
EPOCHS=${EPOCHS:-10}
lease_begin "$2" "$3" conv_mnist_gpu.log
RUNS=$(mktemp -d "${TMPDIR:-/tmp}/conv_mnist.XXXXXX")
echo "start $(date -Is), device $DEVICE, $EPOCHS epochs, deadline in $3 s" >"$LOG"

pids=()
for run in ep:0 ep:1 bp:0; do
    method=${run%%:*}
    seed=${run##*:}
    "$PY" -m topo_ep train topologies/conv_mnist.yaml --dataset mnist --data-dir "$DATA" \
        --method "$method" --seed "$seed" --epochs "$EPOCHS" --device "$DEVICE" --quiet \
        "${LIMIT_ARGS[@]}" --out "$RUNS/${method}_s$seed" >"$RUNS/${method}_s$seed.log" 2>&1 &
    pids+=($!)
done
if [ "$DEVICE" = cuda ]; then
    timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_chunks.py \
        -k "any_torch_device or cuda" >"$RUNS/cuda_tests.log" 2>&1 &
fi
pack() {
    lease_pack "$RUNS" "$OUT/conv_mnist_runs.tar.gz"
}
lease_wait pack "${pids[@]}"
for run in "$RUNS"/*_s*/; do
    echo "== $(basename "$run"): $(wc -l <"$run/metrics.jsonl" 2>/dev/null || echo 0) epochs" >>"$LOG"
    tail -n 3 "${run%/}.log" >>"$LOG"
done
[ -f "$RUNS/cuda_tests.log" ] && { echo "== CUDA tests"; tail -n 15 "$RUNS/cuda_tests.log"; } >>"$LOG"
echo "end $(date -Is)" >>"$LOG"
cat "$LOG"
