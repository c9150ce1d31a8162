# Sourced by run.sh and run_gpu.sh (bash): the runs of Table 2 and each net's settings, in one
# place, so that a run started by one script resumes under the other (`topo-ep train --resume`
# refuses other --set options, --dtype, --limit, --method or --seed, and names them).
#
# A run is NET:METHOD:SEED. NET is a folder under OUT and names the topology and the dtype:
# chain_10x64_float64 is topologies/chain_10x64.yaml in float64 (the control of DESIGN.md);
# res_20x64_float64, res_20x64 in float64: a control outside the table's runs (not in TABLE2_RUNS),
# since `check-gradients` in float32 finds no EP signal in res_20x64's lowest layers (README.md);
# res_10x64_fixed, res_10x64 with the file's own dynamics (the paper's synchronous T/K 100/50,
# no tolerance): a control of the converged phases, which cost fre_2x512 0.2 points.
# NET_authors (res_10x64_authors, agt_10x64_authors, res_20x64_authors): the net as the
# authors' graph code trains it (their models_LN_G.py, used by their residual and AGT
# notebooks): the file's synchronous 10L / 5L steps, the held error's nudge drive added once
# more at every nudged step (training.error: accumulated) and the readout's error read at the
# nudged state (training.readout_error: nudged); for AGT also their graph rule (generate.links:
# directed, on the file's seed); trained on all 60 000 images (--validation none: test only, as
# the authors). Outside TABLE2_RUNS: a test of why the table's EP rows miss (progress/README.md).

# Every run of the table, the longest first (what a side-by-side queue should start first):
# EP cost per epoch on this CPU at the shipped T/K (issue 13): res_20x64 about 185 s, AGT 66 s,
# res_10x64 44 s, chain 33 s; the settings below halve the steps of the chain and res_20x64 and
# cut those of res_10x64 and AGT 2-5 times; float64 costs more than float32. BP runs take a few
# seconds per epoch.
TABLE2_RUNS="res_20x64:ep:0 res_20x64:ep:1 chain_10x64_float64:ep:0 chain_10x64:ep:0
chain_10x64:ep:1 res_10x64:ep:0 res_10x64:ep:1 agt_10x64:ep:0 agt_10x64:ep:1
res_20x64:bp:0 res_20x64:bp:1 res_10x64:bp:0 res_10x64:bp:1 agt_10x64:bp:0 agt_10x64:bp:1
chain_10x64:bp:0 chain_10x64:bp:1"
TABLE2_NETS="chain_10x64 chain_10x64_float64 res_10x64 res_10x64_fixed res_20x64"
TABLE2_NETS="$TABLE2_NETS res_20x64_float64 agt_10x64 res_10x64_authors agt_10x64_authors"
TABLE2_NETS="$TABLE2_NETS res_20x64_authors"

table2_topology() {  # table2_topology NET: the topology file
    local net=${1%_float64}
    net=${net%_authors}
    echo "topologies/${net%_fixed}.yaml"
}

table2_dtype() {  # table2_dtype NET
    case $1 in *_float64) echo float64 ;; *) echo float32 ;; esac
}

# table2_sets NET: the --set options of every run of NET (EP and BP alike: BP ignores the
# dynamics). Only settings that passed the float64 study of converged phases are used
# (analysis/reports/converged_phases/README.md: per-edge cosine >= 0.999 and norm ratio within
# 5 % of the fully converged EP update, on fresh and on trained weights):
# - res_10x64: sweep, free tolerance 3e-5, nudged 1e-3 (45 + 26 / 43 + 27 steps on the study's
#   batch, fresh / trained), checked every 5 steps, step limits 1000 / 1000 as caps (the
#   settings of benchmarks/gpu_check.sh; its two seeds were started with them);
# - agt_10x64: sweep, 1e-4 / 1e-3 (11 + 13 / 15 + 16 steps), caps 100 / 50;
# - chain_10x64 and res_20x64: no tolerance that float32 can honour passes (a phase stops at
#   max(tolerance, 16 eps) = 1.9e-6 in float32; the chain needs 1e-8 / 1e-7, res_20x64 1e-8),
#   so they run the sweep with fixed steps (tolerance 0, as the files): chain 50 + 25 (min
#   cosine 1.000000 / 0.999999; 40 + 20 passes with less margin) against the shipped 100 + 50
#   synchronous steps, res_20x64 100 + 50 (1.000000 / 0.999999; 80 + 40 fails: 0.998) against
#   200 + 100. The chain's float64 control has the same dynamics, so that only the dtype differs.
# dynamics.execution is not set here: run_gpu.sh adds dynamics.execution=cuda-graph (EP's chunks
# of steps replayed as CUDA graphs, topo_ep/chunks.py), and `--resume` lets a run change its
# execution (the same steps), so a run moves between the CPU and a GPU.
table2_sets() {
    local sets="--set dynamics.schedule=sweep"
    local converged="--set dynamics.nudged_tolerance=1e-3"
    case $1 in
        res_10x64) sets="$sets $converged --set dynamics.tolerance=3e-5 --set dynamics.check_every=5
            --set dynamics.free_steps=1000 --set dynamics.nudged_steps=1000" ;;
        res_10x64_fixed) sets="" ;;  # the file's synchronous 100 + 50 steps
        agt_10x64_authors)  # and the authors' AGT links: every ordered pair on its own draw
            sets="--validation none --set training.error=accumulated
                --set training.readout_error=nudged --set generate.links=directed" ;;
        *_authors)  # the file's synchronous steps, the authors' graph-code nudge and readout
            sets="--validation none --set training.error=accumulated
                --set training.readout_error=nudged" ;;
        agt_10x64) sets="$sets $converged --set dynamics.tolerance=1e-4" ;;
        res_20x64 | res_20x64_float64)
            sets="$sets --set dynamics.free_steps=100 --set dynamics.nudged_steps=50" ;;
        chain_10x64 | chain_10x64_float64)
            sets="$sets --set dynamics.free_steps=50 --set dynamics.nudged_steps=25" ;;
        *) echo "table2_sets: unknown net $1" >&2; return 1 ;;
    esac
    echo "$sets"
}
