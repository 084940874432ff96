#!/usr/bin/env bash
# Activation-quantizer ablation: BatchQuant vs MinMax-EMA vs LSQ, the same recipe and budget,
# all three starting from the same float supernet (a finished fmnist run's float stage).
# Usage: bash bench/ablation.sh RUN_WITH_FLOAT_STAGE [STAGE0_EPOCHS STAGE1_EPOCHS]
set -euo pipefail
float_ckpt="$1/stage_float.pt"
e0=${2:-0.8}; e1=${3:-1.9}
[ -f "$float_ckpt" ] || { echo "ablation: $float_ckpt not found (train fmnist first)" >&2; exit 2; }
for q in bq minmax lsq; do
  out="runs/ablation_${q}_${e0}_${e1}"
  if [ -f "$out/stage_stage1.pt" ]; then echo "$out: done"; continue; fi
  resume=""; [ -f "$out/last.pt" ] && resume="--resume"
  python -m qfa train fmnist --out "$out" --init-float "$float_ckpt" --act-quant "$q" $resume \
    --set "stage0.epochs=$e0" --set "stage1.epochs=$e1" --set eval_images=0
done
python bench/supernet_accuracy.py runs/ablation_bq_${e0}_${e1} runs/ablation_minmax_${e0}_${e1} \
  runs/ablation_lsq_${e0}_${e1} --random 0 --bits 3,2
