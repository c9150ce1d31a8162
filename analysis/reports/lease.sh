# Sourced (bash) by the scripts that train inside a device lease (conv_mnist/run_gpu.sh,
# conv_mnist/screen_gpu.sh, table2/run_gpu.sh): what they share. A lease returns only what is
# under its $OUT when the command ends or is cut, so a script packs its run folders there every
# 20 s, and stops its trainings itself before the lease's limit: SIGTERM (a training abandons the
# epoch in progress and keeps its last finished one, exit 143), then SIGKILL 20 s later (its
# checkpoint is written atomically). The runs resume with `topo-ep train --resume`, which may
# change the device.

# lease_begin OUT SECONDS_LEFT LOGNAME: sets OUT (absolute, created), DEADLINE (epoch seconds),
# LOG (OUT/LOGNAME), PY (PYTHON, default python3), DEVICE (default cuda), LIMIT_ARGS (--limit
# LIMIT when LIMIT is set: dry runs) and exports PYTHONPATH (this checkout) and PYTHONUNBUFFERED.
lease_begin() {
    mkdir -p "$1"
    OUT=$(cd "$1" && pwd)
    DEADLINE=$(($(date +%s) + $2))
    LOG="$OUT/$3"
    PY=${PYTHON:-python3}
    DEVICE=${DEVICE:-cuda}
    LIMIT_ARGS=()
    [ -n "${LIMIT:-}" ] && LIMIT_ARGS=(--limit "$LIMIT")
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
}

# lease_pack DIR TARBALL: DIR's contents into TARBALL, through a .part file renamed at the end
# (a lease cut mid-write leaves the previous tarball whole).
lease_pack() {
    if tar -czf "$2.part" -C "$1" .; then
        mv "$2.part" "$2"
    else
        rm -f "$2.part"
        return 1
    fi
}

# lease_past_deadline: true once DEADLINE has come.
lease_past_deadline() {
    [ "$(date +%s)" -ge "$DEADLINE" ]
}

# lease_stop PID...: SIGTERM, then SIGKILL to any still alive LEASE_GRACE seconds (20) later;
# logs both to LOG.
lease_stop() {
    [ $# -gt 0 ] || return 0
    echo "$(date +%T) deadline: SIGTERM to the $# runs still training" >>"$LOG"
    kill -TERM "$@" 2>/dev/null
    local pid alive
    for _ in $(seq "${LEASE_GRACE:-20}"); do
        alive=()
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        [ ${#alive[@]} = 0 ] && return 0
        sleep 1
    done
    echo "$(date +%T) SIGKILL to ${alive[*]}" >>"$LOG"
    kill -KILL "${alive[@]}" 2>/dev/null
}

# lease_wait PACK_COMMAND PID...: until every PID has ended, or the deadline (then lease_stop
# them), run PACK_COMMAND (a function name) every LEASE_PACK_EVERY seconds (20); once more at
# the end.
lease_wait() {
    local pack=$1 pid running
    shift
    while :; do
        running=()
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && running+=("$pid"); done
        [ ${#running[@]} = 0 ] && break
        if lease_past_deadline; then
            lease_stop "${running[@]}"
            break
        fi
        "$pack"
        sleep "${LEASE_PACK_EVERY:-20}"
    done
    wait
    "$pack"
}
