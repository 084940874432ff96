"""Profiling as a library: measure a device into a latency table, estimate how long a table
would take, or validate a table against whole subnets. ``hw/profile.py`` is the command line;
everything here takes a :class:`ProfileJob` and a :class:`hw.transport.Transport`."""
from __future__ import annotations

import dataclasses
import datetime
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.targets import DEFAULT_RUNTIME, TARGETS, runtime_of
from qfa.core.space import FP
from hw.build import build, write_model
from hw.table import (FIELDS, LatencyTable, TableError, add_sweep_column, append_row, fit_correction, read_meta,
                      read_sweeps, stat_of)
from hw.transport import Transport
from qfa.core.fileio import atomic_write, drop_partial_tail

__all__ = ["ProfileJob", "profile", "estimate", "validate", "speed_check", "probe_configurations", "dominated",
           "scattered", "end_progress"]

STAT = "min_us"      # what a new table records as each entry's latency (hw.table.STATS)
BATCH_MODELS = 96    # models timed together, round-robin (a crash loses at most one batch)
TIME_PER_MODEL_MS = {False: 50, True: 15}  # a model's timed invokes a sweep stop at about this much time
# (hw.runner.invokes_within), by target.float_io: a float target's table has 3.7x the keys of an int8 one
SWEEPS = 2           # passes over every entry, each in another order (hw.table.FIELDS): min over them
SPEED_CHECK = 6      # whole subnets timed to scale a table to the device's speed now (speed_check)
SPEED_BAND = 2.0     # a table that misses the device's speed now by more than this factor describes another one
DOMINATED = 1.5      # a default configuration this much slower than another on every extreme subnet is not profiled
SCATTER = 2.0        # nor one whose median invoke of the extreme subnets is this many times its fastest


SHARED_ENTRIES = ("nominal W2/W3/W4 with activations < 8 bits deploy as int8 values + a MINIMUM clamp ('i8c') and "
                  "share one entry; W8A8 is 'i8'; int4 weights ('i4') only under tflite-int4w for CONV_2D; FP convs "
                  "'f32'/'f16' under a float target, whose keys also name the piece's input format ('f:'/'i:'); a block "
                  "whose input format differs from its output's is timed at the smallest kernel and expand ratio "
                  "only, the others derived (hw.table.LatencyTable.derived)")


@dataclass(frozen=True)
class ProfileJob:
    """What to measure and where the table goes (``out_dir/device.csv`` + ``.json``)."""

    device: str | None
    space: str = "fmnist"
    resolution: tuple[int, ...] | None = None   # default: every resolution of the space
    deploy: str = "tflite-int8"
    threads: int = 1
    delegate: str = DEFAULT_RUNTIME["delegate"]  # runtime configuration (export.targets.DELEGATES)
    target: str = "local"                       # the transport's URL, recorded in the metadata
    jobs: int = 1                               # processes converting block models
    calib_subnets: int = 40
    sweeps: int = SWEEPS                        # timing passes over every entry (and every whole subnet)
    validate: int | None = None
    speed_check: int = SPEED_CHECK              # validate: also at the device's speed now (0: not)
    estimate: int | None = None
    out_dir: Path = Path("latency_tables")
    json: bool = False                          # machine-readable output: no progress lines


_open_line = False


def _progress(msg: str) -> None:
    """Rewrite the progress line on stderr."""
    global _open_line
    print(f"\r{msg}", end="", file=sys.stderr, flush=True)
    _open_line = True


def end_progress() -> None:
    """End an open progress line, so that whatever is printed next (an error) has its own line."""
    global _open_line
    if _open_line:
        print(file=sys.stderr, flush=True)
        _open_line = False


def _resolutions(job: ProfileJob, space) -> list[int]:
    resolutions = job.resolution or list(space.resolutions)
    bad = [r for r in resolutions if r not in space.resolutions]
    if bad:
        raise TableError(f"resolution {bad} not in space {space.name!r} {list(space.resolutions)}")
    return resolutions


