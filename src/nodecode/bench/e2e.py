"""End to end from files (App. A.9 "and beyond"): .ndc -> entropy decoding -> cResNet, vs JPEG/WebP -> Pillow -> ResNet.

Decoding runs in CPU worker processes, one chunk of a batch per worker; the network is BN-folded, bf16,
channels_last and replayed as a CUDA graph with the uint8 -> float input step inside it. "sequential" times
decode, host->device copy and network one after the other (the breakdown); "pipelined" keeps the next batches
decoding while the GPU runs the current one (the fair optimized number).
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
    from nodecode.codec.bitstream import read_header
    from nodecode.codec.files import codec_for
    from nodecode.codec.gpu_entropy import BatchDecoder
    name = read_header(datas[0]).model
    if name not in _DECODERS:
        _DECODERS[name] = BatchDecoder(codec_for(datas[0], None, "cpu"), "cpu", "constriction")
    r = _DECODERS[name].decode(datas)
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


def make_infer(net: torch.nn.Module, prep, example_u8: torch.Tensor):
    """u8 batch -> argmax labels: BN folded, bf16, channels_last; a CUDA graph for full batches on CUDA."""
    m = fold_bn(net).to(dtype=torch.bfloat16, memory_format=torch.channels_last)

    def fn(u8):
        return m(prep(u8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).argmax(1)
    graph = maybe_graph(fn, example_u8)
    if not isinstance(graph, GraphRunner):
        return fn
    return lambda u8: graph(u8) if u8.shape == graph.static_in.shape else fn(u8)


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
    """(net, channel mean, classes or None): the trained classifier at `path` if there, else random 10-class weights."""
    from nodecode.models import create_model
    from nodecode.tasks.classification import load_classifier
    if path is not None and (path / "classifier.safetensors").is_file():
        net, meta = load_classifier(path, dev)
        return net, torch.tensor(meta["mean"], device=dev), meta["classes"]
    net = create_model(model, in_channels=in_channels, num_classes=10, width=width).to(dev).eval()
    return net, torch.full((in_channels,), mean, device=dev), None


def prepare_files(val_dir, work: Path, codec, limit: int | None, workers: int | None, log=print) -> dict:
    """Write the .ndc / JPEG / WebP folders once (skipped when work/info.json exists); returns that info."""
    import json

    from nodecode.data.cache import pool_map
    from nodecode.data.folders import load_prepared, scan_image_folder
    from nodecode.utils import write_json
    info_path = work / "info.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    folder = scan_image_folder(val_dir)
    idx = np.unique(np.linspace(0, len(folder.files) - 1, limit or len(folder.files)).round().astype(int))
    files = [folder.files[i] for i in idx]
    names = [f"{f.parent.name}/{f.stem}" for f in files]
    images = [a.transpose(1, 2, 0) for a in pool_map(load_prepared, [(str(f), 224) for f in files], workers)]
    t = time.time()
    info = {"names": names, "bpp": {"ndc": write_ndc(images, names, work / "ndc", codec)}}
    for fmt in ("jpeg", "webp"):
        info["bpp"][fmt] = write_baseline(images, names, work / fmt, fmt, info["bpp"]["ndc"], workers)
    log(f"wrote {len(names)} images as .ndc/JPEG/WebP in {time.time() - t:.0f}s; mean bpp {info['bpp']}")
    write_json(info_path, info)
    return info


def e2e_speed(val_dir, work, codec_name: str = "c8", device: str = "cuda", limit: int | None = 1024,
              batch: int = 256, workers: int | None = None, cls_root=None, width: float = 1.0,
              log=print) -> list[dict]:
    """Rows "e2e-ndc" (cResNet-51 on entropy-decoded symbols) and "e2e-jpeg"/"e2e-webp" (Pillow -> ResNet-50)."""
    from nodecode.codec.zoo import load_codec
    dev = torch.device(device)
    work = Path(work)
    codec = load_codec(codec_name, dev)
    info = prepare_files(val_dir, work, codec, limit, workers, log)
    workers = workers if workers is not None else min(16, os.cpu_count() or 1)
    c = codec.config.channels
    cls_root = Path(cls_root) if cls_root else None
    plans = {"ndc": ("cresnet51", c, 0.0, f"{codec_name}-latent-cresnet51-s0", decode_ndc_chunk, "ndc"),
             "jpeg": ("resnet50", 3, 127.5, "none-rgb-resnet50-s0", decode_image_chunk, "jpg"),
             "webp": ("resnet50", 3, 127.5, "none-rgb-resnet50-s0", decode_image_chunk, "webp")}
    pool = start_pool(workers) if workers > 1 else None
    rows = []
    try:
        for fmt, (model, ch, mean0, ckpt, chunk_fn, ext) in plans.items():
            net, mean, classes = _classifier(cls_root / ckpt if cls_root else None, model, ch, mean0, dev, width)
            mean = mean.view(1, -1, 1, 1)
            prep = (lambda u8, m=mean: codec.latent(u8) - m) if fmt == "ndc" else (lambda u8, m=mean: u8.float() - m)
            size = 28 if fmt == "ndc" else 224
            infer = make_infer(net, prep, torch.zeros(batch, ch, size, size, dtype=torch.uint8, device=dev))
            files = [str(work / fmt / f"{n}.{ext}") for n in info["names"]]
            check_files(files)
            run_files(files[: 2 * batch], chunk_fn, infer, batch, max(workers, 1), dev, True, pool)  # warm-up
            truth = None
            if classes is not None:
                truth = [classes.index(n.split("/")[0]) if n.split("/")[0] in classes else -1 for n in info["names"]]
            for mode in ("sequential", "pipelined"):
                r = run_files(files, chunk_fn, infer, batch, max(workers, 1), dev, mode == "pipelined", pool)
                labels = r.pop("labels")
                top1 = float(np.mean(np.array(labels) == np.array(truth))) if truth else None
                rows.append({"path": f"e2e-{fmt}", "model": model, "batch": batch, "precision": "bf16",
                             "impl": f"optimized-{mode}", "ms_per_image": 1e3 / r["images_per_s"], "peak_fraction": None,
                             **r, "bpp": info["bpp"][fmt], "images": len(files), "workers": workers,
                             "weights": "trained" if classes else "random", "top1": top1})
                log(f"e2e {fmt:4s} {mode:10s} {r['images_per_s']:8.1f} img/s  decode {r['decode_s']:.2f}s "
                    f"h2d {r['h2d_s']:.2f}s net {r['network_s']:.2f}s  bpp {info['bpp'][fmt]:.3f}"
                    + (f"  top-1 {100 * top1:.1f}%" if top1 is not None else ""))
    finally:
        if pool is not None:
            pool.shutdown()
    return rows
