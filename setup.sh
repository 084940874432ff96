#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine: system packages, then a virtual environment
# `.venv` (PEP 668: the system Python refuses pip) with the pinned Python dependency set and this
# toolkit (editable). Safe to re-run: an existing .venv is reused.
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
PY=${PYTHON:-python3}
VENV=${QFA_VENV:-.venv}
need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)  # torch.compile's C++ backend (fused quantizers)
# Debian splits venv and ensurepip out of the interpreter; probe for both.
if [ ! -x "$VENV/bin/python" ] && ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need_apt+=("python3-venv")
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] $PY -m venv $VENV"
  "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
echo "[setup] pip install -r requirements.txt (into $VENV)"
"${pip[@]}" -r requirements.txt
# onnx2tf and tf-keras declare `tensorflow`; with tensorflow-cpu they must come without deps.
"${pip[@]}" --no-deps onnx2tf==1.29.24 tf-keras==2.19.0
"${pip[@]}" --no-deps -e .
echo "[setup] done: $("$VENV/bin/python" -c 'import qfa, torch, tensorflow as tf; print("qfa", qfa.__version__, "torch", torch.__version__, "tf", tf.__version__)' 2>/dev/null)"
echo "[setup] run the toolkit as $VENV/bin/qfa, or 'source $VENV/bin/activate' first"
