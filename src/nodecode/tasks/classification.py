"""Classification from compressed representations or (decoded) RGB (§4.4), under a recipe of tasks.recipe.

`paper` (the default) is App. A.4: SGD, momentum 0.9, weight decay 1e-4 on conv and fc weights (not on BN parameters
or biases, as Slim's resnet_arg_scope), lr 0.025 at batch 64 scaled linearly with the global batch (Goyal et al.
2017), divided by 10 at epochs 8, 16 and 24 of 28 (the 3.75x faster schedule), cross-entropy, crop and mirror of the
cached network inputs (data.augment). `imagenette` is the issue-12 recipe (Nesterov, warm-up + cosine, label
smoothing, augmentation in RGB then through the frozen codec: data.codec_augment). The codec is frozen: symbols /
reconstructions of whole images are computed once and cached; the codec augmentation encodes every step (or K
variants per image once). With holdout_frac the run is evaluated on a held-out part of train, never on val.

BatchNorm statistics are per forward pass: per process by default (plain DDP), or over groups of `bn_batch`
images (one process only), which makes a one-process run reproduce an N-process DDP run with the same global batch.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nodecode import zoo
from nodecode.codec.zoo import load_codec
from nodecode.data.augment import Batches, InputPipeline
from nodecode.data.classification import holdout_split, load_inputs
from nodecode.data.codec_augment import CodecAugmentBatches
from nodecode.data.folders import SIZE, scan_image_folder
from nodecode.data.latents import channel_mean
from nodecode.config import option
from nodecode.errors import NodecodeError
from nodecode.eval.metrics import topk_accuracy
from nodecode.models import create_model, get_config, init_from_codec
from nodecode.models.registry import pretrained_cfg
from nodecode.tasks.checkpoint import save_weights
from nodecode.tasks.engine import Engine, RunOptions, TrainResult, init_distributed, is_main_process
from nodecode.tasks.recipe import AUGMENTS, RECIPES, Recipe, by_recipe, get_recipe, sgd
from nodecode.utils import pick_device, provenance, write_json

FORMAT = "nodecode-classifier-1"


@dataclass
class ClassifierTrainConfig(RunOptions):
    data: str = option(help="folder holding train/ and val/ ImageFolders (e.g. imagenette2-224); --input ndc: "
                            "train/, val/ of .ndc shards or train.tar, val.tar (nodecode pack)")
    out: str = option(help="run folder: checkpoints, logs, classifier.safetensors, summary.json")
    model: str = option("cresnet51", "architecture: resnet50/71 for rgb, decoded, webp; cresnet39/51/72 for latent")
    input: Literal["rgb", "decoded", "latent", "webp", "ndc"] = option(
        "latent", "what the network sees; ndc: the latent, from .ndc shards data/{train,val}[.tar] (nodecode pack) "
                  "entropy-decoded on the device per batch")
    codec: str = option("c8", "operating point (name or codec file) for decoded/latent inputs (webp: its default bpp)")
    init: str | None = option(None, "start from this classifier checkpoint (e.g. the §6.1 control's 9 more epochs)")
    width: float = option(1.0, "channel width multiplier")
    # the recipe (tasks.recipe); every field below left at None takes the recipe's value
    recipe: Literal[tuple(RECIPES)] = option("paper", "paper: App. A.4; imagenette: Nesterov, warm-up + cosine, "
                                                      "label smoothing, augmentation through the codec, 40 epochs; "
                                                      "imagenette60: the same, 60 epochs (the recipe search's winner)")
    epochs: int | None = option(None, "training epochs " + by_recipe("epochs"))
    lr_epochs: tuple[int, ...] | None = option(None, "step schedule: lr ÷10 at these epochs " + by_recipe("lr_epochs"))
    batch_size: int | None = option(None, "global batch over all processes; the lr scales linearly from --lr at the "
                                          "recipe's reference batch (64 paper, 128 imagenette) " + by_recipe("batch_size"))
    base_lr: float | None = option(None, "learning rate at the recipe's reference batch " + by_recipe("base_lr"),
                                   flag="lr")
    momentum: float | None = option(None, "SGD momentum " + by_recipe("momentum"))
    nesterov: bool | None = option(None, "Nesterov momentum " + by_recipe("nesterov"))
    weight_decay: float | None = option(None, "on conv / fc weights only, never on norms or biases "
                                        + by_recipe("weight_decay"))
    schedule: Literal["step", "cosine"] | None = option(None, "lr schedule after the warm-up: step (÷10 at "
                                                              "--lr-epochs) or cosine to 0 " + by_recipe("schedule"))
    warmup_epochs: float | None = option(None, "linear lr warm-up " + by_recipe("warmup_epochs"))
    label_smoothing: float | None = option(None, "label smoothing of the cross-entropy " + by_recipe("label_smoothing"))
    augment: Literal[AUGMENTS] | None = option(None, "input: crop + mirror of the network input itself (App. A.4: a "
                                                     "mirrored latent); codec: RGB random-resized crop + true mirror, "
                                                     "then through the frozen codec " + by_recipe("augment"))
    scale: tuple[float, float] | None = option(None, "codec augmentation: crop area fraction range "
                                               + by_recipe("scale"), metavar="LO,HI")
    ratio: tuple[float, float] | None = option(None, "codec augmentation: crop aspect ratio range "
                                               + by_recipe("ratio"), metavar="LO,HI")
    cutmix: bool | None = option(None, "codec augmentation: CutMix (a box of another image pasted in RGB before the "
                                       "codec, labels mixed by area) " + by_recipe("cutmix"))
    augment_variants: int = option(0, "codec augmentation: 0 on the fly, K: K augmented variants per image made once")
    codec_amp: bool = option(True, "codec augmentation: bf16 autocast for the codec's encoder / decoder on CUDA")
    holdout_frac: float | None = option(None, "evaluate on this fraction of train (per class, by seed) held out, "
                                              "never on val (default: evaluate on val)")
    image_size: int = option(224, "images are decoded to this square (smaller only for smoke runs)")
    pad: int | None = None             # crop padding; None: side / 7 (32 px RGB, 4 latent px)
    bn_batch: int | None = None        # BatchNorm group size (one process only); None: the per-process batch
    webp_bpp: float | None = option(None, "WebP bits per pixel (default: the codec's mean real .ndc bpp on val)")
    train_split: str = "train"
    val_split: str = "val"
    max_per_class: int | None = option(None, "at most this many images per class (a subset, for smoke runs)")
    eval_batch: int = 250

    def recipe_values(self) -> Recipe:
        """The named recipe with this config's non-None fields in its place (tasks.recipe)."""
        return get_recipe(self.recipe).with_overrides(**{f.name: getattr(self, f.name) for f in fields(Recipe)
                                                         if f.name != "lr_batch"})


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


