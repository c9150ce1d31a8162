#!/bin/bash
# The prepared GPU check of issues 13 (fast relaxation) and 14 (data-parallel training): at most
# 8 minutes in all on an H100/H200 (BUDGET seconds; every step has its own timeout, and a step
# whose timeout no longer fits in what is left is skipped, so one hang cannot eat the budget).
#
#   1. the card (nvidia-smi, torch);
#   2. the tests parametrized over devices, on CUDA (tests/test_engine.py, tests/test_chunks.py);
#   3. topo-ep bench on CUDA, float32, batch 500, EP and BP interleaved: fre_2x512 and
#      res_10x64, each at the shipped fixed T/K and at the converged settings of
#      analysis/reports/converged_phases/README.md, each with dynamics.execution eager and
#      cuda-graph; conv_mnist (issue 12) eager; then res_10x64 fixed T/K with execution
#      compile (one chunk compiled);
#   4. one fre_2x512 MNIST epoch on CUDA: EP eager, EP with cuda-graph, BP (seconds per epoch
#      and test accuracy from metrics.jsonl);
#   5. the same EP epoch under torchrun --standalone --nproc-per-node 1 (nccl backend);
#   6. a summary table; everything in OUT/gpu_check.json, OUT/summary.md and OUT/gpu_check.log
#      (3 files: the device tool brings back at most 8; run folders stay in a scratch folder).
#
# Usage (repository root; topo-ep need not be installed, the repository is put on PYTHONPATH):
#   bash benchmarks/gpu_check.sh DATA_DIR OUT_DIR
#   bash benchmarks/gpu_check.sh --cpu-dry-run DATA_DIR OUT_DIR   # here: cpu, tiny work
# DATA_DIR holds the MNIST IDX files (.gz is fine). The device tool's machine does not see
# ../shared: copy them into an ignored folder first and carry it (11 MB):
#   mkdir -p .data && cp -r /work/shared/data/mnist .data/ && echo /.data/ >> .git/info/exclude
#   run(command="bash benchmarks/gpu_check.sh .data/mnist $OUT", carry=[".data"], timeout_s=560)
# The dry run (`--cpu-dry-run`, or GPU_CHECK_DEVICE=cpu) swaps cuda for cpu and shrinks every
# step (batch 8, one timed batch, 500 training examples) so that the plumbing is tested without a
# GPU: tests/test_gpu_check.py runs it.
# GPU_CHECK_SKIP="NAME ..." skips the named steps (e.g. "tests train_ep_torchrun"), so that a
# session can spend its device time elsewhere (analysis/reports/conv_mnist/run_gpu.sh runs the
# tests beside its trainings, where no timing is taken).
set -u
DRY=0
if [ "${1:-}" = "--cpu-dry-run" ]; then DRY=1; shift; fi
[ "${GPU_CHECK_DEVICE:-cuda}" = "cpu" ] && DRY=1
DATA=${1:-.data/mnist}
OUT=${2:-runs/gpu_check}
BUDGET=${GPU_CHECK_BUDGET:-470}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
LOG="$OUT/gpu_check.log"
STEPS="$WORK/steps.tsv"
: >"$LOG"
: >"$STEPS"
START=$(date +%s)

if [ "$DRY" = 1 ]; then
    DEVICE=cpu
    BENCH_SIZE=(--batch-size 8 --repeats 1 --batches 1 --threads 1)
    TRAIN_SIZE=(--limit 500)
else
    DEVICE=cuda
    BENCH_SIZE=(--repeats 3 --batches 5)
    TRAIN_SIZE=()
fi

# step NAME TIMEOUT COMMAND...: run with its own timeout (cut to what is left of BUDGET), log
# its output, record NAME, exit status and seconds; skip it when under 15 s would be left.
step() {
    local name=$1 limit=$2
    shift 2
    local now left began rc
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        printf '%s\tskipped\t0\n' "$name" >>"$STEPS"
        echo "== $name: skipped (GPU_CHECK_SKIP)" | tee -a "$LOG"
        return 0
    fi
    now=$(date +%s)
    left=$((BUDGET - (now - START)))
    if [ "$left" -lt 15 ]; then
        printf '%s\tskipped\t0\n' "$name" >>"$STEPS"
        echo "== $name: skipped, $left s of the budget left" | tee -a "$LOG"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (timeout ${limit} s)" | tee -a "$LOG"
    began=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - began))" >>"$STEPS"
    echo "   exit $rc after $(($(date +%s) - began)) s" | tee -a "$LOG"
    return 0
}

step card 30 sh -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    || echo 'nvidia-smi: none'; $PY -c \"import torch; print('torch', torch.__version__, \
'| cuda', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) \
if torch.cuda.is_available() else 'no CUDA device')\""

step tests 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_chunks.py \
    -k "any_torch_device or cuda"

FIXED_FRE=()
CONVERGED_FRE=(--set dynamics.schedule=sweep --set dynamics.nudged_schedule=top-down-sweep
    --set dynamics.free_steps=10 --set dynamics.nudged_steps=10 --set dynamics.tolerance=1e-4
    --set dynamics.nudged_tolerance=1e-3 --set dynamics.check_every=1)
FIXED_RES=()
CONVERGED_RES=(--set dynamics.schedule=sweep --set dynamics.tolerance=3e-5
    --set dynamics.nudged_tolerance=1e-3 --set dynamics.check_every=5
    --set dynamics.free_steps=1000 --set dynamics.nudged_steps=1000)

