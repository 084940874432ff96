"""The ``qfa`` command line. Thin: each command parses, calls the library, prints.

Conventions: ``--json`` prints exactly one JSON object (or JSON lines for streams) on stdout;
human tables otherwise. Errors are one line on stderr: exit 1 for a failed operation, 2 for
bad usage or input. Set QFA_DEBUG=1 for tracebacks.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from .space import SearchSpace, SpecError, SubnetSpec, get_space, list_spaces

__all__ = ["main", "CLIError", "load_spec"]


class CLIError(Exception):
    """A failure reported to the user as one line; ``code`` is the exit status."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


def load_spec(space: SearchSpace, text: str) -> SubnetSpec:
    """A spec from a JSON file path, JSON text or the compact form."""
    p = Path(text)
    if not text.lstrip().startswith("{") and ("/" in text or text.endswith(".json")):
        if not p.is_file():
            raise CLIError(f"spec file not found: {text}", 2)
        text = p.read_text()
    try:
        return space.parse(text)
    except SpecError as e:
        raise CLIError(f"invalid spec: {e}", 2) from None


def _emit(args: argparse.Namespace, obj: dict, human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(obj))
    else:
        human()


def _space(args: argparse.Namespace) -> SearchSpace:
    try:
        return get_space(args.space, args.bits)
    except SpecError as e:
        raise CLIError(str(e), 2) from None


# ---- commands ----------------------------------------------------------------------------
def cmd_space(args: argparse.Namespace) -> None:
    space = _space(args)
    if args.action == "sample":
        import numpy as np
        rng = np.random.default_rng(args.seed)
        for _ in range(args.n):
            spec = space.sample(rng)
            print(spec.dumps() if args.json or not args.compact else str(spec))
        return
    info = space.summary()

    def human() -> None:
        print(f"space {info['name']} (hash {info['hash']})")
        for i, st in enumerate(info["stages"], 1):
            print(f"  stage {i}: width {st['width']:4d}  stride {st['stride']}  act {st['act']:6s}  se {st['se']}")
        for key in ("kernels", "expands", "depths", "resolutions", "bits"):
            print(f"  {key:12s} {info[key]}")
        print(f"  stem bits {info['stem_bits']}, SE bits {info['se_bits']}, classifier bits {info['classifier_bits']}"
              "  (32 = full precision)")
        print(f"  subnets (MBConv stages): {info['count_blocks']:.4g}  = {info['count_blocks']}")
        print(f"  subnets (+ resolution, first-block and head bits): {info['count_full']:.4g}")
    # the exact counts overflow JSON number precision in some readers: send them as strings too
    _emit(args, {**info, "count_blocks_exact": str(info["count_blocks"]),
                 "count_full_exact": str(info["count_full"])}, human)


def cmd_cost(args: argparse.Namespace) -> None:
    from .cost import layer_costs, total_costs
    space = _space(args)
    spec = load_spec(space, args.spec)
    rows, tot = layer_costs(spec), total_costs(spec)

    def human() -> None:
        print(f"spec {spec.hash}: {spec}")
        if args.per_layer:
            print(f"{'layer':24s} {'cin':>5s} {'cout':>5s} {'k':>2s} {'s':>2s} {'h':>4s} {'w/a':>6s} {'MACs':>11s} {'bytes':>9s}")
            for r in rows:
                print(f"{r['name']:24s} {r['cin']:5d} {r['cout']:5d} {r['kernel']:2d} {r['stride']:2d} {r['h_in']:4d} "
                      f"{r['w_bits']:>2d}/{r['a_bits']:<3d} {r['macs']:11,d} {r['bytes']:9,.0f}")
        print(f"MACs {tot['macs']/1e6:.3f} M | params {tot['params']/1e6:.4f} M | BitOPs {tot['bitops']/1e9:.3f} G | "
              f"bit-weighted {tot['mflops_bw']:.3f} MFLOPs | {tot['bytes']/1024:.1f} KiB at nominal bits")
    _emit(args, {"spec": spec.to_json(), "hash": spec.hash, "total": tot,
                 **({"layers": rows} if args.per_layer else {})}, human)


def cmd_run(args: argparse.Namespace) -> None:
    from .smoke import smoke_run
    result = smoke_run(n_random=args.n_random, calib_images=args.calib_images, test_images=args.test_images,
                       seed=args.seed, progress=not args.json)
    _emit(args, result, lambda: None)


# ---- parser ------------------------------------------------------------------------------
def _add_space_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default="fmnist", choices=list_spaces(), help="search-space preset (default: fmnist)")
    p.add_argument("--bits", type=lambda s: [int(b) for b in s.split(",")], default=None,
                   help="override the space's bit choices, e.g. 2,3,4,32 (32 = full precision)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qfa", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sp = sub.add_parser("space", help="describe a search space or sample specs from it",
                        description="Describe a search space (choices, exact subnet count) or sample specs.\n"
                                    "examples:\n  qfa space --space paper\n  qfa space sample --space fmnist --n 5 --seed 0",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("action", nargs="?", default="show", choices=["show", "sample"])
    _add_space_args(sp)
    sp.add_argument("--n", type=int, default=5, help="number of specs to sample (default 5)")
    sp.add_argument("--seed", type=int, default=None, help="random seed")
    sp.add_argument("--compact", action="store_true", help="print the compact text form instead of JSON lines")
    sp.set_defaults(func=cmd_space)

    cp = sub.add_parser("cost", help="MACs, params, BitOPs, bit-weighted MFLOPs and bytes of a spec",
                        description="Cost model of one spec.\nexample:\n  qfa space sample --n 1 > s.json && qfa cost --spec s.json --per-layer",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_space_args(cp)
    cp.add_argument("--spec", required=True, help="spec as a JSON file, JSON text or compact text")
    cp.add_argument("--per-layer", action="store_true", help="also list every conv")
    cp.set_defaults(func=cmd_cost)

    rp = sub.add_parser("run", help="the main job (currently a smoke run of the supernet pipeline)",
                        description="Smoke run on Fashion-MNIST: build the fmnist supernet, calibrate sampled "
                                    "subnets, extract them, check extraction equivalence, evaluate and cost them.")
    rp.add_argument("--n-random", type=int, default=3, help="random subnets besides max and min (default 3)")
    rp.add_argument("--calib-images", type=int, default=2000, help="calibration images per subnet (default 2000)")
    rp.add_argument("--test-images", type=int, default=10000, help="test images to evaluate (default 10000)")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    rp.set_defaults(func=cmd_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
        return 0
    except CLIError as e:
        print(f"qfa {args.command}: error: {e}", file=sys.stderr)
        return e.code
    except (SpecError, ValueError, FileNotFoundError, RuntimeError) as e:
        if os.environ.get("QFA_DEBUG"):
            raise
        print(f"qfa {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"qfa {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
