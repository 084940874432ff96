"""Kill -9 the profiler at N random points (most while measuring, some during start-up; 40% of
them with the file then cut mid-row, as a kill inside a row write would leave it), resume, and
compare with an uninterrupted run: corrupt rows, lost keys, extra keys.

    python bench/kill_profile.py --n 20

The fmnist space at resolution 24 (441 entries), 5 timed runs per entry; prints one line per
kill and the totals. Exit status 1 if any row is corrupt or any key lost.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


PER_ROUND = 4


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="kill points (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from hw.table import TableError, read_rows
    from tests.test_hostile import kill_and_resume, profile_cmd
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cmd, env = profile_cmd(tmp / "whole", tmp / "cache")
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        whole = set(read_rows(tmp / "whole" / "t.csv")[0])
        rng, bad, done = np.random.default_rng(args.seed), 0, 0
        for rnd in range(0, args.n, PER_ROUND):  # a fresh table every PER_ROUND kills: kills fall while measuring
            k = min(PER_ROUND, args.n - rnd)
            out = tmp / f"killed{rnd}"
            for i, note in enumerate(kill_and_resume(out, tmp / "cache", rng, k), done + 1):
                print(f"kill {i:2d}: {note}", flush=True)
            done += k
            try:
                rows, half = read_rows(out / "t.csv")
                corrupt = 0
            except TableError as e:
                print(f"corrupt table: {e}")
                rows, half, corrupt = {}, b"", 1
            lost, extra = whole - set(rows), set(rows) - whole
            print(f"  resumed: {len(rows)} rows (uninterrupted run: {len(whole)}), corrupt {corrupt}, half rows "
                  f"left {int(bool(half))}, keys lost {len(lost)}, extra {len(extra)}", flush=True)
            bad += bool(corrupt or half or lost or extra)
        print(f"{done} kill -9 points in {-(-args.n // PER_ROUND)} tables: {bad} tables corrupt or incomplete")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