def _inputs(folder, kind, codec, webp_bpp, cache_dir, size=SIZE):
    x, info = load_inputs(folder, kind, codec, webp_bpp, cache_dir, size=size)
    return x, torch.from_numpy(folder.labels), info


def _train_eval_sets(cfg: ClassifierTrainConfig, rec: Recipe, codec, webp_bpp, train_f):
    """((train inputs, labels, RGB images for the codec augmentation or None), (eval inputs, labels, info), eval
    name): the eval set is val, or with holdout_frac the held-out part of train (val is then never read)."""
    root = Path(cfg.data)
    x, y, info = _inputs(train_f, cfg.input, codec, webp_bpp, cfg.cache_dir, cfg.image_size)
    rgb = None
    if rec.augment == "codec":
        rgb = x if cfg.input == "rgb" else _inputs(train_f, "rgb", None, None, cfg.cache_dir, cfg.image_size)[0]
    if cfg.holdout_frac:
        kept, held = (torch.from_numpy(i) for i in holdout_split(train_f.labels, cfg.holdout_frac, cfg.seed))
        return ((x[kept], y[kept], rgb[kept] if rgb is not None else None), (x[held], y[held], info),
                f"holdout-{cfg.holdout_frac:g}")
    val_f = scan_image_folder(root / cfg.val_split, classes=train_f.classes, max_per_class=cfg.max_per_class)
    return (x, y, rgb), _inputs(val_f, cfg.input, codec, webp_bpp, cfg.cache_dir, cfg.image_size), cfg.val_split


