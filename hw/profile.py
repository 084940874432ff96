#!/usr/bin/env python3
"""Measure a device into a latency table keyed by deployed precision (CSV + JSON metadata).

examples:
  python hw/profile.py --device host-x86 --space fmnist
  python hw/profile.py --device pi4 --target ssh://pi@raspberrypi.local --threads 4
  python hw/profile.py --device host-x86 --validate 100 --json

Rows are appended as they are measured; a rerun skips measured keys (Ctrl-C loses nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python hw/profile.py
    # the repo root instead of hw/, whose profile.py would shadow the standard library's
    # (imported by torch.compile when calibration compiles the quantizers)
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from export.targets import TARGETS  # noqa: E402
from hw.profiling import ProfileJob, estimate, profile, validate  # noqa: E402
from hw.table import TableError  # noqa: E402
from hw.transport import BadTarget, RunConfig, TransportError, make_transport  # noqa: E402
from qfa.core.space import SpecError  # noqa: E402

DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def build_parser(prog: str = "hw/profile.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", help="table name: latency_tables/NAME.csv (required unless --estimate)")
    p.add_argument("--target", default="local", help="local | ssh://user@host[:port] | adb[:SERIAL] (default local)")
    p.add_argument("--space", default="fmnist", help="search-space preset (default fmnist)")
    p.add_argument("--resolution", type=int, nargs="+", help="resolutions to measure (default: all of the space)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--deploy", default="tflite-int8", choices=sorted(TARGETS), help="deployment target")
    p.add_argument("--runtime", default="litert", help="litert | tflite-runtime | benchmark_model:PATH (adb)")
    p.add_argument("--taskset", help="CPU mask for the runner (adb/ssh), e.g. f0")
    p.add_argument("--ssh-option", action="append", metavar="OPT", help="extra ssh -o option (repeatable), "
                   "e.g. IdentityFile=~/.ssh/pi; your ~/.ssh/config applies anyway")
    p.add_argument("--remote-python", default="python3", help="python on the device (ssh; default python3)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="processes converting block models (default: all cores; timing runs alone afterwards)")
    p.add_argument("--runs", type=int, default=200, help="timed invokes per model (default 200)")
    p.add_argument("--warmup", type=int, default=30, help="warm-up invokes per model (default 30)")
    p.add_argument("--calib-subnets", type=int, default=40, help="whole subnets measured to fit the correction (default 40)")
    p.add_argument("--validate", type=int, metavar="N", help="measure N random subnets end to end and compare")
    p.add_argument("--estimate", type=int, metavar="K", help="measure nothing into a table: time K sampled shapes "
                   "and print the estimated time of the whole table (e.g. --space paper --resolution 224 --estimate 3)")
    p.add_argument("--out-dir", default="latency_tables")
    p.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None, prog: str = "hw/profile.py") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not args.device and not args.estimate:
        parser.error("--device is required")
    if args.device is not None and (not DEVICE_NAME.fullmatch(args.device) or ".." in args.device):
        print(f"{prog}: error: --device {args.device!r}: a table name is letters, digits and ._- (at most 64, "
              "no '..'), not a path; --out-dir says where tables go", file=sys.stderr)
        return 2
    job = ProfileJob(device=args.device, space=args.space, resolution=tuple(args.resolution) if args.resolution else None,
                     deploy=args.deploy, threads=args.threads, target=args.target, jobs=args.jobs,
                     calib_subnets=args.calib_subnets, validate=args.validate, estimate=args.estimate,
                     out_dir=Path(args.out_dir), json=args.json)
    run = RunConfig(threads=args.threads, runs=args.runs, warmup=args.warmup, taskset=args.taskset, runtime=args.runtime,
                    ssh_options=tuple(args.ssh_option or ()), remote_python=args.remote_python)
    transport = None
    try:
        transport = make_transport(args.target, run)
        res = (validate(job, transport) if job.validate else estimate(job, transport) if job.estimate
               else profile(job, transport))
    except (TableError, TransportError, SpecError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (TableError, SpecError, BadTarget)) else 1
    except KeyboardInterrupt:
        print("\nprofile: interrupted; measured rows are kept, rerun to continue", file=sys.stderr)
        return 130
    finally:
        if transport is not None:
            try:
                transport.close()
            except TransportError:
                pass
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
