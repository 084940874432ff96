"""ONNX -> onnx2tf -> calibrated full-int8 .tflite, offline: the path most users take today,
offered for comparison (it re-calibrates every scale) and for users' own ONNX models."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["onnx2tf_int8", "onnx2tf_convert", "Onnx2tfError"]

# onnx2tf always tries to download this sample file unless one of that name is present
_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


class Onnx2tfError(RuntimeError):
    """onnx2tf failed (its last message is kept)."""


def onnx2tf_int8(onnx_bytes: bytes, calib_nhwc: np.ndarray, timeout: float = 600,
                 variant: str = "full_integer_quant") -> bytes:
    """Convert with onnx2tf, calibrating int8 on ``calib_nhwc`` (real-valued, normalised NHWC
    images, as the model's input takes them). Returns the full-integer .tflite (int8 I/O), or
    another of the variants it writes (``variant="float32"``: the float baseline)."""
    return onnx2tf_convert(onnx_bytes, calib_nhwc, (variant,), timeout)[variant]


def onnx2tf_convert(onnx_bytes: bytes, calib_nhwc: np.ndarray, variants: tuple[str, ...],
                    timeout: float = 600) -> dict[str, bytes]:
    """One onnx2tf run (float32, and full-integer int8 calibrated on ``calib_nhwc``, per-channel
    weights, int8 I/O): the .tflite bytes of each of ``variants`` (``float32``,
    ``full_integer_quant``, ...: onnx2tf's file suffixes)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "model.onnx").write_bytes(onnx_bytes)
        np.save(d / "calib.npy", np.ascontiguousarray(calib_nhwc, np.float32))
        np.save(d / _SAMPLE, np.zeros((20, 128, 128, 3), np.float32))
        c = calib_nhwc.shape[-1]
        zeros, ones = "[" + ",".join(["0.0"] * c) + "]", "[" + ",".join(["1.0"] * c) + "]"
        cmd = [sys.executable, "-m", "onnx2tf", "-i", "model.onnx", "-o", "out", "-oiqt", "-qt", "per-channel",
               "-cind", "input", "calib.npy", zeros, ones, "-iqd", "int8", "-oqd", "int8", "-n"]
        r = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=timeout)
        outs = {v: d / "out" / f"model_{v}.tflite" for v in variants}
        if r.returncode != 0 or not all(p.exists() for p in outs.values()):
            lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
            raise Onnx2tfError(f"onnx2tf failed: {lines[-1] if lines else 'no output'}")
        return {v: p.read_bytes() for v, p in outs.items()}