bench() {  # bench NAME TOPOLOGY EXECUTION TIMEOUT [--set ...]
    local name=$1 topology=$2 execution=$3 limit=$4
    shift 4
    step "bench_$name" "$limit" "$PY" -m topo_ep bench "topologies/$topology.yaml" \
        --device "$DEVICE" "${BENCH_SIZE[@]}" --set "dynamics.execution=$execution" "$@" \
        --json "$WORK/bench_$name.json"
}
for execution in eager cuda-graph; do
    tag=${execution/-/_}
    bench "fre_2x512_fixed_$tag" fre_2x512 "$execution" 40 "${FIXED_FRE[@]}"
    bench "fre_2x512_converged_$tag" fre_2x512 "$execution" 40 "${CONVERGED_FRE[@]}"
    bench "res_10x64_fixed_$tag" res_10x64 "$execution" 45 "${FIXED_RES[@]}"
    bench "res_10x64_converged_$tag" res_10x64 "$execution" 45 "${CONVERGED_RES[@]}"
done
# the convolutional net of issue 12 (topologies/conv_mnist.yaml, batch 128), eager
bench conv_mnist_eager conv_mnist eager 60

train() {  # train NAME TIMEOUT LAUNCHER... -- TRAIN OPTIONS
    local name=$1 limit=$2
    shift 2
    step "train_$name" "$limit" "$@" topologies/fre_2x512.yaml --dataset mnist \
        --data-dir "$DATA" --epochs 1 --device "$DEVICE" --quiet "${TRAIN_SIZE[@]}" \
        --out "$WORK/train_$name"
}
train ep 90 "$PY" -m topo_ep train --method ep
train ep_cuda_graph 90 "$PY" -m topo_ep train --method ep --set dynamics.execution=cuda-graph
train bp 60 "$PY" -m topo_ep train --method bp
train ep_torchrun 100 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 \
    -m topo_ep train --method ep --dist-backend "$([ "$DRY" = 1 ] && echo gloo || echo nccl)"

# last, since it may be slow to compile: one chunk of res_10x64's fixed T/K, torch.compile'd
bench res_10x64_fixed_compile res_10x64 compile 90 "${FIXED_RES[@]}"

"$PY" - "$WORK" "$OUT" "$DEVICE" "$(($(date +%s) - START))" <<'PY' 2>&1 | tee -a "$LOG"
import json
import sys
from pathlib import Path

work, out, device, total = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
steps = {}
for line in (work / "steps.tsv").read_text().splitlines():
    name, status, seconds = line.split("\t")
    steps[name] = {"exit": status, "seconds": int(seconds)}
bench = {}
for path in sorted(work.glob("bench_*.json")):
    bench[path.stem.removeprefix("bench_")] = json.loads(path.read_text())
train = {}
for name in ("ep", "ep_cuda_graph", "bp", "ep_torchrun"):
    metrics = work / f"train_{name}" / "metrics.jsonl"
    if metrics.exists() and metrics.read_text().strip():
        train[name] = json.loads(metrics.read_text().splitlines()[-1])
card = next((d["device_name"] for d in bench.values()), "unknown")
lines = [f"# GPU check on {device} ({card}), {total} s in all", ""]
if device == "cpu":
    lines += ["Dry run on the CPU: shrunk work, and cuda-graph runs eagerly there; the timings",
              "test the plumbing only.", ""]
lines += ["| step | exit | s |", "|---|---|---|"]
lines += [f"| {name} | {s['exit']} | {s['seconds']} |" for name, s in steps.items()]
lines += ["", "| bench | EP s/batch | BP s/batch | EP/BP | free + nudged steps | EP peak MiB |",
          "|---|---|---|---|---|---|"]
for name, doc in bench.items():
    ep, bp = doc["methods"]["ep"], doc["methods"]["bp"]
    peak = ep["peak_memory_bytes"]
    lines.append(
        f"| {name} | {ep['seconds_per_batch_median']:.5f} | {bp['seconds_per_batch_median']:.5f}"
        f" | {doc['ep_over_bp']:.2f} | {ep['free_steps_mean']:.1f} + {ep['nudged_steps_mean']:.1f}"
        f" | {'n/a' if peak is None else f'{peak / 2**20:.0f}'} |"
    )
speedups = []
for name in bench:
    if name.endswith("_eager") and name[: -len("eager")] + "cuda_graph" in bench:
        eager = bench[name]["methods"]["ep"]["seconds_per_batch_median"]
        graph = bench[name[: -len("eager")] + "cuda_graph"]["methods"]["ep"]
        speedups.append(f"{name[: -len('_eager')]}: {eager / graph['seconds_per_batch_median']:.2f}x")
if speedups:
    lines += ["", "EP speed-up of cuda-graph over eager: " + "; ".join(speedups)]
lines += ["", "| fre_2x512 MNIST epoch | seconds | test acc |", "|---|---|---|"]
for name, record in train.items():
    lines.append(f"| {name} | {record['seconds']:.2f} | {100 * record['test_acc']:.2f} |")
text = "\n".join(lines)
print(text)
(out / "summary.md").write_text(text + "\n")
document = {"device": device, "card": card, "seconds": total, "steps": steps, "bench": bench,
            "train": train}
(out / "gpu_check.json").write_text(json.dumps(document, indent=2) + "\n")
PY
rm -rf "$WORK"
