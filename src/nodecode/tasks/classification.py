"""Classification from compressed representations or (decoded) RGB: the training recipe of §4.4 / App. A.4.

SGD, momentum 0.9, weight decay 1e-4 on conv and fc weights (not on BN parameters or biases, as Slim's
resnet_arg_scope), lr 0.025 at batch 64 scaled linearly with the global batch (Goyal et al. 2017), divided by 10
at epochs 8, 16 and 24 of 28 (the 3.75x faster schedule), cross-entropy, inputs from data.classification and
data.augment. The codec is frozen: its symbols / reconstructions are computed once and cached.

BatchNorm statistics are per forward pass: per process by default (plain DDP), or over groups of `bn_batch`
images (one process only), which makes a one-process run reproduce an N-process DDP run with the same global batch.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nodecode import zoo
from nodecode.codec.zoo import load_codec
from nodecode.data.augment import Batches, InputPipeline
from nodecode.data.classification import load_inputs
from nodecode.data.folders import scan_image_folder
from nodecode.data.latents import channel_mean
from nodecode.config import option
from nodecode.errors import NodecodeError
from nodecode.eval.metrics import topk_accuracy
from nodecode.models import create_model, get_config
from nodecode.models.registry import pretrained_cfg
from nodecode.tasks.checkpoint import save_weights
from nodecode.tasks.engine import Engine, RunOptions, TrainResult, init_distributed, is_main_process
from nodecode.utils import pick_device, provenance, write_json

FORMAT = "nodecode-classifier-1"


@dataclass
class ClassifierTrainConfig(RunOptions):
    data: str = option(help="folder holding train/ and val/ ImageFolders (e.g. imagenette2-224)")
    out: str = option(help="run folder: checkpoints, logs, classifier.safetensors, summary.json")
    model: str = option("cresnet51", "architecture: resnet50/71 for rgb, decoded, webp; cresnet39/51/72 for latent")
    input: Literal["rgb", "decoded", "latent", "webp"] = option("latent", "what the network sees")
    codec: str = option("c8", "operating point (name or codec file) for decoded/latent inputs (webp: its default bpp)")
    init: str | None = option(None, "start from this classifier checkpoint (e.g. the §6.1 control's 9 more epochs)")
    width: float = option(1.0, "channel width multiplier")
    epochs: int = option(28, "training epochs")
    lr_epochs: tuple[int, ...] = (8, 16, 24)
    batch_size: int = option(64, "global batch over all processes; the lr scales linearly from --lr at 64")
    base_lr: float = option(0.025, "learning rate at batch 64", flag="lr")
    momentum: float = 0.9
    weight_decay: float = 1e-4
    pad: int | None = None             # crop padding; None: side / 7 (32 px RGB, 4 latent px)
    bn_batch: int | None = None        # BatchNorm group size (one process only); None: the per-process batch
    webp_bpp: float | None = option(None, "WebP bits per pixel (default: the codec's mean real .ndc bpp on val)")
    train_split: str = "train"
    val_split: str = "val"
    max_per_class: int | None = option(None, "at most this many images per class (a subset, for smoke runs)")
    eval_batch: int = 250


def check_kind(model: str, kind: str) -> None:
    """A NodecodeError unless `model` is a classifier taking this input kind."""
    if get_config(model).task != "classification":
        raise NodecodeError(f"{model} is a segmentation network; classifiers: resnet50/71, cresnet39/51/72")
    want = get_config(model).input
    if (kind == "latent") != (want == "latent"):
        raise NodecodeError(f"model {model} takes {want} inputs, not the {kind} kind "
                            f"({'cresnet* for latent' if kind == 'latent' else 'resnet* for ' + kind})")


def needs_codec(kind: str) -> bool:
    return kind in ("latent", "decoded")


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: torch.Tensor, labels: torch.Tensor, pipeline: InputPipeline,
             batch: int = 250, ks=(1, 5)) -> dict:
    """Top-k accuracies and mean loss on whole (un-augmented) inputs; under DDP sharded over ranks and summed."""
    ddp = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    dev = next(model.parameters()).device
    if ddp:  # every rank evaluates rank 0's model (DDP keeps BN running statistics per rank)
        for b in model.buffers():
            dist.broadcast(b, 0)
    was = model.training
    model.eval()
    idx = torch.arange(rank, len(data), world)
    sums = torch.zeros(len(ks) + 2, dtype=torch.float64, device=dev)   # hits per k, loss sum, count
    for i in range(0, len(idx), batch):
        j = idx[i: i + batch]
        y = labels[j.to(labels.device)].to(dev)
        logits = model(pipeline(data[j.to(data.device)].to(dev))).float()
        acc = topk_accuracy(logits, y, ks)
        sums += torch.tensor([round(acc[k] * len(j)) for k in ks] + [F.cross_entropy(logits, y, reduction="sum").item(),
                                                                     len(j)], dtype=torch.float64, device=dev)
    if ddp:
        dist.all_reduce(sums)
    model.train(was)
    n = max(int(sums[-1]), 1)
    return {**{f"top{k}": float(sums[i]) / n for i, k in enumerate(ks)}, "loss": float(sums[-2]) / n,
            "n": int(sums[-1])}


def save_classifier(model: torch.nn.Module, path: str | Path, meta: dict, half: bool = False) -> None:
    """Weights as safetensors (fp16 floats if `half`, for bundling), `meta` in its header and as JSON beside it."""
    save_weights(model, path, meta, FORMAT, half)


def bundled_classifier(point: str) -> str:
    """The zoo name of the bundled Imagenette classifier for an operating point (a narrow cResNet-51 on its latent)."""
    return zoo.bundled_for("classifier", point)


def load_pretrained(name_or_path: str | Path, kind: str, device=None) -> tuple[torch.nn.Module, zoo.PretrainedCfg]:
    """(model in eval mode, fp32, its PretrainedCfg) of a bundled name, a weights file or a run folder holding one."""
    _, cfg = pretrained_cfg(name_or_path, kind)
    model = create_model(cfg.architecture, pretrained=str(name_or_path))
    return model.to(pick_device(device)).eval(), cfg


def load_classifier(path: str | Path, device=None) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, fp32, meta) from a bundled name, classifier.safetensors or a run folder holding it."""
    model, cfg = load_pretrained(path, "classifier", device)
    return model, cfg.to_meta()


