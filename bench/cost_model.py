"""Cost-model throughput: specs/s and genomes/s on one core (target: >= 20,000 specs/s).

    python bench/cost_model.py [--space fmnist|paper] [--n 20000]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from qfa.core.cost import CostModel, total_costs
from qfa.core.space import get_space


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="both", choices=["fmnist", "paper", "both"])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in (["fmnist", "paper"] if args.space == "both" else [args.space]):
        space = get_space(name)
        rng = np.random.default_rng(0)
        specs = [space.sample(rng) for _ in range(args.n)]
        model = CostModel(space)
        t = time.perf_counter()
        genomes = np.stack([space.encode(s) for s in specs])
        model(genomes)
        specs_s = args.n / (time.perf_counter() - t)
        t = time.perf_counter()
        model(genomes)
        genomes_s = args.n / (time.perf_counter() - t)
        k = min(args.n, 2000)
        t = time.perf_counter()
        for s in specs[:k]:
            total_costs(s)
        per_layer_s = k / (time.perf_counter() - t)
        rows.append({"space": name, "specs_per_s": specs_s, "genomes_per_s": genomes_s,
                     "per_layer_walk_specs_per_s": per_layer_s, "target_specs_per_s": 20000,
                     "ratio_to_target": specs_s / 20000})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'space':8s} {'specs/s (encode+cost)':>22s} {'genomes/s':>12s} {'per-layer walk/s':>17s} {'x target':>9s}")
    for r in rows:
        print(f"{r['space']:8s} {r['specs_per_s']:22,.0f} {r['genomes_per_s']:12,.0f} "
              f"{r['per_layer_walk_specs_per_s']:17,.0f} {r['ratio_to_target']:9.2f}")


if __name__ == "__main__":
    main()
