#!/usr/bin/env bash
# A longer fmnist supernet run on a lent GPU (batch 256, lr scaled x4, 7 epochs in all), resumable:
# checkpoints land in $OUT/run, so a run cut off by the time limit can be continued with --resume.
# Usage: OUT=/some/dir QFA_FMNIST_DIR=... bash bench/gpu_train.sh
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/qfa_gpu}; mkdir -p "$OUT"
nvidia-smi -L
timeout "${BUDGET_S:-470}" python3 -m qfa train fmnist --out "$OUT/run" --device cuda \
  --set batch_size=256 --set workers=8 --set ckpt_every=100 --set eval_images=5000 \
  --set float.epochs=3 --set float.lr=0.2 --set stage0.epochs=1 --set stage0.lr=0.04 \
  --set stage1.epochs=3 --set stage1.lr=0.04 2>&1 | tr '\r' '\n' | awk 'NR%50==0 || !/step\/s|s\/step/' | tail -40
cat "$OUT/run/metrics.csv" 2>/dev/null
# stage files are hard links of last.pt, which the device transfer skips: hand back plain copies
for f in "$OUT"/run/*.pt; do cp "$f" "$f.tmp" && rm -f "$f" && mv "$f.tmp" "$f"; done
rm -f "$OUT/run/stage_stage0.pt"
