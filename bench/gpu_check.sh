#!/usr/bin/env bash
# The GPU measurements of the training issue, as one short script (run on a lent GPU machine):
# paper-preset step throughput at batch 64 x 6 subnets (r128..224), fp32 and bf16+channels-last,
# quantized vs float; then a short real fmnist training run on the GPU.
# Usage: OUT=/some/dir bash bench/gpu_check.sh   (QFA_FMNIST_DIR must point at the Fashion-MNIST files)
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/qfa_gpu}; mkdir -p "$OUT"
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
# NOTE: --channels-last measured 26-73 s a step on an H100 (torch 2.11) for this model: left out.
python3 bench/train_step.py --space paper --device cuda --batch 64 --steps 6 --warmup 2 --json | tee "$OUT/paper_fp32.json"
python3 bench/train_step.py --space paper --device cuda --batch 64 --steps 6 --warmup 2 --amp --json | tee "$OUT/paper_bf16.json"
python3 bench/train_step.py --space fmnist --device cuda --batch 64 --steps 20 --warmup 5 --json | tee "$OUT/fmnist_fp32.json"
timeout 150 python3 -m qfa train fmnist --out "$OUT/run" --device cuda --max-steps 600 \
  --set eval_images=2000 --set "float.epochs=0.5" --set "stage0.epochs=0.1" --set "stage1.epochs=0.2" 2>&1 | tr '\r' '\n' | grep -v '^train: .*[0-9]/' | tail -5
cat "$OUT/run/metrics.csv" 2>/dev/null; rm -f "$OUT/run/last.pt"
