"""Predictor data, predictor and NSGA-II search (pymoo) over the shipped, measured host table."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hw.table import LatencyTable
from qfa.core.cost import CostModel
from qfa.nn.data import make_datasets
from qfa.nas.predictor import ENCODING, ENCODINGS, Predictor, collect, fit, load_rows, onehot, split_onehot, strata_specs
from qfa.nas.search import Fastest, ParetoSet, SearchError, deployed_bytes, per_configuration, search_front
from qfa.core.space import get_space
from qfa.nn.supernet import Supernet
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SPACE = get_space("fmnist")
TABLE = ROOT / "latency_tables" / "amd-epyc-zen4-1t.csv"


def test_collect_appends_resumes_and_uses_the_holdout(tmp_path):
    torch.manual_seed(0)
    net = Supernet(SPACE)
    data = make_datasets(None, 32)
    out = tmp_path / "labels.csv"
    assert collect(net, data, out, 3, calib_images=64, eval_images=64) == 3
    assert collect(net, data, out, 4, calib_images=64, eval_images=64) == 1  # resumes: 3 done
    rows = load_rows(out)
    assert len(rows) == 4 and len({r["hash"] for r in rows}) == 4
    assert all(0 <= float(r["top1"]) <= 100 and int(r["images"]) == 64 for r in rows)
    kinds = [k for k, _ in strata_specs(SPACE, 8)]
    assert kinds.count("uniform") == kinds.count("max_depth") == 2


@pytest.mark.slow
def test_collect_under_torchrun_shards_specs_and_matches_one_process(tmp_path):
    import os
    import subprocess
    import sys
    from qfa.nn.checkpoint import save_checkpoint
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "last.pt", {"space_json": json.dumps(SPACE.to_json()), "act_quant": "bq",
                                           "model": Supernet(SPACE).state_dict(), "step": 0})
    args = ["-m", "qfa", "predictor", "collect", "--checkpoint", str(tmp_path), "--subnets", "6",
            "--calib-images", "64", "--eval-images", "200", "--json", "--data-csv"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same float reduction order in both runs
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                          *args, str(tmp_path / "two.csv")], capture_output=True, text=True, env=env, timeout=540)
    assert two.returncode == 0, two.stderr[-2000:]
    one = subprocess.run([sys.executable, *args, str(tmp_path / "one.csv")], capture_output=True, text=True,
                         env=env, timeout=540)
    assert one.returncode == 0, one.stderr[-2000:]
    assert (tmp_path / "two.csv").read_text().count("hash,") == 1  # one header from two writers
    rows = lambda f: sorted((r["hash"], r["top1"]) for r in load_rows(tmp_path / f))  # noqa: E731
    assert len(rows("two.csv")) == 6 and rows("two.csv") == rows("one.csv")
    before = (tmp_path / "one.csv").read_bytes()
    other = [a if a != "64" else "128" for a in args]  # --calib-images 128 onto labels calibrated on 64
    mixed = subprocess.run([sys.executable, *other, str(tmp_path / "one.csv")], capture_output=True, text=True,
                           env=env, timeout=540)
    assert mixed.returncode == 2 and len(mixed.stderr.strip().splitlines()) == 1, mixed.stderr[-2000:]
    assert "calibrated on [64] images" in mixed.stderr and (tmp_path / "one.csv").read_bytes() == before


def test_calibrate_best_keeps_the_draw_best_on_the_held_out_split():
    from qfa.nn.calibrate import calibrate
    from qfa.nn.evaluate import calib_batches, calib_seeds, calibrate_best
    from tests.conftest import perturb
    torch.manual_seed(0)
    net = Supernet(SPACE)
    perturb(net, seed=3)
    data = make_datasets(None, 32)
    spec = SPACE.min_spec(bits=2)

    def buffers(seed=None):
        if seed is not None:
            calibrate(net, spec, calib_batches(data["train"], 64, seed=seed), 64)
        return torch.cat([b.flatten().float() for n, b in net.named_buffers() if "running" in n]).nan_to_num(7.0)
    info = calibrate_best(net, spec, data, calib_images=64, draws=3, select_images=300)
    kept = buffers()
    held = info["holdout_top1_draws"]
    assert len(held) == 3 and info["holdout_top1"] == max(held)
    assert info["seed"] == calib_seeds(3)[int(np.argmax(held))]
    assert torch.equal(kept, buffers(info["seed"]))  # the net is left calibrated on the chosen draw
    others = [s for s in calib_seeds(3) if s != info["seed"]]
    assert all(not torch.equal(kept, buffers(s)) for s in others)


def test_calibrate_best_chooses_the_draw_as_the_subnet_is_scored():
    """Scored as deployed, a subnet's calibration draw is chosen as deployed: the fake-quant
    model's held-out top-1 differs and may prefer another draw."""
    from export.deploy import deployed_model
    from qfa.nn.calibrate import calibrate
    from qfa.nn.evaluate import calib_batches, calib_seeds, calibrate_best, score
    from tests.conftest import perturb
    torch.manual_seed(0)
    net = Supernet(SPACE)
    perturb(net, seed=3)
    data = make_datasets(None, 24)
    spec = SPACE.min_spec(bits=2)
    model_for = lambda n, s: deployed_model(n, s, data, "tflite-int8", 64)  # noqa: E731
    held = calibrate_best(net, spec, data, 64, draws=2, select_images=300, model_for=model_for)["holdout_top1_draws"]
    fake = calibrate_best(net, spec, data, 64, draws=2, select_images=300)["holdout_top1_draws"]
    for seed, h in zip(calib_seeds(2), held):
        calibrate(net, spec, calib_batches(data["train"], 64, seed=seed), 64)
        assert h == score(net, spec, data["holdout"], 300, model_for=model_for)
    assert held != fake


