"""The `nodecode` command: parses arguments and calls the package; errors are one line and exit code 2."""
from __future__ import annotations

import argparse
import json
import sys


def _train_codec(a):
    from dataclasses import fields
    from nodecode.tasks.compression import CodecTrainConfig, train_codec
    kw = {f.name: getattr(a, f.name) for f in fields(CodecTrainConfig) if hasattr(a, f.name)}
    train_codec(CodecTrainConfig(**{**kw, "name": a.name or f"c{a.channels}"}))


def _train_classifier(a):
    from nodecode.tasks.classification import ClassifierTrainConfig, train_classifier
    train_classifier(ClassifierTrainConfig(
        data=a.data, out=a.out, model=a.model, input=a.input, codec=a.codec, width=a.width, epochs=a.epochs,
        batch_size=a.batch_size, base_lr=a.lr, webp_bpp=a.webp_bpp, max_per_class=a.max_per_class,
        cache_dir=a.cache_dir, device=a.device, seed=a.seed, max_minutes=a.max_minutes, init=a.init, checkpoint_every=a.checkpoint_every,
        recipe=a.recipe, weight_decay=a.weight_decay, warmup_epochs=a.warmup_epochs, label_smoothing=a.label_smoothing,
        augment=a.augment, augment_variants=a.augment_variants, holdout_frac=a.holdout_frac))


def _train_joint(a):
    from nodecode.tasks.joint import JointTrainConfig, train_joint
    train_joint(JointTrainConfig(
        data=a.data, out=a.out, codec=a.codec, classifier=None if a.codec_only else a.classifier, gamma=a.gamma,
        beta=a.beta, target_entropy=a.target_entropy, epochs=a.epochs, batch_size=a.batch_size, base_lr=a.lr,
        image_size=a.image_size, max_per_class=a.max_per_class, cache_dir=a.cache_dir, device=a.device, seed=a.seed,
        max_minutes=a.max_minutes, checkpoint_every=a.checkpoint_every))


def _eval_classifier(a):
    from nodecode.tasks.classification import evaluate_classifier
    r = evaluate_classifier(a.checkpoint, a.data, split=a.split, device=a.device, cache_dir=a.cache_dir)
    print(json.dumps(r, indent=2) if a.json else f"top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%  ({r['n']} images)")


def _train_segmenter(a):
    from nodecode.tasks.segmentation import SegmenterTrainConfig, train_segmenter
    train_segmenter(SegmenterTrainConfig(
        data=a.data, out=a.out, model=a.model, input=a.input, codec=a.codec, init=a.init, width=a.width,
        iters=a.iters, batch_size=a.batch_size, limit=a.limit, cache_dir=a.cache_dir, device=a.device, seed=a.seed,
        max_minutes=a.max_minutes, checkpoint_every=a.checkpoint_every, augment=a.augment))


def _eval_segmenter(a):
    from nodecode.tasks.segmentation import evaluate_segmenter
    r = evaluate_segmenter(a.checkpoint, a.data, split=a.split, device=a.device, cache_dir=a.cache_dir)
    if a.json:
        print(json.dumps(r, indent=2))
        return
    for name, v in zip(r["class_names"], r["iou"]):
        print(f"{name:<12} {'-' if v is None else f'{100 * v:6.2f}'}")
    print(f"mIoU {100 * r['miou']:.2f}%  pixel accuracy {100 * r['pixel_acc']:.2f}%  ({r['n']} frames, {r['split']})")


def _segment(a):
    from nodecode.tasks.inference import segment_file
    r = segment_file(a.file, a.output, overlay=a.overlay, model=a.model, device=a.device)
    top = sorted(r["classes"].items(), key=lambda kv: -kv[1])[:4]
    print(f"{r['mask']}: {r['width']}x{r['height']} [{r['read']}]  " + ", ".join(f"{k} {v:.0%}" for k, v in top))


