"""The training run: stages, schedule, distributed set-up, checkpoints, logs and resume.

Every random choice of a step (subnets, dropout, augmentation) is a function of
(seed, step) or (seed, epoch, sample), so a run killed at any step and resumed from its last
checkpoint ends with the same weights as an uninterrupted run.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from qfa.nn.calibrate import calibrate
from qfa.nn.data import ImageSet, make_datasets, skipped_note, space_for_data
from qfa.nn.evaluate import accuracy, calib_batches
from qfa.core.fileio import atomic_write
from qfa.core.space import FP, SpecError, get_space
from qfa.nn.supernet import Subnet, Supernet, extract
from qfa.nn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from qfa.train.config import ConfigError, TrainConfig
from qfa.train.cores import CoreShare
from qfa.train.step import SandwichStep, param_groups

__all__ = ["Trainer", "Dist"]


@dataclass
class Dist:
    """Process-group facts (single process: rank 0 of 1)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.default_rng([seed, step]).integers(2 ** 62))


class Trainer:
    """Runs (or resumes) a training run in ``run_dir``.

    Args:
        cfg: the configuration (ignored on resume: the checkpoint's config is used).
        run_dir: folder for ``last.pt``, ``metrics.csv``, ``config.json``.
        resume: continue from ``run_dir/last.pt``.
        init_float: start the precision stages from this float-supernet checkpoint.
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | os.PathLike, resume: bool = False,
                 init_float: str | None = None, progress: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.dist = Dist.from_env()
        self.progress = progress and self.dist.main
        state = None
        if resume:
            state = load_checkpoint(self.run_dir / "last.pt")
            cfg = TrainConfig.from_json(state["config"])
        self.cfg = cfg
        self.device = self._device()
        if self.dist.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        try:
            self.space = space_for_data(get_space(cfg.space, cfg.space_bits), cfg.data, cfg.in_channels,
                                        cfg.num_classes, cfg.resolutions)
        except SpecError as e:
            raise ConfigError(str(e)) from None
        for st in cfg.stages:
            extra = sorted(set(st.bits) - set(self.space.bits))
            if extra:
                raise ConfigError(f"stage {st.name!r} samples bits {extra} that space {cfg.space!r} "
                                  f"does not offer {self.space.bits}; set space_bits")
        torch.manual_seed(cfg.seed)
        self.net = Supernet(self.space, cfg.act_quant, cfg.dropout).to(self.device)
        if cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.data = make_datasets(cfg.data, self.space.resolutions[-1], cfg.seed, cfg.holdout_fraction, self.space)
        note = skipped_note(self.data)
        if self.progress and note:
            print(f"train: {note}", file=sys.stderr)
        if self.dist.main:  # the space fitted to the data, for hw/profile.py --space
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.run_dir / "space.json", json.dumps(self.space.to_json(), indent=1).encode())
        per_step = cfg.batch_size * self.dist.world
        self.steps_per_epoch = len(self.data["train"]) // per_step
        if self.steps_per_epoch == 0:
            raise ConfigError(f"batch {per_step} is larger than the training set ({len(self.data['train'])})")
        self.bounds = np.cumsum([0] + [max(1, round(s.epochs * self.steps_per_epoch)) for s in cfg.stages])
        self.step = 0
        self.teacher: Subnet | None = None
        self.stage_idx = -1
        self._tb = None  # TensorBoard writer, made on first log if tensorboard is installed
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        if state is not None:
            self._restore(state)
        elif init_float:
            self._init_from_float(init_float)

    # ---- set-up ---------------------------------------------------------------------------
    def _device(self) -> torch.device:
        want = self.cfg.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError("device cuda requested but no GPU is available")
            torch.cuda.set_device(self.dist.local_rank)
            return torch.device("cuda", self.dist.local_rank)
        return torch.device(want)

    def stage_of(self, step: int) -> int:
        return int(np.searchsorted(self.bounds, step, side="right") - 1)

    @property
    def total_steps(self) -> int:
        return int(self.bounds[-1])

    def _make_optimizer(self, idx: int) -> None:
        st = self.cfg.stages[idx]
        self.optimizer = torch.optim.SGD(param_groups(self.net, self.cfg.weight_decay), lr=st.lr,
                                         momentum=self.cfg.momentum, nesterov=self.cfg.nesterov)
        n = int(self.bounds[idx + 1] - self.bounds[idx])
        warm = min(n - 1, round(st.warmup_epochs * self.steps_per_epoch))

        def lr_lambda(i: int) -> float:  # linear warmup, then cosine to 0 over the stage
            if i < warm:
                return (i + 1) / (warm + 1)
            return 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, n - warm)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)

    def _stage_bits(self, idx: int) -> tuple[int, ...]:
        return tuple(self.cfg.stages[idx].bits)

    def _is_float(self, idx: int) -> bool:
        return self._stage_bits(idx) == (FP,)

    def _enter_stage(self, idx: int) -> None:
        """Stage transition: after the float stage, sort channels, initialise the LSQ steps from
        the trained weights and freeze the float max subnet as the distillation teacher."""
        prev_float = idx > 0 and self._is_float(idx - 1)
        if not self._is_float(idx) and self.teacher is None and (prev_float or idx == 0):
            if prev_float:
                self.net.sort_channels()
                self.net.init_weight_quantizers()
            self.teacher = self._make_teacher()
        self.stage_idx = idx
        self._make_optimizer(idx)

    def _make_teacher(self) -> Subnet | None:
        if FP not in self.space.bits or self.cfg.kd_ratio <= 0:
            return None
        spec = self.space.max_spec(bits=FP)
        calibrate(self.net, spec, calib_batches(self.data["train"], self.cfg.calib_images), self.cfg.calib_images)
        teacher = extract(self.net, spec)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher.eval()

    def _init_from_float(self, path: str) -> None:
        state = load_checkpoint(path)
        if state.get("space_hash") != self.space.hash:
            raise CheckpointError(f"{path}: float checkpoint of space {state.get('space')!r} "
                                  f"({state.get('space_hash')}), not {self.space.name!r} ({self.space.hash})")
        # Float weights only: quantizer parameters start afresh in the precision stages, so a float
        # supernet trained with any activation quantizer kind (or by another tool) can seed them.
        def is_quant(k: str) -> bool:
            return ".aq." in k or ".wq." in k
        float_state = {k: v for k, v in state["model"].items() if not is_quant(k)}
        missing, unexpected = self.net.load_state_dict(float_state, strict=False)
        missing = [k for k in missing if not is_quant(k)]
        if missing or unexpected:
            raise CheckpointError(f"{path}: does not fit this supernet (missing {missing[:3]}, unexpected {unexpected[:3]})")
        first_q = next((i for i in range(len(self.cfg.stages)) if not self._is_float(i)), None)
        if first_q is None:
            raise ConfigError("--init-float given but the config has no precision stage")
        self.step = int(self.bounds[first_q])
        self.net.sort_channels()
        self.net.init_weight_quantizers()
        self.teacher = self._make_teacher()
        self._enter_stage(first_q)

    # ---- checkpoints ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_json(), "space": self.space.name, "space_hash": self.space.hash,
            "space_json": json.dumps(self.space.to_json()), "act_quant": self.cfg.act_quant,
            "model": self.net.state_dict(), "step": self.step, "stage": self.stage_idx,
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "teacher": self.teacher.state_dict() if self.teacher else None,
            "teacher_spec": self.teacher.spec.dumps() if self.teacher else None,
            "torch_rng": torch.get_rng_state(),
            "world": self.dist.world, "dropout": self.cfg.dropout,
        }

    def save(self) -> None:
        if self.dist.main:
            save_checkpoint(self.run_dir / "last.pt", self.state())

    def _link_last(self) -> Path:
        tmp = self.run_dir / ".stage.tmp"
        tmp.unlink(missing_ok=True)
        os.link(self.run_dir / "last.pt", tmp)
        return tmp

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("space_hash") != self.space.hash:
            raise CheckpointError("checkpoint space does not match its own config")
        self.net.load_state_dict(state["model"])
        self.step = int(state["step"])
        if state.get("teacher") is not None:
            self.teacher = Subnet(self.space.spec_from_json(state["teacher_spec"]), self.cfg.act_quant)
            self.teacher.load_state_dict(state["teacher"])
            self.teacher.to(self.device).eval().requires_grad_(False)
        idx = int(state["stage"])
        if idx >= 0:
            self.stage_idx = idx
            self._make_optimizer(idx)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])

    # ---- the run --------------------------------------------------------------------------
    def _loader(self, epoch: int, start: int) -> DataLoader:
        train: ImageSet = self.data["train"]
        train.set_epoch(epoch)
        sampler = DistributedSampler(train, self.dist.world, self.dist.rank, shuffle=True,
                                     seed=self.cfg.seed, drop_last=True)
        sampler.set_epoch(epoch)
        idx = list(sampler)
        b = self.cfg.batch_size
        batches = [idx[i:i + b] for i in range(0, len(idx) - b + 1, b)][start:self.steps_per_epoch]
        return DataLoader(train, batch_sampler=batches, num_workers=self.cfg.workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _model(self) -> torch.nn.Module:
        if self.dist.world > 1:
            return torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        return self.net

    def log_row(self, row: dict[str, Any]) -> None:
        if not self.dist.main:
            return
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
            f.flush()
            os.fsync(f.fileno())
        if self._tb is None:
            try:
                os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # tensorboard may pull in TensorFlow
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:  # TensorBoard is optional
                self._tb = False
        if self._tb:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, row["step"])
            self._tb.flush()

    def evaluate_stage(self) -> dict[str, float]:
        """Calibrated held-out top-1 of the min and max subnet at the stage's lowest/highest bits.

        Buffers are restored afterwards: calibration must not leak into training state (the
        MinMax quantizer's EMA ranges are training state), or a resumed run would differ."""
        saved = {k: v.clone() for k, v in self.net.named_buffers()}
        try:
            return self._evaluate_stage()
        finally:
            with torch.no_grad():
                for k, v in self.net.named_buffers():
                    v.copy_(saved[k])
            self.net.calibrated_for = None
            self.net.train()

    def _evaluate_stage(self) -> dict[str, float]:
        bits = self._stage_bits(self.stage_idx)
        out = {}
        for name, spec in (("max", self.space.max_spec(bits=max(bits))), ("min", self.space.min_spec(bits=min(bits)))):
            calibrate(self.net, spec, calib_batches(self.data["train"], self.cfg.calib_images), self.cfg.calib_images)
            self.net.eval()
            with self.net.active(spec):
                out[f"{name}_top1"] = accuracy(self.net, self.data["holdout"], spec.resolution,
                                               self.cfg.eval_images, self.device)
        return out

    def run(self) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_json(), indent=2))
        model = self._model()
        self.net.train()
        end = self.total_steps if self.cfg.max_steps is None else min(self.total_steps, self.cfg.max_steps)
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
        t_last, img_last, loss_acc, n_acc = time.time(), 0, None, 0
        t_ckpt = time.monotonic()
        if isinstance(self.cfg.threads, int):
            torch.set_num_threads(self.cfg.threads)
        cores = CoreShare(torch.get_num_threads()) if self.cfg.threads == "auto" and self.device.type == "cpu" else None
        try:
            while self.step < end:
                idx = self.stage_of(self.step)
                if idx != self.stage_idx:
                    self._enter_stage(idx)
                step_fn = SandwichStep(self.net, model, self.teacher, self.cfg.kd_ratio, self.cfg.label_smoothing,
                                       self.cfg.amp, self.cfg.channels_last, self.cfg.stages[idx].deploy_quant)
                epoch, pos = divmod(self.step, self.steps_per_epoch)
                stage_end = min(int(self.bounds[idx + 1]), end)
                n_random = self.cfg.stages[idx].n_random
                n_random = self.cfg.n_random if n_random is None else n_random
                for x, y in self._loader(epoch, pos):
                    torch.manual_seed(_step_seed(self.cfg.seed, self.step))
                    rng = np.random.default_rng([self.cfg.seed, self.step])
                    specs = self.space.sandwich(rng, n_random, bits=self._stage_bits(idx),
                                                min_lowest=self.cfg.stages[idx].min_lowest_bits)
                    x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss = step_fn(x, y, specs)
                    torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.step += 1
                    loss_acc = loss if loss_acc is None else loss_acc + loss
                    n_acc += 1
                    img_last += x.shape[0] * self.dist.world
                    if bar is not None and (self.step % 10 == 0 or self.step == stage_end):
                        dt = time.time() - t_last
                        bar.set_postfix(stage=self.cfg.stages[idx].name, loss=f"{float(loss_acc) / n_acc / len(specs):.3f}",
                                        lr=f"{self.scheduler.get_last_lr()[0]:.4g}", img_s=f"{img_last / max(dt, 1e-9):.0f}")
                    if bar is not None:
                        bar.update(1)
                    at_epoch_end = self.step % self.steps_per_epoch == 0
                    if (self.step % self.cfg.ckpt_every == 0 or self.step == stage_end or at_epoch_end
                            or time.monotonic() - t_ckpt >= self.cfg.ckpt_every_s):
                        self.save()
                        t_ckpt = time.monotonic()
                    if cores is not None:
                        cores()
                    if self.step == int(self.bounds[idx + 1]) and self.dist.main:  # keep each stage's result
                        os.replace(self._link_last(), self.run_dir / f"stage_{self.cfg.stages[idx].name}.pt")
                    if at_epoch_end or self.step == stage_end:
                        row = {"step": self.step, "epoch": self.step / self.steps_per_epoch,
                               "stage": self.cfg.stages[idx].name, "lr": self.scheduler.get_last_lr()[0],
                               "loss": float(loss_acc) / max(n_acc, 1) / len(specs),
                               "images_per_s": img_last / max(time.time() - t_last, 1e-9),
                               "max_top1": "", "min_top1": ""}
                        if self.step == int(self.bounds[idx + 1]) and self.cfg.eval_images > 0:
                            row.update(self.evaluate_stage())
                        self.log_row(row)
                        t_last, img_last, loss_acc, n_acc = time.time(), 0, None, 0
                    if self.step >= stage_end:
                        break
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            print(f"interrupted at step {self.step}; resume with --resume (continues from the last checkpoint)",
                  file=sys.stderr)
            raise
        if bar is not None:
            bar.close()
        self.save()
        return {"run_dir": str(self.run_dir), "step": self.step, "total_steps": self.total_steps,
                "checkpoint": str(self.run_dir / "last.pt"), "world": self.dist.world,
                "replica_fingerprints": self.replica_fingerprints()}

    def replica_fingerprints(self) -> list[str]:
        """SHA-256 of every process's parameters and buffers: all equal when replicas agree."""
        import hashlib
        h = hashlib.sha256()
        for _, t in sorted(self.net.state_dict().items()):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        mine = h.hexdigest()
        if self.dist.world == 1:
            return [mine]
        out: list[Any] = [None] * self.dist.world
        dist.all_gather_object(out, mine)
        return out

