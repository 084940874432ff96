#!/usr/bin/env python3
"""Measure a device into a latency table keyed by deployed precision (CSV + JSON metadata).

examples:
  python hw/profile.py --device host-x86 --space fmnist     # a table per delegate, 1 thread and all cores:
                                                            # host-x86-1t, -1t-builtin, -2t, -2t-builtin, less
                                                            # those no table could serve (said on stderr)
  python hw/profile.py --device host-x86 --delegate xnnpack --threads 1     # one table: host-x86.csv
  python hw/profile.py --device pi4 --target ssh://pi@raspberrypi.local --threads 4
  python hw/profile.py --device host-x86-1t --validate 100 --json  # under the table's own configuration

Rows are appended as they are measured, a row per entry and timing sweep; a rerun skips what
is measured (Ctrl-C loses nothing).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import textwrap
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python hw/profile.py
    # the repo root instead of hw/, whose profile.py would shadow the standard library's
    # (imported by torch.compile when calibration compiles the quantizers)
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from export.targets import DEFAULT_RUNTIME, DELEGATES, TARGETS, runtime_tag  # noqa: E402
from hw.profiling import (SPEED_CHECK, STAT, SWEEPS, TIME_PER_MODEL_MS, ProfileJob, dominated,  # noqa: E402
                          end_progress, estimate, probe_configurations, profile, scattered, validate)
from hw.table import LatencyTable, TableError  # noqa: E402
from hw.transport import BadTarget, RunConfig, TransportError, make_transport  # noqa: E402
from qfa.core.conventions import EXIT_STATUS_HELP, Parser, integer, run_guarded  # noqa: E402
from qfa.core.space import SpecError, resolve_space  # noqa: E402

DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_THREADS = (1, "all")  # one thread and all the device's cores, under each delegate


def _threads(text: str):
    return "all" if text.strip() == "all" else integer(1, 1024)(text)


def build_parser(prog: str = "hw/profile.py") -> Parser:
    p = Parser(prog=prog, description=__doc__.split("\n\n")[0],
               epilog=__doc__.split("\n\n", 1)[1] + "\n" + textwrap.fill(EXIT_STATUS_HELP, 100))
    p.add_argument("--device", help="table name: latency_tables/NAME.csv (required unless --estimate)")
    p.add_argument("--target", default="local", help="local | ssh://user@host[:port] | adb[:SERIAL] (default local)")
    p.add_argument("--space", default="fmnist", help="search-space preset, or a space .json file a run wrote (RUN/space.json: a preset fitted to "
                   "its data; default fmnist)")
    p.add_argument("--resolution", type=integer(1, 4096), nargs="+", help="resolutions to measure (default: all of the space)")
    p.add_argument("--threads", type=_threads, nargs="+", help="interpreter threads: numbers, or 'all' (the device's "
                   "cores); default 1 and all, a table per configuration (with --delegate's), named "
                   "NAME-<threads>t[-builtin]")
    p.add_argument("--delegate", nargs="+", choices=DELEGATES,
                   help="runtime configuration: the interpreter's default XNNPACK delegate, or TFLite's builtin kernels "
                   "alone (default both: which is faster depends on the CPU and the model's size)")
    p.add_argument("--deploy", default="tflite-int8", choices=sorted(TARGETS), help="deployment target")
    p.add_argument("--runtime", default="litert", help="litert | tflite-runtime | benchmark_model:PATH (adb)")
    p.add_argument("--taskset", help="CPU mask for the runner (adb/ssh), e.g. f0")
    p.add_argument("--ssh-option", action="append", metavar="OPT", help="extra ssh -o option (repeatable), "
                   "e.g. IdentityFile=~/.ssh/pi; your ~/.ssh/config applies anyway")
    p.add_argument("--remote-python", default="python3", help="python on the device (ssh; default python3)")
    p.add_argument("--jobs", type=integer(1, 1024), default=os.cpu_count() or 1,
                   help="processes converting block models (default: all cores; timing runs alone afterwards)")
    p.add_argument("--runs", type=integer(1, 1_000_000), default=200, help="timed invokes per model (default 200)")
    p.add_argument("--rounds", type=integer(1, 1000), default=8,
                   help="round-robin passes the runs are spread over (default 8; the fastest invoke is the latency)")
    p.add_argument("--warmup", type=integer(0, 1_000_000), default=10, help="warm-up invokes per model (default 10)")
    p.add_argument("--time-per-model-ms", type=integer(0, 1_000_000),
                   help=f"timed invokes of a model stop at about this much time a sweep, but at least two a round "
                   f"(default {TIME_PER_MODEL_MS[False]}, a float target {TIME_PER_MODEL_MS[True]}; 0: always --runs): "
                   "slow models need fewer invokes to show their fastest")
    p.add_argument("--sweeps", type=integer(1, 100), default=SWEEPS,
                   help=f"timing passes over every entry, each in another order (default {SWEEPS}): an entry is its "
                   "fastest, so a host that slows down for a minute does not inflate what it timed then")
    p.add_argument("--calib-subnets", type=integer(0, 100_000), default=40,
                   help="whole subnets measured to fit the correction (default 40; 0: the plain sum)")
    p.add_argument("--validate", type=integer(1, 100_000), metavar="N",
                   help="measure N random subnets end to end and compare")
    p.add_argument("--speed-check", type=integer(0, 100_000), default=SPEED_CHECK, metavar="K",
                   help=f"with --validate: also compare at the device's speed now, the table scaled by K other "
                   f"subnets timed first, as qfa run scales it (default {SPEED_CHECK}; 0: not)")
    p.add_argument("--estimate", type=integer(1, 100_000), metavar="K", help="measure nothing into a table: time K "
                   "sampled shapes and print the estimated time of the whole table (e.g. --space paper --resolution "
                   "224 --estimate 3)")
    p.add_argument("--out-dir", default="latency_tables")
    p.add_argument("--json", action="store_true")
    return p


def _close(transport) -> None:
    """Close a transport; a device gone by then loses nothing measured."""
    try:
        transport.close()
    except TransportError:
        pass


def _finite(obj):
    """JSON-safe: NaN and infinities become null (``--json`` prints valid JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def main(argv: list[str] | None = None, prog: str = "hw/profile.py") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not args.device and args.estimate is None:
        parser.error("--device is required")
    if args.device is not None and (not DEVICE_NAME.fullmatch(args.device) or ".." in args.device):
        parser.error(f"--device {args.device!r}: a table name is letters, digits and ._- (at most 64, no '..'), "
                     "not a path; --out-dir says where tables go")
    out_dir = Path(args.out_dir)
    try:
        if out_dir.exists() and not out_dir.is_dir():
            parser.error(f"--out-dir {args.out_dir}: exists and is not a folder")
    except (OSError, ValueError) as e:
        parser.error(f"--out-dir {args.out_dir}: {getattr(e, 'strerror', None) or e}")

    cap = TIME_PER_MODEL_MS[TARGETS[args.deploy].float_io] if args.time_per_model_ms is None else args.time_per_model_ms

    def run_config(delegate: str = DEFAULT_RUNTIME["delegate"], threads: int = DEFAULT_RUNTIME["threads"]) -> RunConfig:
        return RunConfig(threads=threads, delegate=delegate, runs=args.runs, rounds=args.rounds, warmup=args.warmup,
                         time_per_model_ms=cap or None, taskset=args.taskset, runtime=args.runtime,
                         ssh_options=tuple(args.ssh_option or ()), remote_python=args.remote_python)

    def configurations() -> list[dict]:
        """Each (delegate, threads) asked for; --validate without them: the table's own (None)."""
        if args.validate is not None and not (args.delegate or args.threads):
            return [{"delegate": None, "threads": None}]
        threads = list(args.threads or DEFAULT_THREADS)
        if "all" in threads:
            cores = make_transport(args.target, run_config()).cores()
            if cores is None:
                raise BadTarget(f"--threads all: {args.target} does not say how many cores it has; give a number")
            threads = [cores if t == "all" else t for t in threads]
        return [{"delegate": d, "threads": t} for t in dict.fromkeys(threads)
                for d in dict.fromkeys(args.delegate or DELEGATES)]

    def jobs_for(configs: list[dict]) -> list[ProfileJob]:
        return [ProfileJob(device=args.device if len(configs) == 1 or args.device is None else
                           f"{args.device}-{runtime_tag(c)}", space=args.space,
                           resolution=tuple(args.resolution) if args.resolution else None, deploy=args.deploy,
                           threads=c["threads"], delegate=c["delegate"], target=args.target, jobs=args.jobs,
                           calib_subnets=args.calib_subnets, sweeps=args.sweeps, validate=args.validate,
                           speed_check=args.speed_check,
                           estimate=args.estimate, out_dir=out_dir, json=args.json) for c in configs]

    def skip_unworthy(configs: list[dict]) -> tuple[list[dict], list[dict]]:
        """The default configurations less those no table could serve, judged on the extreme
        subnets timed briefly under each first: one another beats by hw.profiling.DOMINATED x on
        every one (the search would never pick it), or one whose invokes scatter
        (hw.profiling.SCATTER: its table would not predict it); e.g. the builtin kernels at 2
        threads on our 2-vCPU Intel Xeon f6m167 VM, ai-edge-litert 2.1. Returns (kept, what was
        skipped and why), each said on stderr."""
        if args.delegate or args.threads or args.validate is not None or args.estimate is not None or len(configs) < 2:
            return configs, []
        key = [(c["delegate"], c["threads"]) for c in configs]
        transports = {k: make_transport(args.target, dataclasses.replace(run_config(*k), runs=20, rounds=2, warmup=3,
                                                                          time_per_model_ms=None)) for k in key}
        try:
            probe = probe_configurations(jobs_for(configs)[0], transports)
        finally:
            for t in transports.values():
                _close(t)
        slow = dominated({k: v[STAT] for k, v in probe.items()})
        skipped = [{"delegate": k[0], "threads": k[1], "slower_than": {"delegate": v["by"][0], "threads": v["by"][1]},
                    "by_at_least": round(v["slower"], 2),
                    "why": f"{v['by'][0]}, {v['by'][1]} thread(s) ran every min/max subnet at least "
                           f"{v['slower']:.2f}x faster"}
                   for k, v in slow.items()]
        skipped += [{"delegate": k[0], "threads": k[1], "median_over_fastest": round(r, 2),
                     "why": f"its median invoke of the min/max subnets took on average {r:.1f}x its fastest, so "
                            "a table of fastest invokes would not predict it"}
                    for k, r in scattered(probe).items() if k not in slow]
        for x in skipped:
            print(f"profile: not measuring {x['delegate']}, {x['threads']} thread(s): {x['why']} (pass --delegate and "
                  "--threads to measure it anyway)", file=sys.stderr, flush=True)
        gone = {(x["delegate"], x["threads"]) for x in skipped}
        return [c for c, k in zip(configs, key) if k not in gone], skipped

    def one(job: ProfileJob) -> dict:
        if job.delegate is None:  # validated under the configuration it states (validate reports a missing table)
            table = out_dir / f"{job.device}.csv"
            job = dataclasses.replace(job, **(LatencyTable.load(table).runtime if table.exists() else DEFAULT_RUNTIME))
        transport = make_transport(args.target, run_config(job.delegate, job.threads))
        try:
            return (validate(job, transport) if job.validate is not None else
                    estimate(job, transport) if job.estimate is not None else profile(job, transport))
        finally:
            _close(transport)

    def body() -> int:
        try:
            resolve_space(args.space)  # a bad space is one line before anything is measured
            configs = configurations()
            kept, skipped = skip_unworthy(configs)
            jobs, results = [j for j, c in zip(jobs_for(configs), configs) if c in kept], []
            for i, job in enumerate(jobs, 1):
                if len(jobs) > 1 and not args.json:
                    print(f"profile: configuration {i}/{len(jobs)}: {job.delegate}, {job.threads} thread(s)"
                          + (f" -> {job.device}" if job.device else ""), file=sys.stderr, flush=True)
                results.append({**({"delegate": job.delegate, "threads": job.threads} if len(jobs) > 1 else {}),
                                **one(job)})
        except (TableError, TransportError, SpecError) as e:
            end_progress()  # the error gets a line of its own
            e.code = 2 if isinstance(e, (TableError, SpecError, BadTarget)) else 1
            raise
        except KeyboardInterrupt:
            end_progress()
            print("profile: interrupted; measured rows are kept, rerun to continue", file=sys.stderr)
            return 130
        res = results[0] if len(results) == 1 and not skipped else {"tables": results, **({"skipped": skipped}
                                                                                          if skipped else {})}
        if args.json:
            print(json.dumps(_finite(res), allow_nan=False))
        else:
            for r in results:
                print("\n".join(f"{k}: {v}" for k, v in r.items()) + ("\n" if len(results) > 1 else ""))
        return 0
    return run_guarded(prog, body, (TableError, TransportError, SpecError))


if __name__ == "__main__":
    sys.exit(main())
