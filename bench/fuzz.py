"""The fuzz suite of tests/test_fuzz.py, run longer: every property with N/6 generated bad
inputs each, counting exit statuses, failures (a traceback, exit 3, a wrong status, more than
one error line, raw control characters, a write outside the output folder, a changed table).

    python bench/fuzz.py --n 10000          # ~10,000 generated inputs; prints counts per property

Exit status 1 if any generated input broke the promise (the first counterexample is printed).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="generated inputs in all (default 10000)")
    args = ap.parse_args()
    import tests.test_fuzz as tf
    per = -(-args.n // len(tf.PROPERTIES))  # at least --n in all
    tf.FUZZ = tf.settings(tf.FUZZ, max_examples=per, derandomize=False)
    with tempfile.TemporaryDirectory() as tmp:
        world = tf.make_search_world(Path(tmp))
        tf.check(tf.call(world.argv("--latency-ms", "0.5")), {0})
        failed = 0
        for name, prop in tf.PROPERTIES.items():
            t0 = time.perf_counter()
            try:
                prop(world)()
                status = "ok"
            except AssertionError as e:  # hypothesis shrinks and re-raises the first counterexample
                failed += 1
                status = "FAILED: " + " | ".join(str(e).splitlines()[:4])[:1500]
            calls = {code: n for (p, code), n in tf.COUNTS.items() if p == name}
            print(f"{name:10s} {sum(calls.values()):6d} calls in {time.perf_counter() - t0:6.1f}s  exit statuses "
                  f"{dict(sorted(calls.items()))}  {status}", flush=True)
            os.chdir(tmp)
    total = sum(tf.COUNTS.values())
    bad3 = sum(n for (p, code), n in tf.COUNTS.items() if code == 3)
    print(f"total {total} calls (hypothesis counts shrinking replays too), exit 3 (internal error): {bad3}, "
          f"properties failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
