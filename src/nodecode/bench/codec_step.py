"""Codec training step speed (issue 11): steps/s and pixel-samples/s per GPU of the real Eq. 1 step, and a profile."""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from nodecode.tasks.compression import CodecTrainConfig, build_model, codec_step
from nodecode.tasks.engine import init_distributed


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_runner(cfg: CodecTrainConfig, tiles: torch.Tensor, compile: bool = False, amp: bool = True,
                rank: int = 0, world: int = 1):
    """A function doing one optimizer step of train_codec's Eq. 1 step (this rank's share of the global batch)."""
    device = tiles.device
    model = build_model(cfg, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else model
    if compile:
        net = torch.compile(net)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batch_fn, step_fn = codec_step(cfg, tiles, rank, world)
    gen = torch.Generator().manual_seed(cfg.seed)
    use_amp = amp and device.type == "cuda"

    def one(i: int) -> tuple[torch.Tensor, dict]:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            loss, logs = step_fn(net, batch_fn(i, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss, logs
    return one


def time_step(cfg: CodecTrainConfig, tiles: torch.Tensor, steps: int = 40, warmup: int = 15, compile: bool = False,
              amp: bool = True, rank: int = 0, world: int = 1) -> dict:
    """Median-free plain timing of `steps` steps after `warmup` (compilation happens there); per-GPU figures."""
    one = step_runner(cfg, tiles, compile, amp, rank, world)
    t0 = time.perf_counter()
    for i in range(warmup):
        one(i)
    _sync(tiles.device)
    t1 = time.perf_counter()
    for i in range(steps):
        one(warmup + i)
    _sync(tiles.device)
    dt = time.perf_counter() - t1
    per_gpu = cfg.batch_size // world
    return {"batch_global": cfg.batch_size, "batch_per_gpu": per_gpu, "crop": cfg.crop, "compile": compile, "amp": amp,
            "world": world, "steps_per_s": steps / dt, "pixel_samples_per_s_per_gpu": steps * per_gpu * cfg.crop**2 / dt,
            "warmup_s": t1 - t0, "peak_mem_gb": torch.cuda.max_memory_allocated(tiles.device) / 2**30
            if tiles.device.type == "cuda" else None}


def profile_step(cfg: CodecTrainConfig, tiles: torch.Tensor, steps: int = 5, top: int = 25) -> list[dict]:
    """The kernels of `steps` eager steps by total device time (where a step's time goes)."""
    from torch.profiler import ProfilerActivity, profile
    one = step_runner(cfg, tiles)
    for i in range(5):
        one(i)
    _sync(tiles.device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if tiles.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for i in range(steps):
            one(5 + i)
        _sync(tiles.device)
    attr = "device_time_total" if tiles.device.type == "cuda" else "cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    if tiles.device.type == "cuda":
        events = [e for e in events if getattr(e, "self_device_time_total", 0) > 0]
        key = "self_device_time_total"
    else:
        key = "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1.0
    rows = sorted(({"name": e.key[:90], "ms_per_step": getattr(e, key) / 1000 / steps, "share": getattr(e, key) / total,
                    "calls_per_step": e.count / steps} for e in events), key=lambda r: -r["ms_per_step"])
    return rows[:top]


def variants(base: CodecTrainConfig) -> dict[str, tuple[CodecTrainConfig, bool]]:
    """The step configurations compared (batch of crops, compiled or eager bf16)."""
    return {
        "b32 160² eager": (base, False),
        "b32 160² compiled": (base, True),
        "b128 128² eager": (replace(base, batch_size=128, crop=128), False),
        "b128 128² compiled": (replace(base, batch_size=128, crop=128), True),
        "b256 128² eager": (replace(base, batch_size=256, crop=128), False),
        "b256 128² compiled": (replace(base, batch_size=256, crop=128), True),
    }


def indexing_quantizer(q, y):
    """Q̄ as the earlier code wrote it (ŷ = centers[z]: an index_put accumulation in the backward), for before/after."""
    y = y.float()
    d = q.distances(y)
    soft = torch.softmax(-q.sigma * d, dim=-1)
    symbols = d.argmin(dim=-1)
    hard = torch.nn.functional.one_hot(symbols, q.num_centers).to(soft.dtype)
    y_soft = (soft * q.centers).sum(-1)
    return q.centers[symbols] + (y_soft - y_soft.detach()), symbols, hard + (soft - soft.detach())


class legacy_quantizer:
    """Context: every ScalarQuantizer computes ŷ by indexing, as before the one-hot form."""

    def __enter__(self):
        from nodecode.codec.quantizer import ScalarQuantizer
        self._cls, self._fwd = ScalarQuantizer, ScalarQuantizer.forward
        ScalarQuantizer.forward = indexing_quantizer
        return self

    def __exit__(self, *exc):
        self._cls.forward = self._fwd


def trajectory(cfg: CodecTrainConfig, tiles: torch.Tensor, steps: int, compile: bool, every: int = 100) -> list[dict]:
    """Mean train PSNR / entropy over every `every` steps of a short run (eager and compiled must agree)."""
    one = step_runner(cfg, tiles, compile)
    out, acc = [], []
    for i in range(steps):
        acc.append(one(i)[1])
        if (i + 1) % every == 0:
            out.append({"step": i + 1, **{k: float(torch.stack([a[k].float() for a in acc]).mean())
                                          for k in ("psnr", "entropy")}})
            acc = []
    return out


def ddp_main(cfg: CodecTrainConfig, tiles_fn, compile: bool) -> dict | None:
    """Under torchrun: time the step with the global batch = per-GPU batch x world; rank 0 returns the figures."""
    rank, world, dev = init_distributed()
    tiles = tiles_fn(dev or torch.device("cpu"))
    r = time_step(replace(cfg, batch_size=cfg.batch_size * world), tiles, compile=compile, rank=rank, world=world)
    t = torch.tensor([r["pixel_samples_per_s_per_gpu"]], device=tiles.device)
    torch.distributed.all_reduce(t) if world > 1 else None
    r["pixel_samples_per_s_all"] = float(t) if world > 1 else r["pixel_samples_per_s_per_gpu"]
    return r if rank == 0 else None
