import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qfa.nn.checkpoint import CheckpointError, load_checkpoint
from qfa.core.space import FP, QBits, get_space
from qfa.nn.supernet import Supernet
from qfa.train.config import ConfigError, load_config
from qfa.train.step import SandwichStep, param_groups
from tests.conftest import free_port

# A tiny but complete run: float stage, stage 0 (with FP) and stage 1, ~5 steps each at batch 8.
TINY = ["batch_size=8", "float.epochs=0.0008", "stage0.epochs=0.0008", "stage1.epochs=0.0008",
        "calib_images=64", "eval_images=0", "ckpt_every=1", "float.warmup_epochs=0.0002",
        "stage0.warmup_epochs=0", "stage1.warmup_epochs=0"]


def _train_cmd(out: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "qfa", "train", "fmnist", "--out", str(out), "--json"]
    for kv in TINY:
        args += ["--set", kv]
    return args + list(extra)


def _env(threads: int = 1) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal, NaN equal to NaN (never-calibrated quantizer ranges are NaN)."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def test_config_presets_and_overrides(tmp_path):
    cfg = load_config("fmnist", ["batch_size=16", "stage1.lr=0.02", "act_quant=minmax"])
    assert cfg.batch_size == 16 and cfg.stages[2].lr == 0.02 and cfg.act_quant == "minmax"
    assert [s.name for s in cfg.stages] == ["float", "stage0", "stage1"]
    assert cfg.stages[0].bits == [FP] and FP in cfg.stages[2].bits  # the float targets deploy FP: trained last
    assert [s.n_random for s in cfg.stages] == [2, None, None]  # float stage: BigNAS's 2 random subnets
    assert load_config("fmnist", ["stage1.n_random=1"]).stages[2].n_random == 1
    assert load_config("fmnist", ["stage1.deploy_quant=true"]).stages[2].deploy_quant
    assert load_config("fmnist", ["stage1.min_lowest_bits=true"]).stages[2].min_lowest_bits
    paper = load_config("paper")
    assert paper.space_bits == [2, 3, 4, 32] and paper.n_random == 4 and paper.grad_clip == 500
    toml = tmp_path / "c.toml"
    toml.write_text('space = "fmnist"\nbatch_size = 4\n[[stages]]\nname = "s"\nepochs = 1\nbits = [4]\nlr = 0.1\n')
    assert load_config(str(toml)).batch_size == 4
    for bad, msg in ((["nope=1"], "unknown config key 'nope'"), (["stage9.lr=1"], "no stage named 'stage9'"),
                     (["stage1.foo=1"], "stages have no field 'foo'"), (["act_quant=xx"], "act_quant must be"),
                     (["float.n_random=-1"], "n_random must be >= 0"),
                     (["float.deploy_quant=true"], "deploy_quant is an option of quantized stages")):
        with pytest.raises(ConfigError, match=msg):
            load_config("fmnist", bad)
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        load_config("no-such-config")


def test_step_accumulates_every_subnet_and_no_decay_on_bn_bias_quantizers():
    torch.manual_seed(0)
    space = get_space("fmnist")
    net = Supernet(space).train()
    groups = param_groups(net, 3e-5)
    decayed = {id(p) for p in groups[0]["params"]}
    assert id(net.stages[0][0].expand.weight) in decayed
    for p in (net.stages[0][0].expand.bn.weight, net.classifier.bias, net.stages[0][0].expand.aq.get(4).theta,
              net.stages[0][0].expand.wq.get(4).step):
        assert id(p) not in decayed
    rng = np.random.default_rng(0)
    specs = space.sandwich(rng, 4, bits=(2, 3, 4))
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss = SandwichStep(net, teacher=None)(x, y, specs)
    assert loss.ndim == 0 and torch.isfinite(loss)
    losses = []
    for deploy_quant in (False, False, True):
        net.zero_grad()
        torch.manual_seed(1)  # the same dropout
        losses.append(float(SandwichStep(net, teacher=None, deploy_quant=deploy_quant)(x, y, specs)))
    assert losses[0] == losses[1] != losses[2] and math.isfinite(losses[2])  # the file's 8-bit tensors ...
    assert net.stem.weight.grad.abs().sum() > 0 and not net.deploy_quant  # ... pass gradients; calibration runs without them
    # gradients from both the largest (kernel 3..7, depth 3) and smallest subnet reached the weights
    assert net.stages[2][2].expand.weight.grad is not None
    assert net.stages[0][0].expand.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("every_s, saved_before_end", [(1e-9, [1, 2]), (1e9, [])])
def test_checkpoints_come_at_least_every_ckpt_every_s(tmp_path, monkeypatch, every_s, saved_before_end):
    """With step-based checkpoints out of reach (ckpt_every=1000), the time-based cadence alone
    writes one after each step once ckpt_every_s has passed, and none when it has not."""
    from qfa.train.loop import Trainer
    cfg = load_config("fmnist", TINY + ["ckpt_every=1000", f"ckpt_every_s={every_s}", "threads=1", "max_steps=3"])
    trainer = Trainer(cfg, tmp_path, progress=False)
    saved = []
    monkeypatch.setattr(trainer, "save", lambda: saved.append(trainer.step))
    trainer.run()
    assert [s for s in saved if s < 3] == saved_before_end and saved[-1] == 3


