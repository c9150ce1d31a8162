#!/bin/bash
# Table 2 (issue 13) on a lent GPU, inside a device lease: the runs of settings.sh train side by
# side on one CUDA device (SLOTS processes at a time, the longest first, a new one started as
# soon as one ends), with dynamics.execution=cuda-graph for EP. The run folders of earlier
# leases or of CPU runs, packed by pack.sh into TARBALLS/table2_runs_<net>.tar.gz, are unpacked
# first (a single TARBALLS/table2_runs.tar.gz of RUNS_DIR/<net>/ folders too) and resumed
# (`topo-ep train --resume` may change the device); finished runs are skipped.
# Every 20 s and at the end the run folders are packed into OUT/table2_runs_<net>.tar.gz (one
# per net: the device tool brings back at most 8 files of 16 MiB), so that what a lease cuts
# short still comes back. At the deadline (SECONDS_LEFT after the start) the runs still training
# get SIGTERM: each abandons the epoch in progress and keeps its last finished one (exit 143);
# one still alive 20 s later gets SIGKILL (its checkpoint is written atomically; ../lease.sh).
#
#   bash analysis/reports/table2/run_gpu.sh DATA_DIR OUT_DIR SECONDS_LEFT
#   DEVICE=cpu EPOCHS=1 LIMIT=500 RUNS="..." bash analysis/reports/table2/run_gpu.sh ...  # dry run
#
# Inside a lease (from the repository root here; .data is ignored through .git/info/exclude):
#   mkdir -p .data && cp -r /work/shared/data/mnist .data/
#   bash analysis/reports/table2/pack.sh /work/runs/table2 .data     # earlier runs, if any
#   run(command="bash analysis/reports/table2/run_gpu.sh .data/mnist $OUT 530",
#       carry=[".data"], timeout_s=590)
# Back here, unpack what came back over the CPU runs (a run must not train on both machines at
# once: stop run.sh first) and tabulate:
#   for t in FILES_AT/table2_runs_*.tar.gz; do tar -xzf "$t" -C /work/runs/table2; done
#   python analysis/table2_report.py /work/runs/table2 --epochs 50
#
# Settings: DEVICE (cuda), EPOCHS (50), SLOTS (4), RUNS (settings.sh's TABLE2_RUNS), LIMIT
# (unset), TARBALLS (.data), PYTHON (python3). OUT gets the tarballs, table2_gpu.log (the start
# and end of every run, with its epochs and seconds per epoch) and report.md (the table of the
# runs this lease holds).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=settings.sh
. "$HERE/settings.sh"
# shellcheck source=../lease.sh
. "$HERE/../lease.sh"
DATA=$1
EPOCHS=${EPOCHS:-50}
SLOTS=${SLOTS:-4}
TARBALLS=${TARBALLS:-.data}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RUNS=${RUNS:-$TABLE2_RUNS}
lease_begin "$2" "$3" table2_gpu.log
WORK=$(mktemp -d "${TMPDIR:-/tmp}/table2.XXXXXX")
echo "start $(date -Is), device $DEVICE, $EPOCHS epochs, $SLOTS side by side, deadline in" \
    "$3 s" >"$LOG"
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >>"$LOG"
for tarball in "$TARBALLS"/table2_runs*.tar.gz; do  # per net (pack.sh), or one of all
    [ -f "$tarball" ] || continue
    tar -xzf "$tarball" -C "$WORK" && echo "unpacked $tarball" >>"$LOG"
done

epochs_done() {  # epochs_done FOLDER
    if [ -f "$1/metrics.jsonl" ]; then grep -c . "$1/metrics.jsonl"; else echo 0; fi
}
pending=()
for run in $RUNS; do
    net=${run%%:*}
    rest=${run#*:}
    case " $TABLE2_NETS " in *" $net "*) ;; *)
        echo "RUNS: $run: the net must be one of $TABLE2_NETS" >>"$LOG"; continue ;;
    esac
    done_now=$(epochs_done "$WORK/$net/${rest%%:*}_s${rest##*:}")
    if [ "$done_now" -ge "$EPOCHS" ]; then
        echo "$run: finished ($done_now epochs), skipped" >>"$LOG"
    else
        pending+=("$run")
    fi
done

declare -A RUNNING=()  # pid -> run
launch() {  # launch NET:METHOD:SEED
    local net=${1%%:*} rest=${1#*:}
    local method=${rest%%:*} seed=${rest##*:}
    local folder="$WORK/$net/${method}_s$seed"
    local resume=()
    [ -f "$folder/checkpoint.pt" ] && resume=(--resume)
    mkdir -p "$WORK/$net"
    # shellcheck disable=SC2046  # the --set options are words
    "$PY" -m topo_ep train "$(table2_topology "$net")" --dataset mnist --data-dir "$DATA" \
        --method "$method" --seed "$seed" --epochs "$EPOCHS" --dtype "$(table2_dtype "$net")" \
        --device "$DEVICE" --quiet "${LIMIT_ARGS[@]}" "${resume[@]}" $(table2_sets "$net") \
        --set dynamics.execution=cuda-graph --out "$folder" >>"$WORK/$net/${method}_s$seed.log" 2>&1 &
    RUNNING[$!]=$1
    echo "$(date +%T) start $1 ($(epochs_done "$folder") epochs done${resume:+, resumed})" >>"$LOG"
}
reap() {  # forget the runs that ended, logging their exit status
    local pid code
    for pid in "${!RUNNING[@]}"; do
        kill -0 "$pid" 2>/dev/null && continue
        wait "$pid"
        code=$?
        echo "$(date +%T) end ${RUNNING[$pid]} (exit $code)" >>"$LOG"
        unset "RUNNING[$pid]"
    done
}
pack() {
    bash "$HERE/pack.sh" "$WORK" "$OUT" 2>>"$LOG"
}

next=0
last_pack=$(date +%s)
while :; do
    reap
    while [ "${#RUNNING[@]}" -lt "$SLOTS" ] && [ "$next" -lt "${#pending[@]}" ] &&
        ! lease_past_deadline; do
        launch "${pending[$next]}"
        next=$((next + 1))
    done
    [ "${#RUNNING[@]}" = 0 ] && break
    if lease_past_deadline; then
        lease_stop "${!RUNNING[@]}"
        reap
        break
    fi
    if [ $(($(date +%s) - last_pack)) -ge 20 ]; then
        pack
        last_pack=$(date +%s)
    fi
    sleep 2
done
[ "$next" -lt "${#pending[@]}" ] && echo "not started: ${pending[*]:$next}" >>"$LOG"
pack
"$PY" "$PWD/analysis/table2_report.py" "$WORK" --epochs "$EPOCHS" >/dev/null 2>>"$LOG" &&
    cp "$WORK/report.md" "$OUT/report.md"
{
    echo "== per run: epochs done, last line of its log"
    for folder in "$WORK"/*/*_s*/; do
        [ -d "$folder" ] || continue
        echo "$(basename "$(dirname "$folder")")/$(basename "$folder"): $(epochs_done "$folder") epochs"
        tail -n 1 "${folder%/}.log" 2>/dev/null
    done
    echo "end $(date -Is)"
} >>"$LOG"
cat "$LOG" "$OUT/report.md" 2>/dev/null
