"""Predictor quality against label count, per encoding and model.

    python bench/predictor.py runs/fmnist_f3/predictor_data.csv [--sizes 100 200 400] [--mlp]

One fixed 20% of the labelled subnets is held out (never trained on); each model is fitted on
the first N of the rest and scored on it: Kendall tau, Spearman rho and RMSE (points). The
encodings are those ``qfa.predictor.features`` reads; the models are ``qfa.predictor.models()``
(the MLP only with --mlp). Which of them ``qfa predictor fit`` picks is decided by
cross-validation on the training subnets alone; this script shows the whole grid, and so how
much more labels would buy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qfa.predictor import _BY_RESOLUTION, _forward, cost_features, features, load_rows, models  # noqa: E402
from qfa.space import SearchSpace, get_space  # noqa: E402


def main() -> None:
    from scipy.stats import kendalltau, spearmanr
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="label CSV (qfa predictor collect)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--mlp", action="store_true", help="also the MLP (slower: seconds per fit)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = load_rows(args.data)
    if not rows:
        sys.exit(f"error: no labelled subnets in {args.data}")
    space: SearchSpace = get_space(json.loads(rows[0]["spec"])["space"])
    g = np.stack([space.encode(space.parse(r["spec"])) for r in rows])
    y = np.array([float(r["top1"]) for r in rows])
    perm = np.random.default_rng(args.seed).permutation(len(y))
    n_val = len(y) // 5
    val, pool = perm[:n_val], perm[n_val:]
    sizes = sorted({n for n in args.sizes if n < len(pool)} | {len(pool)})
    candidates = {k: v for k, v in models(seed=args.seed).items() if args.mlp or not k.startswith("mlp")}
    print(f"{len(y)} labelled subnets ({Path(args.data).name}), {n_val} held out; "
          f"label sd {y[val].std():.2f} points on them")
    print("Kendall tau / Spearman rho / RMSE on the held-out subnets, by training labels:")
    print(f"{'encoding':20s} {'model':19s} " + " ".join(f"{n:>17d}" for n in sizes))
    cfs = {n: cost_features(space, g[pool[:n]]) for n in sizes}  # standardised on each training prefix
    for enc in _BY_RESOLUTION:
        xs = {n: features(space, g, cf.mean(0), cf.std(0) + 1e-6, enc) for n, cf in cfs.items()}
        for name, make in candidates.items():
            cells = []
            for n in sizes:
                tr, x = pool[:n], xs[n]
                m, s = y[tr].mean(), y[tr].std() + 1e-6
                p = _forward(make(x[tr], (y[tr] - m) / s), x[val]) * s + m
                cells.append(f"{kendalltau(p, y[val])[0]:.3f}/{spearmanr(p, y[val])[0]:.3f}/"
                             f"{np.sqrt(np.mean((p - y[val]) ** 2)):.2f}")
            print(f"{enc:20s} {name:19s} " + " ".join(f"{c:>17s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