def profile(job: ProfileJob, transport: Transport) -> dict:
    from qfa.core.space import resolve_space
    from hw.blocks import BlockFactory, overhead_model
    from hw.entries import entries

    space = resolve_space(job.space)
    target = TARGETS[job.deploy]
    resolutions = _resolutions(job, space)
    out = Path(job.out_dir) / f"{job.device}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta_path = out.with_suffix(".json")
    meta = read_meta(meta_path) if meta_path.exists() else {}
    if meta and (meta.get("space_hash") != space.hash or meta.get("target") != target.name
                 or runtime_of(meta) != {"delegate": job.delegate, "threads": job.threads}
                 or stat_of(meta) != STAT):
        raise TableError(f"{out} holds measurements of another space/target/runtime configuration/timing "
                         f"({meta.get('space')}/{meta.get('target')}/{runtime_of(meta)}/{stat_of(meta)}): "
                         "use another --device name")
    timed: dict = {}  # (key, sweep) -> us
    if out.exists():
        cut = drop_partial_tail(out)  # a crash mid-write: the half row goes, its entry is measured again
        if cut:
            print(f"profile: dropped a half-written last row of {out} ({len(cut)} bytes); measuring it again",
                  file=sys.stderr)
        timed = read_sweeps(out, STAT)[0]
        add_sweep_column(out)
    facts = transport.facts()
    meta.update({"device": job.device, "space": space.name, "space_hash": space.hash, "space_json": space.to_json(), "target": target.name,
                 "threads": job.threads, "delegate": job.delegate, "transport": job.target, "resolutions": sorted(set(meta.get("resolutions", [])) | set(resolutions)),
                 "date": datetime.date.today().isoformat(), "toolkit": "qfa-toolkit 0.1.0", "stat": STAT,
                 "shared_entries": SHARED_ENTRIES, **({"device_facts": facts} if facts else {}),
                 "timing": {"sweeps": job.sweeps, **{k: getattr(transport.cfg, k)
                                                     for k in ("warmup", "runs", "rounds", "time_per_model_ms")}}})
    if "overhead_us" not in meta:
        meta["overhead_us"] = transport.measure([write_model(overhead_model(target))])[0][STAT]
    _save_meta(meta_path, meta)

    factory = BlockFactory(space)
    table = LatencyTable({}, meta, space)
    specs = table.probes(resolutions)
    sweeps = range(1, job.sweeps + 1)
    todo = [s for s in specs if any((en.key, k) not in timed for en in entries(s, target) for k in sweeps)]
    t0 = time.time()

    def built(i: int, n: int) -> None:
        if not job.json:
            _progress(f"profile: built models of {i}/{n} shapes ({job.jobs} jobs), {time.time() - t0:.0f}s")
    paths = build(todo, target, job.jobs, progress=built)
    ents = {en.key: en for s in todo for en in entries(s, target)}  # sweep 1 in probe order, later ones shuffled
    ov_path = write_model(overhead_model(target))
    rng, n_new = np.random.default_rng(0), 0
    for sweep in sweeps:
        keys = [k for k in ents if (k, sweep) not in timed]
        if sweep > 1:
            rng.shuffle(keys)
        for i in range(0, len(keys), BATCH_MODELS):
            batch = keys[i:i + BATCH_MODELS]
            ov, *res = transport.measure([ov_path] + [paths[k] for k in batch])
            for k, r in zip(batch, res):
                append_row(out, {**ents[k]._asdict(), "key": k, **{f: r[f] for f in FIELDS if f in r}, "sweep": sweep})
                timed[k, sweep] = r[STAT]
                n_new += 1
            if ov[STAT] < meta["overhead_us"]:  # the per-invoke overhead, also at its fastest
                meta["overhead_us"] = ov[STAT]
                _save_meta(meta_path, meta)
            if not job.json:
                _progress(f"profile: sweep {sweep}/{job.sweeps}: timed {i + len(batch)}/{len(keys)} entries "
                          f"({n_new} rows new), {time.time() - t0:.0f}s")
    end_progress()
    if job.calib_subnets and (n_new or "calibration" not in meta):  # new rows: fitted again
        x, meas, ext = _whole(LatencyTable.load(out), factory, transport, target, job.calib_subnets, seed=1,
                              sweeps=job.sweeps, extremes=True)
        meta["calibration"] = fit_correction(x, meas, ext)
        _save_meta(meta_path, meta)
    return {"table": str(out), "entries": len({k for k, _ in timed}), "new": n_new, "overhead_us": meta["overhead_us"],
            "calibration": meta.get("calibration")}


