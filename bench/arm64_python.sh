#!/bin/bash
# An emulated arm64 Python with ai-edge-litert, to run .tflite files on ARM's kernels (NEON
# builds of XNNPACK and the builtin kernels) on an x86-64 Debian 12 host, bit-exactly, ~100x slower:
#   bash bench/arm64_python.sh DIR        # then DIR/python (ARM_CPU=cortex-a72 by default, a Raspberry Pi 4)
# Used by bench/runtime_fidelity.py --python DIR/python and, with QFA_ARM64_PYTHON=DIR/python, by
# tests/test_simulate.py. Needs root (apt-get); adds dpkg's foreign architecture arm64 but installs
# no arm64 package: they are downloaded and unpacked into DIR/root, run by qemu-user with -L.
set -euo pipefail
A=$(realpath -m "${1:?usage: arm64_python.sh DIR}")
PIP=${PIP:-$(dirname "$0")/../.venv/bin/pip}
mkdir -p "$A/debs" "$A/root" "$A/wheels" "$A/site"
apt-get update -q
apt-get install -y -q qemu-user
dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64; apt-get update -q; }
# the runtime closure of python3.11:arm64 and libstdc++6 on Debian 12
PKGS="libc6 libgcc-s1 gcc-12-base libstdc++6 libgomp1 zlib1g libbz2-1.0 liblzma5 libcrypt1 libdb5.3
 libexpat1 libffi8 libssl3 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libuuid1 libnsl2 libtirpc3
 libgssapi-krb5-2 libk5crypto3 libkrb5-3 libkrb5support0 libkeyutils1 libcom-err2
 libpython3.11-minimal libpython3.11-stdlib python3.11-minimal python3.11"
(cd "$A/debs" && apt-get download -q $(for p in $PKGS; do echo "$p:arm64"; done) media-types libtirpc-common)
for d in "$A"/debs/*.deb; do dpkg-deb -x "$d" "$A/root"; done
# aarch64 wheels of the versions the project pins, unpacked (no pip run under emulation)
"$PIP" download -q --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
  --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 --platform any \
  --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
  --no-deps -d "$A/wheels" ai-edge-litert==2.1.0 numpy==1.26.4 flatbuffers==25.12.19 \
  backports.strenum==1.2.8 tqdm==4.70.1 typing-extensions==4.16.0 protobuf==4.25.5
for w in "$A"/wheels/*.whl; do python3 -m zipfile -e "$w" "$A/site"; done
cat > "$A/python" <<WRAP
#!/bin/sh
# arm64 CPython 3.11 + ai-edge-litert 2.1.0 under qemu-user; CPU model ARM_CPU (qemu-aarch64 -cpu help)
export PYTHONPATH="$A/site\${PYTHONPATH:+:\$PYTHONPATH}"
exec qemu-aarch64 -cpu "\${ARM_CPU:-cortex-a72}" -L "$A/root" "$A/root/usr/bin/python3.11" "\$@"
WRAP
chmod +x "$A/python"
"$A/python" -c "import platform; from ai_edge_litert.interpreter import Interpreter; print(platform.machine())"