def _ndc_sets(cfg: ClassifierTrainConfig, codec, device):
    """_train_eval_sets of the ndc input kind: the shards' symbols decoded per batch on the device (data.ndc), the
    image size from their headers; holdout_frac splits the train samples (val is then never read)."""
    from nodecode.data.ndc import NdcSymbols, load_split
    root = Path(cfg.data)
    tr, train_y, classes, names = load_split(root, cfg.train_split, max_per_class=cfg.max_per_class)
    if cfg.holdout_frac:
        kept, held = (torch.from_numpy(i) for i in holdout_split(train_y.numpy(), cfg.holdout_frac, cfg.seed))
        (tr, train_y), (ev, eval_y) = ([tr[i] for i in kept.tolist()], train_y[kept]), ([tr[i] for i in held.tolist()], train_y[held])
        eval_on = f"holdout-{cfg.holdout_frac:g}"
    else:
        ev, eval_y, _, _ = load_split(root, cfg.val_split, classes, cfg.max_per_class)
        eval_on = cfg.val_split
    eval_x = NdcSymbols(ev, codec, device)
    info = {"bpp": sum(f.bpp for f in eval_x.files) / len(eval_x), "codec": codec.config.name,
            "image_size": eval_x.files[0].header.height}
    return ((NdcSymbols(tr, codec, device), train_y, None), (eval_x, eval_y, info), eval_on,
            SimpleNamespace(classes=classes, names=names))