def estimate(job: ProfileJob, transport: Transport) -> dict:
    """Time to build a table here, extrapolated from building and timing a random sample of
    its shapes, and one random whole subnet (the calibration set), on this transport."""
    from qfa.core.space import resolve_space
    from hw.blocks import BlockFactory
    from hw.entries import entries

    space, target = resolve_space(job.space), TARGETS[job.deploy]
    resolutions = _resolutions(job, space)
    table = LatencyTable({}, {"target": target.name, "overhead_us": 0.0}, space)
    specs = table.probes(resolutions)
    keys = {en.key for s in specs for en in entries(s, target)}
    rng = np.random.default_rng(0)
    sample = [specs[i] for i in sorted(rng.choice(len(specs), min(len(specs), job.estimate), replace=False))]
    with tempfile.TemporaryDirectory() as tmp:  # a private cache: time the real conversion
        t = time.perf_counter()
        paths = build(sample, target, 1, root=tmp)
        t_build = (time.perf_counter() - t) / len(sample)
        uniq = sorted({en.key for s in sample for en in entries(s, target)})
        t = time.perf_counter()
        transport.measure([paths[k] for k in uniq])
        t_entry = (time.perf_counter() - t) / len(uniq)
        factory, whole = BlockFactory(space), space.sample(rng).replace(resolution=max(resolutions))
        t = time.perf_counter()
        transport.measure([write_model(factory.whole(whole, target), tmp)])
        t_whole = time.perf_counter() - t
    blocks_s = t_build * len(specs) / max(job.jobs, 1) + t_entry * len(keys) * job.sweeps
    return {"space": space.name, "resolutions": resolutions, "target": target.name, "shapes": len(specs),
            "entries": len(keys), "sampled_shapes": len(sample), "build_s_per_shape": round(t_build, 2),
            "measure_s_per_entry": round(t_entry, 3), "jobs": job.jobs, "estimated_blocks_s": round(blocks_s),
            "estimated_calibration_s": round(job.calib_subnets * t_whole * job.sweeps),
            "estimated_total_s": round(blocks_s + job.calib_subnets * t_whole * job.sweeps)}


def _save_meta(path: Path, meta: dict) -> None:
    atomic_write(path, json.dumps(meta, indent=1, sort_keys=True))


def extreme_specs(space, resolutions, float_io: bool) -> list:
    """The min and max subnets of each resolution at the space's lowest and highest deployable
    bits (and FP where the target deploys it): where tight and loose budgets end up."""
    deployable = [b for b in space.bits if b != FP]
    bits = sorted({min(deployable), max(deployable)}) + ([FP] if float_io and FP in space.bits else [])
    return [f(bits=b).replace(resolution=r) for r in resolutions for f in (space.min_spec, space.max_spec) for b in bits]


def probe_configurations(job: ProfileJob, transports: dict) -> dict:
    """Each runtime configuration's times (us: :data:`STAT` and ``median_us``) of the extreme
    subnets of the job's space, target and resolutions (:func:`extreme_specs`): ``transports``
    maps a configuration to a transport running it."""
    from qfa.core.space import resolve_space
    from hw.blocks import BlockFactory
    space, target = resolve_space(job.space), TARGETS[job.deploy]
    factory = BlockFactory(space)
    paths = [write_model(factory.whole(s, target)) for s in extreme_specs(space, _resolutions(job, space), target.float_io)]
    out = {}
    for c, tr in transports.items():
        rows = tr.measure(paths)
        out[c] = {k: np.array([r[k] for r in rows]) for k in (STAT, "median_us")}
    return out


def dominated(times: dict, ratio: float = DOMINATED) -> dict:
    """The configurations that another runs at least ``ratio`` times faster on every subnet timed
    (``times``: configuration -> us of the same subnets): {configuration: {"by": the other,
    "slower": the smallest of its ratios}}. Nothing dominates the fastest on any one subnet."""
    out: dict = {}
    for c, t in times.items():
        for o, u in times.items():
            r = float(np.min(np.asarray(t) / np.asarray(u)))
            if o != c and r >= ratio and r > out.get(c, {}).get("slower", 0):
                out[c] = {"by": o, "slower": r}
    return out


def scattered(probe: dict, ratio: float = SCATTER) -> dict:
    """The configurations whose median invoke of the extreme subnets is on average at least
    ``ratio`` times their fastest (``probe``: :func:`probe_configurations`), but the least
    scattered: {configuration: that average}. A table of fastest invokes predicts neither what an
    app sees of them nor their whole subnets, whose pieces' fastest invokes do not add up (the
    builtin kernels at 2 threads on our 2-vCPU Intel Xeon f6m167 VM, ai-edge-litert 2.1, float
    target: 2.85x on average, where the others ran 1.03-1.12x; their table missed by 15% RMSE,
    docs/results.md)."""
    r = {c: float(np.mean(t["median_us"] / t[STAT])) for c, t in probe.items()}
    calm = min(r, key=r.get, default=None)
    return {c: v for c, v in r.items() if v >= ratio and c != calm}


