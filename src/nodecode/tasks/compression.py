"""Training the codec alone with Eq. 1: MSE(x, x̂) + β·max(H(q) − Ht, 0) (§3.1, App. A.1), on any number of GPUs."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from nodecode.codec.autoencoder import DOWNSAMPLING, CodecConfig, CompressionModel
from nodecode.codec.entropy import entropy_bits, frequency_table, rate_loss, table_bits
from nodecode.codec.zoo import load_codec, save_codec
from nodecode.data.images import list_images, load_image
from nodecode.data.tiles import load_tiles, random_crops
from nodecode.config import option
from nodecode.errors import NodecodeError
from nodecode.tasks.engine import Engine, RunOptions, TrainResult, init_distributed, is_main_process
from nodecode.utils import pick_device, provenance, write_json

FILE_OVERHEAD_BYTES = 44  # .ndc header + CRC + the last ANS word, measured on Kodak (README): part of the real bpp


@dataclass
class CodecTrainConfig(RunOptions):
    data: str = option(help="folder of training images (searched recursively)")
    out: str = option(help="run folder: checkpoints, logs, codec.safetensors")
    name: str | None = option(None, "operating point name written into files (default: cC, e.g. c16)")
    channels: int = option(16, "C, latent channels")
    num_centers: int = option(6, "L, quantization centers")
    beta: float = option(500.0, "β of Eq. 1 (on the MSE in 8-bit units, 0..255, as the paper's β values are)")
    target_entropy: float = option(1.3, "Ht of Eq. 1, bits per symbol")
    lr: float = option(1e-3, "Adam learning rate")
    batch_size: int = option(32, "global batch, split evenly over the DDP processes")
    crop: int = option(160, "training crop side, taken from the tiles")
    tile: int = option(224, "images are cut into tiles of this side (kept on the device); crops come from those")
    steps: int = option(20000, "training steps")
    schedule: Literal["step", "cosine"] = option(
        "step", "step: lr x0.1 for the last 20%; cosine: --warmup-steps, then cosine down to 1%")
    lr_decay_at: float = 0.8
    warmup_steps: int = option(0, "linear lr warm-up steps (cosine schedule)")
    sigma: float | None = option(None, "σ of Q̄'s soft assignment (default: the starting codec's, 1.0 from scratch)")
    compile: bool = option(False, "torch.compile the codec (CUDA)")
    target_bpp: float | None = option(None, "rescale Ht so that --bpp-probe's real bpp lands here")
    bpp_probe: str | None = option(None, "folder of images only measured, never trained on, for that calibration "
                                         "(e.g. Kodak)")
    calibrate_at: str = option("0.3,0.6", "fractions of the steps at which Ht is rescaled")
    init: str | None = option(None, "fine-tune from this codec (operating point name or codec file; another C: "
                                    "every shape-matching tensor)")
    rate_warmup: float = 0.05      # β ramps up linearly over this fraction of the steps (avoids an all-one-symbol collapse)
    val_data: str | None = option(None, "folder of validation images (default: 64 training tiles)")
    table_tiles: int = 4096        # tiles of the training set the frequency tables are fitted on

    def __post_init__(self):
        if self.name is None:
            self.name = f"c{self.channels}"


def codec_loss(model, x: torch.Tensor, beta: float, target_entropy: float):
    """Eq. 1 with the MSE on the 0..255 scale; returns (loss, logs)."""
    return rate_distortion_loss(model(x), x, beta, target_entropy)


def rate_distortion_loss(out: dict, x: torch.Tensor, beta: float, target_entropy: float, world: int = 1):
    """Eq. 1 of a codec forward pass `out` on x in [0, 1]: MSE (0..255 scale) + β·max(H − Ht, 0); (loss, logs).

    With world > 1 (DDP) H is the entropy of the histogram over all ranks' batches (a differentiable all-reduce),
    so N ranks compute exactly the loss of one process on their joint batch."""
    mse = F.mse_loss(out["x_hat"].float(), x) * 255.0**2
    if world > 1:
        from torch.distributed.nn.functional import all_reduce
        probs = all_reduce(out["probs"].float()) / world
        h = entropy_bits(probs)
        bpp = h * probs.shape[0] / DOWNSAMPLING**2
    else:
        h, bpp = out["entropy"], out["bpp"]
    loss = mse + rate_loss(h, target_entropy, beta)
    return loss, {"mse": mse.detach(), "psnr": 10 * torch.log10(255.0**2 / mse.detach().clamp_min(1e-10)),
                  "entropy": h.detach(), "bpp": bpp.detach()}


@torch.no_grad()
def symbol_counts(model: CompressionModel, tiles: torch.Tensor, batch: int = 64) -> np.ndarray:
    """Hard symbol counts (C, L) of the model's latents over uint8 tiles."""
    c, L = model.config.channels, model.config.num_centers
    counts = torch.zeros(c, L, dtype=torch.float64, device=tiles.device)
    for i in range(0, len(tiles), batch):
        z = model.encode_symbols(tiles[i: i + batch].float().div(255.0))
        counts += F.one_hot(z, L).sum(dim=(0, 2, 3)).double()
    return counts.cpu().numpy()


