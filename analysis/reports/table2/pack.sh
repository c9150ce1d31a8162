#!/bin/bash
# Pack the Table 2 run folders of RUNS_DIR (RUNS_DIR/<net>/...) into one tarball per net,
# DEST/table2_runs_<net>.tar.gz (written to a .part file, then renamed: a reader never sees a
# half-written tarball). One per net because the device tool brings back files of at most
# 16 MiB: the 17 runs' checkpoints (weights and Adam state) come to about 25 MB.
#
#   bash analysis/reports/table2/pack.sh /work/runs/table2 .data   # before a GPU lease
# Unpack with: for t in DEST/table2_runs_*.tar.gz; do tar -xzf "$t" -C RUNS_DIR; done
set -u
RUNS_DIR=$1
DEST=$2
mkdir -p "$DEST"
status=0
for folder in "$RUNS_DIR"/*/; do
    net=$(basename "$folder")
    case $net in code | code_* | code.*) continue ;; esac  # run.sh's snapshots of the code
    tarball="$DEST/table2_runs_$net.tar.gz"
    if tar -czf "$tarball.part" -C "$RUNS_DIR" "$net"; then
        mv "$tarball.part" "$tarball"
    else
        rm -f "$tarball.part"
        status=1
    fi
done
exit $status
