#!/bin/bash
# The quiet-window timings of issue 13 after the speed branch (commit d72e91c): topo-ep bench of
# fre_2x512 and res_10x64, shipped fixed T/K against the converged settings, 3 rounds in turn,
# 2 threads; then conv_mnist (issue 12) at 1 thread. Long trainings paused (kill -STOP).
#   bash analysis/reports/converged_phases/bench_quiet2/run.sh OUT
set -u
cd /work/main
. .venv/bin/activate
OUT=${1:-/work/runs/quiet2}
FRE=(--set dynamics.schedule=sweep --set dynamics.nudged_schedule=top-down-sweep --set dynamics.tolerance=1e-4 --set dynamics.nudged_tolerance=1e-3 --set dynamics.check_every=1 --set dynamics.nudged_steps=10)
RES=(--set dynamics.schedule=sweep --set dynamics.tolerance=3e-5 --set dynamics.nudged_tolerance=1e-3 --set dynamics.check_every=5 --set dynamics.free_steps=1000 --set dynamics.nudged_steps=1000)
echo "start $(date -Is) $(git rev-parse --short HEAD); $(uptime)"
for r in 1 2 3; do
  topo-ep bench topologies/fre_2x512.yaml --repeats 5 --batches 5 --threads 2 --json $OUT/fre_2x512_fixed_$r.json > /dev/null
  topo-ep bench topologies/fre_2x512.yaml --repeats 5 --batches 5 --threads 2 --json $OUT/fre_2x512_converged_$r.json "${FRE[@]}" > /dev/null
  topo-ep bench topologies/res_10x64.yaml --repeats 5 --batches 5 --threads 2 --json $OUT/res_10x64_fixed_$r.json > /dev/null
  topo-ep bench topologies/res_10x64.yaml --repeats 5 --batches 5 --threads 2 --json $OUT/res_10x64_converged_$r.json "${RES[@]}" > /dev/null
  echo "round $r done $(date -Is); $(uptime)"
done
topo-ep bench topologies/conv_mnist.yaml --repeats 3 --batches 3 --threads 1 --json $OUT/conv_mnist_cpu.json
echo "end $(date -Is); $(uptime)"
