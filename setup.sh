#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine with Python 3.11: system packages, the pinned
# Python dependency set and this toolkit (editable). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)  # torch.compile's C++ backend (fused quantizers)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
echo "[setup] pip install -r requirements.txt"
$PY -m pip install -q --disable-pip-version-check -r requirements.txt
# onnx2tf and tf-keras declare `tensorflow`; with tensorflow-cpu they must come without deps.
$PY -m pip install -q --disable-pip-version-check --no-deps onnx2tf==1.29.24 tf-keras==2.19.0
$PY -m pip install -q --disable-pip-version-check --no-deps -e .
echo "[setup] done: $($PY -c 'import qfa, torch, tensorflow as tf; print("qfa", qfa.__version__, "torch", torch.__version__, "tf", tf.__version__)' 2>/dev/null)"
