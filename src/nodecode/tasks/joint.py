"""Joint fine-tuning of encoder, decoder and cResNet-51 with Eq. 2 (§6.1, App. A.8), and its codec-only control.

Eq. 2: L = γ·(MSE(x, x̂) + β·max(H(q) − Ht, 0)) + CE(y, ŷ), MSE on the 0..255 scale as in Eq. 1 (tasks.compression),
so that γ = 0.001 puts γ·MSE (~0.2 at c8) on the scale of the cross-entropy, as in the paper. The cResNet-51 takes
the quantized latent ŷ (hard forward, soft backward through Q̄), so the cross-entropy reaches the encoder.
Everything is fine-tuned: g_a, g_s, the quantizer centers and the classifier (§6.1 "all parts ... trained at the
same time"). With `classifier=None` the same loss minus CE and the same schedule fine-tunes the codec alone (the
§6.1 control). App. A.8: SGD momentum 0.9, lr 0.0025 ÷10 every 3 epochs, 9 epochs; on Imagenette an epoch is
9,469 images (147 steps at batch 64), i.e. we keep epochs (passes over the data) as the Table 2 recipe does.
Ht defaults to the starting codec's own Ht (App. A.8 sets Ht to the operating point's entropy: 1.265 ≈ 0.635·64/32),
so that fine-tuning keeps the rate; β defaults to App. A.8 (600 at c8, 150 at c32).
Augmentation: the A.4 crop/mirror on RGB (reflect pad 32 px), then the codec; evaluation on whole images.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nodecode.codec.zoo import load_codec, save_codec
from nodecode.data.augment import Batches, InputPipeline
from nodecode.data.folders import load_rgb, scan_image_folder
from nodecode.config import option
from nodecode.errors import NodecodeError
from nodecode.eval.metrics import topk_accuracy
from nodecode.tasks.classification import load_classifier, save_classifier
from nodecode.tasks.compression import rate_distortion_loss, symbol_counts
from nodecode.tasks.engine import Engine, RunOptions, TrainResult
from nodecode.utils import pick_device, provenance, write_json

PAPER_BETA = {8: 600.0, 32: 150.0}  # App. A.8, by latent channels C


@dataclass
class JointTrainConfig(RunOptions):
    data: str = option(help="folder with train/ and val/ ImageFolders (imagenette2-224)")
    out: str = option(help="run folder: checkpoints, codec.safetensors, classifier.safetensors")
    codec: str = option("c8", "starting codec (operating point name or codec file)")
    classifier: str | None = option(None, "starting latent classifier (classifier.safetensors or its run folder, a "
                                          "Table 2 checkpoint)")    # None: the codec-only control
    gamma: float = option(0.001, "γ of Eq. 2")
    loss_scale: float = option(1.0, "Eq. 2's loss times this, i.e. every step size times it (a γ ablation at the "
                                    "default γ's codec step: 0.001/γ; γ=0.003 unscaled diverged at c32)")
    beta: float | None = option(None, "β (default: App. A.8, 600 at C=8, 150 at C=32, else the codec's own)")
    target_entropy: float | None = option(None, "Ht (default: the starting codec's own)")
    epochs: float = option(9, "fine-tuning epochs")
    lr_epochs: tuple[float, ...] = (3, 6)
    base_lr: float = option(0.0025, "learning rate at batch 64, scaled linearly with the batch (÷10 at epochs 3 and "
                                    "6)", flag="lr")
    momentum: float = 0.9
    weight_decay: float = 1e-4         # classifier conv/fc weights only (the A.4 recipe); none on the codec
    batch_size: int = option(64, "global batch")
    image_size: int = option(224, "images are decoded to this square (224: Imagenette-224 as it is)")
    name: str | None = None            # the new codec's name; None: "<codec>-joint" / "<codec>-ft"
    max_per_class: int | None = option(None, "at most this many images per class (a subset, for smoke runs)")
    table_images: int = 4096           # training images the entropy tables are refitted on
    eval_batch: int = 250


class JointModel(nn.Module):
    """Fig. 2 b): x → codec → ŷ → (decoder, and cResNet on ŷ minus the classifier's training-set latent mean)."""

    def __init__(self, codec: nn.Module, classifier: nn.Module | None, latent_mean: torch.Tensor | None):
        super().__init__()
        self.codec, self.classifier = codec, classifier
        self.register_buffer("latent_mean", torch.zeros(1, codec.config.channels, 1, 1) if latent_mean is None
                             else torch.as_tensor(latent_mean, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> dict:
        out = self.codec(x)
        if self.classifier is not None:
            out["logits"] = self.classifier(out["y_hat"] - self.latent_mean)
        return out


def joint_loss(out: dict, x: torch.Tensor, labels: torch.Tensor | None, gamma: float, beta: float,
               target_entropy: float) -> tuple[torch.Tensor, dict]:
    """Eq. 2 from a JointModel output; without logits, γ·Eq. 1 (the control)."""
    comp, logs = rate_distortion_loss(out, x, beta, target_entropy)
    loss = gamma * comp
    if "logits" in out:
        ce = F.cross_entropy(out["logits"].float(), labels)
        loss = loss + ce
        logs.update(ce=ce.detach(), top1=(out["logits"].argmax(1) == labels).float().mean())
    return loss, logs


@torch.no_grad()
def evaluate_joint(model: JointModel, rgb: torch.Tensor, labels: torch.Tensor, batch: int = 250) -> dict:
    """Top-1/top-5 of the classifier on hard latents of whole images, PSNR of the reconstructions (uint8 in)."""
    was, dev = model.training, model.latent_mean.device
    model.eval()
    hits, sq, n = torch.zeros(2, dtype=torch.float64), 0.0, 0
    for i in range(0, len(rgb), batch):
        x = rgb[i: i + batch].to(dev).float().div(255)
        y_hat = model.codec.latent(model.codec.encode_symbols(x)).to(x.dtype)
        sq += float(F.mse_loss(model.codec.decode_latent(y_hat).float(), x, reduction="sum")) * 255.0**2
        if model.classifier is not None:
            acc = topk_accuracy(model.classifier(y_hat - model.latent_mean).float(), labels[i: i + batch].to(dev), (1, 5))
            hits += torch.tensor([acc[1], acc[5]], dtype=torch.float64) * len(x)
        n += len(x)
    model.train(was)
    mse = sq / (n * rgb[0].numel())
    res = {"psnr": float(10 * torch.log10(torch.tensor(255.0**2 / max(mse, 1e-10))))}
    if model.classifier is not None:
        res.update(top1=float(hits[0]) / n, top5=float(hits[1]) / n)
    return res


def train_joint(cfg: JointTrainConfig) -> TrainResult:
    """Fine-tune (or resume); writes out/codec.safetensors, out/classifier.safetensors (joint only), out/summary.json."""
    device, t0, out = pick_device(cfg.device), time.time(), Path(cfg.out)
    torch.manual_seed(cfg.seed)
    codec = load_codec(cfg.codec, device)
    c = codec.config.channels
    beta = cfg.beta if cfg.beta is not None else PAPER_BETA.get(c, codec.config.beta)
    ht = cfg.target_entropy if cfg.target_entropy is not None else codec.config.target_entropy
    classifier, meta = load_classifier(cfg.classifier, device) if cfg.classifier else (None, None)
    if meta is not None and (meta["input"] != "latent" or meta["in_channels"] != c):
        raise NodecodeError(f"{cfg.classifier} is not a classifier of {c}-channel latents")
    root = Path(cfg.data)
    train_f = scan_image_folder(root / "train", classes=meta["classes"] if meta else None,
                                max_per_class=cfg.max_per_class)
    val_f = scan_image_folder(root / "val", classes=train_f.classes, max_per_class=cfg.max_per_class)
    train_x, val_x = (load_rgb(f, cfg.cache_dir, cfg.image_size).to(device) for f in (train_f, val_f))
    train_y, val_y = torch.from_numpy(train_f.labels), torch.from_numpy(val_f.labels)
    model = JointModel(codec, classifier, meta["mean"] if meta else None).to(device).train()
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    batches = Batches(train_x, train_y, InputPipeline("rgb", torch.zeros(3), channels_last=cuda), cfg.batch_size, cfg.seed)
    spe = batches.steps_per_epoch
    steps = max(1, round(cfg.epochs * spe))
    cls_params = list(classifier.parameters()) if classifier is not None else []
    groups = [{"params": list(codec.parameters()), "weight_decay": 0.0},
              {"params": [p for p in cls_params if p.ndim > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in cls_params if p.ndim <= 1], "weight_decay": 0.0}]
    optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.base_lr * cfg.batch_size / 64,
                                momentum=cfg.momentum)
    engine = Engine(model, optimizer, cfg.engine_config(out, steps, log_every=min(cfg.log_every, spe),
                                                         checkpoint_every_s=120),
                    lr_at=lambda s: 0.1 ** sum(s >= e * spe for e in cfg.lr_epochs), meta={"config": asdict(cfg)})
    last: dict = {}

    def step_fn(net, batch):
        x, y = batch
        x = x / 255.0
        loss, logs = joint_loss(net(x), x, y, cfg.gamma, beta, ht)
        return loss * cfg.loss_scale, logs

    def eval_fn(m, step):
        last.update(evaluate_joint(m, val_x, val_y, cfg.eval_batch), epoch=step / spe)
        return dict(last)

    if not engine.fit(batches, step_fn, eval_fn=eval_fn, eval_every=spe):
        return TrainResult.stopped(engine)
    codec = model.codec.eval().to(memory_format=torch.contiguous_format)
    with torch.no_grad():  # the bundled fp16, then the tables refitted to exactly that model (as train_codec)
        for p in codec.parameters():
            p.copy_(p.half().float())
    pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.table_images]
    codec.set_tables_from_counts(symbol_counts(codec, train_x[pick.to(device)]))
    codec.config.name = cfg.name or f"{codec.config.name}-{'joint' if classifier is not None else 'ft'}"
    codec.config.beta, codec.config.target_entropy = beta, ht
    save_codec(codec, out / "codec.safetensors", half=True)
    val = evaluate_joint(model, val_x, val_y, cfg.eval_batch)
    if classifier is not None:
        save_classifier(classifier, out / "classifier.safetensors",
                        {**meta, "codec": str((out / "codec.safetensors").resolve()), "codec_name": codec.config.name,
                         "joint": {"from_codec": cfg.codec, "from_classifier": cfg.classifier}})
    summary = {"config": asdict(cfg), "beta": beta, "target_entropy": ht, "steps": engine.step,
               "steps_per_epoch": spe, "train_images": len(train_x), "val": val, "minutes": (time.time() - t0) / 60,
               **provenance("nodecode train joint")}
    write_json(out / "summary.json", summary)
    return TrainResult(True, out, engine.step, steps, summary, val)
