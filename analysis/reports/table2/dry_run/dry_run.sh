#!/bin/bash
# The CPU dry run of the Table 2 scripts (final settings): A) run_gpu.sh, 1 epoch, every run to
# its end; B) run_gpu.sh resumes A's tarballs for a 2nd epoch and is cut by its deadline (SIGTERM);
# C) run.sh (compare_methods) resumes B's runs on the CPU and finishes the 2nd epoch.
set -u
cd /work/wt-table2
. .venv/bin/activate
D=/tmp/t2dry2
rm -rf $D && mkdir -p $D/C
export RUNS="res_20x64:ep:0 chain_10x64_float64:ep:0 res_10x64:ep:0 agt_10x64:bp:0"
DEVICE=cpu EPOCHS=1 LIMIT=500 SLOTS=2 TARBALLS=$D/none PYTHON=$(which python) \
    bash analysis/reports/table2/run_gpu.sh /work/shared/data/mnist $D/A 400 > $D/A.out 2>&1
DEVICE=cpu EPOCHS=2 LIMIT=500 SLOTS=2 TARBALLS=$D/A PYTHON=$(which python) \
    bash analysis/reports/table2/run_gpu.sh /work/shared/data/mnist $D/B 30 > $D/B.out 2>&1
for t in $D/B/table2_runs_*.tar.gz; do tar -xzf "$t" -C $D/C; done
OUT=$D/C EPOCHS=2 LIMIT=500 bash analysis/reports/table2/run.sh > $D/C.out 2>&1
echo "exit C: $?" >> $D/C.out
