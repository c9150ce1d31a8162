#!/bin/bash
# Code: topo-ep commit dd1662c (branch blocks), snapshot in /tmp/blocks/runcode (git archive).
set -e
cd /tmp/blocks/runcode
PY=/work/wt-blocks/.venv/bin/python
D=/work/shared/data/mnist
O=/work/runs/sparse_2x1024
echo "start $(date -Is) $(uptime)"
$PY analysis/compare_methods.py topologies/fre_2x512.yaml --dataset mnist --data-dir $D --epochs 1 --seeds 0 --out $O/fre_2x512_before
echo "fre before done $(date -Is) $(uptime)"
$PY analysis/compare_methods.py topologies/sparse_2x1024.yaml --dataset mnist --data-dir $D --epochs 10 --seeds 0 1 --out $O
echo "sparse done $(date -Is) $(uptime)"
$PY analysis/compare_methods.py topologies/fre_2x512.yaml --dataset mnist --data-dir $D --epochs 1 --seeds 0 --out $O/fre_2x512_after
echo "end $(date -Is) $(uptime)"
