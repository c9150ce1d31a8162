#!/bin/bash
# Table 2 (issue 13) on the CPU: chain_10x64, res_10x64, res_20x64 and agt_10x64 on full MNIST,
# 50 epochs, EP and BP seeds 0 and 1, and a float64 control of EP seed 0 of chain_10x64; each run
# an ordinary `topo-ep train` run under OUT/<net>/<method>_s<seed>, made by
# analysis/compare_methods.py (one call per net), which reuses finished runs and resumes
# interrupted ones. Each net's settings (--set options, dtype) come from settings.sh, shared with
# run_gpu.sh, so that a run moves between this machine and a lent GPU. The table:
# OUT/report.md and OUT/summary.json (analysis/table2_report.py), rewritten at the end of every
# call from whatever runs exist.
#
# Runs from a snapshot of this checkout's HEAD (git archive into OUT/code), so that later edits
# do not change a running table. Launch in the background, in a process group of its own (so
# that `kill -TERM -- -PID` stops run.sh, compare_methods and the training together; the
# training keeps its last finished epoch and the same command resumes it):
#   nohup setsid bash analysis/reports/table2/run.sh > /work/runs/table2.log 2>&1 &
# Settings: EPOCHS (50), OUT (/work/runs/table2), CODE (OUT/code: the snapshot folder), DATA
# (/work/shared/data/mnist), PY (this checkout's .venv/bin/python), DEVICE (cpu: named, so that
# config.yaml says where a run last trained), OMP_NUM_THREADS (1), LIMIT (unset: every training
# example; a number for dry runs), RUNS (default: all 17, see settings.sh): which NET:METHOD:SEED runs this
# process does. Two processes with disjoint RUNS share the two cores, e.g.
#   RUNS="res_20x64:ep:0 res_20x64:ep:1" nohup setsid bash run.sh > a.log 2>&1 &
#   RUNS="chain_10x64_float64:ep:0 chain_10x64:ep:0 ..." nohup setsid bash run.sh > b.log 2>&1 &
# (README.md gives the full split)
# (a run already training in the other process is refused by its lock, reported, and skipped).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
DATA=${DATA:-/work/shared/data/mnist}
OUT=${OUT:-/work/runs/table2}
EPOCHS=${EPOCHS:-50}
DEVICE=${DEVICE:-cpu}
CODE=${CODE:-$OUT/code}
if [ ! -d "$CODE" ]; then  # unpacked aside, then renamed: two processes started together
    mkdir -p "$CODE.$$"      # never see a half-written snapshot
    git -C "$REPO" archive HEAD | tar -x -C "$CODE.$$"
    git -C "$REPO" rev-parse HEAD > "$CODE.$$/COMMIT"
    mv -T "$CODE.$$" "$CODE" 2>/dev/null || rm -rf "$CODE.$$"
fi
cd "$CODE" || exit 1
# shellcheck source=settings.sh
. analysis/reports/table2/settings.sh
RUNS=${RUNS:-$TABLE2_RUNS}
export PYTHONPATH=$CODE
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LIMIT_ARGS=()
[ -n "${LIMIT:-}" ] && LIMIT_ARGS=(--limit "$LIMIT")
for run in $RUNS; do  # NET:METHOD:SEED, NET one of TABLE2_NETS
    case " $TABLE2_NETS " in *" ${run%%:*} "*) ;; *)
        echo "RUNS: $run: the net must be one of $TABLE2_NETS (NET:METHOD:SEED)" >&2; exit 2 ;;
    esac
done
echo "start $(date -Is) commit $(cat COMMIT); $(uptime)"
status=0
nets=$(for run in $RUNS; do echo "${run%%:*}"; done | awk '!seen[$0]++')
for net in $nets; do
    picked=()
    for run in $RUNS; do [ "${run%%:*}" = "$net" ] && picked+=("${run#*:}"); done
    # shellcheck disable=SC2046  # the --set options are words
    "$PY" analysis/compare_methods.py "$(table2_topology "$net")" --dataset mnist \
        --data-dir "$DATA" --epochs "$EPOCHS" --dtype "$(table2_dtype "$net")" \
        --device "$DEVICE" "${LIMIT_ARGS[@]}" --runs "${picked[@]}" $(table2_sets "$net") \
        --out "$OUT/$net" ||
        { echo "FAILED: $net ${picked[*]} (see above); going on"; status=1; }
done
"$PY" analysis/table2_report.py "$OUT" --epochs "$EPOCHS"
echo "end $(date -Is); $(uptime)"
exit $status
