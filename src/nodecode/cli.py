"""The `nodecode` command: parses arguments and calls the package; errors are one line and exit code 2."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from nodecode.config import add_config_args, add_deprecated_alias, add_json_option

# `nodecode train NAME`: the recipe's config dataclass is the one home of its flags and defaults (nodecode.config)
TRAIN_RECIPES = (
    ("codec", "nodecode.tasks.compression", "CodecTrainConfig", "train_codec",
     "train the compression network with Eq. 1 (torchrun --nproc_per_node=N for DDP)"),
    ("classifier", "nodecode.tasks.classification", "ClassifierTrainConfig", "train_classifier",
     "train a (c)ResNet on rgb, decoded, latent or webp inputs, or on .ndc shards (§4.4, App. A.4)"),
    ("joint", "nodecode.tasks.joint", "JointTrainConfig", "train_joint",
     "fine-tune codec and cResNet jointly with Eq. 2 (§6, App. A.8)"),
    ("segmenter", "nodecode.tasks.segmentation", "SegmenterTrainConfig", "train_segmenter",
     "train a -d network with ASPP on CamVid-layout data (§5, App. A.5)"),
)


class Parser(argparse.ArgumentParser):
    """argparse with the package's error style: one `nodecode: error: ...` line and exit code 2."""

    def error(self, message):
        where = self.prog.removeprefix("nodecode").strip()
        self.exit(2, f"nodecode: error: {where + ': ' if where else ''}{message}\n")


def _train(a):
    from nodecode.config import config_from_args
    from nodecode.tasks.engine import is_main_process
    r = a.train(config_from_args(a.config, a))
    if not is_main_process():
        return
    if r.finished:
        print(json.dumps(r.metrics))
    else:
        print(f"stopped at step {r.step}/{r.total_steps} (time budget); run the same command again to resume")


def _eval_classifier(a):
    from nodecode.config import emit_json
    from nodecode.tasks.classification import evaluate_classifier
    r = evaluate_classifier(a.checkpoint, a.data, split=a.split, device=a.device, cache_dir=a.cache_dir)
    if not emit_json(a.json, r):
        print(f"top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%  ({r['n']} images)")


def _eval_segmenter(a):
    from nodecode.config import emit_json
    from nodecode.tasks.segmentation import evaluate_segmenter
    r = evaluate_segmenter(a.checkpoint, a.data, split=a.split, device=a.device, cache_dir=a.cache_dir)
    if emit_json(a.json, r):
        return
    for name, v in zip(r["class_names"], r["iou"]):
        print(f"{name:<12} {'-' if v is None else f'{100 * v:6.2f}'}")
    print(f"mIoU {100 * r['miou']:.2f}%  pixel accuracy {100 * r['pixel_acc']:.2f}%  ({r['n']} frames, {r['split']})")


def _report(rows: list[dict]) -> int:
    """Each unreadable file as one line on stderr; exit code 2 if there was any."""
    bad = [r for r in rows if "error" in r]
    for r in bad:
        print(f"nodecode: error: {r['error']}", file=sys.stderr)
    return 2 if bad else 0


def _segment(a):
    from nodecode.tasks.inference import mask_paths, segment_files
    outputs, overlays = mask_paths(a.files, a.output, a.overlay)
    rows = segment_files(a.files, outputs, overlays, model=a.segmenter, device=a.device, batch=a.batch)
    for r in rows:
        if "error" not in r:
            top = sorted(r["classes"].items(), key=lambda kv: -kv[1])[:4]
            print(f"{r['mask']}: {r['width']}x{r['height']} [{r['read']}]  " + ", ".join(f"{k} {v:.0%}" for k, v in top))
    return _report(rows)


def _classify(a):
    from nodecode.config import emit_json
    from nodecode.tasks.inference import classify_files
    rows = classify_files(a.files, a.classifier, device=a.device, topk=a.topk, point=a.codec, batch=a.batch)
    if not emit_json(a.json, rows):     # stdout: the JSON alone; bad files still one line each on stderr
        for r in rows:
            if "error" not in r:
                print(f"{r['path']}: " + ", ".join(f"{t['name']} {t['prob']:.3f}" for t in r["top"]) + f"  [{r['read']}]")
    return _report(rows)


def _pack(a):
    from nodecode.data.shards import pack_dir
    r = pack_dir(a.dir, a.output)
    print(f"{r['shard']}: {r['files']} .ndc files, {len(r['classes'])} classes, {r['bytes']} bytes")


