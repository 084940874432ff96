"""`qfa run --data` on an RGB ImageFolder made from real Fashion-MNIST images: K of its classes,
each image given a random colour tint (so colour says nothing of the class) and saved at
another size, plus a few corrupt files; then the whole flow (train the fitted space's
supernet, profile this host for it, label, search, export, verify) and the shipped file's test
top-1 against chance.

    python bench/own_data.py --classes 5 --per-class 2000 --out /tmp/own -- \
        --set float.epochs=3 --set stage0.epochs=1 --set stage1.epochs=3   # 36 min on the 2-core Zen 4 host
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qfa.nn.data import load_fashion_mnist  # noqa: E402


def write_folder(root: Path, classes: int, per_class: int, val_per_class: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, src, n in (("train", "train", per_class), ("val", "test", val_per_class)):
        images, labels = load_fashion_mnist(src)
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(labels == c)[:n]:
                tint = rng.uniform(0.2, 1.0, size=3)
                rgb = (images[i].astype(np.float32)[..., None] * tint).astype(np.uint8)
                Image.fromarray(rgb, "RGB").resize((size, size), Image.BILINEAR).save(d / f"{i}.png")
    (root / "train" / "class_0" / "broken.png").write_bytes(b"not an image")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--per-class", type=int, default=2000, help="training images per class")
    ap.add_argument("--val-per-class", type=int, default=500)
    ap.add_argument("--size", type=int, default=40, help="side of the saved images (px)")
    ap.add_argument("--out", default="/tmp/qfa-own-data")
    ap.add_argument("--write-only", action="store_true", help="only write the image folder (ROOT = OUT/images)")
    ap.add_argument("qfa_run_args", nargs="*", help="extra `qfa run` arguments (after --)")
    args = ap.parse_args()
    out = Path(args.out)
    root, run = out / "images", out / "run"
    if not (root / "val").is_dir():
        write_folder(root, args.classes, args.per_class, args.val_per_class, args.size)
    if args.write_only:
        return
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "qfa", "run", "--data", str(root), "--run", str(run), "--json",
                        *args.qfa_run_args], stdout=subprocess.PIPE, text=True)
    wall = time.time() - t
    if not (run / "summary.json").exists():
        sys.exit(f"qfa run failed (exit {r.returncode})")
    s = json.loads((run / "summary.json").read_text())  # written even when the file measures over budget
    if r.returncode:
        print(f"qfa run exited {r.returncode} (see its last line above)")
    side = json.loads((run / "model.json").read_text())
    print(f"{args.classes} classes x {args.per_class} RGB {args.size}px training images, chance {100 / args.classes:.1f}%")
    print(f"space {json.loads((run / 'space.json').read_text())['name']}, shipped {s['spec']}")
    print(f"test top-1 ({side['input']['shape_nhwc']}): TFLite {s['tflite_top1_test']:.2f}%, as deployed in PyTorch "
          f"{s['deployed_top1_test']:.2f}% (agreement {s['deployed_agreement']:.2f}%), fake-quant "
          f"{s['pytorch_top1_test']:.2f}% (agreement {s['agreement']:.2f}%); latency predicted "
          f"{s.get('predicted_latency_ms')} ms, measured {s.get('measured_latency_ms')} ms; wall {wall:.0f} s")
    print(json.dumps({"timings": s["timings"], "budget_ms": s["budget_ms"], "runtime": s["runtime"]}))


if __name__ == "__main__":
    main()