def _inputs(folder, kind, codec, webp_bpp, cache_dir):
    x, info = load_inputs(folder, kind, codec, webp_bpp, cache_dir)
    return x, torch.from_numpy(folder.labels), info


def train_classifier(cfg: ClassifierTrainConfig) -> TrainResult:
    """Train (or resume) one classifier; writes out/classifier.safetensors (+ .json) and out/summary.json."""
    rank, world, dist_dev = init_distributed()
    device = dist_dev or pick_device(cfg.device)
    check_kind(cfg.model, cfg.input)
    if cfg.bn_batch and world > 1 and cfg.bn_batch != cfg.batch_size // world:
        raise NodecodeError("under DDP, bn_batch must be unset or equal to the per-process batch")
    torch.manual_seed(cfg.seed)
    out, root, t0 = Path(cfg.out), Path(cfg.data), time.time()
    use_codec = needs_codec(cfg.input) or (cfg.input == "webp" and not cfg.webp_bpp)
    codec = load_codec(cfg.codec, device) if use_codec else None
    if world > 1 and rank != 0:
        dist.barrier()          # rank 0 fills the cache first
    train_f = scan_image_folder(root / cfg.train_split, max_per_class=cfg.max_per_class)
    val_f = scan_image_folder(root / cfg.val_split, classes=train_f.classes, max_per_class=cfg.max_per_class)
    webp_bpp = cfg.webp_bpp
    if cfg.input == "webp" and not webp_bpp:
        webp_bpp = load_inputs(val_f, "latent", codec, cache_dir=cfg.cache_dir)[1]["bpp"]
    train_x, train_y, _ = _inputs(train_f, cfg.input, codec, webp_bpp, cfg.cache_dir)
    val_x, val_y, val_info = _inputs(val_f, cfg.input, codec, webp_bpp, cfg.cache_dir)
    if world > 1 and rank == 0:
        dist.barrier()
    train_x, val_x = train_x.to(device), val_x.to(device)
    mean = channel_mean(train_x, cfg.input, codec)
    cuda = device.type == "cuda"
    pipe = InputPipeline(cfg.input, mean, codec, cfg.pad, channels_last=cuda)
    batches = Batches(train_x, train_y, pipe, cfg.batch_size, cfg.seed, rank, world)
    spe = batches.steps_per_epoch

    model = create_model(cfg.model, in_channels=train_x.shape[1], num_classes=len(train_f.classes),
                         width=cfg.width).to(device)
    if cfg.init:
        src, src_meta = load_classifier(cfg.init, device)
        if src_meta["model"] != cfg.model or src_meta["in_channels"] != train_x.shape[1] \
                or src_meta["classes"] != train_f.classes:
            raise NodecodeError(f"--init {cfg.init} is not a {cfg.model} of these inputs and classes")
        model.load_state_dict(src.state_dict())
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}],
                                lr=cfg.base_lr * cfg.batch_size / 64, momentum=cfg.momentum)
    meta = {"model": cfg.model, "width": cfg.width, "input": cfg.input, "in_channels": int(train_x.shape[1]),
            "codec": cfg.codec if codec is not None and cfg.input != "webp" else None,
            "codec_name": codec.config.name if codec is not None and cfg.input != "webp" else None,
            "webp_bpp": webp_bpp, "classes": train_f.classes, "class_names": train_f.names,
            "mean": mean.tolist(), "pixel_scale": 255, "size": list(train_x.shape[2:])}
    engine = Engine(model, optimizer, cfg.engine_config(out, cfg.epochs * spe, log_every=min(cfg.log_every, spe),
                                                         checkpoint_every_s=300),
                    lr_at=lambda s: 0.1 ** sum(s >= e * spe for e in cfg.lr_epochs), meta={"config": asdict(cfg)})
    bn = cfg.bn_batch or cfg.batch_size // world
    last: dict = {}

    def step_fn(net, batch):
        x, y = batch
        logits = net(x) if bn >= len(x) else torch.cat([net(c) for c in x.split(bn)])
        loss = F.cross_entropy(logits.float(), y)
        return loss, {"top1": (logits.argmax(1) == y).float().mean()}

    def eval_fn(m, step):
        last.update(evaluate(m, val_x, val_y, pipe, cfg.eval_batch), epoch=step / spe)
        return dict(last)

    if not engine.fit(batches, step_fn, eval_fn=eval_fn, eval_every=spe):
        return TrainResult.stopped(engine)
    if not last:  # finished earlier, only the files are missing
        last.update(evaluate(model, val_x, val_y, pipe, cfg.eval_batch), epoch=float(cfg.epochs))
    summary: dict = {}
    if is_main_process():
        save_classifier(model, out / "classifier.safetensors", meta)
        summary = {"config": asdict(cfg), "world_size": world, "steps": engine.step, "steps_per_epoch": spe,
                   "train_images": len(train_x), "val": last, "input_info": val_info,
                   "minutes": (time.time() - t0) / 60,
                   "checkpoint": meta, **provenance()}
        write_json(out / "summary.json", summary)
    return TrainResult(True, out, engine.step, cfg.epochs * spe, summary, {k: last[k] for k in ("top1", "top5", "loss")})


def evaluate_classifier(checkpoint: str | Path, data: str | Path, split: str = "val", device=None,
                        cache_dir: str | None = None, batch: int = 250) -> dict:
    """Top-1/top-5 of a trained classifier on data/split (or on data itself when it has no such folder)."""
    model, meta = load_classifier(checkpoint, device)
    dev = next(model.parameters()).device
    root = Path(data) / split if (Path(data) / split).is_dir() else Path(data)
    folder = scan_image_folder(root, classes=meta["classes"])
    codec = load_codec(meta["codec"], dev) if needs_codec(meta["input"]) else None
    x, y, info = _inputs(folder, meta["input"], codec, meta.get("webp_bpp"), cache_dir)
    pipe = InputPipeline(meta["input"], torch.tensor(meta["mean"]), codec)
    res = evaluate(model, x, y, pipe, batch)
    return {**res, "input": meta["input"], "bpp": info.get("bpp"), "data": str(root), "checkpoint": str(checkpoint)}