def _compress(a):
    from nodecode.codec.files import compress_file
    r = compress_file(a.image, a.output, a.codec, a.device or "cpu")
    print(f"{a.output}: {r['bytes']} bytes, {r['bpp']:.4f} bpp ({r['width']}x{r['height']})")


def _decompress(a):
    from nodecode.codec.files import decompress_file
    r = decompress_file(a.file, a.output, a.codec, a.device or "cpu")
    print(f"{a.output}: {r['width']}x{r['height']}")


def _eval_codec(a):
    from nodecode.config import emit_json
    from nodecode.eval.codec_eval import evaluate_codecs, format_rows
    r = evaluate_codecs(a.data, plot=a.plot, codecs=a.codecs.split(","), baselines=not a.no_baselines,
                        device=a.device, limit=a.limit)
    if not emit_json(a.json, r):
        print(format_rows(r["rows"]))


def _flops(a):
    from nodecode.bench.flops import codec_rows, format_table, table1_rows
    from nodecode.config import emit_json
    rows = table1_rows(extra_rows=codec_rows())
    if not emit_json(a.json, rows):
        print(format_table(rows))


def _bench_speed(a):
    from nodecode.bench.speed import IMPLS, SpeedConfig, run_all
    from nodecode.config import config_from_args, emit_json
    from nodecode.errors import NodecodeError
    cfg = config_from_args(SpeedConfig, a)
    if set(cfg.impls) - set(IMPLS):
        raise NodecodeError(f"unknown impl(s) {sorted(set(cfg.impls) - set(IMPLS))} (choose from {', '.join(IMPLS)})")
    log = (lambda *x: print(*x, file=sys.stderr)) if a.json == "-" else print   # stdout: the JSON alone
    emit_json(a.json, run_all(cfg, log=log))


def _bench_augment(a):
    from nodecode.bench.augment_speed import augment_speed, format_rows
    from nodecode.config import emit_json
    rows = augment_speed(a.codec, a.device, a.batch, a.iters, amp=not a.no_amp, size=a.size, variants=a.variants)
    if not emit_json(a.json, rows):
        print(format_rows(rows))


