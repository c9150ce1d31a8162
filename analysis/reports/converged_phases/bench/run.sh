#!/bin/sh
# Fixed T/K against converged phases with topo-ep bench (EP and BP interleaved, 5 repeats x
# 5 batches, 1 thread, float32, random inputs of batch 500). Run from the repository root.
# Taken on the shared 2-core development machine under load (see load_average in each JSON):
# not a clean comparison; the lead re-runs it on a quiet machine.
set -e
out=analysis/reports/converged_phases/bench
bench() { name=$1; topo=$2; shift 2; topo-ep bench topologies/$topo.yaml --repeats 5 --batches 5 --threads 1 --json $out/$name.json "$@"; }
bench fre_2x512_shipped fre_2x512
bench fre_2x512_sync_tol1e-4 fre_2x512 --set dynamics.tolerance=1e-4 --set dynamics.check_every=1
bench fre_2x512_sweep_tol1e-4 fre_2x512 --set dynamics.schedule=sweep --set dynamics.tolerance=1e-4 --set dynamics.check_every=1
bench fre_2x512_sweep_topdown_tol1e-4 fre_2x512 --set dynamics.schedule=sweep --set dynamics.nudged_schedule=top-down-sweep --set dynamics.tolerance=1e-4 --set dynamics.check_every=2
bench fre_2x512_sweep_topdown_fixed4-4 fre_2x512 --set dynamics.schedule=sweep --set dynamics.nudged_schedule=top-down-sweep --set dynamics.free_steps=4 --set dynamics.nudged_steps=4
bench res_10x64_shipped res_10x64
bench res_10x64_sync_tol1e-4 res_10x64 --set dynamics.tolerance=1e-4 --set dynamics.check_every=5 --set dynamics.free_steps=1000 --set dynamics.nudged_steps=1000
bench res_10x64_sweep_tol1e-4 res_10x64 --set dynamics.schedule=sweep --set dynamics.tolerance=1e-4 --set dynamics.check_every=5 --set dynamics.free_steps=1000 --set dynamics.nudged_steps=1000
bench res_10x64_sweep_topdown_tol1e-4 res_10x64 --set dynamics.schedule=sweep --set dynamics.nudged_schedule=top-down-sweep --set dynamics.tolerance=1e-4 --set dynamics.check_every=5 --set dynamics.free_steps=1000 --set dynamics.nudged_steps=1000
# Round 2: the split tolerances the float64 study recommends (free phase at its tolerance, the
# nudged phase's contrast test at 1e-3), and agt_10x64.
bench fre_2x512_sweep_topdown_tol1e-4_nudged1e-3 fre_2x512 --set dynamics.schedule=sweep --set dynamics.nudged_schedule=top-down-sweep --set dynamics.tolerance=1e-4 --set dynamics.nudged_tolerance=1e-3 --set dynamics.check_every=1 --set dynamics.nudged_steps=10
bench res_10x64_sweep_tol3e-5_nudged1e-3 res_10x64 --set dynamics.schedule=sweep --set dynamics.tolerance=3e-5 --set dynamics.nudged_tolerance=1e-3 --set dynamics.check_every=5 --set dynamics.free_steps=1000 --set dynamics.nudged_steps=1000
bench agt_10x64_shipped agt_10x64
bench agt_10x64_sweep_tol1e-4_nudged1e-3 agt_10x64 --set dynamics.schedule=sweep --set dynamics.tolerance=1e-4 --set dynamics.nudged_tolerance=1e-3 --set dynamics.check_every=5 --set dynamics.free_steps=1000 --set dynamics.nudged_steps=1000
