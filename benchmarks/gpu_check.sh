#!/bin/sh
# The prepared GPU check of issue 2: which card, the device tests on CUDA, then one MNIST
# fre_2x512 EP epoch and one BP epoch on it, with their seconds (float32, batch 500).
#
# Usage (repository root, a machine with a CUDA GPU; topo-ep need not be installed):
#   sh benchmarks/gpu_check.sh DATA_DIR OUT_DIR
# DATA_DIR holds the MNIST IDX files. With the `device` tool, whose machine does not see
# ../shared, copy them into an ignored folder first and carry it:
#   mkdir -p .data && cp -r ../shared/data/mnist .data/ && echo /.data/ >> .git/info/exclude
#   run(command="sh benchmarks/gpu_check.sh .data/mnist $OUT", carry=[".data"], timeout_s=500)
set -eu
DATA=${1:-.data/mnist}
OUT=${2:-runs/gpu_check}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('card:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -m pytest -q -p no:cacheprovider tests/test_engine.py -k "any_torch_device"
for method in ep bp; do
    python3 -m topo_ep train topologies/fre_2x512.yaml --dataset mnist --data-dir "$DATA" \
        --epochs 1 --method "$method" --device cuda --quiet --out "$OUT/$method"
done
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {m: json.loads((out / m / "metrics.jsonl").read_text().splitlines()[-1]) for m in ("ep", "bp")}
print("| method | seconds / epoch | test acc |")
print("|---|---|---|")
for m, r in rows.items():
    print(f"| {m} | {r['seconds']:.2f} | {100 * r['test_acc']:.2f} |")
print(f"EP / BP time ratio: {rows['ep']['seconds'] / rows['bp']['seconds']:.2f}")
(out / "gpu_check.json").write_text(json.dumps(rows, indent=2))
PY
