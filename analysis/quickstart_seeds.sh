#!/usr/bin/env bash
# Train topologies/quickstart.yaml on digits with EP and BP for seeds 0 1 2 and tabulate the
# final-epoch test accuracy and the wall time of each run (OUT defaults to runs/quickstart_seeds).
# Usage: bash analysis/quickstart_seeds.sh [OUT].
set -euo pipefail
out=${1:-runs/quickstart_seeds}
mkdir -p "$out"
for seed in 0 1 2; do
  for method in ep bp; do
    start=$(date +%s.%N)
    topo-ep train topologies/quickstart.yaml --method "$method" --seed "$seed" --quiet \
      --out "$out/${method}_s${seed}" > "$out/${method}_s${seed}.log" 2>&1
    end=$(date +%s.%N)
    python - "$out/${method}_s${seed}/metrics.jsonl" "$method" "$seed" "$start" "$end" <<'PY'
import json, sys
path, method, seed, start, end = sys.argv[1:]
last = [json.loads(l) for l in open(path)][-1]
print(f"{method} seed {seed}: final test acc {100 * last['test_acc']:.2f} %, "
      f"val {100 * last['val_acc']:.2f} %, wall {float(end) - float(start):.1f} s")
PY
  done
done | tee "$out/summary.txt"
