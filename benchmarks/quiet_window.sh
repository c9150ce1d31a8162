#!/bin/bash
# Timings that need the machine to themselves, taken in one window while long trainings are
# paused (kill -STOP / -CONT of their processes): topo-ep bench of the shipped fixed T/K against
# the converged settings (fre_2x512, res_10x64), and the data-parallel sanity figure.
# Usage: bash benchmarks/quiet_window.sh OUT   (repository root, venv active)
set -euo pipefail
OUT=${1:-runs/quiet_window}
mkdir -p "$OUT"
echo "start $(date -Is); $(uptime)"
bench() { name=$1; topo=$2; shift 2; topo-ep bench topologies/$topo.yaml --repeats 5 --batches 5 --threads 2 --json "$OUT/$name.json" "$@"; }
bench fre_2x512_fixed fre_2x512
bench fre_2x512_converged fre_2x512 --set dynamics.schedule=sweep --set dynamics.nudged_schedule=top-down-sweep --set dynamics.tolerance=1e-4 --set dynamics.nudged_tolerance=1e-3 --set dynamics.check_every=1 --set dynamics.nudged_steps=10
bench res_10x64_fixed res_10x64
bench res_10x64_converged res_10x64 --set dynamics.schedule=sweep --set dynamics.tolerance=3e-5 --set dynamics.nudged_tolerance=1e-3 --set dynamics.check_every=5 --set dynamics.free_steps=1000 --set dynamics.nudged_steps=1000
python benchmarks/data_parallel.py topologies/fre_2x512.yaml --data-dir /work/shared/data/mnist \
    --ranks 2 --threads 1 --epochs 1 --json "$OUT/data_parallel_fre_2x512.json"
echo "end $(date -Is); $(uptime)"