def test_onehot_is_invariant_to_inactive_genes():
    rng = np.random.default_rng(0)
    spec = next(s for s in (SPACE.sample(rng) for _ in range(100)) if s.depths[0] < max(SPACE.depths))
    g = SPACE.encode(spec)
    g2 = g.copy()
    g2[SPACE.layout.slot_offset(0, max(SPACE.depths) - 1)] = 2  # scribble on an inactive slot of stage 1
    assert (g2 != g).any() and SPACE.decode(g2) == spec
    for blocks in (onehot, split_onehot):
        np.testing.assert_array_equal(blocks(SPACE, g[None]), blocks(SPACE, g2[None]))


def test_split_encoding_marks_each_conv_weight_and_activation_bits_once():
    rng = np.random.default_rng(3)
    specs = [SPACE.sample(rng) for _ in range(20)]
    x = split_onehot(SPACE, np.stack([SPACE.encode(s) for s in specs]))
    convs = np.array([len(s.all_bits()) for s in specs])
    # one arch block per resolution, depth and active kernel/expand gene; two per active conv
    np.testing.assert_array_equal(x.sum(1), 1 + len(SPACE.stages) + 2 * np.array([sum(s.depths) for s in specs])
                                  + 2 * convs)
    nb = len(SPACE.bits)  # the first block's first conv: its activation-bits block follows its weight-bits one
    first = x[:, -(4 * 2 * nb):-(3 * 2 * nb)]
    np.testing.assert_array_equal(first[:, nb + SPACE.bits.index(2)], [s.first[0].a == 2 for s in specs])
    np.testing.assert_array_equal(first[:, SPACE.bits.index(2)], [s.first[0].w == 2 for s in specs])


def _synthetic_rows(n: int, top1, seed: int = 2) -> list[dict]:
    specs = [s for _, s in strata_specs(SPACE, n, seed=seed)]
    y = np.array([top1(s) for s in specs]) + np.random.default_rng(0).normal(0, 0.1, n)
    return [{"spec": s.dumps(), "top1": float(v)} for s, v in zip(specs, y)]


def _a2_convs(s) -> int:
    return sum(q.a == 2 for q in s.all_bits())