def train_classifier(cfg: ClassifierTrainConfig) -> TrainResult:
    """Train (or resume) one classifier; writes out/classifier.safetensors (+ .json) and out/summary.json."""
    rank, world, dist_dev = init_distributed()
    device = dist_dev or pick_device(cfg.device)
    kind = "latent" if cfg.input == "ndc" else cfg.input      # .ndc shards are latent inputs, decoded per batch
    check_kind(cfg.model, kind)
    rec = cfg.recipe_values()
    if cfg.bn_batch and world > 1 and cfg.bn_batch != rec.batch_size // world:
        raise NodecodeError("under DDP, bn_batch must be unset or equal to the per-process batch")
    if rec.augment == "codec" and cfg.input == "webp":
        raise NodecodeError("augmentation through the codec has no webp arm (use --augment input for webp)")
    if rec.cutmix and cfg.augment_variants:
        raise NodecodeError("CutMix draws partners every step: it needs --augment-variants 0 (on the fly)")
    if rec.augment == "codec" and cfg.input == "ndc":
        raise NodecodeError("augmentation through the codec needs the images; --input ndc has only .ndc shards "
                            "(use --augment input)")
    torch.manual_seed(cfg.seed)
    out, root, t0 = Path(cfg.out), Path(cfg.data), time.time()
    use_codec = needs_codec(kind) or (cfg.input == "webp" and not cfg.webp_bpp)
    codec = load_codec(cfg.codec, device) if use_codec else None
    if world > 1 and rank != 0:
        dist.barrier()          # rank 0 fills the cache first
    if cfg.input == "ndc":
        (train_x, train_y, train_rgb), (val_x, val_y, val_info), eval_on, train_f = _ndc_sets(cfg, codec, device)
        webp_bpp, image_size = None, val_info["image_size"]
    else:
        train_f = scan_image_folder(root / cfg.train_split, max_per_class=cfg.max_per_class)
        webp_bpp, image_size = cfg.webp_bpp, cfg.image_size
        if cfg.input == "webp" and not webp_bpp:
            val_f = scan_image_folder(root / cfg.val_split, classes=train_f.classes, max_per_class=cfg.max_per_class)
            webp_bpp = load_inputs(val_f, "latent", codec, cache_dir=cfg.cache_dir, size=cfg.image_size)[1]["bpp"]
        (train_x, train_y, train_rgb), (val_x, val_y, val_info), eval_on = _train_eval_sets(cfg, rec, codec, webp_bpp,
                                                                                            train_f)
    if world > 1 and rank == 0:
        dist.barrier()
    train_x, val_x = train_x.to(device), val_x.to(device)
    mean = channel_mean(train_x, kind, codec)
    cuda = device.type == "cuda"
    pipe = InputPipeline(kind, mean, codec, cfg.pad, channels_last=cuda)
    if rec.augment == "codec":
        batches = CodecAugmentBatches(train_rgb.to(device), train_y, pipe, rec.batch_size, cfg.input, codec, cfg.seed,
                                      rank, world, rec.scale, rec.ratio, cfg.augment_variants,
                                      cfg.amp and cfg.codec_amp, cutmix=len(train_f.classes) if rec.cutmix else 0)
    else:
        batches = Batches(train_x, train_y, pipe, rec.batch_size, cfg.seed, rank, world)
    spe = batches.steps_per_epoch

    model = create_model(cfg.model, in_channels=train_x.shape[1], num_classes=len(train_f.classes),
                         width=cfg.width).to(device)
    if get_config(cfg.model).codec_init:     # a latent model (check_kind), so the codec is loaded
        init_from_codec(model, codec, mean)
    if cfg.init:
        src, src_meta = load_classifier(cfg.init, device)
        if src_meta["model"] != cfg.model or src_meta["in_channels"] != train_x.shape[1] \
                or src_meta["classes"] != train_f.classes:
            raise NodecodeError(f"--init {cfg.init} is not a {cfg.model} of these inputs and classes")
        model.load_state_dict(src.state_dict())
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = sgd(model, rec, get_config(cfg.model).front_lr_scale)
    meta = {"model": cfg.model, "width": cfg.width, "input": kind, "in_channels": int(train_x.shape[1]),
            "codec": cfg.codec if codec is not None and cfg.input != "webp" else None,
            "codec_name": codec.config.name if codec is not None and cfg.input != "webp" else None,
            "webp_bpp": webp_bpp, "classes": train_f.classes, "class_names": train_f.names,
            "mean": mean.tolist(), "pixel_scale": 255, "size": list(train_x.shape[2:]), "image_size": image_size}
    del train_x
    total = rec.epochs * spe
    engine = Engine(model, optimizer, cfg.engine_config(out, total, log_every=min(cfg.log_every, spe),
                                                         checkpoint_every_s=300),
                    lr_at=lambda s: rec.lr_factor(s, spe), meta={"config": asdict(cfg), "recipe": asdict(rec)})
    bn = cfg.bn_batch or rec.batch_size // world
    last: dict = {}

    def step_fn(net, batch):
        x, y = batch
        logits = net(x) if bn >= len(x) else torch.cat([net(c) for c in x.split(bn)])
        loss = F.cross_entropy(logits.float(), y, label_smoothing=rec.label_smoothing)   # y soft under CutMix
        return loss, {"top1": (logits.argmax(1) == (y.argmax(1) if y.dim() > 1 else y)).float().mean()}

    def eval_fn(m, step):
        last.update(evaluate(m, val_x, val_y, pipe, cfg.eval_batch), epoch=step / spe)
        return dict(last)

    if not engine.fit(batches, step_fn, eval_fn=eval_fn, eval_every=spe):
        return TrainResult.stopped(engine)
    if not last:  # finished earlier, only the files are missing
        last.update(evaluate(model, val_x, val_y, pipe, cfg.eval_batch), epoch=float(rec.epochs))
    summary: dict = {}
    if is_main_process():
        save_classifier(model, out / "classifier.safetensors", meta)
        summary = {"config": asdict(cfg), "recipe": asdict(rec), "world_size": world, "steps": engine.step,
                   "steps_per_epoch": spe, "train_images": len(batches.data), "val": last, "eval_on": eval_on,
                   "input_info": val_info,
                   "minutes": (time.time() - t0) / 60,
                   "checkpoint": meta, **provenance()}
        write_json(out / "summary.json", summary)
    return TrainResult(True, out, engine.step, total, summary, {k: last[k] for k in ("top1", "top5", "loss")})


def evaluate_classifier(checkpoint: str | Path, data: str | Path, split: str = "val", device=None,
                        cache_dir: str | None = None, batch: int = 250) -> dict:
    """Top-1/top-5 of a trained classifier on data/split (or on data itself when it has no such folder)."""
    model, meta = load_classifier(checkpoint, device)
    dev = next(model.parameters()).device
    root = Path(data) / split if (Path(data) / split).is_dir() else Path(data)
    folder = scan_image_folder(root, classes=meta["classes"])
    codec = load_codec(meta["codec"], dev) if needs_codec(meta["input"]) else None
    x, y, info = _inputs(folder, meta["input"], codec, meta.get("webp_bpp"), cache_dir, meta.get("image_size", SIZE))
    pipe = InputPipeline(meta["input"], torch.tensor(meta["mean"]), codec)
    res = evaluate(model, x, y, pipe, batch)
    return {**res, "input": meta["input"], "bpp": info.get("bpp"), "data": str(root), "checkpoint": str(checkpoint)}
