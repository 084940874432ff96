#!/usr/bin/env bash
# Activation-quantizer ablation: BatchQuant vs MinMax-EMA vs LSQ, the same recipe and budget,
# all three starting from the same float supernet (a finished fmnist run's float stage).
# Usage: bash bench/ablation.sh RUN_WITH_FLOAT_STAGE [STAGE0_EPOCHS STAGE1_EPOCHS]
set -euo pipefail
float_ckpt="$1/stage_float.pt"
e0=${2:-0.6}; e1=${3:-2.0}   # the shipped fmnist preset's precision stages
[ -f "$float_ckpt" ] || { echo "ablation: $float_ckpt not found (train fmnist first)" >&2; exit 2; }
# a BatchQuant run of this very budget is the BQ row itself (same float stage, same precision epochs)
same=$(python -c "import json,sys; c=json.load(open(sys.argv[1]))
e={s['name']: float(s['epochs']) for s in c['stages']}
print(int(c['act_quant'] == 'bq' and e.get('stage0') == float(sys.argv[2]) and e.get('stage1') == float(sys.argv[3])))" \
  "$1/config.json" "$e0" "$e1" 2>/dev/null || echo 0)
if [ "$same" = 1 ] && [ -f "$1/stage_stage1.pt" ] && [ ! -e "runs/ablation_bq_${e0}_${e1}" ]; then
  ln -s "$(realpath "$1")" "runs/ablation_bq_${e0}_${e1}"
fi
for q in bq minmax lsq; do
  out="runs/ablation_${q}_${e0}_${e1}"
  if [ -f "$out/stage_stage1.pt" ]; then echo "$out: done"; continue; fi
  resume=""; [ -f "$out/last.pt" ] && resume="--resume"
  python -m qfa train fmnist --out "$out" --init-float "$float_ckpt" --act-quant "$q" $resume \
    --set "stage0.epochs=$e0" --set "stage1.epochs=$e1" --set eval_images=0
done
python bench/supernet_accuracy.py runs/ablation_bq_${e0}_${e1} runs/ablation_minmax_${e0}_${e1} \
  runs/ablation_lsq_${e0}_${e1} --random 0 --bits 3,2
