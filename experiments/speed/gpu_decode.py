"""GPU entropy decoding and files -> labels end to end, on one card (issue 13).

    python experiments/speed/gpu_decode.py IMAGENETTE_VAL [--out DIR] [--smoke]

1. writes the val images as c8 and c16 .ndc files (one shard per point) and as JPEG at the same bpp;
2. checks that every file decodes to the same symbols on the GPU (Triton) and the CPU (constriction);
3. times GPU entropy decoding at batch 1,024 (c8): kernel only, and with host parsing + host->device copy;
4. runs the end-to-end rows (img/s, top-1 where weights are trained, time breakdown read / parse / copy / decode /
   network): .ndc shard -> GPU decode -> cResNet-51; JPEG -> nvJPEG (batched) -> ResNet-50; JPEG -> Pillow on CPU
   processes -> ResNet-50; .ndc -> CPU processes -> cResNet-51; networks BN-folded, bf16, CUDA graphs;
5. training-input throughput: cResNet-51 steps fed from the .ndc shard (GPU decode) vs ResNet-50 fed by nvJPEG.
Every row is guarded: a failure is recorded in the JSON and the run goes on. Writes $OUT/gpu_decode.json (or
--out) and prints a short table last. --smoke: 48 images, batch 16, runs on the CPU too (GPU-only rows skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from nodecode.bench.e2e import (decode_image_chunk, decode_ndc_chunk, make_infer, run_files, start_pool, write_baseline,
                                write_ndc)
from nodecode.codec.gpu_entropy import BatchDecoder, decode_triton, pack_files, triton_available
from nodecode.codec.zoo import load_codec
from nodecode.data.shards import pack_dir, read_shard
from nodecode.utils import provenance

RESULTS: dict = {"rows": [], "failed": {}}
SAVE: dict = {"path": None}
NET_WIDTH = {"scale": 1.0}          # --smoke: narrow random networks, so that the CPU run stays short


def save():
    if SAVE["path"] is not None:      # after every step: a run cut short still leaves its rows
        SAVE["path"].write_text(json.dumps(RESULTS, indent=2, default=str) + "\n")


def guarded(name):
    def wrap(fn):
        def run(*a, **k):
            t = time.time()
            try:
                out = fn(*a, **k)
                print(f"[{name}] done in {time.time() - t:.1f}s", flush=True)
                return out
            except Exception as e:  # noqa: BLE001 - a failing row is recorded, not fatal
                key = name if name not in RESULTS["failed"] else f"{name} ({len(RESULTS['failed'])})"
                RESULTS["failed"][key] = f"{type(e).__name__}: {e}"
                print(f"[{name}] FAILED: {e}\n{traceback.format_exc(limit=3)}", flush=True)
            finally:
                save()
        return run
    return wrap


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


@guarded("prepare")
def prepare(val_dir, work: Path, limit, workers, dev):
    from nodecode.data.cache import pool_map
    from nodecode.data.folders import load_prepared, scan_image_folder
    folder = scan_image_folder(val_dir)
    idx = np.unique(np.linspace(0, len(folder.files) - 1, limit or len(folder.files)).round().astype(int))
    files = [folder.files[i] for i in idx]
    names = [f"{f.parent.name}/{f.stem}" for f in files]
    images = [a.transpose(1, 2, 0) for a in pool_map(load_prepared, [(str(f), 224) for f in files], workers)]
    info = {"names": names, "originals": [str(f) for f in files], "bpp": {}, "classes": sorted({n.split("/")[0] for n in names})}
    for point in ("c8", "c16"):
        codec = load_codec(point, dev)
        with torch.no_grad():
            info["bpp"][point] = write_ndc(images, names, work / point / "ndc", codec)
        pack_dir(work / point / "ndc", work / f"{point}.tar")
        info["bpp"][f"jpeg@{point}"] = write_baseline(images, names, work / point / "jpeg", "jpeg", info["bpp"][point],
                                                      workers)
    info["bpp"]["jpeg-original"] = float(np.mean([os.path.getsize(f) * 8 / (224 * 224) for f in files]))
    RESULTS["bpp"] = info["bpp"]
    return info


@guarded("bitexact")
def bitexact(work: Path, dev, batch):
    out = {}
    for point in ("c8", "c16"):
        codec = load_codec(point, dev)
        samples = read_shard(work / f"{point}.tar")
        gpu, cpu = BatchDecoder(codec, dev), BatchDecoder(codec, "cpu", "constriction")
        same = total = 0
        for i in range(0, len(samples), batch):
            datas = [s.ndc for s in samples[i: i + batch]]
            a, b = gpu.decode(datas), cpu.decode(datas)
            assert not a.errors and not b.errors, (a.errors, b.errors)
            same += int((a.symbols.cpu() == b.symbols).flatten(1).all(1).sum())
            total += len(datas)
        out[point] = {"files": total, "identical": same, "backend": gpu.backend}
        print(f"bit-exact {point}: {same}/{total} files identical ({gpu.backend} vs constriction)")
    RESULTS["bitexact"] = out
    return out


@guarded("kernel")
def kernel_speed(work: Path, dev, batch, iters):
    codec = load_codec("c8", dev)
    samples = read_shard(work / "c8.tar")
    datas = [samples[i % len(samples)].ndc for i in range(batch)]
    dec = BatchDecoder(codec, dev)
    p = pack_files(datas, codec)
    c, h, w = p.shape
    t = time.perf_counter()
    for _ in range(iters):
        p = pack_files(datas, codec)
    host_s = (time.perf_counter() - t) / iters
    buf = torch.from_numpy(p.buffer.view(np.int32)).to(dev)
    run = (lambda: decode_triton(buf, p.n, dec.cdf, h * w)) if dec.backend == "triton" else (lambda: dec.decode(datas))
    run()
    sync(dev)
    t = time.perf_counter()
    for _ in range(iters):
        run()
    sync(dev)
    kern_s = (time.perf_counter() - t) / iters
    t = time.perf_counter()
    for _ in range(iters):
        r = dec.decode(datas, pack_files(datas, codec))
    sync(dev)
    full_s = (time.perf_counter() - t) / iters
    row = {"batch": batch, "backend": dec.backend, "kernel_ms": 1e3 * kern_s, "kernel_images_per_s": batch / kern_s,
           "host_parse_ms": 1e3 * host_s, "with_parse_copy_images_per_s": batch / full_s, "errors": len(r.errors)}
    RESULTS["kernel"] = row
    print(f"GPU entropy decoding c8 batch {batch}: kernel {row['kernel_ms']:.3f} ms = {row['kernel_images_per_s']:,.0f} "
          f"img/s; with host parse + copy {row['with_parse_copy_images_per_s']:,.0f} img/s")
    return row


def _net(model, ch, dev, width, mean, ckpt=None):
    """(net, mean (1, C, 1, 1), classes or None): trained weights from ckpt when given, else random."""
    from nodecode.models import create_model
    from nodecode.tasks.classification import load_classifier
    if ckpt is not None and Path(ckpt).exists():
        net, meta = load_classifier(ckpt, dev)
        return net, torch.tensor(meta["mean"], device=dev).view(1, -1, 1, 1), meta["classes"]
    net = create_model(model, in_channels=ch, num_classes=10, width=width * NET_WIDTH["scale"]).to(dev).eval()
    return net, torch.full((1, ch, 1, 1), mean, device=dev), None


def _top1(labels, names, classes):
    if classes is None:
        return None
    truth = np.array([classes.index(n.split("/")[0]) if n.split("/")[0] in classes else -1 for n in names])
    return float(np.mean(np.asarray(labels) == truth))


def _row(path, model, r, n, bpp, top1, **kw):
    row = {"path": path, "model": model, "images": n, "images_per_s": n / r["seconds"], "bpp": bpp, "top1": top1,
           **{k: v for k, v in r.items() if k != "labels"}, **kw}
    RESULTS["rows"].append(row)
    print(f"{path:28s} {model:22s} {row['images_per_s']:10.0f} img/s  bpp {bpp:.3f}  "
          + " ".join(f"{k} {v:.3f}s" for k, v in r.items() if k.endswith("_s") and k != "seconds")
          + (f"  top-1 {100 * top1:.1f}%" if top1 is not None else ""), flush=True)
    return row


def _to_device(x: torch.Tensor, dev, ring, k):
    """Host->device through a ring of pinned buffers (asynchronous; a slot is reused once its copy is done)."""
    if dev.type != "cuda":
        return x
    slot = ring[k % len(ring)]
    if slot[1] is not None:
        slot[1].synchronize()
    if slot[0] is None or slot[0].numel() < x.numel():
        slot[0] = torch.empty(2 * x.numel(), dtype=x.dtype).pin_memory()
    staged = slot[0][: x.numel()]
    staged.copy_(x)
    out = staged.to(dev, non_blocking=True)
    slot[1] = torch.cuda.Event()
    slot[1].record()
    return out


def ndc_gpu_pass(samples, codec, dec, infer, batch, dev, shard: Path, pipelined: bool):
    """Shard bytes -> parse -> one copy -> GPU decode -> network; labels. Statuses are checked at the end."""
    t = {"read_s": 0.0, "parse_s": 0.0, "h2d_s": 0.0, "decode_s": 0.0, "network_s": 0.0}
    t0 = time.perf_counter()
    a = time.perf_counter()
    if shard is not None:
        samples = read_shard(shard)                     # one sequential read of the shard, every pass
    t["read_s"] += time.perf_counter() - a
    labels, statuses, ring = [], [], [[None, None] for _ in range(3)]
    for i in range(0, len(samples), batch):
        a = time.perf_counter()
        p = pack_files([s.ndc for s in samples[i: i + batch]], codec)
        assert not p.errors, p.errors
        b = time.perf_counter()
        buf = _to_device(torch.from_numpy(p.buffer.view(np.int32)), dev, ring, len(labels))   # one copy per batch
        if not pipelined:
            sync(dev)
        c = time.perf_counter()
        if dec.backend == "triton":
            sym, st = decode_triton(buf, p.n, dec.cdf, p.shape[1] * p.shape[2])
            sym = sym.reshape(p.n, *p.shape)
        else:
            r = dec.decode(None, p)
            sym, st = r.symbols, torch.zeros(p.n, dtype=torch.int32)
        if not pipelined:
            sync(dev)
        d = time.perf_counter()
        with torch.no_grad():
            lab = infer(sym)
        labels.append(lab)
        statuses.append(st)
        if not pipelined:
            sync(dev)
        e = time.perf_counter()
        t["parse_s"] += b - a
        t["h2d_s"] += c - b
        t["decode_s"] += d - c
        t["network_s"] += e - d
    labels = torch.cat(labels).cpu().tolist()
    bad = int((torch.cat(statuses) != 0).sum())
    return {"seconds": time.perf_counter() - t0, **t, "labels": labels, "corrupt": bad}


@guarded("e2e-ndc-gpu")
def e2e_ndc_gpu(work, info, dev, batch, point, width, ckpt, tag):
    codec = load_codec(point, dev)
    samples = read_shard(work / f"{point}.tar")
    dec = BatchDecoder(codec, dev)
    net, mean, classes = _net("cresnet51", codec.config.channels, dev, width, 0.0, ckpt)
    infer = make_infer(net, lambda u8: codec.latent(u8) - mean,
                       torch.zeros(batch, codec.config.channels, 28, 28, dtype=torch.uint8, device=dev))
    ndc_gpu_pass(samples[: 2 * batch], codec, dec, infer, batch, dev, None, True)      # warm-up (kernel, graph)
    names = [s.key for s in samples]
    for mode in ("sequential", "pipelined"):
        r = ndc_gpu_pass(samples, codec, dec, infer, batch, dev, work / f"{point}.tar", mode == "pipelined")
        _row(f"ndc-shard->{dec.backend}->net", f"cresnet51{tag}", r, len(samples), info["bpp"][point],
             _top1(r["labels"], names, classes), point=point, mode=mode, batch=batch)


def nvjpeg_pass(files, infer, batch, dev, pipelined, mode_rgb):
    from torchvision.io import decode_jpeg
    t = {"read_s": 0.0, "decode_s": 0.0, "network_s": 0.0}
    labels = []
    t0 = time.perf_counter()
    for i in range(0, len(files), batch):
        a = time.perf_counter()
        datas = [torch.frombuffer(Path(f).read_bytes(), dtype=torch.uint8) for f in files[i: i + batch]]
        b = time.perf_counter()
        imgs = decode_jpeg(datas, mode=mode_rgb, device=dev)
        x = torch.stack(imgs)
        if not pipelined:
            sync(dev)
        c = time.perf_counter()
        with torch.no_grad():
            labels.append(infer(x))
        if not pipelined:
            sync(dev)
        d = time.perf_counter()
        t["read_s"] += b - a
        t["decode_s"] += c - b
        t["network_s"] += d - c
    labels = torch.cat(labels).cpu().tolist()
    return {"seconds": time.perf_counter() - t0, **t, "labels": labels}


@guarded("e2e-jpeg-nvjpeg")
def e2e_nvjpeg(work, info, dev, batch, ckpt, which):
    from torchvision.io import ImageReadMode
    net, mean, classes = _net("resnet50", 3, dev, 1.0, 127.5, ckpt)
    infer = make_infer(net, lambda u8: u8.float() - mean, torch.zeros(batch, 3, 224, 224, dtype=torch.uint8, device=dev))
    files = info["originals"] if which == "original" else [str(work / which / "jpeg" / f"{n}.jpg") for n in info["names"]]
    nvjpeg_pass(files[: 2 * batch], infer, batch, dev, True, ImageReadMode.RGB)
    for mode in ("sequential", "pipelined"):
        r = nvjpeg_pass(files, infer, batch, dev, mode == "pipelined", ImageReadMode.RGB)
        bpp = info["bpp"]["jpeg-original" if which == "original" else f"jpeg@{which}"]
        _row(f"jpeg-{which}->nvjpeg->net", "resnet50", r, len(files), bpp, _top1(r["labels"], info["names"], classes),
             mode=mode, batch=batch)


@guarded("e2e-cpu-processes")
def e2e_cpu(work, info, dev, batch, workers, ckpt_rgb, ckpt_lat):
    pool = start_pool(workers) if workers > 1 else None
    try:
        codec = load_codec("c8", dev)
        for kind in ("ndc", "jpeg"):
            if kind == "ndc":
                net, mean, classes = _net("cresnet51", 8, dev, 1.0, 0.0, ckpt_lat)
                prep, ex, fn = (lambda u8, m=mean: codec.latent(u8) - m), (batch, 8, 28, 28), decode_ndc_chunk
                files = [str(work / "c8" / "ndc" / f"{n}.ndc") for n in info["names"]]
            else:
                net, mean, classes = _net("resnet50", 3, dev, 1.0, 127.5, ckpt_rgb)
                prep, ex, fn = (lambda u8, m=mean: u8.float() - m), (batch, 3, 224, 224), decode_image_chunk
                files = info["originals"]
            infer = make_infer(net, prep, torch.zeros(*ex, dtype=torch.uint8, device=dev))
            run_files(files[: 2 * batch], fn, infer, batch, max(workers, 1), dev, True, pool)
            r = run_files(files, fn, infer, batch, max(workers, 1), dev, True, pool)
            _row(f"{kind}-files->cpu{workers}->net", "cresnet51" if kind == "ndc" else "resnet50", r, len(files),
                 info["bpp"]["c8" if kind == "ndc" else "jpeg-original"], _top1(r["labels"], info["names"], classes),
                 mode="pipelined", batch=batch, workers=workers)
    finally:
        if pool is not None:
            pool.shutdown()


@guarded("cpu-decode-per-core")
def cpu_per_core(work, n):
    """c8 .ndc decoding on one core: the old path (read_symbols per file: models built and file unpacked twice)
    vs decode_ndc_chunk now (one decoder per process) and from shard bytes (no file opens)."""
    from nodecode.codec.bitstream import read_header
    from nodecode.codec.files import codec_for
    torch.set_num_threads(1)
    samples = read_shard(work / "c8.tar")[:n]
    files = [str(work / "c8" / "ndc" / f"{s.key}.ndc") for s in samples]
    codec = codec_for(samples[0].ndc, None, "cpu")

    def old():
        return [read_header(d) and codec.read_symbols(d)[1].astype(np.uint8)
                for d in (Path(f).read_bytes() for f in files)]
    from nodecode.bench.e2e import decode_ndc_datas
    out = {}
    for name, fn in (("old read_symbols per file", old), ("decode_ndc_chunk (files)", lambda: decode_ndc_chunk(files)),
                     ("decode_ndc_datas (shard bytes)", lambda: decode_ndc_datas([s.ndc for s in samples]))):
        fn()
        t = min(_timed(fn) for _ in range(3))
        out[name] = len(files) / t
        print(f"CPU decode, one core, {name:32s} {len(files) / t:8.0f} img/s")
    RESULTS["cpu_per_core"] = out
    return out


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@guarded("train-input")
def train_input(work, info, dev, batch, steps):
    """Training steps/s: cResNet-51 fed from the .ndc shard (GPU decode) vs ResNet-50 fed by nvJPEG, vs synthetic."""
    from nodecode.data.ndc import NdcBatchLoader
    from nodecode.models import create_model
    codec = load_codec("c8", dev)
    out = {}

    def run(net, batches, label):
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        net.train()
        n, t0 = 0, None
        for k, (x, y) in enumerate(batches):
            if k == 2:
                sync(dev)
                t0, n = time.perf_counter(), 0
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                loss = torch.nn.functional.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(x)
        sync(dev)
        out[label] = n / (time.perf_counter() - t0)
        print(f"train {label:34s} {out[label]:8.0f} img/s")

    def ndc_batches():
        loader = NdcBatchLoader([work / "c8.tar"], codec, batch=batch, device=dev, latent=True, shuffle=True,
                                drop_last=True)
        k = 0
        while k < steps:
            for x, y, _ in loader:
                yield x, y.clamp_min(0)
                k += 1
                if k >= steps:
                    return

    def jpeg_batches():
        from torchvision.io import ImageReadMode, decode_jpeg
        files, labels = info["originals"], [info["classes"].index(n.split("/")[0]) for n in info["names"]]
        for k in range(steps):
            idx = [(k * batch + i) % len(files) for i in range(batch)]
            imgs = decode_jpeg([torch.frombuffer(Path(files[i]).read_bytes(), dtype=torch.uint8) for i in idx],
                               mode=ImageReadMode.RGB, device=dev)
            yield torch.stack(imgs).float().sub_(127.5), torch.tensor([labels[i] for i in idx], device=dev)

    def synth(ch, size):
        x, y = torch.randn(batch, ch, size, size, device=dev), torch.zeros(batch, dtype=torch.long, device=dev)
        return ((x, y) for _ in range(steps))
    mk = lambda m, ch: create_model(m, in_channels=ch, num_classes=10, width=NET_WIDTH["scale"]).to(
        dev, memory_format=torch.channels_last)
    run(mk("cresnet51", 8), ndc_batches(), "cresnet51 <- .ndc shard, GPU decode")
    run(mk("cresnet51", 8), synth(8, 28), "cresnet51 <- synthetic (network only)")
    try:
        run(mk("resnet50", 3), jpeg_batches(), "resnet50 <- JPEG, nvJPEG")
    except ImportError as e:
        out["resnet50 <- JPEG, nvJPEG"] = f"skipped: {e}"
    run(mk("resnet50", 3), synth(3, 224), "resnet50 <- synthetic (network only)")
    RESULTS["train_input"] = out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("val_dir")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--work", default=None, help="where files and shards are written (default: OUT/work)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--classifiers", default=None, help="folder of trained <point>-<input>-<model>-s0 runs")
    a = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    limit = a.limit or (24 if a.smoke else None)
    batch = a.batch or (8 if a.smoke else 1024)
    NET_WIDTH["scale"] = 0.125 if a.smoke else 1.0
    workers = a.workers or (2 if a.smoke else min(16, os.cpu_count() or 1))
    out = Path(a.out)
    work = Path(a.work) if a.work else out / "work"
    RESULTS.update(provenance(" ".join(sys.argv)), smoke=a.smoke, triton=triton_available(), batch=batch)
    out.mkdir(parents=True, exist_ok=True)
    SAVE["path"] = out / "gpu_decode.json"
    cls = Path(a.classifiers) if a.classifiers else None
    ck = (lambda name: cls / name if cls else None)
    t0 = time.time()
    info = prepare(a.val_dir, work, limit, workers, dev)
    if info is not None:
        bitexact(work, dev, batch)
        kernel_speed(work, dev, batch, 3 if a.smoke else 50)
        cpu_per_core(work, 32 if a.smoke else 512)
        for point in ("c8", "c16"):
            e2e_ndc_gpu(work, info, dev, batch, point, 1.0, ck(f"{point}-latent-cresnet51-s0"), "")
        from nodecode.tasks.classification import bundled_classifier
        e2e_ndc_gpu(work, info, dev, batch, "c8", 0.25, bundled_classifier("c8"), " x0.25 (bundled)")
        for which in ("original", "c16", "c8"):
            e2e_nvjpeg(work, info, dev, batch, ck("none-rgb-resnet50-s0"), which)
        e2e_cpu(work, info, dev, min(batch, 256), workers, ck("none-rgb-resnet50-s0"), ck("c8-latent-cresnet51-s0"))
        train_input(work, info, dev, min(batch, 256), 4 if a.smoke else 30)
        RESULTS["finished"] = True
    RESULTS["seconds"] = time.time() - t0
    save()
    print(f"\n== {RESULTS['device']}  ({RESULTS['seconds']:.0f}s; JSON in {out / 'gpu_decode.json'}) ==")
    if "kernel" in RESULTS:
        k = RESULTS["kernel"]
        print(f"entropy decode c8 b{k['batch']} ({k['backend']}): {k['kernel_images_per_s']:,.0f} img/s kernel, "
              f"{k['with_parse_copy_images_per_s']:,.0f} img/s with parse+copy")
    print(f"{'row':30s} {'model':22s} {'mode':10s} {'img/s':>9s} {'bpp':>6s} {'top-1':>6s}")
    for r in RESULTS["rows"]:
        print(f"{r['path']:30s} {r['model']:22s} {r.get('mode', ''):10s} {r['images_per_s']:9.0f} {r['bpp']:6.3f} "
              + (f"{100 * r['top1']:6.1f}" if r["top1"] is not None else "     -"))
    for k, v in RESULTS["failed"].items():
        print(f"FAILED {k}: {v}")


if __name__ == "__main__":
    main()
