"""``--verify K``: label the K subnets under the budget that the predictor ranks highest, on the
held-out split, calibrated and scored as their export will be, and answer with the truly best.

The predictor's error between near neighbours of the front is as large as their differences
(label noise bounds its Kendall tau near 0.8), so its first choice is often not the best of its
first few; K labels (seconds each) buy that back. Labels are kept in the saved Pareto set, keyed
by how they were taken, so asking again (any budget) labels only what is new.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from qfa.nas.pareto import ParetoSet

__all__ = ["label_key", "verify", "verify_on_holdout"]


def label_key(scored: str, delegate: str, calib_images: int, calib_draws: int, range_images: int) -> dict:
    """How a held-out label was taken: a stored label is reused only under the same key (the
    supernet and data are the Pareto set's own)."""
    return {"scored": scored, "delegate": delegate, "calib_images": calib_images, "calib_draws": calib_draws,
            "range_images": range_images}


def verify(sets: Sequence[tuple[ParetoSet, Path, list]], k: int, label: Callable[[dict], dict],
           keys: Callable[[dict], dict], progress: Callable[[int, int, dict], None] | None = None) -> tuple[tuple, list[dict]]:
    """``sets``: (Pareto set, its base path, its rows under the budget ranked as ``ParetoSet.ranked``
    gives them) per table. Labels the ``k`` best-predicted rows over all tables (``label(row)``:
    ``{"top1": ...}`` and what else the label should record;
    ``keys(row)``: the key its label is taken under), saving each label into its set as soon as
    it is taken (an interrupted run keeps them). Returns ((row, set, base) of the best label,
    the faster first among equals; a report line per labelled row, best-predicted first)."""
    pool = sorted(((r, ps, base) for ps, base, ranked in sets for r in ranked),
                  key=lambda t: (-t[0]["top1"], t[0]["latency_ms"]))[:k]
    report = []
    for i, (row, ps, base) in enumerate(pool):
        key = keys(row)
        have = row.get("holdout") or {}
        cached = {k_: have.get(k_) for k_ in key} == key and "top1" in have
        if not cached:
            row["holdout"] = {**label(row), **key}
            ps.save_rows(base)
        report.append({"hash": row["hash"], "index": row["index"], "table": base.name, "predicted_top1": row["top1"],
                       "holdout_top1": row["holdout"]["top1"], "latency_ms": row["latency_ms"], "cached": cached})
        if progress:
            progress(i + 1, len(pool), report[-1])
    best = max(range(len(pool)), key=lambda i: (pool[i][0]["holdout"]["top1"], -pool[i][0]["latency_ms"]))
    return pool[best], report


def verify_on_holdout(load_net: Callable[[], object], sets: Sequence[tuple[ParetoSet, Path, list]], k: int,
                      calib_images: int, calib_draws: int = 1, data_root: str | None = None,
                      progress: Callable[[int, int, dict], None] | None = None) -> tuple[tuple, list[dict]]:
    """:func:`verify` with labels as an export takes them: ``calib_images`` training images (best
    of ``calib_draws`` draws), 8-bit ranges from ``min(512, calib_images)`` images, scored as
    deployed for each row's target and delegate, on the datasets an export of ``data_root`` (None:
    the supernet's own data) at the row's resolution reads. ``load_net()`` is called only when a label
    is missing: answering from stored labels loads nothing."""
    from export.deploy import RANGE_IMAGES
    range_images = min(RANGE_IMAGES, calib_images)
    cache: dict = {}

    def keys(row: dict) -> dict:
        return label_key(row.get("target", "tflite-int8"), (row.get("runtime") or {}).get("delegate", "xnnpack"),
                         calib_images, calib_draws, range_images)

    def take(row: dict) -> dict:
        from qfa.nas.predictor import label
        from qfa.nn.data import make_datasets
        net = cache["net"] = cache.get("net") or load_net()
        key, spec = keys(row), net.space.parse(json.dumps(row["spec"]))
        if spec.resolution not in cache:
            cache[spec.resolution] = make_datasets(data_root or net.data, spec.resolution, space=net.space)
        data = cache[spec.resolution]
        return {"top1": label(net, spec, data, calib_images, key["scored"], key["delegate"], calib_draws, range_images),
                "holdout_images": len(data["holdout"])}
    return verify(sets, k, take, keys, progress)
