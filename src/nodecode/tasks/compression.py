"""Training the codec alone with Eq. 1: MSE(x, x̂) + β·max(H(q) − Ht, 0) (§3.1, App. A.1)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nodecode.codec.autoencoder import CodecConfig, CompressionModel
from nodecode.codec.entropy import rate_loss
from nodecode.codec.zoo import load_codec, save_codec
from nodecode.data.tiles import load_tiles, random_crops
from nodecode.errors import NodecodeError
from nodecode.tasks.engine import Engine, EngineConfig, checkpoint_interval
from nodecode.utils import pick_device, provenance, write_json


@dataclass
class CodecTrainConfig:
    data: str
    out: str
    name: str = "c16"
    channels: int = 16
    num_centers: int = 6
    beta: float = 500.0            # on MSE in 8-bit units (0..255), as the paper's β values are
    target_entropy: float = 1.3    # Ht, bits per symbol
    lr: float = 1e-3
    batch_size: int = 32
    crop: int = 160
    tile: int = 224                # images are cut into tile x tile pieces (kept on the device); crops come from those
    steps: int = 20000
    lr_decay_at: float = 0.8       # lr x0.1 for the last 20% of steps
    max_minutes: float | None = None
    init: str | None = None        # start from a trained codec (fine-tuning; other C: every shape-matching tensor)
    rate_warmup: float = 0.05      # β ramps up linearly over this fraction of the steps (avoids an all-one-symbol collapse)
    val_data: str | None = None
    cache_dir: str | None = None
    device: str | None = None
    seed: int = 0
    table_tiles: int = 4096        # tiles of the training set the frequency tables are fitted on
    checkpoint_every: str | None = None   # "N" steps or "Ns"/"Nm" (default: every 120 s)


def codec_loss(model, x: torch.Tensor, beta: float, target_entropy: float):
    """Eq. 1 with the MSE on the 0..255 scale; returns (loss, logs)."""
    return rate_distortion_loss(model(x), x, beta, target_entropy)


def rate_distortion_loss(out: dict, x: torch.Tensor, beta: float, target_entropy: float):
    """Eq. 1 of a codec forward pass `out` on x in [0, 1]: MSE (0..255 scale) + β·max(H − Ht, 0); (loss, logs)."""
    mse = F.mse_loss(out["x_hat"].float(), x) * 255.0**2
    h = out["entropy"]
    loss = mse + rate_loss(h, target_entropy, beta)
    return loss, {"mse": mse.detach(), "psnr": 10 * torch.log10(255.0**2 / mse.detach().clamp_min(1e-10)),
                  "entropy": h.detach(), "bpp": out["bpp"].detach()}


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


def train_codec(cfg: CodecTrainConfig) -> Path:
    """Train (or resume, or fine-tune) one operating point; writes out/codec.safetensors and out/summary.json."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    tiles = load_tiles(cfg.data, tile=cfg.tile, cache_dir=cfg.cache_dir).to(device)
    if len(tiles) == 0 or cfg.crop > cfg.tile:
        raise NodecodeError(f"no training tiles: need images of at least {cfg.tile}x{cfg.tile} and --crop <= --tile")
    val = load_tiles(cfg.val_data, tile=cfg.tile, cache_dir=cfg.cache_dir, limit=256).to(device) if cfg.val_data else tiles[:64]
    model = CompressionModel(CodecConfig(cfg.name, cfg.channels, cfg.num_centers)).to(device)
    if cfg.init:
        src = load_codec(cfg.init, device).state_dict()
        own = model.state_dict()
        model.load_state_dict({k: (src[k] if k in src and src[k].shape == v.shape else v) for k, v in own.items()})
    model.config.beta, model.config.target_entropy = cfg.beta, cfg.target_entropy
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    engine = Engine(model, optimizer, EngineConfig(str(out), cfg.steps, log_every=100, max_minutes=cfg.max_minutes,
                                                   **checkpoint_interval(cfg.checkpoint_every, 120)),
                    lr_at=lambda s: 0.1 if s >= cfg.lr_decay_at * cfg.steps else 1.0, meta={"config": asdict(cfg)})
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * engine.step)  # a fresh stream per resume

    warmup = max(1, int(cfg.rate_warmup * cfg.steps))

    def batch_fn(step):
        x = random_crops(tiles, cfg.batch_size, cfg.crop, gen)
        return (x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x), step

    def step_fn(net, batch):
        x, step = batch
        return codec_loss(net, x, cfg.beta * min(1.0, (step + 1) / warmup), cfg.target_entropy)

    done = engine.fit(batch_fn, step_fn, eval_fn=lambda m, s: validate(m, val), eval_every=max(cfg.steps // 10, 1))
    if not done:
        print(f"stopped at step {engine.step}/{cfg.steps} (time budget); run the same command again to resume")
        return out
    model = model.eval().to(memory_format=torch.contiguous_format)
    with torch.no_grad():  # round to the fp16 that is bundled, then fit the tables to exactly that model
        for p in model.parameters():
            p.copy_(p.half().float())
    sub = tiles[torch.randperm(len(tiles), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.table_tiles]]
    model.set_tables_from_counts(symbol_counts(model, sub))
    save_codec(model, out / "codec.safetensors", half=True)
    summary = {"config": asdict(cfg), "steps": engine.step, "val": validate(model, val), **provenance()}
    write_json(out / "summary.json", summary)
    print(json.dumps(summary["val"]))
    return out
