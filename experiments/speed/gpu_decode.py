"""GPU entropy decoding and files -> labels end to end, on one card (issue 13): the device driver script.

    python experiments/speed/gpu_decode.py IMAGENETTE_VAL [--out DIR] [--classifiers RUNS] [--smoke]

1. writes the val images as c8 and c16 .ndc files and shards and as JPEG at the same bpp (bench.e2e.prepare_files);
2. checks that every file decodes to the same symbols on the GPU (Triton) and the CPU (constriction);
3. times GPU entropy decoding at batch 1,024 (c8): kernel only, and with host parsing + host->device copy;
4. CPU decoding per core (old per-file path vs now);
5. every end-to-end and training-input row of `nodecode bench speed --e2e-data` (bench.e2e.e2e_speed).
Each stage is guarded (a failure is recorded, the run goes on) and resumable: $OUT/gpu_decode.json is written after
every stage and a stage already in it is not run again. Prints a short table last. --smoke: 24 images, batch 8,
narrow networks; runs on the CPU too (GPU-only rows skipped with their reason).
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

from nodecode.bench.e2e import decode_ndc_chunk, decode_ndc_datas, e2e_speed, prepare_files
from nodecode.codec.gpu_entropy import BatchDecoder, decode_triton, pack_files, triton_available
from nodecode.codec.zoo import load_codec
from nodecode.data.shards import read_shard
from nodecode.utils import provenance

RESULTS: dict = {"rows": [], "failed": {}}
SAVE: dict = {"path": None}


def save():
    if SAVE["path"] is not None:      # after every step: a run cut short still leaves its rows
        SAVE["path"].write_text(json.dumps(RESULTS, indent=2, default=str) + "\n")


def guarded(name):
    """Run a stage once: skipped when RESULTS already holds its result (a resumed run), recorded if it fails."""
    def wrap(fn):
        def run(*a, **k):
            if name in RESULTS.get("done", {}):
                print(f"[{name}] already done (resumed)", flush=True)
                return RESULTS["done"][name]
            t = time.time()
            try:
                out = fn(*a, **k)
                RESULTS.setdefault("done", {})[name] = out
                RESULTS["failed"].pop(name, None)
                print(f"[{name}] done in {time.time() - t:.1f}s", flush=True)
                return out
            except Exception as e:  # noqa: BLE001 - a failing row is recorded, not fatal
                RESULTS["failed"][name] = f"{type(e).__name__}: {e}"
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
    info = prepare_files(val_dir, work, ("c8", "c16"), limit, workers, dev)
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


@guarded("cpu-decode-per-core")
def cpu_per_core(work, n):
    """c8 .ndc decoding on one core: the old path (read_symbols per file: models built and file unpacked twice)
    vs decode_ndc_chunk now (one decoder per process) and from shard bytes (no file opens)."""
    from nodecode.codec.bitstream import read_header
    torch.set_num_threads(1)
    samples = read_shard(work / "c8.tar")[:n]
    files = [str(work / "c8" / "ndc" / f"{s.key}.ndc") for s in samples]
    codec = load_codec("c8")

    def old():
        return [read_header(d) and codec.read_symbols(d)[1].astype(np.uint8)
                for d in (Path(f).read_bytes() for f in files)]
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


@guarded("e2e")
def e2e(val_dir, work, dev, limit, batch, workers, cls, smoke):
    rows = e2e_speed(val_dir, work, "c8", dev.type, limit, batch, workers, cls, 0.0625 if smoke else 1.0,
                     points=("c8", "c16"), train_steps_n=3 if smoke else 30)
    RESULTS["rows"] = rows
    return len(rows)


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
    workers = a.workers or (2 if a.smoke else min(16, os.cpu_count() or 1))
    out = Path(a.out)
    work = Path(a.work) if a.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    SAVE["path"] = out / "gpu_decode.json"
    if SAVE["path"].exists():                       # resume: the stages already done are not run again
        RESULTS.update(json.loads(SAVE["path"].read_text()))
    RESULTS.update(provenance(" ".join(sys.argv)), smoke=a.smoke, triton=triton_available(), batch=batch)
    t0 = time.time()
    info = prepare(a.val_dir, work, limit, workers, dev)
    if info is not None:
        bitexact(work, dev, batch)
        kernel_speed(work, dev, batch, 3 if a.smoke else 50)
        cpu_per_core(work, 32 if a.smoke else 512)
        e2e(a.val_dir, work, dev, limit, batch, workers, a.classifiers, a.smoke)
        RESULTS["finished"] = not RESULTS["failed"]
    RESULTS["seconds"] = time.time() - t0
    save()
    print(f"\n== {RESULTS['device']}  ({RESULTS['seconds']:.0f}s; JSON in {SAVE['path']}) ==")
    if "kernel" in RESULTS:
        k = RESULTS["kernel"]
        print(f"entropy decode c8 b{k['batch']} ({k['backend']}): {k['kernel_images_per_s']:,.0f} img/s kernel, "
              f"{k['with_parse_copy_images_per_s']:,.0f} img/s with parse+copy")
    print(f"{'row':36s} {'model':10s} {'impl':22s} {'img/s':>9s} {'bpp':>6s} {'top-1':>6s}")
    for r in RESULTS["rows"]:
        if "skipped" in r:
            print(f"{r['path']:36s} skipped: {r['skipped']}")
            continue
        top1 = r.get("top1")
        print(f"{r['path']:36s} {r['model']:10s} {r['impl']:22s} {r['images_per_s']:9.0f} "
              + (f"{r['bpp']:6.3f} " if "bpp" in r else "     - ") + (f"{100 * top1:6.1f}" if top1 is not None else "     -"))
    for k, v in RESULTS["failed"].items():
        print(f"FAILED {k}: {v}")


if __name__ == "__main__":
    main()
