"""Semantic segmentation from compressed representations or (decoded) RGB: the DeepLab recipe of §5.3 / App. A.5.

Backbone initialised from an Imagenette classifier of the same input kind and operating point (§5.3, load_backbone),
SGD momentum 0.9, lr 1e-3 for the backbone and 1e-2 for the last layer (the ASPP head), poly schedule
(1 - iter/max_iter)^0.9, weight decay 5e-4 on conv weights, batch 10, grid-aligned random 320x320 RGB / 40x40
latent crops with random mirror, per-channel mean centering (data.segmentation). Logits are upsampled bilinearly
to the label size, cross-entropy ignores label 11.

Iterations: the paper's 20k iterations of batch 10 on PASCAL VOC aug (10,582 images) are 18.9 epochs; the same
number of epochs on CamVid's 367 training frames is round(20000 * 367 / 10582) = 694 iterations (scaled_iterations).

BatchNorm: with an initialising classifier, BN statistics and affine parameters stay frozen at the classifier's
values (DeepLab-ResNet-TensorFlow's default for batch 10); without one (smoke tests) BN trains as usual.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nodecode.codec.zoo import load_codec
from nodecode.data.augment import InputPipeline
from nodecode.data.codec_augment import through_codec
from nodecode.data.latents import channel_mean
from nodecode.data.segmentation import CROP_RGB, GRID, IGNORE, SegBatches, load_segmentation, scan_segmentation
from nodecode.config import option
from nodecode.errors import NodecodeError
from nodecode.eval.metrics import ConfusionMatrix
from nodecode.models import create_model, get_config
from nodecode.models.aspp import upsample_logits
from nodecode.models.resnet import load_backbone
from nodecode.tasks.checkpoint import save_weights
from nodecode.tasks.engine import Engine, RunOptions, TrainResult
from nodecode.utils import pick_device, provenance, write_json

FORMAT = "nodecode-segmenter-1"
PAPER_ITERS, PAPER_IMAGES, PAPER_BATCH = 20000, 10582, 10   # App. A.5 on PASCAL VOC 2012 aug


def scaled_iterations(n_train: int, batch: int = PAPER_BATCH) -> int:
    """Iterations giving the paper's number of epochs (20k x 10 / 10,582 = 18.9) on n_train images."""
    return max(1, round(PAPER_ITERS * PAPER_BATCH / PAPER_IMAGES * n_train / batch))


@dataclass
class SegmenterTrainConfig(RunOptions):
    data: str = option(help="CamVid-layout folder: images/{train,val,test}, labels/{...}, classes.tsv")
    out: str = option(help="run folder: checkpoints, logs, segmenter.safetensors, summary.json")
    model: str = option("cresnet51_d", "architecture: resnet50_d/71_d for rgb and decoded, cresnet39_d/51_d/72_d "
                                       "for latent")
    input: Literal["rgb", "decoded", "latent"] = option("latent", "what the network sees")
    codec: str = option("c8", "operating point (name or codec file) for decoded/latent inputs")
    init: str | None = option(None, "classifier.safetensors of the same input kind, point and depth (§5.3)")
    width: float = option(1.0, "channel width multiplier")
    iters: int | None = option(None, "training iterations (default: the paper's 18.9 epochs, 694 on CamVid)")
    batch_size: int = option(10, "batch")
    lr: float = 1e-3
    head_lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    power: float = 0.9
    crop: int = CROP_RGB            # RGB pixels; latent crops are crop / 8
    freeze_bn: bool | None = None   # None: frozen iff init is given
    augment: Literal["input", "codec"] = option("input", "input: crop + mirror of the cached input (a mirrored "
                                                         "latent); codec: crop + true mirror of the RGB frame, then "
                                                         "through the frozen codec")
    limit: int | None = option(None, "only the first N frames of each split (smoke runs)")
    eval_splits: tuple[str, ...] = ("val", "test")
    eval_batch: int = 10