@torch.no_grad()
def validate(model: CompressionModel, tiles: torch.Tensor) -> dict:
    """PSNR and the hard entropy (tables refitted on these tiles) of the current model."""
    x = tiles.float().div(255.0)
    z = model.encode_symbols(x)
    x_hat = model.decode_latent(model.latent(z).to(x.dtype))
    mse = float(F.mse_loss(x_hat.float(), x)) * 255.0**2
    p = F.one_hot(z, model.config.num_centers).double().mean(dim=(0, 2, 3))
    h = float(-(p * torch.log2(p.clamp_min(1e-12))).sum(-1).mean())
    return {"psnr": 10 * math.log10(255.0**2 / max(mse, 1e-10)), "entropy": h,
            "bpp": h * model.config.channels / 64}


@torch.no_grad()
def probe_bpp(model: CompressionModel, images: list[torch.Tensor], table_tiles: torch.Tensor) -> float:
    """Mean real .ndc bpp of uint8 images (3, H, W) under tables fitted on training tiles (ideal code + header)."""
    freqs = frequency_table(symbol_counts(model, table_tiles))
    bpp = []
    for img in images:
        z = model.encode_symbols(img[None].float().div(255.0))[0].cpu().numpy()
        bpp.append((table_bits(freqs, z) + 8 * FILE_OVERHEAD_BYTES) / (img.shape[1] * img.shape[2]))
    return float(np.mean(bpp))


def lr_factor(cfg: CodecTrainConfig, step: int) -> float:
    """The learning-rate multiplier at `step` of the configured schedule."""
    if cfg.schedule == "step":
        return 0.1 if step >= cfg.lr_decay_at * cfg.steps else 1.0
    if cfg.schedule == "cosine":
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    raise NodecodeError(f"unknown schedule '{cfg.schedule}' (step or cosine)")


def build_model(cfg: CodecTrainConfig, device) -> CompressionModel:
    """A fresh codec of the configured point, or one started from `init` (every shape-matching tensor)."""
    model = CompressionModel(CodecConfig(cfg.name, cfg.channels, cfg.num_centers)).to(device)
    if cfg.init:
        src_codec = load_codec(cfg.init, device)
        src, own = src_codec.state_dict(), model.state_dict()
        model.load_state_dict({k: (src[k] if k in src and src[k].shape == v.shape else v) for k, v in own.items()})
        model.quantizer.sigma = model.config.sigma = src_codec.config.sigma
    if cfg.sigma is not None:
        model.quantizer.sigma = model.config.sigma = cfg.sigma
    model.config.beta, model.config.target_entropy = cfg.beta, cfg.target_entropy
    return model


def codec_step(cfg: CodecTrainConfig, tiles: torch.Tensor, rank: int = 0, world: int = 1, ht: dict | None = None):
    """(batch_fn, step_fn) of Eq. 1 training: this rank's share of the global batch, β ramped in over rate_warmup."""
    warmup = max(1, int(cfg.rate_warmup * cfg.steps))
    ht = ht if ht is not None else {"value": cfg.target_entropy}
    cuda = tiles.device.type == "cuda"

    def batch_fn(step, gen):
        x = random_crops(tiles, cfg.batch_size, cfg.crop, gen, part=(rank, world))
        return (x.contiguous(memory_format=torch.channels_last) if cuda else x), step

    def step_fn(net, batch):
        x, step = batch
        return rate_distortion_loss(net(x), x, cfg.beta * min(1.0, (step + 1) / warmup), ht["value"], world)

    return batch_fn, step_fn