def test_a_stage_with_min_lowest_bits_trains_the_min_subnet_at_its_lowest_bits(tmp_path, monkeypatch):
    """The stage option reaches the sandwich: stage 1's min subnet is W2A2 at every step, stage
    0's (the option off) at random bits."""
    from qfa.train import loop
    seen = []
    monkeypatch.setattr(loop.SandwichStep, "__call__",
                        lambda self, x, y, specs: seen.append(specs) or torch.zeros(()))
    cfg = load_config("fmnist", TINY + ["threads=1", "stage0.epochs=0.003", "stage1.min_lowest_bits=true"])
    trainer = loop.Trainer(cfg, tmp_path, progress=False)
    trainer.run()
    stage = [trainer.stage_of(i) for i in range(len(seen))]
    min_bits = [set(specs[1].all_bits()) for specs in seen]
    assert stage.count(2) >= 4 and all(b == {QBits(2, 2)} for b, i in zip(min_bits, stage) if i == 2)
    assert len({frozenset(b) for b, i in zip(min_bits, stage) if i == 1}) > 1


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_weights(tmp_path):
    ref = tmp_path / "ref"
    r = subprocess.run(_train_cmd(ref), capture_output=True, text=True, env=_env(), timeout=540)
    assert r.returncode == 0, r.stderr[-2000:]
    total = json.loads(r.stdout)["total_steps"]
    assert total >= 12
    # kill -9 at a random step (after at least one checkpoint), then resume
    kill_at = int(np.random.default_rng(7).integers(2, total - 2))
    run = tmp_path / "killed"
    p = subprocess.Popen(_train_cmd(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 540
    try:
        while time.time() < deadline and p.poll() is None:
            if (run / "last.pt").exists():
                try:
                    if load_checkpoint(run / "last.pt")["step"] >= kill_at:
                        break
                except CheckpointError:
                    pass
            time.sleep(0.05)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    step_at_kill = load_checkpoint(run / "last.pt")["step"]
    assert step_at_kill < total, "the run finished before it could be killed"
    r = subprocess.run(_train_cmd(run, "--resume"), capture_output=True, text=True, env=_env(), timeout=540)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _weights(ref / "last.pt"), _weights(run / "last.pt")
    assert a.keys() == b.keys()
    diff = [k for k in a if not _same(a[k], b[k])]
    assert not diff, f"killed at step {step_at_kill}, resumed: {len(diff)} tensors differ, e.g. {diff[:3]}"
    assert any(k.endswith("theta") for k in a) and not _same(a["stages.0.0.expand.weight"],
                                                               Supernet(get_space("fmnist")).state_dict()["stages.0.0.expand.weight"])
    # each stage's checkpoint is kept, and the float one can seed the precision stages
    assert {f"stage_{n}.pt" for n in ("float", "stage0", "stage1")} <= {f.name for f in run.iterdir()}


@pytest.mark.slow
def test_ddp_two_processes_keep_identical_replicas(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "qfa", "train", "fmnist", "--out", str(out), "--json", "--max-steps", "8"]
    for kv in TINY:
        cmd += ["--set", kv]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=540)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["world"] == 2 and res["step"] == 8
    fps = res["replica_fingerprints"]
    assert len(fps) == 2 and fps[0] == fps[1]
    # the replicas also moved away from the initialisation
    init = Supernet(get_space("fmnist"))
    state = _weights(out / "last.pt")
    assert not torch.equal(state["stages.0.0.expand.weight"], init.state_dict()["stages.0.0.expand.weight"])


def test_bad_checkpoints_and_runs_give_one_clear_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "qfa-ckpt/1", "obj": Path("x")}, pickled)  # needs unpickling code: refused
    for path, code in ((bad, 2), (pickled, 2), (tmp_path / "missing.pt", 2)):
        r = subprocess.run([sys.executable, "-m", "qfa", "eval", "--checkpoint", str(path), "--sample", "max"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == code
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    run = tmp_path / "run"
    run.mkdir()
    r = subprocess.run(_train_cmd(run, "--resume"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no checkpoint" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (run / "last.pt").write_bytes(b"garbage")
    r = subprocess.run(_train_cmd(run, "--resume"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not a readable qfa checkpoint" in r.stderr
    r = subprocess.run(_train_cmd(run), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "already holds a run" in r.stderr
    assert (run / "last.pt").read_bytes() == b"garbage"  # nothing overwritten


def test_core_share_gives_up_the_core_another_process_takes(tmp_path):
    """A busy process outside this one's tree (started as from another terminal) takes a core:
    the pool shrinks by one; when it ends, the pool grows back."""
    import psutil
    from qfa.train.cores import CoreShare
    cores = psutil.cpu_count()
    before = torch.get_num_threads()
    pidfile = tmp_path / "busy.pid"
    subprocess.run(["setsid", "-f", sys.executable, "-c",
                    f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); t = time.time()\n"
                    "while time.time() - t < 30: pass"], check=True)
    try:
        share = CoreShare(cores, every_s=1.0)
        time.sleep(1.2)
        assert share() == cores - 1 and torch.get_num_threads() == cores - 1
    finally:
        deadline = time.time() + 5
        while not pidfile.exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
    time.sleep(1.2)
    try:
        assert share() == cores and torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(before)
