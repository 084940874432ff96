"""Predictor quality against label count, per encoding, target and model.

    python bench/predictor.py runs/fmnist_f3/predictor_data.csv [--sizes 100 200 400] [--mlp]
                              [--encodings split+res+cost/3 ...] [--targets top1 inverse_error]
                              [--label-sd 0.28]

One fixed 20% of the labelled subnets is held out (never trained on); each model is fitted on
the first N of the rest and scored on it: Kendall tau, Spearman rho and RMSE (points). The
encodings are those ``qfa.nas.predictor.features`` reads (ENCODINGS), the targets what a model is
fitted to (RESPONSES: top-1 or -1/error); the models are ``qfa.nas.predictor.models()``
(the MLP only with --mlp). Which of them ``qfa predictor fit`` picks is decided by
cross-validation on the training subnets alone; this script shows the whole grid, and so how
much more labels would buy. With ``--label-sd`` (the label noise that bench/label_noise.py
measures) it also prints what tau these held-out subnets allow at all: the labels themselves,
ranked against labels with that much more noise. Their spread includes one helping of noise
already, so this bounds a perfect predictor's tau from ABOVE.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qfa.nas.predictor import ENCODINGS, RESPONSES, _forward, cost_features, features, load_rows, models  # noqa: E402
from qfa.core.space import SearchSpace, get_space  # noqa: E402


def main() -> None:
    from scipy.stats import kendalltau, spearmanr
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="label CSV (qfa predictor collect)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--mlp", action="store_true", help="also the MLP (slower: seconds per fit)")
    ap.add_argument("--encodings", nargs="+", choices=list(ENCODINGS), default=list(ENCODINGS))
    ap.add_argument("--targets", nargs="+", choices=list(RESPONSES), default=list(RESPONSES))
    ap.add_argument("--label-sd", type=float, help="label noise sd (points): print the tau ceiling")
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
    if args.label_sd:
        rng = np.random.default_rng(args.seed)
        bound = np.mean([kendalltau(y[val], y[val] + rng.normal(0, args.label_sd, n_val))[0] for _ in range(500)])
        print(f"a perfect predictor scores at most tau {bound:.3f} on them (label noise sd {args.label_sd} points)")
    print("Kendall tau / Spearman rho / RMSE on the held-out subnets, by training labels:")
    print(f"{'encoding':18s} {'target':13s} {'model':19s} " + " ".join(f"{n:>17d}" for n in sizes))
    cfs = {n: cost_features(space, g[pool[:n]]) for n in sizes}  # standardised on each training prefix
    for enc in args.encodings:
        xs = {n: features(space, g, cf.mean(0), cf.std(0) + 1e-6, enc) for n, cf in cfs.items()}
        for tname in args.targets:
            to_target, from_target = RESPONSES[tname]
            u = to_target(y)
            for name, make in candidates.items():
                cells = []
                for n in sizes:
                    tr, x = pool[:n], xs[n]
                    m, s = u[tr].mean(), u[tr].std() + 1e-12
                    p = from_target(_forward(make(x[tr], (u[tr] - m) / s), x[val]) * s + m)
                    cells.append(f"{kendalltau(p, y[val])[0]:.3f}/{spearmanr(p, y[val])[0]:.3f}/"
                                 f"{np.sqrt(np.mean((p - y[val]) ** 2)):.2f}")
                print(f"{enc:18s} {tname:13s} {name:19s} " + " ".join(f"{c:>17s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