def test_split_encoding_learns_an_activation_bit_cost_from_fewer_labels():
    """Synthetic labels where every 2-bit activation costs 0.4 points, whatever the weight bits
    beside it: one weight-bits and one activation-bits block per conv learn it from 150 labels
    better than one block per (w, a) pair."""
    rows = _synthetic_rows(150, lambda s: 90 - 0.4 * _a2_convs(s))
    rmse = {enc: fit(SPACE, rows, hidden=32, layers=1, epochs=20, encodings=[enc], target="top1")[1]["rmse"]
            for enc in ("onehot+cost/1", "split+cost/3")}
    assert rmse["split+cost/3"] < 0.75 * rmse["onehot+cost/1"], rmse


def test_inverse_error_target_fits_compounding_errors():
    """Synthetic labels whose error rate grows as 1 / (1 - 0.025 n) with n 2-bit activations (each
    costs more points the more there are): fitted to -1/error the additive model fits them, to
    top-1 it cannot; and the saved predictor maps its output back to top-1."""
    rows = _synthetic_rows(200, lambda s: 100 - 10 / (1 - 0.025 * _a2_convs(s)))
    fits = {t: fit(SPACE, rows, hidden=32, layers=1, epochs=20, encodings=["split+cost/3"], target=t) for t in
            ("top1", "inverse_error")}
    rmse = {t: m["rmse"] for t, (_, m) in fits.items()}
    assert rmse["inverse_error"] < 0.6 * rmse["top1"], rmse
    pred = fits["inverse_error"][0]
    y = np.array([float(r["top1"]) for r in rows])
    assert abs(np.median(pred.predict_many(SPACE, np.stack([SPACE.encode(SPACE.parse(r["spec"])) for r in rows])))
               - np.median(y)) < 1.0


def test_encoding_learns_what_a_choice_costs_at_each_resolution():
    """Synthetic labels where a choice costs 3 points only at the highest resolution (the trained
    fmnist supernet's worst non-uniform subnets all run at 32 px with a 2-bit first block): the
    resolution copies learn it, one coefficient per gene cannot."""
    specs = [s for _, s in strata_specs(SPACE, 400, seed=2)]
    hurt = np.array([s.stages[0][0].kernel == max(SPACE.kernels) and s.resolution == max(SPACE.resolutions)
                     for s in specs])
    c = CostModel(SPACE).of_specs(specs)
    y = 85 + np.log(c["bitops"] / 1e9) - 3 * hurt + np.random.default_rng(0).normal(0, 0.1, len(specs))
    rows = [{"spec": s.dumps(), "top1": float(v)} for s, v in zip(specs, y)]
    rmse = {enc: fit(SPACE, rows, hidden=32, layers=1, epochs=20, encodings=[enc])[1]["rmse"]
            for enc in ("onehot+cost/1", ENCODING)}
    assert rmse[ENCODING] < 0.6 * rmse["onehot+cost/1"], rmse


@pytest.fixture(scope="module")
def predictor():
    """A predictor fitted on SYNTHETIC labels (a smooth function of the subnet's costs): the
    search tests check properties of the search, not predictor quality (bench/search.py does)."""
    rng = np.random.default_rng(0)
    specs = [s for _, s in strata_specs(SPACE, 120, seed=1)]
    c = CostModel(SPACE).of_specs(specs)
    y = 70 + 5 * np.log(c["macs"] / 1e6) + 2 * np.log(c["bitops"] / 1e9) + rng.normal(0, 0.1, len(specs))
    rows = [{"spec": s.dumps(), "top1": float(v)} for s, v in zip(specs, y)]
    pred, metrics = fit(SPACE, rows, hidden=64, layers=2, epochs=150)
    assert metrics["kendall_tau"] > 0.5  # learnable even from 96 subnets
    # the link keeps a search from scoring any subnet past the best label
    anywhere = np.stack([SPACE.encode(SPACE.sample(rng)) for _ in range(2000)] + [SPACE.encode(SPACE.max_spec(bits=8))])
    assert pred.predict_many(SPACE, anywhere).max() <= y.max() + 1e-6
    return pred


