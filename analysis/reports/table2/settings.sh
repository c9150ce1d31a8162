# Sourced by run.sh and run_gpu.sh (bash): the runs of Table 2 and each net's settings, in one
# place, so that a run started by one script resumes under the other (`topo-ep train --resume`
# refuses other --set options, --dtype, --limit, --method or --seed, and names them).
#
# A run is NET:METHOD:SEED. NET is a folder under OUT and names the topology and the dtype:
# chain_10x64_float64 is topologies/chain_10x64.yaml in float64 (the control of DESIGN.md).

# Every run of the table, the longest first (what a side-by-side queue should start first):
# EP cost per epoch on this CPU at the shipped T/K (issue 13): res_20x64 185 s, AGT 66 s,
# res_10x64 44 s, chain 33 s; the converged settings cut res_20x64, res_10x64 and AGT several
# times; float64 costs more than float32. BP runs are a few seconds per epoch.
TABLE2_RUNS="res_20x64:ep:0 res_20x64:ep:1 chain_10x64_float64:ep:0 chain_10x64:ep:0
chain_10x64:ep:1 res_10x64:ep:0 res_10x64:ep:1 agt_10x64:ep:0 agt_10x64:ep:1
res_20x64:bp:0 res_20x64:bp:1 res_10x64:bp:0 res_10x64:bp:1 agt_10x64:bp:0 agt_10x64:bp:1
chain_10x64:bp:0 chain_10x64:bp:1"
TABLE2_NETS="chain_10x64 chain_10x64_float64 res_10x64 res_20x64 agt_10x64"

table2_topology() {  # table2_topology NET: the topology file
    echo "topologies/${1%_float64}.yaml"
}

table2_dtype() {  # table2_dtype NET
    case $1 in *_float64) echo float64 ;; *) echo float32 ;; esac
}

# table2_sets NET: the --set options of every run of NET (EP and BP alike: BP ignores the
# dynamics). Only settings that passed the float64 study of converged phases
# (analysis/reports/converged_phases/README.md: per-edge cosine >= 0.999 and norm ratio within
# 5 % of the fully converged EP update, fresh and trained weights) are used:
# - res_10x64: sweep, free tolerance 3e-5, nudged 1e-3 (45 + 26 / 43 + 27 steps);
# - agt_10x64: sweep, 1e-4 / 1e-3 (11 + 13 / 15 + 16 steps);
# - res_20x64: sweep, 1e-4 / 1e-3 (section "chain_10x64 and res_20x64");
# - chain_10x64 (and its float64 control): the shipped fixed T/K 100/50, synchronous. The
#   chain passes only at a free tolerance of 1e-8 (fresh) / 1e-7 (trained), below float32's
#   floor (a phase stops at max(tolerance, 16 eps) = 1.9e-6 in float32); the control keeps the
#   float32 run's dynamics, so that only the dtype differs.
# The step limits of the topology files (100 / 50, 200 / 100 for res_20x64) stay as caps.
# dynamics.execution=cuda-graph everywhere: on a CUDA device EP's chunks of steps are replayed
# CUDA graphs (topo_ep/chunks.py: held error, no per-step observer, as here); on the CPU the
# same setting runs eagerly (one RuntimeWarning per run), so a run moves between CPU and GPU.
table2_sets() {
    local sets="--set dynamics.execution=cuda-graph"
    local converged="--set dynamics.schedule=sweep --set dynamics.nudged_tolerance=1e-3"
    case $1 in
        res_10x64) sets="$sets $converged --set dynamics.tolerance=3e-5" ;;
        agt_10x64) sets="$sets $converged --set dynamics.tolerance=1e-4" ;;
        res_20x64) sets="$sets $converged --set dynamics.tolerance=1e-4" ;;
    esac
    echo "$sets"
}