class FrozenBN(nn.Module):
    """Wraps a network so that train() leaves every BatchNorm in eval mode (running statistics fixed)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, x):
        return self.net(x)


def check_kind(model: str, kind: str) -> None:
    """A NodecodeError unless `model` is a -d segmenter taking this input kind."""
    cfg = get_config(model)
    if cfg.task != "segmentation":
        raise NodecodeError(f"{model} is a classifier; segmenters: resnet50_d/71_d, cresnet39_d/51_d/72_d")
    if (kind == "latent") != (cfg.input == "latent"):
        raise NodecodeError(f"model {model} takes {cfg.input} inputs, not the {kind} kind")


def predict(model: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Logits at label size (N, K, H, W): bilinear upsampling of the backbone-resolution logits (§5.1)."""
    logits = model(x).float()
    h, w = size
    full = (logits.shape[-2] * GRID, logits.shape[-1] * GRID) if x.shape[-1] * GRID < w + GRID else (h, w)
    return upsample_logits(logits, full)[..., :h, :w]


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.Tensor, labels: torch.Tensor, pipeline: InputPipeline,
             num_classes: int, batch: int = 10) -> dict:
    """Per-class IoU, mIoU and pixel accuracy over whole frames (label 11 ignored)."""
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, IGNORE)
    for i in range(0, len(data), batch):
        y = labels[i: i + batch].to(dev).long()
        cm.update(predict(model, pipeline(data[i: i + batch].to(dev)), tuple(y.shape[-2:])).argmax(1), y)
    model.train(was)
    iou = cm.iou()
    return {"miou": cm.miou(), "iou": [None if v != v else float(v) for v in iou.tolist()],
            "pixel_acc": cm.pixel_accuracy(), "n": len(data)}


def save_segmenter(model: nn.Module, path: str | Path, meta: dict, half: bool = False) -> None:
    """Weights as safetensors (fp16 if `half`, for the bundled one), `meta` in its header and as JSON beside it."""
    save_weights(model.net if isinstance(model, FrozenBN) else model, path, meta, FORMAT, half)


def load_segmenter(path: str | Path, device=None) -> tuple[nn.Module, dict]:
    """(model in eval mode, fp32, meta) from a bundled name, segmenter.safetensors or a run folder holding it."""
    from nodecode.tasks.classification import load_pretrained
    model, cfg = load_pretrained(path, "segmenter", device)
    return model, cfg.to_meta()


def _data(cfg_or_meta_input, root, split, codec, cache_dir, limit):
    folder = scan_segmentation(root, split, limit)
    return folder, *load_segmentation(folder, cfg_or_meta_input, codec, cache_dir)