def test_search_front_is_feasible_nondominated_and_reloads(predictor, tmp_path):
    table = LatencyTable.load(TABLE)
    front = search_front(SPACE, predictor, table, pop=60, gens=15, seed=0)
    F = np.column_stack([-front["top1"], front["latency_ms"], front["bytes"]])
    for i in range(len(F)):  # no member dominated by another
        dom = np.all(F <= F[i], axis=1) & np.any(F < F[i], axis=1)
        assert not dom.any()
    pset = ParetoSet.from_front(SPACE, front)
    # objectives are what the table and predictor say for the decoded specs
    specs = [SPACE.parse(json.dumps(r["spec"])) for r in pset.rows]
    np.testing.assert_allclose([r["latency_ms"] for r in pset.rows], [table.predict(s) for s in specs], rtol=1e-6)
    np.testing.assert_allclose([r["top1"] for r in pset.rows], [predictor.predict(s) for s in specs], rtol=1e-5)
    budget = float(np.median(front["latency_ms"]))
    best = pset.answer(budget)
    assert best["latency_ms"] <= budget
    assert all(r["top1"] <= best["top1"] for r in pset.rows if r["latency_ms"] <= budget)
    pset.save(tmp_path / "p", budget)
    again = ParetoSet.load(tmp_path / "p")
    assert again.answer(budget) == best and (tmp_path / "p.png").stat().st_size > 1000
    import pandas as pd
    assert len(pd.read_csv(tmp_path / "p.csv")) == len(pset.rows)
    with pytest.raises(SearchError, match="fastest achievable on this table is"):
        pset.answer(min(front["latency_ms"]) * 0.5)
    small = min(r["bytes"] for r in pset.rows)
    assert pset.answer(max(front["latency_ms"]), small)["bytes"] == small


def test_deployed_bytes_ignore_nominal_bits():
    c = CostModel(SPACE)
    a, b = SPACE.max_spec(bits=2), SPACE.max_spec(bits=8)
    g = np.stack([SPACE.encode(a), SPACE.encode(b)])
    d = deployed_bytes(c, g)
    assert d[0] == d[1] and c(g)["bytes"][0] < c(g)["bytes"][1]
    # an FP conv stores 4 (float32) or 2 (fp16) bytes a weight on a float target, an int8 one 1
    f = np.stack([SPACE.encode(SPACE.max_spec(bits=32)), SPACE.encode(b)])
    d1, d2, d4 = (deployed_bytes(c, f, n) for n in (1, 2, 4))
    assert d1[0] == d[1] and d4[1] == d2[1] == d1[1]
    fp_weights = d2[0] - d1[0]  # the searchable convs' weights: most of the file
    assert fp_weights > 0.5 * d1[0] and d4[0] == pytest.approx(d1[0] + 3 * fp_weights)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_every_encoding_fits_saves_and_predicts_the_same_after_loading(encoding, tmp_path):
    """Each registered encoding: a fit on it learns a real signal (held-out tau > 0.5 on labels
    that follow the MACs), its features are finite, and the saved predictor reloads to the same
    predictions."""
    from qfa.core.cost import total_costs
    from qfa.nas.predictor import features
    rng = np.random.default_rng(11)
    specs = [SPACE.sample(rng) for _ in range(120)]
    rows = [{"hash": s.hash, "spec": s.dumps(), "top1": 80 + 2 * np.log(total_costs(s)["macs"] / 1e6)
             + rng.normal(0, 0.05), "images": 1000, "calib_images": 64, "stratum": "random"} for s in specs]
    pred, metrics = fit(SPACE, rows, hidden=16, layers=1, epochs=10, encodings=[encoding], target="top1")
    assert metrics["encoding"] == encoding and metrics["kendall_tau"] > 0.5
    g = np.stack([SPACE.encode(s) for s in specs[:8]])
    x = features(SPACE, g, np.zeros(3), np.ones(3), encoding)
    assert np.isfinite(x).all() and x.shape[0] == 8
    pred.save(tmp_path / "p.safetensors")
    np.testing.assert_allclose(Predictor.load(tmp_path / "p.safetensors").predict_many(SPACE, g),
                               pred.predict_many(SPACE, g), rtol=1e-6)