def _classify(a):
    from nodecode.tasks.inference import classify_files
    rows = classify_files(a.files, a.classifier, device=a.device, topk=a.topk, point=a.codec)
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['path']}: " + ", ".join(f"{t['name']} {t['prob']:.3f}" for t in r["top"]) + f"  [{r['read']}]")


def _pack(a):
    from nodecode.data.shards import pack_dir
    r = pack_dir(a.dir, a.output)
    print(f"{r['shard']}: {r['files']} .ndc files, {len(r['classes'])} classes, {r['bytes']} bytes")


def _compress(a):
    from nodecode.codec.files import compress_file
    r = compress_file(a.image, a.output, a.model, a.device or "cpu")
    print(f"{a.output}: {r['bytes']} bytes, {r['bpp']:.4f} bpp ({r['width']}x{r['height']})")


def _decompress(a):
    from nodecode.codec.files import decompress_file
    r = decompress_file(a.file, a.output, a.model, a.device or "cpu")
    print(f"{a.output}: {r['width']}x{r['height']}")


def _eval_codec(a):
    from nodecode.eval.codec_eval import evaluate_codecs
    evaluate_codecs(a.data, a.json, plot=a.plot, codecs=a.codecs.split(","), baselines=not a.no_baselines,
                    device=a.device, limit=a.limit)


def _flops(a):
    from nodecode.bench.flops import codec_rows, format_table, table1_rows
    rows = table1_rows(extra_rows=codec_rows())
    print(json.dumps(rows, indent=2) if a.json else format_table(rows))


def _bench_speed(a):
    from nodecode.bench.speed import IMPLS, SpeedConfig, run_all
    from nodecode.errors import NodecodeError
    impls = tuple(a.impls.split(","))
    if set(impls) - set(IMPLS):
        raise NodecodeError(f"unknown impl(s) {sorted(set(impls) - set(IMPLS))} (choose from {', '.join(IMPLS)})")
    cfg = SpeedConfig(device=a.device, models=tuple(a.models.split(",")), impls=impls, batch=a.batch,
                      seg_batch=a.seg_batch, latent_channels=a.channels, width=a.width, warmup=a.warmup,
                      iters=a.iters, sets=a.sets, compile_models=tuple(filter(None, a.compile_models.split(","))),
                      compile_budget_s=a.compile_budget_s, peak_n=a.peak_n)
    run_all(cfg, a.json, a.e2e_data, a.e2e_work, a.e2e_limit, a.e2e_batch, a.workers, a.classifiers, a.kodak,
            a.kodak_limit, a.cpu_images)


def _bench_augment(a):
    from nodecode.bench.augment_speed import augment_speed, format_rows
    rows = augment_speed(a.codec, a.device, a.batch, a.iters, amp=not a.no_amp, size=a.size, variants=a.variants)
    print(json.dumps(rows, indent=2) if a.json else format_rows(rows))


