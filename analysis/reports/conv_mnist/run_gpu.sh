#!/bin/bash
# The 10-epoch check of topologies/conv_mnist.yaml (issue 12) on a lent GPU, inside a device
# lease: EP seeds 0 and 1 and BP seed 0 train side by side on one CUDA device (three processes),
# while the CUDA tests of the engine run beside them (no timing is taken there). The run
# folders are packed into OUT/conv_mnist_runs.tar.gz every 20 s and at the end, so that what
# a lease cuts short still comes back and resumes (`topo-ep train --resume` may change the
# device). Every run stops at the deadline (SECONDS_LEFT after the start).
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
DATA=$1
OUT=$2
SECONDS_LEFT=$3
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-10}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RUNS=$(mktemp -d "${TMPDIR:-/tmp}/conv_mnist.XXXXXX")
LOG="$OUT/conv_mnist_gpu.log"
DEADLINE=$(($(date +%s) + SECONDS_LEFT))
LIMIT_ARGS=()
[ -n "${LIMIT:-}" ] && LIMIT_ARGS=(--limit "$LIMIT")
echo "start $(date -Is), device $DEVICE, $EPOCHS epochs, deadline in $SECONDS_LEFT s" >"$LOG"

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
    tar -czf "$OUT/conv_mnist_runs.tar.gz.part" -C "$RUNS" . && \
        mv "$OUT/conv_mnist_runs.tar.gz.part" "$OUT/conv_mnist_runs.tar.gz"
}
while :; do
    running=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
    [ "$running" = 0 ] && break
    if [ "$(date +%s)" -ge "$DEADLINE" ]; then
        echo "deadline: stopping the runs still training (they resume from their last epoch)" >>"$LOG"
        for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
        break
    fi
    pack
    sleep 20
done
wait
for run in "$RUNS"/*_s*/; do
    echo "== $(basename "$run"): $(wc -l <"$run/metrics.jsonl" 2>/dev/null || echo 0) epochs" >>"$LOG"
    tail -n 3 "${run%/}.log" >>"$LOG"
done
[ -f "$RUNS/cuda_tests.log" ] && { echo "== CUDA tests"; tail -n 15 "$RUNS/cuda_tests.log"; } >>"$LOG"
pack
echo "end $(date -Is)" >>"$LOG"
cat "$LOG"