def _demo(a):
    from nodecode.demo import run_demo
    run_demo(a.data, a.out, device=a.device, imagenette=a.imagenette, camvid=a.camvid)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="nodecode", description="Image understanding from learned compressed representations.")
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
    for name, module, config, fn, help in TRAIN_RECIPES:
        mod = importlib.import_module(module)
        r = t.add_parser(name, help=help)
        into = {}
        if name == "joint":    # a starting classifier, or the §6.1 control without one
            into["classifier"] = r.add_mutually_exclusive_group(required=True)
            into["classifier"].add_argument("--codec-only", action="store_true",
                                            help="the §6.1 control: the same loss minus CE, codec only")
        add_config_args(r, getattr(mod, config), into=into)
        r.set_defaults(fn=_train, config=getattr(mod, config), train=getattr(mod, fn))

    ev = sub.add_parser("eval", help="evaluate a trained network").add_subparsers(dest="what", required=True)
    ec = ev.add_parser("classifier", help="top-1 / top-5 on a split")
    ec.add_argument("checkpoint", help="classifier.safetensors or its run folder")
    ec.add_argument("--data", required=True)
    ec.add_argument("--split", default="val")
    ec.add_argument("--cache-dir", default=None)
    ec.add_argument("--device", default=None)
    add_json_option(ec, "the accuracies")
    ec.set_defaults(fn=_eval_classifier)

    es = ev.add_parser("segmenter", help="per-class IoU and mIoU on a split")
    es.add_argument("checkpoint", help="segmenter.safetensors or its run folder")
    es.add_argument("--data", required=True)
    es.add_argument("--split", default="val", choices=["train", "val", "test"])
    es.add_argument("--cache-dir", default=None)
    es.add_argument("--device", default=None)
    add_json_option(es, "the IoUs")
    es.set_defaults(fn=_eval_segmenter)

    sg = sub.add_parser("segment", help="segment .ndc files (no RGB decoding) or images into mask PNGs")
    sg.add_argument("files", nargs="+")
    sg.add_argument("-o", "--output", required=True,
                    help="mask PNG (CamVid palette); a folder for several files (one NAME.png each)")
    sg.add_argument("--overlay", default=None, help="also write the image blended with the mask (PNG, or a folder)")
    sg.add_argument("--batch", type=int, default=16, help=".ndc files decoded and segmented per batch")
    sg.add_argument("--segmenter", default=None, help="segmenter.safetensors, its run folder or a bundled name "
                                                      "(default: the bundled c8 one)")
    add_deprecated_alias(sg, "--model", "--segmenter", "segmenter")
    sg.add_argument("--device", default=None)
    sg.set_defaults(fn=_segment)

    k = sub.add_parser("classify", help="classify .ndc files (no RGB decoding) or images")
    k.add_argument("files", nargs="+")
    k.add_argument("--classifier", default=None,
                   help="classifier.safetensors or its run folder (default: the bundled one of each file's point)")
    k.add_argument("--codec", default="c8", help="operating point whose bundled classifier takes image files")
    k.add_argument("--topk", type=int, default=5)
    k.add_argument("--batch", type=int, default=256, help=".ndc files decoded and classified per batch")
    k.add_argument("--device", default=None)
    add_json_option(k, "the predictions")
    k.set_defaults(fn=_classify)

    pk = sub.add_parser("pack", help="a folder of .ndc files (class subfolders) -> one WebDataset-style tar shard")
    pk.add_argument("dir")
    pk.add_argument("-o", "--output", required=True, help="SHARD.tar")
    pk.set_defaults(fn=_pack)

    c = sub.add_parser("compress", help="image -> .ndc file")
    c.add_argument("image")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--codec", default="c8", help="operating point (c8, c16, c32, c8-joint) or a codec file")
    add_deprecated_alias(c, "--model", "--codec", "codec")
    c.add_argument("--device", default=None)
    c.set_defaults(fn=_compress)

    x = sub.add_parser("decompress", help=".ndc file -> image")
    x.add_argument("file")
    x.add_argument("-o", "--output", required=True)
    x.add_argument("--codec", default=None, help="codec file, if the file was not made by a bundled operating point")
    add_deprecated_alias(x, "--model", "--codec", "codec")
    x.add_argument("--device", default=None)
    x.set_defaults(fn=_decompress)

    e = sub.add_parser("eval-codec", help="rate-distortion of the codecs and classical baselines (Fig. 8)")
    e.add_argument("--data", required=True)
    add_json_option(e, "the per-image and averaged rows")
    e.add_argument("--plot", default=None)
    e.add_argument("--codecs", default="c8,c16,c32", help="operating points or codec files (comma list)")
    e.add_argument("--no-baselines", action="store_true")
    e.add_argument("--limit", type=int, default=None, help="only the first N images")
    e.add_argument("--device", default=None)
    e.set_defaults(fn=_eval_codec)

    f = sub.add_parser("flops", help="Table 1: GMACs of the networks and the codec")
    add_json_option(f, "the rows")
    f.set_defaults(fn=_flops)

    from nodecode.bench.speed import SpeedConfig
    b = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="what", required=True)
    bs = b.add_parser("speed", help="Fig. 12 network speed; optionally end to end from files and Kodak codec speed")
    add_json_option(bs, "all rows")
    add_config_args(bs, SpeedConfig)
    bs.set_defaults(fn=_bench_speed)
    ba = b.add_parser("augment", help="cost of the augmentation through the codec: img/s of crop + encode (+ decode)")
    ba.add_argument("--codec", default="c8", help="operating point (c8, c16, c32, c8-joint) or a codec file")
    ba.add_argument("--device", default=None)
    ba.add_argument("--batch", type=int, default=128)
    ba.add_argument("--iters", type=int, default=10)
    ba.add_argument("--size", type=int, default=224)
    ba.add_argument("--variants", type=int, default=8, help="K, for the one-off cost of K cached variants per image")
    ba.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast on CUDA")
    add_json_option(ba, "the rows")
    ba.set_defaults(fn=_bench_augment)
    from nodecode.archive.cli import add_commands
    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from nodecode.errors import NodecodeError, one_line
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:     # a bad flag (one line on stderr, code 2) or --help (code 0)
        return e.code if isinstance(e.code, int) else 2
    try:
        from nodecode.limits import set_max_pixels
        set_max_pixels(args.max_pixels)
        if getattr(args, "checkpoint_every", None) is not None:    # refused before any data is read
            from nodecode.tasks.engine import checkpoint_interval
            checkpoint_interval(args.checkpoint_every, 0)
        code = args.fn(args) or 0
    except KeyboardInterrupt:
        print("nodecode: interrupted", file=sys.stderr)
        return 130
    except (NodecodeError, OSError, MemoryError, RuntimeError) as e:   # torch's out-of-memory is a RuntimeError
        print(f"nodecode: error: {one_line(e)}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
