#!/usr/bin/env bash
# Data-parallel scaling on one GPU node: extraction and scan on 1, 2, 4, ... N GPUs (nccl).
#
#   benchmarks/distributed_gpu.sh [MODEL] [MAX_GPUS]
#     MODEL     model name or folder (default: the offline default model; a folder from
#               benchmarks/random_weights_model.py works without the model file)
#     MAX_GPUS  default: every visible GPU
#   env: OUT (default bench-gpu), EMOTIONS (default 6 core emotions), MAX_TEXTS (default 32),
#        SCAN_COPIES (copies of the bundled mixed collection to scan, default 40 = 22,880 texts)
#
# Each run is the real CLI under torchrun; the extraction time is the CLI's own figure (model
# load excluded); every registry is compared with the 1-GPU one. Writes $OUT/scaling.json.
# Prepared for a GPU node; not run on the 2-core CPU machine this project is developed on.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=${1:-}
NGPU=$(${PY} -c "import torch; print(torch.cuda.device_count())")
MAX=${2:-$NGPU}
OUT=${OUT:-bench-gpu}
EMOTIONS=${EMOTIONS:-happy,sad,afraid,angry,calm,desperate}
MAX_TEXTS=${MAX_TEXTS:-32}
SCAN_COPIES=${SCAN_COPIES:-40}
if [ "$NGPU" -lt 1 ]; then echo "no CUDA device visible" >&2; exit 1; fi
mkdir -p "$OUT"
MODEL_ARGS=()
[ -n "$MODEL" ] && MODEL_ARGS=(--model "$MODEL")
${PY} - "$OUT/scan.jsonl" "$SCAN_COPIES" <<'PY'
import json, sys
from emolens.stimuli import load_mixed_texts
texts = load_mixed_texts()
with open(sys.argv[1], "w") as f:
    for c in range(int(sys.argv[2])):
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
PY
SIZES=()
n=1
while [ "$n" -le "$MAX" ]; do SIZES+=("$n"); n=$((n * 2)); done
[ "${SIZES[-1]}" -ne "$MAX" ] && SIZES+=("$MAX")
for n in "${SIZES[@]}"; do
  echo "== $n GPU(s)"
  /usr/bin/time -v -o "$OUT/extract-$n.time" \
    ${PY} -m torch.distributed.run --standalone --nproc-per-node "$n" -m emolens extract \
      "${MODEL_ARGS[@]}" --emotions "$EMOTIONS" --max-texts-per-emotion "$MAX_TEXTS" \
      --out "$OUT/reg-$n" --quiet | tee "$OUT/extract-$n.log"
  /usr/bin/time -v -o "$OUT/scan-$n.time" \
    ${PY} -m torch.distributed.run --standalone --nproc-per-node "$n" -m emolens scan \
      "${MODEL_ARGS[@]}" --data "$OUT/scan.jsonl" --registry "$OUT/reg-1" --out "$OUT/scan-$n" \
      --batch-size 64 --quiet | tail -1 | tee "$OUT/scan-$n.log"
done
${PY} - "$OUT" "${SIZES[@]}" <<'PY'
import json, re, sys
from pathlib import Path
import emolens
out, sizes = Path(sys.argv[1]), [int(x) for x in sys.argv[2:]]
ref = emolens.EmotionRegistry.load(out / "reg-1")
rows = {}
for n in sizes:
    reg = emolens.EmotionRegistry.load(out / f"reg-{n}")
    ex = float(re.search(r"extract ([0-9.]+) s", (out / f"extract-{n}.log").read_text()).group(1))
    sc = float(re.search(r"scan ([0-9.]+) s", (out / f"scan-{n}.log").read_text()).group(1))
    peak = max(int(m) for m in re.findall(r"Maximum resident set size \(kbytes\): (\d+)",
                                          (out / f"scan-{n}.time").read_text()))
    rows[n] = {"extract_s": ex, "scan_s": sc, "scan_peak_rss_mb": round(peak / 1024, 1),
               "max_abs_diff_vs_1": float((reg.tensor() - ref.tensor()).abs().max()),
               "validation_equal": reg.validation.get("confusion_best_layer")
               == ref.validation.get("confusion_best_layer")}
for n in sizes:
    rows[n]["extract_speedup"] = round(rows[1]["extract_s"] / rows[n]["extract_s"], 3)
    rows[n]["scan_speedup"] = round(rows[1]["scan_s"] / rows[n]["scan_s"], 3)
(out / "scaling.json").write_text(json.dumps(rows, indent=2))
print(json.dumps(rows, indent=2))
PY
