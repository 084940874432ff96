"""How well can any predictor rank subnets, given how noisy its accuracy labels are?

    python bench/label_noise.py --checkpoint runs/fmnist_f3 [--n 40] [--draws 2] [--eval-images 6000]
                                [--calib-images 8000]

Labels each of ``n`` stratified specs ``draws`` times, with independent calibration images,
keeping the per-image correctness on the held-out split. Run it at two ``--calib-images`` to see
what a calibration size costs in label noise and in the worst subnet's spread. From that it
measures the label noise (calibration part: same images, other calibration set; sampling part:
disjoint halves of the images) and the spread of the subnets' true accuracies, then simulates
the Kendall tau a PERFECT predictor would score against labels of this quality: the ceiling for
the predictor target.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qfa.nn.calibrate import DEFAULT_CALIB_IMAGES, calibrate  # noqa: E402
from qfa.nn.data import make_datasets, resize  # noqa: E402
from qfa.nn.evaluate import calib_batches, calib_seeds  # noqa: E402
from qfa.nas.predictor import strata_specs  # noqa: E402
from qfa.nn.supernet import Supernet  # noqa: E402


@torch.no_grad()
def correct(net: Supernet, spec, data, n_images: int) -> np.ndarray:
    out = []
    for x, y in DataLoader(data.subset(np.arange(min(n_images, len(data)))), batch_size=128):
        with net.active(spec):
            out.append((net(resize(x, spec.resolution)).argmax(1) == y).numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--eval-images", type=int, default=6000)
    ap.add_argument("--draws", type=int, default=2, help="calibration draws per subnet (>= 2)")
    ap.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.draws < 2:
        ap.error("--draws must be at least 2")
    net = Supernet.from_checkpoint(args.checkpoint)
    data = make_datasets(None, max(net.space.resolutions))
    specs = [s for _, s in strata_specs(net.space, args.n, seed=11)]
    c = np.zeros((args.draws, len(specs), min(args.eval_images, len(data["holdout"]))), bool)
    for i, spec in enumerate(specs):
        for k, seed in enumerate(calib_seeds(args.draws)):
            calibrate(net, spec, calib_batches(data["train"], args.calib_images, seed=seed), args.calib_images)
            net.eval()
            c[k, i] = correct(net, spec, data["holdout"], args.eval_images)
        print(f"\r{i + 1}/{len(specs)} labelled {args.draws} times", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    m = c.shape[2]
    acc = 100 * c.mean(axis=2)                       # (draws, n)
    half = m // 2
    h1, h2 = 100 * c[0, :, :half].mean(1), 100 * c[0, :, half:2 * half].mean(1)
    dev = acc - acc.mean(1, keepdims=True)            # a draw that moves every subnet alike ranks the same
    calib_sd = float(np.sqrt(np.var(dev, axis=0, ddof=1).mean()))     # per label, same images
    sample_sd_half = float(np.std(h1 - h2) / np.sqrt(2))              # per label of m/2 images
    sample_sd = sample_sd_half / np.sqrt(2)                            # per label of m images
    noise_sd = float(np.hypot(calib_sd, sample_sd))
    obs_var = float(np.var(acc.mean(0)))
    # the mean of the labelings: 1/draws of the calibration variance, all the sampling variance (same images)
    true_sd = float(np.sqrt(max(obs_var - calib_sd ** 2 / args.draws - sample_sd ** 2, 1e-9)))
    rng = np.random.default_rng(0)
    sims = [kendalltau(t := rng.normal(0, true_sd, 200), t + rng.normal(0, noise_sd, 200))[0] for _ in range(200)]
    spread = acc.max(0) - acc.min(0)                 # per subnet, over its draws
    res = {"subnets": len(specs), "draws": args.draws, "eval_images": m, "calib_images": args.calib_images,
           "median_spread": round(float(np.median(spread)), 3), "max_spread": round(float(spread.max()), 3),
           "label_sd_calibration": round(calib_sd, 3), "label_sd_sampling": round(sample_sd, 3),
           "label_sd": round(noise_sd, 3), "true_accuracy_sd": round(true_sd, 3),
           "tau_two_labelings": round(float(kendalltau(acc[0], acc[1])[0]), 3),
           "tau_ceiling_perfect_predictor": round(float(np.mean(sims)), 3),
           "images_for_tau_0.8": None}
    for n_img in (6000, 12000, 24000, 54000):  # what label size would let tau 0.8 be reached
        sd = np.hypot(calib_sd, sample_sd * np.sqrt(m / n_img))
        t = np.mean([kendalltau(v := rng.normal(0, true_sd, 200), v + rng.normal(0, sd, 200))[0] for _ in range(100)])
        res[f"tau_ceiling_at_{n_img}_images"] = round(float(t), 3)
        if res["images_for_tau_0.8"] is None and t >= 0.8:
            res["images_for_tau_0.8"] = n_img
    for k, v in res.items():
        print(f"{k:36s} {v}")
    print(f"largest spreads over {args.draws} draws (points): "
          + ", ".join(f"{spread[i]:.2f} (subnet {i}, {specs[i].resolution}px, "
                      f"{acc[:, i].min():.2f}-{acc[:, i].max():.2f}%)" for i in np.argsort(-spread)[:5]))
    print(f"labels: noise sd {noise_sd:.2f} vs true spread {true_sd:.2f} points; two labelings tau "
          f"{res['tau_two_labelings']:.2f}; a perfect predictor's tau ceiling "
          f"{res['tau_ceiling_perfect_predictor']:.2f}")
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
