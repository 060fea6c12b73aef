"""The one training loop every task uses: AMP, LR schedule, logging, time budget, resumable checkpoints, DDP."""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from nodecode.config import option
from nodecode.tasks.checkpoint import load_checkpoint, resume_log, save_checkpoint
from nodecode.utils import remove_stale_temporaries


@dataclass
class EngineConfig:
    out_dir: str
    total_steps: int
    log_every: int = 50
    checkpoint_every_s: float = 300.0
    checkpoint_every_steps: int | None = None   # if set, checkpoint every this many steps instead of by time
    max_minutes: float | None = None      # stop (and checkpoint) after this much wall time; rerun to resume
    amp: bool = True                      # bf16 autocast on CUDA
    clip_grad: float | None = None
    progress: bool = True
    compile: bool = False                 # torch.compile the (DDP-wrapped) network


def checkpoint_interval(text: str | int | None, default_s: float) -> dict:
    """EngineConfig fields of a --checkpoint-every value: "500" (steps), "90s", "5m", "1h" (time); None: default_s."""
    from nodecode.errors import NodecodeError
    if text is None:
        return {"checkpoint_every_s": default_s, "checkpoint_every_steps": None}
    t = str(text).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(t[-1:]) if t else None
    try:
        v = float(t[:-1]) if scale else int(t)
    except ValueError:
        v = -1
    if not v > 0:
        raise NodecodeError(f"--checkpoint-every takes a positive number of steps or seconds (90s, 5m), not {str(text)[:40]!r}")
    return ({"checkpoint_every_s": v * scale, "checkpoint_every_steps": None} if scale
            else {"checkpoint_every_s": math.inf, "checkpoint_every_steps": int(v)})


@dataclass
class TrainResult:
    """What every train_* returns: whether it finished or stopped on its time budget (rerun to resume), the run
    folder, the step reached, and (finished, main process) its summary.json and headline validation metrics."""
    finished: bool
    out: Path
    step: int
    total_steps: int
    summary: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @classmethod
    def stopped(cls, engine: "Engine") -> "TrainResult":
        return cls(False, engine.out, engine.step, engine.cfg.total_steps)