def _demo(a):
    from nodecode.demo import run_demo
    run_demo(a.data, a.out, device=a.device, imagenette=a.imagenette, camvid=a.camvid)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodecode", description="Image understanding from learned compressed representations.")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="largest image (input or claimed by a .ndc header) in pixels; default 2^25 or $NODECODE_MAX_PIXELS")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="compress images at c8/c16/c32 and compare with JPEG (the main job)")
    d.add_argument("--data", default=None, help="image file or folder (default: photos bundled with scikit-image)")
    d.add_argument("--out", default="nodecode-demo", help="output folder")
    d.add_argument("--imagenette", default=None,
                   help="Imagenette folder (holding val/) for the classification part (default: ../shared/datasets/imagenette2-224 if there)")
    d.add_argument("--camvid", default=None,
                   help="CamVid folder (holding images/val, labels/val) for the segmentation part (default: ../shared/datasets/camvid if there)")
    d.add_argument("--device", default=None)
    d.set_defaults(fn=_demo)

    t = sub.add_parser("train", help="train a network").add_subparsers(dest="what", required=True)
    tc = t.add_parser("codec", help="train the compression network with Eq. 1 (torchrun --nproc_per_node=N for DDP)")
    tc.add_argument("--data", required=True, help="folder of training images (searched recursively)")
    tc.add_argument("--out", required=True, help="run folder: checkpoints, logs, codec.safetensors")
    tc.add_argument("--channels", type=int, default=16, help="C, latent channels")
    tc.add_argument("--name", default=None, help="operating point name written into files (default cC)")
    tc.add_argument("--num-centers", type=int, default=6, help="L, quantization centers")
    tc.add_argument("--beta", type=float, default=500.0, help="β of Eq. 1 (MSE on 0..255)")
    tc.add_argument("--target-entropy", type=float, default=1.3, help="Ht of Eq. 1, bits per symbol")
    tc.add_argument("--lr", type=float, default=1e-3)
    tc.add_argument("--batch-size", type=int, default=32, help="global batch, split over DDP processes")
    tc.add_argument("--crop", type=int, default=160)
    tc.add_argument("--tile", type=int, default=224, help="images are cut into tiles of this size, crops taken from them")
    tc.add_argument("--steps", type=int, default=20000)
    tc.add_argument("--schedule", default="step", choices=["step", "cosine"],
                    help="step: lr x0.1 for the last 20%%; cosine: --warmup-steps, then cosine down to 1%%")
    tc.add_argument("--warmup-steps", type=int, default=0)
    tc.add_argument("--sigma", type=float, default=None, help="σ of Q̄'s soft assignment (default: the codec's, 1.0)")
    tc.add_argument("--compile", action="store_true", help="torch.compile the codec (CUDA)")
    tc.add_argument("--target-bpp", type=float, default=None, help="rescale Ht so that --bpp-probe's real bpp lands here")
    tc.add_argument("--bpp-probe", default=None, help="images only measured for that calibration (e.g. Kodak)")
    tc.add_argument("--calibrate-at", default="0.3,0.6", help="fractions of the steps at which Ht is rescaled")
    tc.add_argument("--max-minutes", type=float, default=None, help="stop and checkpoint after this long; rerun resumes")
    tc.add_argument("--init", default=None, help="fine-tune from this codec (bundled name or path)")
    tc.add_argument("--val-data", default=None)
    tc.add_argument("--cache-dir", default=None, help="cache decoded training tiles here")
    tc.add_argument("--device", default=None)
    tc.add_argument("--seed", type=int, default=0)
    tc.add_argument("--checkpoint-every", default=None, help="checkpoint every N steps, or every Ns / Nm (default: by time)")
    tc.set_defaults(fn=_train_codec)

    tk = t.add_parser("classifier", help="train a (c)ResNet on rgb, decoded, latent or webp inputs (§4.4, App. A.4)")
    tk.add_argument("--data", required=True, help="folder with train/ and val/ ImageFolders")
    tk.add_argument("--out", required=True)
    tk.add_argument("--input", default="latent", choices=["rgb", "decoded", "latent", "webp"])
    tk.add_argument("--codec", default="c8", help="operating point for decoded/latent (and webp's default bpp)")
    tk.add_argument("--model", default="cresnet51")
    tk.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    tk.add_argument("--recipe", default="paper", choices=["paper", "imagenette"],
                    help="paper: App. A.4; imagenette: Nesterov, warm-up + cosine, label smoothing, codec augmentation")
    tk.add_argument("--epochs", type=int, default=None, help="default: the recipe's (28 paper, 40 imagenette)")
    tk.add_argument("--batch-size", type=int, default=None, help="global batch; default: the recipe's (64, 128)")
    tk.add_argument("--lr", type=float, default=None,
                    help="learning rate at the recipe's reference batch (0.025 at 64, 0.2 at 128), scaled linearly")
    tk.add_argument("--weight-decay", type=float, default=None, help="on weights only (default: the recipe's)")
    tk.add_argument("--warmup-epochs", type=float, default=None)
    tk.add_argument("--label-smoothing", type=float, default=None)
    tk.add_argument("--augment", default=None, choices=["input", "codec"],
                    help="input: crop/mirror of the network input (App. A.4); codec: RGB crop + mirror, then the codec")
    tk.add_argument("--augment-variants", type=int, default=0, help="codec augmentation: K variants per image (0: on the fly)")
    tk.add_argument("--holdout-frac", type=float, default=None, help="evaluate on this part of train held out (not val)")
    tk.add_argument("--webp-bpp", type=float, default=None)
    tk.add_argument("--max-per-class", type=int, default=None)
    tk.add_argument("--init", default=None, help="start from this classifier checkpoint")
    tk.add_argument("--cache-dir", default=None)
    tk.add_argument("--max-minutes", type=float, default=None)
    tk.add_argument("--device", default=None)
    tk.add_argument("--seed", type=int, default=0)
    tk.add_argument("--checkpoint-every", default=None, help="checkpoint every N steps, or every Ns / Nm (default: by time)")
    tk.set_defaults(fn=_train_classifier)

    tj = t.add_parser("joint", help="fine-tune codec and cResNet jointly with Eq. 2 (§6, App. A.8)")
    tj.add_argument("--data", required=True, help="folder with train/ and val/ ImageFolders")
    tj.add_argument("--out", required=True, help="run folder: checkpoints, codec.safetensors, classifier.safetensors")
    tj.add_argument("--codec", default="c8", help="starting codec (bundled name or path)")
    group = tj.add_mutually_exclusive_group(required=True)
    group.add_argument("--classifier", help="starting latent classifier (classifier.safetensors or its run folder)")
    group.add_argument("--codec-only", action="store_true", help="the §6.1 control: same loss minus CE, codec only")
    tj.add_argument("--gamma", type=float, default=0.001, help="γ of Eq. 2")
    tj.add_argument("--beta", type=float, default=None, help="β (default: App. A.8, 600 at c8, 150 at c32)")
    tj.add_argument("--target-entropy", type=float, default=None, help="Ht (default: the starting codec's)")
    tj.add_argument("--epochs", type=float, default=9)
    tj.add_argument("--batch-size", type=int, default=64)
    tj.add_argument("--lr", type=float, default=0.0025, help="learning rate at batch 64 (÷10 at epochs 3 and 6)")
    tj.add_argument("--image-size", type=int, default=224, help="images are decoded to this square (224: Imagenette-224)")
    tj.add_argument("--max-per-class", type=int, default=None)
    tj.add_argument("--cache-dir", default=None)
    tj.add_argument("--max-minutes", type=float, default=None)
    tj.add_argument("--device", default=None)
    tj.add_argument("--seed", type=int, default=0)
    tj.add_argument("--checkpoint-every", default=None, help="checkpoint every N steps, or every Ns / Nm (default: by time)")
    tj.set_defaults(fn=_train_joint)

    ts = t.add_parser("segmenter", help="train a -d network with ASPP on CamVid-layout data (§5, App. A.5)")
    ts.add_argument("--data", required=True, help="folder with images/{train,val,test} and labels/{...}")
    ts.add_argument("--out", required=True)
    ts.add_argument("--input", default="latent", choices=["rgb", "decoded", "latent"])
    ts.add_argument("--codec", default="c8", help="operating point for decoded/latent")
    ts.add_argument("--model", default="cresnet51_d")
    ts.add_argument("--init", default=None, help="classifier.safetensors of the same input kind and point (§5.3)")
    ts.add_argument("--width", type=float, default=1.0)
    ts.add_argument("--iters", type=int, default=None, help="default: the paper's 18.9 epochs (694 on CamVid)")
    ts.add_argument("--batch-size", type=int, default=10)
    ts.add_argument("--limit", type=int, default=None, help="first N frames of each split")
    ts.add_argument("--augment", default="input", choices=["input", "codec"],
                    help="input: crop/mirror of the cached input; codec: crop + true mirror in RGB, then the codec")
    ts.add_argument("--cache-dir", default=None)
    ts.add_argument("--max-minutes", type=float, default=None)
    ts.add_argument("--device", default=None)
    ts.add_argument("--seed", type=int, default=0)
    ts.add_argument("--checkpoint-every", default=None, help="checkpoint every N steps, or every Ns / Nm (default: by time)")
    ts.set_defaults(fn=_train_segmenter)

    ev = sub.add_parser("eval", help="evaluate a trained network").add_subparsers(dest="what", required=True)
    ec = ev.add_parser("classifier", help="top-1 / top-5 on a split")
    ec.add_argument("checkpoint", help="classifier.safetensors or its run folder")
    ec.add_argument("--data", required=True)
    ec.add_argument("--split", default="val")
    ec.add_argument("--cache-dir", default=None)
    ec.add_argument("--device", default=None)
    ec.add_argument("--json", action="store_true")
    ec.set_defaults(fn=_eval_classifier)

    es = ev.add_parser("segmenter", help="per-class IoU and mIoU on a split")
    es.add_argument("checkpoint", help="segmenter.safetensors or its run folder")
    es.add_argument("--data", required=True)
    es.add_argument("--split", default="val", choices=["train", "val", "test"])
    es.add_argument("--cache-dir", default=None)
    es.add_argument("--device", default=None)
    es.add_argument("--json", action="store_true")
    es.set_defaults(fn=_eval_segmenter)

    sg = sub.add_parser("segment", help="segment an .ndc file (no RGB decoding) or an image into a mask PNG")
    sg.add_argument("file")
    sg.add_argument("-o", "--output", required=True, help="mask PNG (CamVid palette)")
    sg.add_argument("--overlay", default=None, help="also write the image blended with the mask (PNG)")
    sg.add_argument("--model", default=None, help="segmenter.safetensors (default: the bundled c8 one)")
    sg.add_argument("--device", default=None)
    sg.set_defaults(fn=_segment)

    k = sub.add_parser("classify", help="classify .ndc files (no RGB decoding) or images")
    k.add_argument("files", nargs="+")
    k.add_argument("--classifier", default=None,
                   help="classifier.safetensors or its run folder (default: the bundled one of each file's point)")
    k.add_argument("--codec", default="c8", help="operating point whose bundled classifier takes image files")
    k.add_argument("--topk", type=int, default=5)
    k.add_argument("--device", default=None)
    k.add_argument("--json", action="store_true")
    k.set_defaults(fn=_classify)

    pk = sub.add_parser("pack", help="a folder of .ndc files (class subfolders) -> one WebDataset-style tar shard")
    pk.add_argument("dir")
    pk.add_argument("-o", "--output", required=True, help="SHARD.tar")
    pk.set_defaults(fn=_pack)

    c = sub.add_parser("compress", help="image -> .ndc file")
    c.add_argument("image")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--model", default="c8", help="c8, c16, c32, c8-joint or a codec .safetensors path")
    c.add_argument("--device", default=None)
    c.set_defaults(fn=_compress)

    x = sub.add_parser("decompress", help=".ndc file -> image")
    x.add_argument("file")
    x.add_argument("-o", "--output", required=True)
    x.add_argument("--model", default=None, help="codec path, if the file was not made by a bundled one")
    x.add_argument("--device", default=None)
    x.set_defaults(fn=_decompress)

    e = sub.add_parser("eval-codec", help="rate-distortion of the codecs and classical baselines (Fig. 8)")
    e.add_argument("--data", required=True)
    e.add_argument("--json", required=True)
    e.add_argument("--plot", default=None)
    e.add_argument("--codecs", default="c8,c16,c32")
    e.add_argument("--no-baselines", action="store_true")
    e.add_argument("--limit", type=int, default=None, help="only the first N images")
    e.add_argument("--device", default=None)
    e.set_defaults(fn=_eval_codec)

    f = sub.add_parser("flops", help="Table 1: GMACs of the networks and the codec")
    f.add_argument("--json", action="store_true")
    f.set_defaults(fn=_flops)

    from nodecode.bench.speed import SpeedConfig
    sc = SpeedConfig()
    b = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="what", required=True)
    bs = b.add_parser("speed", help="Fig. 12 network speed; optionally end to end from files and Kodak codec speed")
    bs.add_argument("--json", default=None, help="write all rows here")
    bs.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    bs.add_argument("--models", default=",".join(sc.models))
    bs.add_argument("--impls", default=",".join(sc.impls))
    bs.add_argument("--batch", type=int, default=sc.batch)
    bs.add_argument("--seg-batch", type=int, default=sc.seg_batch)
    bs.add_argument("--channels", type=int, default=sc.latent_channels, help="latent C (bundled codec cC)")
    bs.add_argument("--width", type=float, default=1.0)
    bs.add_argument("--warmup", type=int, default=sc.warmup)
    bs.add_argument("--iters", type=int, default=sc.iters)
    bs.add_argument("--sets", type=int, default=sc.sets, help="distinct input tensors cycled")
    bs.add_argument("--compile-models", default=",".join(sc.compile_models))
    bs.add_argument("--compile-budget-s", type=float, default=sc.compile_budget_s)
    bs.add_argument("--peak-n", type=int, default=sc.peak_n)
    bs.add_argument("--e2e-data", default=None, help="ImageFolder (e.g. imagenette2-224/val): run end to end from files")
    bs.add_argument("--e2e-work", default=None, help="where the .ndc/JPEG/WebP files are written (kept, reused)")
    bs.add_argument("--e2e-limit", type=int, default=1024)
    bs.add_argument("--e2e-batch", type=int, default=256)
    bs.add_argument("--workers", type=int, default=None, help="decoding worker processes")
    bs.add_argument("--classifiers", default=None, help="folder of trained <point>-<input>-<model>-s0 runs")
    bs.add_argument("--kodak", default=None, help="Kodak folder: codec encode/decode speed")
    bs.add_argument("--kodak-limit", type=int, default=None)
    bs.add_argument("--cpu-images", type=int, default=3, help="Kodak images timed on one CPU core")
    bs.set_defaults(fn=_bench_speed)
    ba = b.add_parser("augment", help="cost of the augmentation through the codec: img/s of crop + encode (+ decode)")
    ba.add_argument("--codec", default="c8")
    ba.add_argument("--device", default=None)
    ba.add_argument("--batch", type=int, default=128)
    ba.add_argument("--iters", type=int, default=10)
    ba.add_argument("--size", type=int, default=224)
    ba.add_argument("--variants", type=int, default=8, help="K, for the one-off cost of K cached variants per image")
    ba.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast on CUDA")
    ba.add_argument("--json", action="store_true")
    ba.set_defaults(fn=_bench_augment)
    from nodecode.archive.cli import add_commands
    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from nodecode.errors import NodecodeError, one_line
    args = build_parser().parse_args(argv)
    try:
        from nodecode.limits import set_max_pixels
        set_max_pixels(args.max_pixels)
        if getattr(args, "checkpoint_every", None) is not None:    # refused before any data is read
            from nodecode.tasks.engine import checkpoint_interval
            checkpoint_interval(args.checkpoint_every, 0)
        args.fn(args)
    except KeyboardInterrupt:
        print("nodecode: interrupted", file=sys.stderr)
        return 130
    except (NodecodeError, OSError, MemoryError, RuntimeError) as e:   # torch's out-of-memory is a RuntimeError
        print(f"nodecode: error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
