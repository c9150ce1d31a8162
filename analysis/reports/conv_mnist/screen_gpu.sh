#!/bin/bash
# Issue 12: a validation screen of topologies/conv_mnist.yaml's settings on a lent GPU, after the
# shipped settings (gain 0.1, per-layer SGD rates 0.015 / 0.035 / 0.9, one-sided nudge) collapsed
# to chance with EP on both seeds (epoch 2 and epoch 7; BP on the same settings was stable).
# Every variant trains 10 epochs with EP on seeds 0 and 1, side by side on one CUDA device (one
# process each); the rate variants also train with BP on seed 0. Choice rule, fixed before the
# runs: the variant with the highest mean final-epoch VALIDATION accuracy over its two EP seeds;
# the test split is only reported.
#
#   bash analysis/reports/conv_mnist/screen_gpu.sh DATA_DIR OUT_DIR SECONDS_LEFT
#
# The run folders come back packed in OUT/conv_mnist_screen.tar.gz (every 20 s and at the end);
# each VARIANT_METHOD_sSEED folder is an ordinary `topo-ep train` run whose config.yaml holds its
# --set options, so `compare_methods.py --set ...` tabulates and resumes it.
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
RUNS=$(mktemp -d "${TMPDIR:-/tmp}/conv_screen.XXXXXX")
LOG="$OUT/conv_mnist_screen.log"
DEADLINE=$(($(date +%s) + SECONDS_LEFT))
LIMIT_ARGS=()
[ -n "${LIMIT:-}" ] && LIMIT_ARGS=(--limit "$LIMIT")

rates() {  # rates SCALE: every per-tensor rate of conv_mnist.yaml times SCALE, as --set options
    "$PY" -c "import sys; s = float(sys.argv[1]); print(' '.join(f'--set {k}={v * s:g}' for k, v in
        [('layers.h1.lr', 0.015), ('edges.0.lr', 0.015), ('layers.h2.lr', 0.035),
         ('edges.1.lr', 0.035), ('readout.lr', 0.9)]))" "$1"
}
declare -A VARIANT=(
    [rates_half]="$(rates 0.5)"
    [rates_quarter]="$(rates 0.25)"
    [symmetric]="--set training.nudging=symmetric"
    [symmetric_rates_half]="--set training.nudging=symmetric $(rates 0.5)"
    [gain_0.01]="--set feedback_gain=0.01"
)
echo "start $(date -Is), device $DEVICE, $EPOCHS epochs, deadline in $SECONDS_LEFT s" >"$LOG"
pids=()
launch() {  # launch NAME METHOD SEED
    local name=$1 method=$2 seed=$3
    # shellcheck disable=SC2086  # the variant's options are words
    "$PY" -m topo_ep train topologies/conv_mnist.yaml --dataset mnist --data-dir "$DATA" \
        --method "$method" --seed "$seed" --epochs "$EPOCHS" --device "$DEVICE" --quiet \
        "${LIMIT_ARGS[@]}" ${VARIANT[$name]} --out "$RUNS/${name}_${method}_s$seed" \
        >"$RUNS/${name}_${method}_s$seed.log" 2>&1 &
    pids+=($!)
    echo "$name $method $seed: ${VARIANT[$name]}" >>"$LOG"
}
for name in "${!VARIANT[@]}"; do
    launch "$name" ep 0
    launch "$name" ep 1
done
launch rates_half bp 0
launch rates_quarter bp 0

pack() {
    tar -czf "$OUT/conv_mnist_screen.tar.gz.part" -C "$RUNS" . &&
        mv "$OUT/conv_mnist_screen.tar.gz.part" "$OUT/conv_mnist_screen.tar.gz"
}
while :; do
    running=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
    [ "$running" = 0 ] && break
    if [ "$(date +%s)" -ge "$DEADLINE" ]; then
        echo "deadline: stopping the runs still training" >>"$LOG"
        for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
        break
    fi
    pack
    sleep 20
done
wait
pack
"$PY" - "$RUNS" <<'PY' | tee -a "$LOG"
import json
import sys
from pathlib import Path

rows = {}
for metrics in sorted(Path(sys.argv[1]).glob("*/metrics.jsonl")):
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    if lines:
        last = lines[-1]
        rows[metrics.parent.name] = (last["epoch"], last["val_acc"], last["test_acc"])
print("| run | epochs | final val | final test |")
print("|---|---|---|---|")
for name, (epoch, val, test) in rows.items():
    print(f"| {name} | {epoch} | {100 * val:.2f} | {100 * test:.2f} |")
PY
echo "end $(date -Is)" >>"$LOG"
