"""Saved Pareto sets: answering a budget costs a file read (imports nothing heavy: no torch,
no pymoo, no interpreter), which is what makes every later budget free."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from export.targets import DEFAULT_RUNTIME, DELEGATES
from qfa.core.fileio import atomic_write

__all__ = ["ParetoSet", "SearchError", "pareto_key", "pareto_base"]


class SearchError(ValueError):
    """No spec meets the request (message names the best achievable value)."""


def pareto_key(checkpoint: Path, predictor_path: Path, tables: list[Path]) -> str:
    """Identity of a Pareto set: checkpoint file (size, mtime), predictor and tables' contents."""
    h = hashlib.sha256(b"fastest-of")  # sets of a table each before: rows without their configuration
    st = checkpoint.stat()
    h.update(f"{checkpoint.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    for p in (predictor_path, *(q for t in tables for q in (t, t.with_suffix(".json")))):
        try:
            h.update(p.read_bytes())
        except OSError as e:
            raise SearchError(f"cannot read {p}: {e.strerror}") from None
    return h.hexdigest()[:12]


def pareto_base(run: Path, checkpoint: Path, predictor_path: Path, tables: list[Path], bits=None) -> Path:
    """Where the Pareto set of this (checkpoint, predictor, tables, searched bits) lives, without
    suffix: ``RUN/pareto/TABLE[+N]-KEY[-bBITS]`` (TABLE: the first table's name, N: how many more)."""
    tag = "" if bits is None else "-b" + "".join(map(str, bits))
    more = f"+{len(tables) - 1}" if len(tables) > 1 else ""
    return run / "pareto" / f"{tables[0].stem}{more}-{pareto_key(checkpoint, predictor_path, tables)}{tag}"


def _runtime_ok(rt) -> bool:
    return (isinstance(rt, dict) and rt.get("delegate") in DELEGATES
            and type(rt.get("threads")) is int and rt["threads"] >= 1)


def _configuration_ok(row: dict) -> bool:
    by = row.get("latency_by_table", {})
    return (isinstance(row.get("table", ""), str) and isinstance(by, dict)
            and all(isinstance(k, str) and (v is None or isinstance(v, (int, float)) and v > 0) for k, v in by.items()))


def _label_ok(label) -> bool:
    return label is None or (isinstance(label, dict) and isinstance(label.get("top1"), (int, float))
                             and 0 <= label["top1"] <= 100)


class ParetoSet:
    """A saved front: ``NAME.jsonl`` (one spec + objectives a line) and ``NAME.csv``."""

    def __init__(self, rows: list[dict], factors: dict[str, float] | None = None) -> None:
        self.rows, self.factors = rows, factors or {}

    def at_speed(self, factors: dict[str, float], runtimes: dict[str, dict] | None = None) -> "ParetoSet":
        """The set at the device's speed now against each table (``{table name: factor}``,
        ``hw.profiling.speed_check``): a row's latency times its table's factor, or, for a row
        timed on several (``latency_by_table``; ``runtimes``: each table's configuration), its
        fastest configuration at those speeds. Saved, its rows keep the tables' latencies."""
        rows = []
        for r in self.rows:
            by = {n: v * factors.get(n, 1.0) for n, v in r.get("latency_by_table", {}).items() if v is not None}
            if runtimes and by.keys() <= runtimes.keys() and by:
                n = min(by, key=by.get)
                rows.append({**r, "table": n, "runtime": runtimes[n], "latency_ms": by[n]})
            else:
                rows.append({**r, "latency_ms": r["latency_ms"] * factors.get(r.get("table"), 1.0)})
        return ParetoSet(rows, {**self.factors, **factors})

    @classmethod
    def from_front(cls, space, front: dict, target: str = "tflite-int8", runtime: dict | None = None) -> "ParetoSet":
        """``target``: the lowering the latency table was measured for (exports must use it);
        ``runtime``: the configuration it was measured under (delegate, threads; the app's too),
        unless the front names each subnet's own (``qfa.nas.search.Fastest``: ``table``,
        ``runtime`` and its ms on every table, ``latency_by_table``)."""
        rows = []
        for i, g in enumerate(front["genomes"]):
            spec = space.decode(g)
            rows.append({"index": i, "hash": spec.hash, "top1": float(front["top1"][i]),
                         "latency_ms": float(front["latency_ms"][i]), "bytes": int(front["bytes"][i]),
                         "spec_str": str(spec), "spec": json.loads(spec.dumps()), "target": target,
                         "runtime": front["runtime"][i] if "runtime" in front else runtime or dict(DEFAULT_RUNTIME),
                         **({k: front[k][i] for k in ("table", "latency_by_table")} if "table" in front else {})})
        return cls(rows)

    def save(self, base: Path, budget_ms: float | None = None) -> None:
        self.save_rows(base)
        self.plot(base.with_suffix(".png"), budget_ms)

    def save_rows(self, base: Path) -> None:
        """``NAME.jsonl`` and ``NAME.csv`` (with the held-out labels that ``--verify`` took and the
        exact file sizes that ``--max-bytes`` computed)."""
        base.parent.mkdir(parents=True, exist_ok=True)
        import csv
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["index", "hash", "top1", "latency_ms", "bytes", "file_bytes", "holdout_top1", "spec"])
        rows = [{**r, "latency_ms": r["latency_ms"] / self.factors.get(r.get("table"), 1.0)} for r in self.rows]
        w.writerows([r["index"], r["hash"], f"{r['top1']:.4f}", f"{r['latency_ms']:.4f}", r["bytes"], r.get("file_bytes", ""),
                     f"{r['holdout']['top1']:.4f}" if r.get("holdout") else "", r["spec_str"]] for r in rows)
        atomic_write(base.with_suffix(".jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
        atomic_write(base.with_suffix(".csv"), buf.getvalue())

    @classmethod
    def load(cls, base: Path) -> "ParetoSet":
        p = base.with_suffix(".jsonl")
        try:
            rows = [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]
            ok = rows and all(isinstance(r, dict) and isinstance(r.get("latency_ms"), (int, float))
                              and isinstance(r.get("top1"), (int, float)) and isinstance(r.get("bytes"), int)
                              and (r.get("file_bytes") is None or type(r["file_bytes"]) is int and r["file_bytes"] > 0)
                              and _label_ok(r.get("holdout")) and _configuration_ok(r) for r in rows)
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise SearchError(f"saved Pareto set {p} is unreadable or empty: pass --force to search again")
        return cls(rows)

    @staticmethod
    def spec_at(space, path: Path, index: int):
        """Spec number ``index`` of a saved set (JSON lines, one ``{"spec": ...}`` a line), the
        deployment target and the runtime configuration its latencies were measured for (None
        where the line does not say)."""
        from qfa.core.space import SpecError
        if not path.is_file():
            raise SearchError(f"Pareto file not found: {path}")
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        if not 0 <= index < len(lines):
            raise SearchError(f"--index {index} out of range: {path} holds {len(lines)} specs")
        try:
            obj = json.loads(lines[index])
            runtime = obj.get("runtime")
            if runtime is not None and not _runtime_ok(runtime):
                raise ValueError(f"bad runtime {runtime!r:.80}")
            return space.parse(json.dumps(obj.get("spec", obj))), obj.get("target"), runtime
        except (ValueError, SpecError, AttributeError) as e:
            raise SearchError(f"{path} line {index + 1}: not a spec of this checkpoint's space ({e})") from None

    def ranked(self, latency_ms: float, max_bytes: float | None = None, margin: float = 0.0,
               file_bytes=None, need: int | None = None) -> list[dict]:
        """Subnets with predicted latency <= budget / (1 + margin) (and bytes), the most accurate
        (predicted) first, the faster first among equals; SearchError when there is none.

        ``file_bytes(row)``: the exact size of the row's exported file (``export.deploy.FileSize``);
        with ``max_bytes`` it decides, row by row in that order, until ``need`` rows fit (each
        size is kept in the row as ``file_bytes``: save the set to keep them). Without it,
        ``max_bytes`` applies to the search's size objective (``bytes``: weights as stored, and biases)."""
        limit = latency_ms / (1.0 + margin)
        ok = sorted((r for r in self.rows if r["latency_ms"] <= limit), key=lambda r: (-r["top1"], r["latency_ms"]))
        checked: list[int] = []
        if max_bytes is not None:
            def size(r: dict) -> int:
                if file_bytes is None:
                    return r["bytes"]
                if not isinstance(r.get("file_bytes"), int):
                    r["file_bytes"] = int(file_bytes(r))
                return r["file_bytes"]
            fit = []
            for r in ok:
                if need is not None and len(fit) >= need:
                    break
                checked.append(size(r))
                if checked[-1] <= max_bytes:
                    fit.append(r)
            ok = fit
        if not ok:
            fastest = min(self.rows, key=lambda r: r["latency_ms"])
            what = "file" if file_bytes is not None else "weight"
            msg = (f"no subnet meets {latency_ms:g} ms" + (f" with a {margin:.0%} margin" if margin else "")
                   + (f" and {max_bytes:,.0f} {what} bytes" if max_bytes is not None else "") +
                   f": the fastest achievable on this table is {fastest['latency_ms']:.3f} ms"
                   + (f"; under the latency budget the smallest is {min(checked):,} {what} bytes" if checked else ""))
            raise SearchError(msg)
        return ok

    def answer(self, latency_ms: float, max_bytes: float | None = None, margin: float = 0.0) -> dict:
        """Most accurate subnet with predicted latency <= budget / (1 + margin) (and bytes)."""
        return self.ranked(latency_ms, max_bytes, margin)[0]

    def plot(self, path: Path, budget_ms: float | None = None, chosen: dict | None = None,
             measured_ms: float | None = None) -> None:
        """The front (predicted latency vs predicted top-1), coloured by size, or by runtime
        configuration where its subnets run in several; ``chosen`` (a row) is marked at its
        predicted latency and, given ``measured_ms``, at the measured one."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        lat = np.array([r["latency_ms"] for r in self.rows])
        acc = np.array([r["top1"] for r in self.rows])
        configs = sorted({r.get("table") for r in self.rows}, key=str)
        fig, ax = plt.subplots(figsize=(6, 4))
        if len(configs) > 1:
            for c in configs:
                on = np.array([r.get("table") == c for r in self.rows])
                ax.scatter(lat[on], acc[on], s=10, label=c)
            ax.set_xscale("log")
        else:
            sc = ax.scatter(lat, acc, c=np.array([r["bytes"] for r in self.rows]) / 1e3, s=10, cmap="viridis")
            fig.colorbar(sc, label="weight bytes as stored (kB)")
        if budget_ms is not None:
            ax.axvline(budget_ms, color="r", ls="--", lw=1, label=f"budget {budget_ms:g} ms")
        if chosen is not None:
            ax.scatter([chosen["latency_ms"]], [chosen["top1"]], marker="*", s=160, c="k", zorder=3,
                       label=f"chosen, predicted {chosen['latency_ms']:.3f} ms")
            if measured_ms is not None:
                ax.plot([chosen["latency_ms"], measured_ms], [chosen["top1"]] * 2, "k:", lw=1)
                ax.scatter([measured_ms], [chosen["top1"]], marker="x", s=80, c="m", zorder=3,
                           label=f"chosen, measured {measured_ms:.3f} ms")
        if budget_ms is not None or chosen is not None or len(configs) > 1:
            ax.legend(loc="lower right", fontsize=7)
        ax.set_xlabel("predicted latency (ms, measured table" + (" x the speed now)" if self.factors else ")"))
        ax.set_ylabel("predicted top-1 (%, held-out)")
        ax.set_title(f"Pareto set: {len(self.rows)} subnets" + (", each in its fastest configuration" if len(configs) > 1 else ""))
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=120)
        plt.close(fig)
        atomic_write(path, png.getvalue())