def train_segmenter(cfg: SegmenterTrainConfig) -> TrainResult:
    """Train (or resume) one segmenter; writes out/segmenter.safetensors (+ .json) and out/summary.json."""
    device = pick_device(cfg.device)
    check_kind(cfg.model, cfg.input)
    torch.manual_seed(cfg.seed)
    out, t0 = Path(cfg.out), time.time()
    codec = load_codec(cfg.codec, device) if cfg.input != "rgb" else None
    folder, x, y, info = _data(cfg.input, cfg.data, "train", codec, cfg.cache_dir, cfg.limit)
    x, y = x.to(device), y.to(device)
    mean = channel_mean(x, cfg.input, codec)
    cuda = device.type == "cuda"
    pipe = InputPipeline(cfg.input, mean, codec, channels_last=cuda)
    if cfg.augment not in ("input", "codec"):
        raise NodecodeError(f"unknown augmentation {cfg.augment!r} (input or codec)")
    if cfg.augment == "codec" and cfg.input != "rgb":
        rgb = _data("rgb", cfg.data, "train", None, cfg.cache_dir, cfg.limit)[1].to(device)
        batches = SegBatches(rgb, y, pipe, cfg.batch_size, cfg.crop, cfg.seed,
                             arm=partial(through_codec, kind=cfg.input, codec=codec, amp=cfg.amp))
    else:
        batches = SegBatches(x, y, pipe, cfg.batch_size, cfg.crop, cfg.seed)
    iters = cfg.iters or scaled_iterations(len(x), cfg.batch_size)
    net = create_model(cfg.model, in_channels=x.shape[1], num_classes=len(folder.names), width=cfg.width)
    if cfg.init:
        from nodecode.tasks.classification import load_classifier
        cls, cmeta = load_classifier(cfg.init, "cpu")
        if cmeta["input"] != cfg.input or (codec is not None and cmeta.get("codec_name") != codec.config.name):
            raise NodecodeError(f"classifier {cfg.init} was trained on {cmeta['input']} "
                                f"({cmeta.get('codec_name')}), not {cfg.input} ({cfg.codec})")
        load_backbone(net, cls.state_dict())
    frozen = bool(cfg.init) if cfg.freeze_bn is None else cfg.freeze_bn
    model = (FrozenBN(net) if frozen else net).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in trainable if not n.startswith("aspp.") and p.ndim > 1], "lr": cfg.lr,
               "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in trainable if not n.startswith("aspp.") and p.ndim <= 1], "lr": cfg.lr,
               "weight_decay": 0.0},
              {"params": [p for n, p in trainable if n.startswith("aspp.") and p.ndim > 1], "lr": cfg.head_lr,
               "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in trainable if n.startswith("aspp.") and p.ndim <= 1], "lr": cfg.head_lr,
               "weight_decay": 0.0}]
    optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum)
    meta = {"model": cfg.model, "width": cfg.width, "input": cfg.input, "in_channels": int(x.shape[1]),
            "codec": cfg.codec if codec is not None else None,
            "codec_name": codec.config.name if codec is not None else None, "classes": list(range(len(folder.names))),
            "class_names": folder.names, "ignore_index": IGNORE, "mean": mean.tolist(), "init": cfg.init}
    engine = Engine(model, optimizer, cfg.engine_config(out, iters, log_every=min(cfg.log_every, iters)),
                    lr_at=lambda s: (1 - s / iters) ** cfg.power, meta={"config": asdict(cfg)})

    def step_fn(m, batch):
        xb, yb = batch
        return F.cross_entropy(predict(m, xb, tuple(yb.shape[-2:])), yb, ignore_index=IGNORE), {}

    if not engine.fit(batches, step_fn):
        return TrainResult.stopped(engine)
    del x, y, batches
    results = {}
    with engine.autocast():
        for split in cfg.eval_splits:
            _, xs, ys, sinfo = _data(cfg.input, cfg.data, split, codec, cfg.cache_dir, cfg.limit)
            results[split] = {**evaluate(net, xs, ys, pipe, len(folder.names), cfg.eval_batch), **sinfo}
    save_segmenter(net, out / "segmenter.safetensors", meta)
    summary = {"config": asdict(cfg), "iters": iters, "train_images": len(folder.images), "input_info": info,
               "minutes": (time.time() - t0) / 60, "checkpoint": meta, **results, **provenance()}
    write_json(out / "summary.json", summary)
    return TrainResult(True, out, engine.step, iters, summary,
                       {s: round(100 * r["miou"], 2) for s, r in results.items()})   # mIoU % per split


def evaluate_segmenter(checkpoint: str | Path, data: str | Path, split: str = "val", device=None,
                       cache_dir: str | None = None, batch: int = 10, limit: int | None = None) -> dict:
    """Per-class IoU and mIoU of a trained segmenter on data/{images,labels}/split."""
    model, meta = load_segmenter(checkpoint, device)
    dev = next(model.parameters()).device
    codec = load_codec(meta["codec"], dev) if meta["input"] != "rgb" else None
    _, x, y, info = _data(meta["input"], data, split, codec, cache_dir, limit)
    pipe = InputPipeline(meta["input"], torch.tensor(meta["mean"]), codec)
    res = evaluate(model, x, y, pipe, len(meta["class_names"]), batch)
    return {**res, "class_names": meta["class_names"], "input": meta["input"], "bpp": info.get("bpp"),
            "split": split, "checkpoint": str(checkpoint)}