def _load_training_tiles(cfg: CodecTrainConfig, device, rank: int, world: int) -> torch.Tensor:
    """The uint8 training tiles on this rank's device (rank 0 builds the cache first)."""
    if world > 1 and rank != 0:
        dist.barrier()
    tiles = load_tiles(cfg.data, tile=cfg.tile, cache_dir=cfg.cache_dir)
    if world > 1 and rank == 0:
        dist.barrier()
    if len(tiles) == 0 or cfg.crop > cfg.tile:
        raise NodecodeError(f"no training tiles: need images of at least {cfg.tile}x{cfg.tile} and --crop <= --tile")
    return tiles.to(device)


def train_codec(cfg: CodecTrainConfig) -> TrainResult:
    """Train (or resume, or fine-tune) one operating point; writes out/codec.safetensors and out/summary.json.

    Under torchrun every process takes an equal share of the global batch (DDP, NCCL on CUDA, gloo on CPU)."""
    rank, world, ddp_device = init_distributed()
    device = ddp_device or pick_device(cfg.device)
    if cfg.batch_size % world:
        raise NodecodeError(f"--batch-size {cfg.batch_size} does not split over {world} processes")
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    tiles = _load_training_tiles(cfg, device, rank, world)
    val = load_tiles(cfg.val_data, tile=cfg.tile, cache_dir=cfg.cache_dir, limit=256).to(device) if cfg.val_data else tiles[:64]
    model = build_model(cfg, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    engine = Engine(model, optimizer, cfg.engine_config(out, cfg.steps, log_every=100, compile=cfg.compile,
                                                         checkpoint_every_s=120.0),
                    lr_at=lambda s: lr_factor(cfg, s), meta={"config": asdict(cfg)})
    ht = {"value": float(engine.resumed_meta.get("target_entropy_now", cfg.target_entropy))}
    engine.meta["target_entropy_now"] = ht["value"]
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * engine.step)  # a fresh stream per resume, the same on every rank
    batch_fn, step_fn = codec_step(cfg, tiles, rank, world, ht)
    eval_every = max(cfg.steps // 20, 1)
    calib = {max(eval_every, round(float(f) * cfg.steps / eval_every) * eval_every)
             for f in cfg.calibrate_at.split(",") if f} if cfg.bpp_probe and cfg.target_bpp else set()
    probe = [torch.from_numpy(load_image(f)).permute(2, 0, 1).to(device) for f in list_images(cfg.bpp_probe)] if calib else []

    def eval_fn(m, step):
        logs = validate(m, val)
        if step in calib:
            est = probe_bpp(m, probe, tiles[: min(len(tiles), 1024)])
            new = float(np.clip(ht["value"] * cfg.target_bpp / est, 0.05, math.log2(cfg.num_centers) - 0.05))
            if world > 1:  # rank 0's measurement decides, so every rank trains with one Ht
                t = torch.tensor([new, est], dtype=torch.float64, device=device)
                dist.broadcast(t, 0)
                new, est = float(t[0]), float(t[1])
            logs.update(probe_bpp=est, target_entropy_from=ht["value"], target_entropy=new)
            ht["value"] = engine.meta["target_entropy_now"] = new
        return logs

    if not engine.fit(lambda s: batch_fn(s, gen), step_fn, eval_fn=eval_fn, eval_every=eval_every):
        return TrainResult.stopped(engine)
    summary = _export(cfg, model, tiles, val, engine.step, ht["value"], world, out) if is_main_process() else {}
    if world > 1:
        dist.barrier()
    return TrainResult(True, out, engine.step, cfg.steps, summary, summary.get("val", {}))


def _export(cfg, model: CompressionModel, tiles, val, steps: int, ht: float, world: int, out: Path) -> dict:
    """Round to the bundled fp16, fit the tables to exactly that model, save codec.safetensors and summary.json."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    model.config.target_entropy = ht
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    sub = tiles[torch.randperm(len(tiles), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.table_tiles]]
    model.set_tables_from_counts(symbol_counts(model, sub))
    save_codec(model, out / "codec.safetensors", half=True)
    summary = {"config": asdict(cfg), "steps": steps, "target_entropy_final": ht, "processes": world,
               "pixel_samples": steps * cfg.batch_size * cfg.crop**2, "val": validate(model, val), **provenance()}
    write_json(out / "summary.json", summary)
    return summary