def _whole(table: LatencyTable, factory, transport, target, n: int, seed: int, sweeps: int,
           extremes: bool = False):
    """(features [sum_us, 1, pieces, clamped convs], measured us, how many of them come first as
    extremes) of n whole subnets: random ones (with ``extremes``: after the min/max subnets of
    each resolution), timed as the entries were (the fastest of ``sweeps`` jobs)."""
    rng = np.random.default_rng(seed)
    res_ok = table.meta["resolutions"]
    ext = extreme_specs(table.space, res_ok, target.float_io)[:n // 2] if extremes else []
    specs = list(ext)
    while len(specs) < n:
        s = table.space.sample(rng)
        if s.resolution in res_ok:
            specs.append(s)
    paths = [write_model(factory.whole(s, target)) for s in specs]
    passes = sweeps if table.stat == "min_us" else 1
    cfg, transport.cfg = transport.cfg, dataclasses.replace(transport.cfg, time_per_model_ms=None)
    try:  # every invoke, as a shipped file is timed (the cap would time a long model a few % slow)
        meas = np.min([[r[table.stat] for r in transport.measure(paths)] for _ in range(passes)], axis=0)
    finally:
        transport.cfg = cfg
    return np.array([table.features(s) for s in specs]), meas, len(ext)


def speed_check(table: LatencyTable, transport: Transport, n: int = SPEED_CHECK) -> dict:
    """How fast the device runs now against the table: ``n`` random subnets timed whole (as the
    table's calibration subnets were), ``factor`` the geometric mean of measured / predicted.
    A table is a snapshot: a shared VM's speed moves by ~10% over tens of minutes (docs/results.md,
    "Profiling time"), uniformly over model sizes, so predictions times ``factor`` are the
    device's speed now. ``within_band``: False when the factor is beyond :data:`SPEED_BAND` either
    way (the table describes another device, or this one under other load)."""
    from hw.blocks import BlockFactory
    x, meas, _ = _whole(table, BlockFactory(table.space), transport, table.target, n, seed=3,
                        sweeps=table.meta.get("timing", {}).get("sweeps", SWEEPS))
    ratio = meas / (x @ table.coef)
    factor = float(np.exp(np.mean(np.log(ratio))))
    return {"factor": factor, "subnets": n, "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max()),
            "within_band": 1 / SPEED_BAND <= factor <= SPEED_BAND}


def _errors(pred: np.ndarray, meas: np.ndarray, prefix: str = "") -> dict:
    err = (pred - meas) / meas
    return {f"{prefix}rmse_pct": float(100 * np.sqrt(np.mean(err ** 2))),
            f"{prefix}within_5pct": float(100 * np.mean(np.abs(err) <= 0.05)),
            f"{prefix}within_10pct": float(100 * np.mean(np.abs(err) <= 0.10))}


def validate(job: ProfileJob, transport: Transport) -> dict:
    """The table's predictions against ``job.validate`` random subnets timed whole now; with
    ``job.speed_check``, also scaled to the device's speed now by that many other subnets
    (:func:`speed_check`, as ``qfa run`` scales them) and compared again (``checked_*``)."""
    from hw.blocks import BlockFactory
    table = LatencyTable.load(Path(job.out_dir) / f"{job.device}.csv")
    want = {"delegate": job.delegate, "threads": job.threads}
    if table.runtime != want:
        raise TableError(f"{job.device} was measured with {table.runtime}, not {want}: pass its --delegate and "
                         "--threads to validate it")
    check = speed_check(table, transport, job.speed_check) if job.speed_check else None
    x, meas, _ = _whole(table, BlockFactory(table.space), transport, table.target, job.validate, seed=2,
                        sweeps=job.sweeps)
    pred = x @ table.coef
    res = {"n": len(meas), **_errors(pred, meas), "raw_sum_rmse_pct": _errors(x[:, 0], meas)["rmse_pct"]}
    if check:
        res.update({"speed_check": check, **_errors(pred * check["factor"], meas, "checked_")})
    png = Path(job.out_dir) / f"{job.device}_validation.png"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(meas / 1000, pred / 1000, s=12, label="the table")
        if check:
            ax.scatter(meas / 1000, pred * check["factor"] / 1000, s=8, marker="x",
                       label=f"x {check['factor']:.3f}: the speed now ({check['subnets']} other subnets)")
            ax.legend(loc="upper left", fontsize=7)
        lim = [0, max(meas.max(), pred.max(), pred.max() * (check or {}).get("factor", 1)) / 1000 * 1.05]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.plot(lim, [v * 1.1 for v in lim], "r:", lw=0.8)
        ax.plot(lim, [v * 0.9 for v in lim], "r:", lw=0.8)
        ax.set_xlabel("measured (ms)"), ax.set_ylabel("predicted (ms)")
        ax.set_title(f"{job.device}: RMSE {res['rmse_pct']:.1f}%, {res['within_10pct']:.0f}% within 10%"
                     + (f"\nat the speed now: {res['checked_rmse_pct']:.1f}%, {res['checked_within_10pct']:.0f}%"
                        if check else ""), fontsize=9)
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        res["plot"] = str(png)
    except ImportError:
        pass
    return res


