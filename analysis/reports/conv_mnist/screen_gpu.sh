#!/bin/bash
# Issue 12: validation screens of topologies/conv_mnist.yaml's settings on a lent GPU. Every run
# of a screen trains 10 epochs side by side with the others on one CUDA device (one process
# each); the run folders come back packed in OUT/conv_mnist_screen.tar.gz (every 20 s and at the
# end; ../lease.sh). Each VARIANT_METHOD_sSEED folder is an ordinary `topo-ep train` run whose
# config.yaml holds its options, so `compare_methods.py --set ...` tabulates and resumes it
# (with `--validation none` for runs trained without a validation split).
#
#   [SCREEN=collapse|next] bash analysis/reports/conv_mnist/screen_gpu.sh DATA OUT SECONDS_LEFT
#   DEVICE=cpu EPOCHS=1 LIMIT=256 SCREEN=next bash ...screen_gpu.sh ...   # dry run
#
# Both screens set their variants against topologies/conv_mnist.yaml as it was up to commit
# b6ec042 (gain 0.1, zero biases, Glorot readout without bias). Commit aad40b8 ships the
# authors_symmetric variant in that file, so to repeat a screen, run this script from a checkout
# of b6ec042 (git worktree add /tmp/screen b6ec042); on the file as it is now, SCREEN=next's
# shipped, authors_symmetric and gain_0.01_symmetric variants are one and the same net.
#
# SCREEN=collapse (the default; run on an H200, README.md): after the one-sided nudge collapsed
# to chance with EP on both seeds (epoch 2 and epoch 7; BP on the same settings was stable), five
# variants with EP on seeds 0 and 1, the rate variants also with BP on seed 0. Choice rule, fixed
# before the runs: the highest mean final-epoch VALIDATION accuracy over the two EP seeds; the
# test split only reported. It chose the symmetric nudge, shipped since.
#
# SCREEN=next (prepared for the next lease; revised 2026-11-30 after reading the authors'
# notebook CNN_EP_MNIST in full): the authors ran 5 runs at each feedback gain 0.01, 0.1 and 1.
# Their 98.94 / 98.95 % at epoch 10 (the issue's target) and the paper's 99.15 % are the gain
# 0.01 runs; at gain 0.1, the one topo-ep ships, 3 of their 5 one-sided runs collapse to chance
# and a 4th is unstable, as ours did; at gain 1 none learns. Their net also starts its conv and
# readout biases as PyTorch's defaults, U(+-1/sqrt(fan in)) (ours: zero), has a learned readout
# bias (ours: none) and an nn.Linear readout (fan-in-uniform; ours: Glorot). Variants, EP on
# seeds 0 and 1 unless said:
#   shipped (seeds 2 and 3): how far apart seeds land, against the check's 98.60 / 98.76 %;
#   authors: the authors' net and nudge: gain 0.01, one-sided, their initial values and readout
#     bias (readout.init, readout.bias, *.bias_init: fan_in_uniform); also BP on seed 0;
#   authors_symmetric: the same with the shipped symmetric nudge;
#   gain_0.01_symmetric: the shipped settings at gain 0.01.
# Choice rule, fixed before the runs: the highest mean final-epoch VALIDATION accuracy over the
# two EP seeds, shipped in conv_mnist.yaml only if it beats the shipped settings' 98.69 %; the
# test split only reported.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lease.sh
. "$HERE/../lease.sh"
DATA=$1
EPOCHS=${EPOCHS:-10}
SCREEN=${SCREEN:-collapse}
lease_begin "$2" "$3" conv_mnist_screen.log
RUNS=$(mktemp -d "${TMPDIR:-/tmp}/conv_screen.XXXXXX")

rates() {  # rates SCALE: every per-tensor rate of conv_mnist.yaml times SCALE, as --set options
    "$PY" -c "import sys; s = float(sys.argv[1]); print(' '.join(f'--set {k}={v * s:g}' for k, v in
        [('layers.h1.lr', 0.015), ('edges.0.lr', 0.015), ('layers.h2.lr', 0.035),
         ('edges.1.lr', 0.035), ('readout.lr', 0.9)]))" "$1"
}
declare -A VARIANT=()
case $SCREEN in
    collapse)  # against the one-sided nudge that conv_mnist.yaml shipped then
        one_sided="--set training.nudging=one-sided"
        VARIANT=(
            [rates_half]="$one_sided $(rates 0.5)"
            [rates_quarter]="$one_sided $(rates 0.25)"
            [symmetric]="--set training.nudging=symmetric"
            [symmetric_rates_half]="--set training.nudging=symmetric $(rates 0.5)"
            [gain_0.01]="$one_sided --set feedback_gain=0.01"
        )
        LAUNCHES="rates_half:ep:0 rates_half:ep:1 rates_quarter:ep:0 rates_quarter:ep:1
            symmetric:ep:0 symmetric:ep:1 symmetric_rates_half:ep:0 symmetric_rates_half:ep:1
            gain_0.01:ep:0 gain_0.01:ep:1 rates_half:bp:0 rates_quarter:bp:0" ;;
    next)
        authors_init="--set readout.init=fan_in_uniform --set readout.bias=true
            --set readout.bias_init=fan_in_uniform --set layers.h1.bias_init=fan_in_uniform
            --set layers.h2.bias_init=fan_in_uniform --set feedback_gain=0.01"
        VARIANT=([shipped]=""
            [authors]="$authors_init --set training.nudging=one-sided"
            [authors_symmetric]="$authors_init"
            [gain_0.01_symmetric]="--set feedback_gain=0.01")
        LAUNCHES="shipped:ep:2 shipped:ep:3 authors:ep:0 authors:ep:1 authors:bp:0
            authors_symmetric:ep:0 authors_symmetric:ep:1 gain_0.01_symmetric:ep:0
            gain_0.01_symmetric:ep:1" ;;
    *) echo "SCREEN=$SCREEN: expected collapse or next" >&2; exit 2 ;;
esac
echo "start $(date -Is), screen $SCREEN, device $DEVICE, $EPOCHS epochs, deadline in $3 s" >"$LOG"
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
for launched in $LAUNCHES; do  # NAME:METHOD:SEED
    rest=${launched#*:}
    launch "${launched%%:*}" "${rest%%:*}" "${rest##*:}"
done

pack() {
    lease_pack "$RUNS" "$OUT/conv_mnist_screen.tar.gz"
}
lease_wait pack "${pids[@]}"
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
    shown = "-" if val is None else f"{100 * val:.2f}"  # None: trained with --validation none
    print(f"| {name} | {epoch} | {shown} | {100 * test:.2f} |")
PY
echo "end $(date -Is)" >>"$LOG"