@dataclass(kw_only=True)
class RunOptions:
    """What every task's training run takes besides its recipe (a base of the task configs, keyword-only)."""
    cache_dir: str | None = option(None, "cache the decoded inputs here (decode once, reuse across runs)")
    device: str | None = option(None, "cuda, cuda:N or cpu (default: cuda if available)")
    seed: int = option(0, "random seed")
    max_minutes: float | None = option(None, "stop and checkpoint after this long; rerun the command to resume")
    log_every: int = 50
    amp: bool = True                   # bf16 autocast on CUDA
    progress: bool = True
    checkpoint_every: str | None = option(None, "checkpoint every N steps, or every Ns / Nm / Nh (default: by time)")

    def engine_config(self, out, total_steps: int, **kw) -> EngineConfig:
        """The engine's settings for this run; `kw` overrides (e.g. a shorter log_every, the task's default
        checkpoint_every_s), and an explicit checkpoint_every overrides that."""
        base = dict(log_every=self.log_every, max_minutes=self.max_minutes, amp=self.amp, progress=self.progress)
        merged = {**base, **kw}
        if self.checkpoint_every is not None:
            merged.update(checkpoint_interval(self.checkpoint_every, 0.0))
        return EngineConfig(str(out), total_steps, **merged)


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def init_distributed() -> tuple[int, int, torch.device | None]:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); (rank, world, device)."""
    if "RANK" not in os.environ or (dist.is_initialized()):
        return (dist.get_rank(), dist.get_world_size(), None) if dist.is_initialized() else (0, 1, None)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    device = None
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return dist.get_rank(), dist.get_world_size(), device


class Engine:
    """Runs `step_fn(model, batch) -> (loss, logs)` on `batch_fn(step)` for `total_steps`, resuming from out_dir."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: EngineConfig,
                 lr_at: Callable[[int], float] | None = None, meta: dict | None = None):
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        self.lr_at = lr_at
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.meta = dict(meta or {})
        self.out = Path(cfg.out_dir)
        self.ckpt = self.out / "last.safetensors"
        self.step = 0
        self.device = next(model.parameters()).device
        self.ddp = dist.is_available() and dist.is_initialized()
        self.net = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
                    if self.ddp else model)
        if cfg.compile:
            self.net = torch.compile(self.net)
        self._tb = None
        self.resumed_meta: dict = {}           # the meta of the checkpoint this run resumed from
        if is_main_process():
            remove_stale_temporaries(self.out)      # a kill during a write leaves its temporary behind
        if self.ckpt.exists():
            state = self.resumed_meta = load_checkpoint(self.ckpt, model, optimizer)
            self.step = int(state.get("step", 0))
            self.base_lrs = state.get("base_lrs", self.base_lrs)
        if is_main_process():
            resume_log(self.out / "log.jsonl", self.step)   # lines past the checkpoint are redone, not repeated

    # -- logging -------------------------------------------------------------------------------------------
    def log(self, logs: dict, prefix: str = "train") -> None:
        if not is_main_process():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, "split": prefix, **logs}) + "\n")
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.out / "tb"))
            except ImportError:  # tensorboard is optional
                self._tb = False
        if self._tb:
            for k, v in logs.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"{prefix}/{k}", v, self.step)

    def save(self) -> None:
        if is_main_process():
            save_checkpoint(self.ckpt, self.model, self.optimizer,
                            {**self.meta, "step": self.step, "base_lrs": self.base_lrs})
        if self.ddp:
            dist.barrier()

    def autocast(self):
        if self.cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _decide(self, t0: float, last_ckpt: float) -> tuple[bool, bool]:
        """(out of time, checkpoint due); under DDP agreed by all ranks at log boundaries only."""
        if self.cfg.checkpoint_every_steps:
            due_steps = self.step % self.cfg.checkpoint_every_steps == 0
            out_of_time, due_time = self._decide_time(t0, last_ckpt)
            return out_of_time, due_steps or due_time
        return self._decide_time(t0, last_ckpt)

    def _decide_time(self, t0: float, last_ckpt: float) -> tuple[bool, bool]:
        now = time.time()
        if not self.ddp:
            return (self.cfg.max_minutes is not None and now - t0 > self.cfg.max_minutes * 60,
                    now - last_ckpt > self.cfg.checkpoint_every_s)
        if self.step % self.cfg.log_every:
            return False, False
        flags = torch.tensor([self.cfg.max_minutes is not None and now - t0 > self.cfg.max_minutes * 60,
                              now - last_ckpt > self.cfg.checkpoint_every_s], dtype=torch.int32, device=self.device)
        if self.ddp:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    # -- the loop --------------------------------------------------------------------------------------------
    def fit(self, batch_fn: Callable[[int], object], step_fn: Callable, eval_fn: Callable | None = None,
            eval_every: int | None = None) -> bool:
        """Train until total_steps (True) or until the time budget runs out (False); always checkpointed."""
        cfg, t0, last_ckpt = self.cfg, time.time(), time.time()
        bar = tqdm(total=cfg.total_steps, initial=self.step, disable=not (cfg.progress and is_main_process()),
                   dynamic_ncols=True, mininterval=2.0)
        self.net.train()
        acc: dict = {}
        while self.step < cfg.total_steps:
            if self.lr_at is not None:
                for g, base in zip(self.optimizer.param_groups, self.base_lrs):
                    g["lr"] = base * self.lr_at(self.step)
            batch = batch_fn(self.step)
            with self.autocast():
                loss, logs = step_fn(self.net, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.optimizer.step()
            self.step += 1
            bar.update(1)
            for k, v in {"loss": loss, **logs}.items():
                acc.setdefault(k, []).append(v.detach() if isinstance(v, torch.Tensor) else v)
            if self.step % cfg.log_every == 0 or self.step == cfg.total_steps:
                means = {k: float(torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in v]).mean()) for k, v in acc.items()}
                means["lr"] = self.optimizer.param_groups[0]["lr"]
                self.log(means)
                bar.set_postfix({k: f"{v:.4g}" for k, v in means.items() if k != "lr"}, refresh=False)
                acc = {}
            if eval_fn is not None and eval_every and (self.step % eval_every == 0 or self.step == cfg.total_steps):
                self.net.eval()
                with torch.no_grad(), self.autocast():
                    self.log(eval_fn(self.model, self.step), prefix="val")
                self.net.train()
            out_of_time, due = self._decide(t0, last_ckpt)
            if out_of_time or due:
                self.save()
                last_ckpt = time.time()
            if out_of_time:
                bar.close()
                return False
        bar.close()
        self.save()
        return True