def test_one_search_over_runtime_configurations_runs_each_subnet_in_its_fastest(predictor, tmp_path):
    """The configuration as a gene resolved per genome (``Fastest``): two configurations of one
    target, neither faster everywhere (a STAND-IN second one: the table's entries at the smallest
    resolution at half their time, the others at twice, labelled builtin). One NSGA-II run keeps
    subnets of both; each row runs in its faster configuration and knows its time on the other;
    the speed now scales a row by its own table's factor; tables of two targets are refused."""
    import pandas as pd
    df = pd.read_csv(TABLE)
    scale = np.where(df["resolution"] == min(SPACE.resolutions), 0.5, 2.0)
    df[["min_us", "median_us"]] = df[["min_us", "median_us"]].mul(scale, axis=0)
    other = tmp_path / "other.csv"
    df.to_csv(other, index=False)
    other.with_suffix(".json").write_text(json.dumps({**json.loads(TABLE.with_suffix(".json").read_text()),
                                                      "delegate": "builtin"}))
    tables = {"a": LatencyTable.load(TABLE), "b": LatencyTable.load(other)}
    both = Fastest(tables)
    pset = ParetoSet.from_front(SPACE, search_front(SPACE, predictor, both, pop=60, gens=15, seed=0), both.target_name)
    specs = [SPACE.parse(json.dumps(r["spec"])) for r in pset.rows]
    on = {n: np.array([t.predict(sp) for sp in specs]) for n, t in tables.items()}
    np.testing.assert_allclose([r["latency_ms"] for r in pset.rows], np.minimum(on["a"], on["b"]), rtol=1e-6)
    assert [r["table"] for r in pset.rows] == ["a" if x <= y else "b" for x, y in zip(on["a"], on["b"])]
    assert {r["table"] for r in pset.rows} == {"a", "b"}  # the gene is used: each configuration wins somewhere
    assert all(r["runtime"] == tables[r["table"]].runtime for r in pset.rows)
    np.testing.assert_allclose([r["latency_by_table"]["b"] for r in pset.rows], on["b"], rtol=1e-6)
    # what each configuration offers under a budget: the most accurate row on its own table
    mid = np.sort(on["a"])[len(specs) // 2 - 1:len(specs) // 2 + 1]
    budget = float(mid.mean())  # between two rows: no row sits on the budget
    best = pset.answer(budget)
    cands = per_configuration(pset, budget, 0.0, {n: (Path(f"{n}.csv"), t.runtime) for n, t in tables.items()}, best)
    for c, n in zip(cands, "ab"):
        assert c["runtime"] == tables[n].runtime
        assert c["top1"] == max(r["top1"] for r in pset.rows if r["latency_by_table"][n] <= budget)
        assert c["chosen"] == (n == best["table"])
    # at this host's speed now (b 3x slower than measured): each row in its fastest configuration
    # at those speeds; saved, a row keeps its table's own latency
    slow = pset.at_speed({"b": 3.0}, {n: t.runtime for n, t in tables.items()})
    want = np.minimum(on["a"], 3 * on["b"])
    assert [r["latency_ms"] for r in slow.rows] == pytest.approx(want)
    assert [r["table"] for r in slow.rows] == ["a" if x <= 3 * y else "b" for x, y in zip(on["a"], on["b"])]
    assert all(r["runtime"] == tables[r["table"]].runtime for r in slow.rows)
    assert sum(r["table"] == "b" for r in slow.rows) < sum(r["table"] == "b" for r in pset.rows)
    slow.save_rows(tmp_path / "s")
    assert [r["latency_ms"] for r in ParetoSet.load(tmp_path / "s").rows] == pytest.approx(
        [(x if t == "a" else y) for x, y, t in zip(on["a"], on["b"], (r["table"] for r in slow.rows))])
    f32 = LatencyTable.load(ROOT / "latency_tables" / "amd-epyc-zen4-1t-f32-hswish-decomposed.csv")
    with pytest.raises(SearchError, match="different targets"):
        Fastest({"a": tables["a"], "f": f32})


def test_search_across_configurations_takes_the_best_answer_over_tables(tmp_path):
    """Two tables of one space: the shipped one, and a STAND-IN for a second runtime
    configuration (the same rows at half the latency, labelled builtin). Under one budget the
    answer is the most accurate over both, and says which configuration it is for; tables of two
    targets are refused in one line."""
    import json as _json
    import pandas as pd
    from tests.hostile import call, check, make_search_world
    w = make_search_world(tmp_path)
    fast = tmp_path / "fast.csv"
    df = pd.read_csv(w.table)
    df[["min_us", "median_us"]] /= 2
    df.to_csv(fast, index=False)
    meta = _json.loads(w.table.with_suffix(".json").read_text())
    fast.with_suffix(".json").write_text(_json.dumps({**meta, "delegate": "builtin", "overhead_us": meta["overhead_us"] / 2}))
    more = ("--pop", "64", "--gens", "40")
    one = call(w.argv("--latency-ms", "0.2", *more))
    both = call(w.argv("--latency-ms", "0.2", "--table", str(fast), *more))
    check(one, {0}), check(both, {0})
    a, b = _json.loads(one.out), _json.loads(both.out)
    assert a["runtime"]["delegate"] == "xnnpack" and len(b["candidates"]) == 2
    assert b["predicted_top1"] >= max(c["top1"] for c in b["candidates"] if c["top1"] is not None) >= a["predicted_top1"]
    assert [c["chosen"] for c in b["candidates"]].count(True) == 1
    assert b["runtime"]["delegate"] == "builtin" and b["table"] == str(fast)
    # a budget only the faster deployment meets (under the slow table's fastest subnet, margin
    # included): answered from it, not refused
    slow_min = min(_json.loads(ln)["latency_ms"] for ln in open(a["pareto"]))
    tight = call(w.argv("--latency-ms", f"{slow_min:.6f}", "--table", str(fast), *more))
    check(tight, {0})
    assert _json.loads(tight.out)["table"] == str(fast)
    alone = call(w.argv("--latency-ms", f"{slow_min:.6f}", *more))
    check(alone, {2})
    f32 = ROOT / "latency_tables" / "amd-epyc-zen4-1t-f32-hswish-decomposed.csv"
    mixed = call(w.argv("--latency-ms", "0.2", "--table", str(f32), *more))
    check(mixed, {2})
    assert "different targets" in mixed.errors[0]


def test_verify_answers_with_the_best_label_and_keeps_labels_by_how_they_were_taken(predictor, tmp_path):
    """``--verify K`` logic on a real front: of the K best-predicted under the budget, the one
    with the best label wins (here labels rank them in reverse); labels persist in the saved
    set and are reused only under the same key."""
    from qfa.nas.verify import verify
    table = LatencyTable.load(TABLE)
    pset = ParetoSet.from_front(SPACE, search_front(SPACE, predictor, table, pop=60, gens=10, seed=0))
    budget = float(np.median([r["latency_ms"] for r in pset.rows]))
    base = tmp_path / "p"
    pset.save(base, budget)
    taken = []

    def label(row):  # a stand-in for a held-out label: the predictor's order reversed
        taken.append(row["hash"])
        return {"top1": 100.0 - row["top1"]}
    key = lambda row: {"calib_images": 64}  # noqa: E731
    ranked = pset.ranked(budget)
    assert len(ranked) >= 4
    (best, _, _), report = verify([(pset, base, ranked)], 4, label, key)
    assert [r["hash"] for r in report] == [r["hash"] for r in ranked[:4]] == taken
    assert best["hash"] == ranked[3]["hash"] and not any(r["cached"] for r in report)
    again = ParetoSet.load(base)  # the labels are in the file; the same key takes none again
    (best2, _, _), report2 = verify([(again, base, again.ranked(budget))], 4, label, key)
    assert best2["hash"] == best["hash"] and all(r["cached"] for r in report2) and len(taken) == 4
    import pandas as pd
    assert pd.read_csv(base.with_suffix(".csv"))["holdout_top1"].notna().sum() == 4
    verify([(again, base, again.ranked(budget))], 4, label, lambda row: {"calib_images": 128})
    assert len(taken) == 8  # another calibration: labelled again


def test_float_targets_search_full_precision_where_it_was_trained_and_labelled():
    """FP convs enter the search only on a float target's table and with a predictor whose labels
    have them (a supernet whose last stage trained FP, scored for that target); the answer's
    report counts its float convs and prices its all-int8 and all-float twins on the table."""
    from qfa.core.space import FP
    from qfa.nas.search import formats_report
    rng = np.random.default_rng(0)
    specs = [s for _, s in strata_specs(SPACE, 120, seed=1, fp=True)]
    assert any(q.w == FP for s in specs for q in s.all_bits())
    c = CostModel(SPACE).of_specs(specs)
    share = np.array([np.mean([q.w == FP for q in s.all_bits()]) for s in specs])  # FP scores better here
    y = 70 + 5 * np.log(c["macs"] / 1e6) + 4 * share + rng.normal(0, 0.1, len(specs))
    pred, _ = fit(SPACE, [{"spec": s.dumps(), "top1": float(v)} for s, v in zip(specs, y)], hidden=32, layers=1,
                  epochs=40, encodings=[ENCODING])
    assert pred.meta["fp"]
    f32 = LatencyTable.load(ROOT / "latency_tables" / "amd-epyc-zen4-1t-f32-hswish-decomposed.csv")
    n_fp = {}
    for name, table in (("f32", f32), ("int8", LatencyTable.load(TABLE))):
        front = search_front(SPACE, pred, table, pop=40, gens=8, seed=0)
        rows = ParetoSet.from_front(SPACE, front).rows
        n_fp[name] = sum(q.w == FP for r in rows for q in SPACE.parse(json.dumps(r["spec"])).all_bits())
    assert n_fp["f32"] > 0 and n_fp["int8"] == 0, n_fp
    spec = SPACE.max_spec(bits=8).replace(resolution=24)
    rep = formats_report(spec, f32, pred)
    assert rep["float_convs"] == 0 and rep["float_format"] == "float32" and rep["convs"] == len(spec.all_bits())
    assert rep["w8a8"]["latency_ms"] == pytest.approx(f32.predict(spec)) and rep["fp"]["latency_ms"] > 0
    assert formats_report(spec, LatencyTable.load(TABLE), pred)["float_convs"] == 0


def test_labels_have_fp_only_for_float_targets_of_supernets_whose_last_stage_trained_it(tmp_path):
    from qfa.nn.checkpoint import save_checkpoint
    from qfa.nas.predictor import searches_fp
    for bits, want in (([2, 3, 4, 8, 32], True), ([2, 3, 4, 8], False)):
        save_checkpoint(tmp_path / "last.pt", {"space_json": json.dumps(SPACE.to_json()), "act_quant": "bq",
                                               "model": Supernet(SPACE).state_dict(), "step": 0,
                                               "config": {"stages": [{"name": "float", "bits": [32]},
                                                                     {"name": "stage1", "bits": bits}]}})
        net = Supernet.from_checkpoint(tmp_path / "last.pt")
        assert net.final_bits == tuple(bits)
        assert searches_fp(net, "tflite-f32-hswish-decomposed") == want
        assert not searches_fp(net, "tflite-int8-hswish-decomposed") and not searches_fp(net, "fake-quant")
