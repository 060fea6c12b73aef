"""End to end from files (App. A.9 "and beyond", issue 13): files -> labels on one card, side by side.

Rows (``e2e_speed``): .ndc shard -> batched entropy decoding on the device (bench.e2e_gpu; Triton) -> cResNet-51 at
each operating point (c8, c16); JPEG (the originals, and JPEG at each point's bpp) -> nvJPEG -> ResNet-50;
JPEG -> Pillow in CPU processes -> ResNet-50 and .ndc -> constriction in CPU processes -> cResNet-51; then the
training-input throughput. Networks are BN-folded, bf16, channels_last and replayed as a CUDA graph with the
uint8 -> float step inside ("optimized"), also torch.compile'd ("compiled") where asked. "sequential" times the
parts one after the other (the breakdown); "pipelined" overlaps them (the throughput); "pipelined-readersN" (.ndc
shard rows, N > 1 CPU processes) has the shards read and packed by N processes, one shard each, while this thread
only copies, launches and collects. Rows that cannot run here (nvJPEG, compile without CUDA) are returned as
{"path", "skipped": why}. ``e2e_ratio`` times the issue's ratio (.ndc shard path over nvJPEG at the same bpp) in
alternating rounds, for its median and spread.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from nodecode.bench.fuse import GraphRunner, fold_bn, maybe_graph
from nodecode.errors import NodecodeError
from nodecode.utils import atomic_write_bytes

_DECODERS: dict = {}


def decode_ndc_datas(datas: list[bytes], names=None) -> np.ndarray:
    """Entropy-decode .ndc files' bytes to their symbols only (no g_s): uint8 (N, C, h, w).

    One decoder per codec and process (constriction models built once, each file unpacked once)."""
    from nodecode.codec.gpu_entropy import BatchDecoder
    from nodecode.codec.reader import EntropyModel, open_ndc
    files = [open_ndc(d) for d in datas]           # each file unpacked and CRC-checked once
    name = files[0].header.model
    if name not in _DECODERS:                      # the entropy model only: centers and tables, no network
        _DECODERS[name] = BatchDecoder(EntropyModel.load(name), "cpu", "constriction")
    r = _DECODERS[name].decode(files)
    if r.errors:
        i, msg = next(iter(r.errors.items()))
        raise NodecodeError(f"{names[i] if names else i}: {msg}")
    return r.symbols.numpy()


def decode_ndc_chunk(paths: list[str]) -> np.ndarray:
    """Read and entropy-decode .ndc files to their symbols only (no g_s): uint8 (N, C, h, w)."""
    return decode_ndc_datas([Path(p).read_bytes() for p in paths], paths)


def decode_image_chunk(paths: list[str]) -> np.ndarray:
    """Pillow-decode image files (JPEG, WebP, ...) to uint8 (N, 3, H, W)."""
    from nodecode.codec.classical import decode
    return np.stack([decode(Path(p).read_bytes()).transpose(2, 0, 1) for p in paths])


def _worker_init():
    torch.set_num_threads(1)  # one decoding process per core


def _warm(_):
    return os.getpid()


def write_ndc(images: list[np.ndarray], names: list[str], out: Path, codec, batch: int = 64) -> float:
    """Encode uint8 (H, W, 3) images to out/<name>.ndc; returns the mean real bpp."""
    from nodecode.data.latents import encode_symbols
    bits = []
    for i in range(0, len(images), batch):
        rgb = torch.from_numpy(np.stack(images[i: i + batch])).permute(0, 3, 1, 2)
        for z, name in zip(encode_symbols(codec, rgb), names[i: i + batch]):
            data = codec.pack(z, rgb.shape[2], rgb.shape[3])
            atomic_write_bytes(out / f"{name}.ndc", data)
            bits.append(len(data) * 8 / (rgb.shape[2] * rgb.shape[3]))
    return float(np.mean(bits))


def _match_one(args):
    from nodecode.codec.classical import match_bpp
    img, fmt, bpp = args
    data, real, _ = match_bpp(img, fmt, bpp)
    return data, real


def write_baseline(images: list[np.ndarray], names: list[str], out: Path, fmt: str, bpp: float, workers=None) -> float:
    """Each image as JPEG/WebP at the quality closest to `bpp` (the extreme one where unreachable); mean real bpp."""
    from nodecode.data.cache import pool_map
    ext = {"jpeg": "jpg", "webp": "webp"}[fmt]
    res = pool_map(_match_one, [(im, fmt, bpp) for im in images], workers, chunksize=8)
    for (data, _), name in zip(res, names):
        atomic_write_bytes(out / f"{name}.{ext}", data)
    return float(np.mean([r[1] for r in res]))


def make_infer(net: torch.nn.Module, prep, example_u8: torch.Tensor, compile_mode: str | None = None):
    """u8 batch -> argmax labels: BN folded, bf16, channels_last (torch.compile'd in `compile_mode` if given); a CUDA
    graph on CUDA for every batch up to the example's size (a last, smaller batch replays it too: no recompile). The labels are a copy (a graph's output is overwritten by its next replay)."""
    m = fold_bn(net).to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    if compile_mode:
        m = torch.compile(m, mode=compile_mode)

    def fn(u8):
        return m(prep(u8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).argmax(1)
    graph = maybe_graph(fn, example_u8)
    if not isinstance(graph, GraphRunner):
        return fn
    return lambda u8: graph(u8).clone() if graph.fits(u8) else fn(u8)


def run_files(files: list[str], decode_chunk, infer, batch: int, workers: int, device, pipelined: bool,
              pool: ProcessPoolExecutor | None = None) -> dict:
    """Classify every file; {"images_per_s", "seconds", "decode_s", "h2d_s", "network_s", "labels"}."""
    dev = torch.device(device)
    batches = [files[i: i + batch] for i in range(0, len(files), batch)]

    def submit(b):
        k = -(-len(b) // workers)
        parts = [b[i: i + k] for i in range(0, len(b), k)]
        return [pool.submit(decode_chunk, p) for p in parts] if pool else b

    def gather(futs):  # without a pool the batch is decoded here, in this process
        return np.concatenate([f.result() for f in futs]) if pool else decode_chunk(futs)

    t = {"decode_s": 0.0, "h2d_s": 0.0, "network_s": 0.0}
    labels, queue, nxt = [], deque(), 0
    depth = 3 if pipelined else 1
    t0 = time.perf_counter()
    for _ in range(len(batches)):
        while nxt < len(batches) and len(queue) < depth:
            queue.append(submit(batches[nxt]))
            nxt += 1
        a = time.perf_counter()
        arr = gather(queue.popleft())
        if pipelined and nxt < len(batches):
            queue.append(submit(batches[nxt]))
            nxt += 1
        b = time.perf_counter()
        x = torch.from_numpy(arr)
        x = x.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else x
        if not pipelined and dev.type == "cuda":
            torch.cuda.synchronize()
        c = time.perf_counter()
        with torch.no_grad():
            labels.append(infer(x).cpu())   # .cpu() waits for the network
        d = time.perf_counter()
        t["decode_s"] += b - a
        t["h2d_s"] += c - b
        t["network_s"] += d - c
    wall = time.perf_counter() - t0
    return {"images_per_s": len(files) / wall, "seconds": wall, **t, "labels": torch.cat(labels).tolist()}


def start_pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing
    # spawn, not fork: the parent holds CUDA and OpenMP thread pools, which a forked child can deadlock on
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)
    list(pool.map(_warm, range(workers * 2)))
    return pool


def check_files(files: list[str]) -> None:
    if not files:
        raise NodecodeError("no files to classify")
    for f in files[:1]:
        if not Path(f).is_file():
            raise NodecodeError(f"no such file: {f}")



def _classifier(path: Path | None, model: str, in_channels: int, mean: float, dev, width: float = 1.0):
    """(net, channel mean (1, C, 1, 1), classes or None): the trained classifier at `path` if there, else random
    10-class weights (timing only)."""
    from nodecode.models import create_model
    from nodecode.tasks.classification import load_classifier
    if path is not None and Path(path).exists():
        net, meta = load_classifier(path, dev)
        return net, torch.tensor(meta["mean"], device=dev).view(1, -1, 1, 1), meta["classes"]
    net = create_model(model, in_channels=in_channels, num_classes=10, width=width).to(dev).eval()
    return net, torch.full((1, in_channels, 1, 1), mean, device=dev), None


def _trained(cls_root):
    """name -> cls_root/name (a trained run's folder), or -> None without cls_root (random weights)."""
    return (lambda name: Path(cls_root) / name) if cls_root else (lambda name: None)


def latent_infer(net, mean, codec, batch: int, dev, compile_mode: str | None = None):
    """make_infer for a cResNet on a codec's symbols: u8 symbols (N, C, 28, 28) -> ŷ - the channel mean -> labels."""
    c = codec.config.channels
    return make_infer(net, lambda u8: codec.latent(u8) - mean,
                      torch.zeros(batch, c, 28, 28, dtype=torch.uint8, device=dev), compile_mode)


def rgb_infer(net, mean, batch: int, dev, compile_mode: str | None = None):
    """make_infer for a ResNet on decoded 224² RGB: u8 (N, 3, 224, 224) - the mean -> labels."""
    return make_infer(net, lambda u8: u8.float() - mean,
                      torch.zeros(batch, 3, 224, 224, dtype=torch.uint8, device=dev), compile_mode)


def prepare_files(val_dir, work: Path, points=("c8", "c16"), limit: int | None = None, workers: int | None = None,
                  device="cpu", log=print) -> dict:
    """Once per work folder (kept in work/info.json): the val images (224², the evaluation crop) as .ndc files of
    each point (work/<point>/ndc/<class>/<name>.ndc, packed into work/<point>.tar) and as JPEG at that point's bpp
    (work/<point>/jpeg/...); the original JPEG files are used as they are."""
    import json

    from nodecode.codec.zoo import load_codec
    from nodecode.data.cache import pool_map
    from nodecode.data.folders import load_prepared, scan_image_folder
    from nodecode.data.shards import pack_dir
    from nodecode.utils import write_json
    info_path = work / "info.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if all(p in info["bpp"] for p in points):
            return info
    folder = scan_image_folder(val_dir)
    idx = np.unique(np.linspace(0, len(folder.files) - 1, limit or len(folder.files)).round().astype(int))
    files = [folder.files[i] for i in idx]
    names = [f"{f.parent.name}/{f.stem}" for f in files]
    images = [a.transpose(1, 2, 0) for a in pool_map(load_prepared, [(str(f), 224) for f in files], workers)]
    t = time.time()
    info = {"names": names, "originals": [str(f) for f in files], "classes": sorted({n.split("/")[0] for n in names}),
            "bpp": {"jpeg-original": float(np.mean([f.stat().st_size * 8 / (224 * 224) for f in files]))}}
    for point in points:
        codec = load_codec(point, device)
        info["bpp"][point] = write_ndc(images, names, work / point / "ndc", codec)
        pack_dir(work / point / "ndc", work / f"{point}.tar")
        info["bpp"][f"jpeg@{point}"] = write_baseline(images, names, work / point / "jpeg", "jpeg",
                                                      info["bpp"][point], workers)
    log(f"wrote {len(names)} images as .ndc and JPEG in {time.time() - t:.0f}s; mean bpp {info['bpp']}")
    write_json(info_path, info)
    return info


def _top1(labels, names, classes) -> float | None:
    if classes is None:
        return None
    truth = np.array([classes.index(n.split("/")[0]) if n.split("/")[0] in classes else -1 for n in names])
    return float(np.mean(np.asarray(labels) == truth))


def _row(path, model, impl, mode, r, names, classes, bpp, batch, **kw) -> dict:
    n = len(r["labels"])
    ips = n / r["seconds"]
    return {"path": path, "model": model, "batch": batch, "precision": "bf16", "impl": f"{impl}-{mode}",
            "images_per_s": ips, "ms_per_image": 1e3 / ips, "peak_fraction": None, "images": n, "bpp": bpp,
            "top1": _top1(r["labels"], names, classes), "weights": "trained" if classes else "random",
            **{k: v for k, v in r.items() if k not in ("labels", "keys")}, **kw}


def _log_row(log, r):
    parts = " ".join(f"{k[:-2]} {r[k]:.3f}s" for k in ("read_s", "parse_s", "h2d_s", "decode_s", "network_s",
                                                       "first_launch_s") if k in r)
    log(f"e2e {r['path']:34s} {r['model']:10s} {r['impl']:20s} {r['images_per_s']:9.0f} img/s  bpp {r['bpp']:.3f}  "
        + parts + (f"  top-1 {100 * r['top1']:.1f}%" if r["top1"] is not None else ""))


def e2e_speed(val_dir, work, codec_name: str = "c8", device: str = "cuda", limit: int | None = 1024,
              batch: int = 256, workers: int | None = None, cls_root=None, width: float = 1.0, log=print,
              points: tuple = ("c8", "c16"), compile_mode: str | None = "default", train_steps_n: int = 30,
              repeat: int = 1) -> list[dict]:
    """All end-to-end rows (see the module docstring); trained weights from cls_root/<point>-latent-cresnet51-s0
    and cls_root/none-rgb-resnet50-s0 when there (top-1), else random ones. `codec_name` is the point of the
    CPU-process .ndc row and of the training-input rows. Every timed row goes `repeat` times over the set (the
    shard read again each time, the files opened again), so that a small set still measures the steady state."""
    from nodecode.bench import e2e_gpu as g
    from nodecode.codec.gpu_entropy import BatchDecoder
    from nodecode.codec.zoo import load_codec
    from nodecode.data.shards import read_shard
    from nodecode.models import create_model
    dev = torch.device(device)
    work = Path(work)
    points = tuple(dict.fromkeys((codec_name, *points)))
    info = prepare_files(val_dir, work, points, limit, workers, dev, log)
    names = info["names"] * repeat
    workers = workers if workers is not None else min(16, os.cpu_count() or 1)
    ck = _trained(cls_root)
    impls = ["optimized"] + (["compiled"] if compile_mode and dev.type == "cuda" else [])
    rows: list[dict] = []
    if compile_mode and dev.type != "cuda":
        rows.append({"path": "e2e compiled rows", "skipped": "torch.compile rows run on CUDA only"})

    def timed(label, run, make_row, modes=("sequential", "pipelined")):
        for impl in impls:
            try:
                infer = run(impl)
            except Exception as e:  # noqa: BLE001 - a network that does not compile must not cost the benchmark
                rows.append({"path": label, "impl": impl, "skipped": f"{type(e).__name__}: {str(e)[:200]}"})
                log(f"e2e {label} {impl}: skipped ({rows[-1]['skipped']})")
                continue
            for mode in modes:
                rows.append(make_row(infer, impl, mode))
                _log_row(log, rows[-1])

    # one pool of CPU processes: the .ndc shard rows' readers, then the CPU-decoding rows
    pool = start_pool(workers) if workers > 1 else None
    try:
        # .ndc shard -> entropy decoding on the device -> cResNet-51, per point
        for point in points:
            codec = load_codec(point, dev)
            dec = BatchDecoder(codec, dev)
            c = codec.config.channels
            net, mean, classes = _classifier(ck(f"{point}-latent-cresnet51-s0"), "cresnet51", c, 0.0, dev, width)
            samples = read_shard(work / f"{point}.tar")

            def build(impl, net=net, mean=mean, codec=codec, dec=dec, samples=samples):
                infer = latent_infer(net, mean, codec, batch, dev, compile_mode if impl == "compiled" else None)
                g.ndc_shard_pass(samples[: 2 * batch], dec, infer, batch, True)        # warm-up: kernel, graph
                return infer

            def row(infer, impl, mode, point=point, dec=dec, classes=classes):
                readers = mode.startswith("pipelined-readers")      # shards read + packed in the pool's processes
                r = g.ndc_shard_pass([work / f"{point}.tar"] * repeat, dec, infer, batch, mode != "sequential",
                                     pool if readers else None)
                return _row(f"e2e-ndc-{point}-shard-{dec.backend}", "cresnet51", impl, mode, r, r["keys"], classes,
                            info["bpp"][point], batch, point=point, corrupt=r["corrupt"],
                            readers=workers if readers else 0)
            timed(f"e2e-ndc-shard {point}", build, row,
                  ("sequential", "pipelined") + ((f"pipelined-readers{workers}",) if pool is not None else ()))

        # JPEG -> nvJPEG (batched, on the device) -> ResNet-50: the originals and JPEG at each point's bpp
        why = g.nvjpeg_missing(dev)
        net, mean, classes = _classifier(ck("none-rgb-resnet50-s0"), "resnet50", 3, 127.5, dev, width)
        for which in ("original", *points):
            label = f"e2e-jpeg-{which}-nvjpeg"
            if why:
                rows.append({"path": label, "skipped": why})
                continue
            files = info["originals"] * repeat if which == "original" else \
                [str(work / which / "jpeg" / f"{n}.jpg") for n in names]

            def build(impl, files=files):
                infer = rgb_infer(net, mean, batch, dev, compile_mode if impl == "compiled" else None)
                g.nvjpeg_pass(files[: 2 * batch], infer, batch, dev, True)
                return infer

            def row(infer, impl, mode, files=files, which=which):
                r = g.nvjpeg_pass(files, infer, batch, dev, mode == "pipelined")
                bpp = info["bpp"]["jpeg-original" if which == "original" else f"jpeg@{which}"]
                return _row(label, "resnet50", impl, mode, r, names, classes, bpp, batch)
            timed(label, build, row)
        if why:
            log(f"e2e nvJPEG rows skipped: {why}")

        # files -> CPU processes (Pillow for JPEG, constriction for .ndc) -> network (today's rows), pipelined
        codec = load_codec(codec_name, dev)
        c = codec.config.channels
        for kind in ("jpeg", "ndc"):
            if kind == "jpeg":
                net, mean, classes = _classifier(ck("none-rgb-resnet50-s0"), "resnet50", 3, 127.5, dev, width)
                infer, fn, files = rgb_infer(net, mean, batch, dev), decode_image_chunk, info["originals"] * repeat
            else:
                net, mean, classes = _classifier(ck(f"{codec_name}-latent-cresnet51-s0"), "cresnet51", c, 0.0, dev, width)
                infer, fn = latent_infer(net, mean, codec, batch, dev), decode_ndc_chunk
                files = [str(work / codec_name / "ndc" / f"{n}.ndc") for n in names]
            check_files(files)
            run_files(files[: 2 * batch], fn, infer, batch, max(workers, 1), dev, True, pool)     # warm-up
            for mode in ("sequential", "pipelined"):
                r = run_files(files, fn, infer, batch, max(workers, 1), dev, mode == "pipelined", pool)
                rows.append(_row(f"e2e-{kind}-files-cpu{workers}", "resnet50" if kind == "jpeg" else "cresnet51",
                                 "optimized", mode, r, names, classes,
                                 info["bpp"]["jpeg-original" if kind == "jpeg" else codec_name], batch, workers=workers))
                _log_row(log, rows[-1])
    finally:
        if pool is not None:
            pool.shutdown()

    # training-input throughput: a cResNet-51 step fed from the shard (decoded on the device) vs ResNet-50 + nvJPEG
    codec = load_codec(codec_name, dev)
    mk = lambda m, ch: create_model(m, in_channels=ch, num_classes=10, width=width).to(dev, memory_format=torch.channels_last)
    tb = min(batch, 256)
    train = {"cresnet51 <- .ndc shard": lambda: g.train_steps(mk("cresnet51", codec.config.channels),
                                                               g.ndc_train_batches(work / f"{codec_name}.tar", codec, tb, train_steps_n, dev)),
             "cresnet51 <- synthetic": lambda: g.train_steps(mk("cresnet51", codec.config.channels),
                                                             ((torch.randn(tb, codec.config.channels, 28, 28, device=dev),
                                                               torch.zeros(tb, dtype=torch.long, device=dev)) for _ in range(train_steps_n))),
             "resnet50 <- JPEG nvJPEG": lambda: g.train_steps(mk("resnet50", 3), g.jpeg_train_batches(
                 info["originals"], [info["classes"].index(n.split("/")[0]) for n in names], tb, train_steps_n, dev)),
             "resnet50 <- synthetic": lambda: g.train_steps(mk("resnet50", 3), (
                 (torch.randn(tb, 3, 224, 224, device=dev), torch.zeros(tb, dtype=torch.long, device=dev))
                 for _ in range(train_steps_n)))}
    for label, fn in train.items():
        if "nvJPEG" in label and why:
            rows.append({"path": f"train-input {label}", "skipped": why})
            continue
        ips = fn()
        rows.append({"path": f"train-input {label}", "model": label.split()[0], "batch": tb, "precision":
                     "bf16" if dev.type == "cuda" else "fp32", "impl": "eager-train-step", "images_per_s": ips,
                     "ms_per_image": 1e3 / ips, "peak_fraction": None, "steps": train_steps_n})
        log(f"train-input {label:28s} {ips:9.0f} img/s")
    for r in rows:
        if str(r.get("impl", "")).startswith("compiled"):
            r["compile_mode"] = compile_mode
    return rows


def alternate(sides: dict, rounds: int) -> dict:
    """Run two timed sides {name: fn} in `rounds` rounds, ABBA order (A B, B A, A B, ...): {name: [results]}."""
    (a, fa), (b, fb) = sides.items()
    out = {a: [], b: []}
    for k in range(rounds):
        for name, fn in (((a, fa), (b, fb)) if k % 2 == 0 else ((b, fb), (a, fa))):
            out[name].append(fn())
    return out


def e2e_ratio(val_dir, work, points=("c8", "c16"), device: str = "cuda", batch: int = 1024, cls_root=None,
              rounds: int = 20, repeat: int = 4, compile_mode: str | None = "default", width: float = 1.0,
              log=print) -> dict:
    """Issue 13's ratio (.ndc shard -> GPU decode -> cResNet-51 over JPEG at the same bpp -> nvJPEG -> ResNet-50,
    both compiled and pipelined) measured in `rounds` alternating rounds (ABBA order: drift cancels), each side
    `repeat` passes over the set per round; per point the per-round img/s of each side, the per-round ratios and
    their median / min / max. One e2e_speed row is a single pass, so its ratio carries the card's drift."""
    from nodecode.bench import e2e_gpu as g
    from nodecode.codec.gpu_entropy import BatchDecoder
    from nodecode.codec.zoo import load_codec
    from nodecode.data.shards import read_shard
    dev = torch.device(device)
    why = g.nvjpeg_missing(dev)
    if why:
        return {"skipped": why}
    work = Path(work)
    info = prepare_files(val_dir, work, points, None, None, dev, log)
    ck = _trained(cls_root)
    mode = compile_mode or None
    net, mean, rgb_classes = _classifier(ck("none-rgb-resnet50-s0"), "resnet50", 3, 127.5, dev, width)
    rgb = rgb_infer(net, mean, batch, dev, mode)
    out = {"rounds": rounds, "repeat": repeat, "batch": batch, "compile_mode": mode, "points": {}}
    for point in points:
        codec = load_codec(point, dev)
        dec = BatchDecoder(codec, dev)
        c = codec.config.channels
        lnet, lmean, classes = _classifier(ck(f"{point}-latent-cresnet51-s0"), "cresnet51", c, 0.0, dev, width)
        lat = latent_infer(lnet, lmean, codec, batch, dev, mode)
        shard = work / f"{point}.tar"
        jpegs = [str(work / point / "jpeg" / f"{n}.jpg") for n in info["names"]] * repeat
        g.ndc_shard_pass(read_shard(shard)[: 2 * batch], dec, lat, batch, True)      # warm-up: kernel, graph
        g.nvjpeg_pass(jpegs[: 2 * batch], rgb, batch, dev, True)
        sides = {"ndc": lambda: g.ndc_shard_pass([shard] * repeat, dec, lat, batch, True),
                 "jpeg": lambda: g.nvjpeg_pass(jpegs, rgb, batch, dev, True)}
        res = alternate(sides, rounds)
        ips = {side: [len(r["labels"]) / r["seconds"] for r in rs] for side, rs in res.items()}
        top1 = {"ndc": _top1(res["ndc"][-1]["labels"], res["ndc"][-1]["keys"], classes),
                "jpeg": _top1(res["jpeg"][-1]["labels"], info["names"] * repeat, rgb_classes)}
        ratios = [a / b for a, b in zip(ips["ndc"], ips["jpeg"])]
        out["points"][point] = {
            "bpp": {"ndc": info["bpp"][point], "jpeg": info["bpp"][f"jpeg@{point}"]}, "images_per_s": ips,
            "top1": top1, "ratios": ratios, "ratio_median": float(np.median(ratios)), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "ndc_images_per_s_median": float(np.median(ips["ndc"])),
            "jpeg_images_per_s_median": float(np.median(ips["jpeg"]))}
        p = out["points"][point]
        log(f"e2e ratio {point}: .ndc {p['ndc_images_per_s_median']:,.0f} vs JPEG {p['jpeg_images_per_s_median']:,.0f}"
            f" img/s (medians of {rounds}); ratio median {p['ratio_median']:.2f}x [{p['ratio_min']:.2f}, "
            f"{p['ratio_max']:.2f}]")
    return out
