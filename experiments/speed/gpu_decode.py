"""GPU entropy decoding and files -> labels end to end, on one card (issue 13): the device driver script.

    python experiments/speed/gpu_decode.py run IMAGENETTE_VAL [--out DIR] [--classifiers RUNS] [--budget-minutes M] [--smoke]
    python experiments/speed/gpu_decode.py collect [--out DIR] [--save FILE]   (the table of DIR/gpu_decode.json;
                                                     --save: a copy for results/ without the per-file name lists)

run, stage by stage:
1. prepare: writes the val images as c8 and c16 .ndc files and shards and as JPEG at the same bpp
   (bench.e2e.prepare_files);
2. bitexact: checks that every file decodes to the same symbols on the GPU (Triton) and the CPU (constriction);
3. kernel: times GPU entropy decoding at batch 1,024 (c8): kernel only, and with host parsing + host->device copy;
4. cpu-decode-per-core: CPU decoding per core (old per-file path vs now);
5. cpu-decode-procs: CPU decoding of every c8 file in --workers processes (the e2e CPU row without its network);
6. e2e: every end-to-end and training-input row of `nodecode bench speed --e2e-data` (bench.e2e.e2e_speed);
7. e2e-ratio: the .ndc / nvJPEG ratio at c8 and c16 over --rounds alternating rounds (bench.e2e.e2e_ratio): its
   median and spread, where one e2e row is a single pass.
Each stage is guarded (a failure is recorded under "failed", the run goes on) and resumable: $OUT/gpu_decode.json is
the runs file of nodecode.experiments (written after every stage; a stage already in it is not run again; none
starts with less than a minute of --budget-minutes left); --stages runs only some (prepare,cpu-decode-per-core,
cpu-decode-procs run on a CPU). Prints a short table last. --smoke: 24 images, batch 8,
narrow networks; runs on the CPU too (GPU-only rows skipped with their reason).
"""
from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from nodecode.bench.e2e import (decode_ndc_chunk, decode_ndc_datas, e2e_ratio, e2e_speed, prepare_files, run_files,
                                start_pool)
from nodecode.codec.gpu_entropy import BatchDecoder, decode_triton, pack_files, triton_available
from nodecode.codec.zoo import load_codec
from nodecode.data.shards import read_shard
from nodecode.experiments import Budget, Runs, best_seconds, experiment_parser, markdown_table
from nodecode.utils import provenance, write_json

STAGES: list = []       # (key, function of the run's arguments), in order


def stage(name):
    """Register a stage: run once through Runs.stage (skipped when gpu_decode.json holds it); a failure is recorded
    under "failed" with its message and the run goes on."""
    def wrap(fn):
        STAGES.append((name, fn))
        return fn
    return wrap


def run_stage(runs: Runs, budget: Budget, name: str, fn) -> dict | None:
    failed = runs.done.setdefault("failed", {})
    try:
        out = runs.stage(name, lambda minutes: fn(), budget)
        if out is not None and failed.pop(name, None) is not None:
            runs.save()
        return out
    except Exception as e:  # noqa: BLE001 - a failing stage is recorded, not fatal
        failed[name] = f"{type(e).__name__}: {e}"
        runs.save()
        print(f"[{name}] FAILED: {e}\n{traceback.format_exc(limit=3)}", flush=True)
        return None


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


@stage("prepare")
def prepare(val_dir, work: Path, limit, workers, dev):
    return prepare_files(val_dir, work, ("c8", "c16"), limit, workers, dev)


@stage("bitexact")
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
    return out


@stage("kernel")
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
    print(f"GPU entropy decoding c8 batch {batch}: kernel {row['kernel_ms']:.3f} ms = {row['kernel_images_per_s']:,.0f} "
          f"img/s; with host parse + copy {row['with_parse_copy_images_per_s']:,.0f} img/s")
    return row


@stage("cpu-decode-per-core")
def cpu_per_core(work, n):
    """c8 .ndc decoding on one core: the old path (read_symbols per file: models built and file unpacked twice)
    vs decode_ndc_chunk now (one decoder per process) and from shard bytes (no file opens); then what the files'
    reads and the constriction decode calls alone cost (the floor)."""
    from nodecode.bench.e2e import _DECODERS
    from nodecode.codec.bitstream import read_header
    torch.set_num_threads(1)
    samples = read_shard(work / "c8.tar")[:n]
    files = [str(work / "c8" / "ndc" / f"{s.key}.ndc") for s in samples]
    datas = [s.ndc for s in samples]
    codec = load_codec("c8")

    def old():
        return [read_header(d) and codec.read_symbols(d)[1].astype(np.uint8)
                for d in (Path(f).read_bytes() for f in files)]
    decode_ndc_datas(datas[:2])
    dec = _DECODERS[codec.config.name]                    # the decoder decode_ndc_datas built for these files
    p = pack_files(datas, codec)
    words, starts, counts = p.parts(p.buffer)
    out = {}
    for name, fn in (("old read_symbols per file", old), ("decode_ndc_chunk (files)", lambda: decode_ndc_chunk(files)),
                     ("decode_ndc_datas (shard bytes)", lambda: decode_ndc_datas(datas)),
                     ("of which: read the files", lambda: [Path(f).read_bytes() for f in files]),
                     ("of which: constriction decode calls", lambda: [dec._constriction(words[s: s + k], p.shape)
                                                                      for s, k in zip(starts.astype(int), counts.astype(int))])):
        fn()
        t = best_seconds(fn)
        out[name] = len(files) / t
        print(f"CPU decode, one core, {name:36s} {len(files) / t:9.0f} img/s {1e3 * t / len(files):7.3f} ms/img")
    return out



@stage("cpu-decode-procs")
def cpu_procs(work, workers, batch, repeat):
    """c8 .ndc files -> symbols in `workers` CPU processes: the pool, the chunking and the sequential timing of the e2e
    row e2e-ndc-files-cpuN without its network (issue 13's CPU target: >= 50k img/s on 16 processes); best of `repeat`
    passes over every file."""
    samples = read_shard(work / "c8.tar")
    files = [str(work / "c8" / "ndc" / f"{s.key}.ndc") for s in samples]
    pool = start_pool(workers)
    try:
        probe = lambda x: x[:, 0, 0, 0]  # noqa: E731 - the labels run_files collects: one symbol per file
        run_files(files[: 2 * batch], decode_ndc_chunk, probe, batch, workers, "cpu", False, pool)     # warm-up
        passes = [run_files(files, decode_ndc_chunk, probe, batch, workers, "cpu", False, pool)["decode_s"]
                  for _ in range(repeat)]
    finally:
        pool.shutdown()
    row = {"workers": workers, "files": len(files), "batch": batch, "decode_s_passes": passes,
           "images_per_s": len(files) / min(passes), "images_per_s_median": len(files) / float(np.median(passes))}
    print(f"CPU decode, {workers} processes, {len(files)} c8 files: {row['images_per_s']:,.0f} img/s (best of {repeat}; "
          f"median {row['images_per_s_median']:,.0f})")
    return row


@stage("e2e")
def e2e(val_dir, work, dev, limit, batch, workers, cls, smoke, repeat, compile_mode):
    return {"repeat": repeat, "compile_mode": compile_mode,
            "rows": e2e_speed(val_dir, work, "c8", dev.type, limit, batch, workers, cls, 0.0625 if smoke else 1.0,
                              points=("c8", "c16"), train_steps_n=3 if smoke else 30, repeat=repeat,
                              compile_mode=compile_mode)}


@stage("e2e-ratio")
def ratio(val_dir, work, dev, batch, cls, smoke, rounds, repeat, compile_mode):
    return e2e_ratio(val_dir, work, ("c8", "c16"), dev.type, batch, cls, rounds, repeat, compile_mode,
                     0.0625 if smoke else 1.0)


def table(done: dict) -> str:
    """The short table of a gpu_decode.json: the kernel line, then one row per e2e row, then the failures."""
    lines = []
    if "kernel" in done:
        k = done["kernel"]
        lines.append(f"entropy decode c8 b{k['batch']} ({k['backend']}): {k['kernel_images_per_s']:,.0f} img/s kernel, "
                     f"{k['with_parse_copy_images_per_s']:,.0f} img/s with parse+copy\n")
    rows = []
    for r in done.get("e2e", {}).get("rows", []):
        if "skipped" in r:
            rows.append([r["path"], r.get("model", "-"), r.get("impl", "-"), f"skipped: {r['skipped']}", "-", "-", "-"])
            continue
        top1, start = r.get("top1"), r.get("first_launch_s")
        rows.append([r["path"], r["model"], r["impl"], f"{r['images_per_s']:.0f}",
                     f"{r['bpp']:.3f}" if "bpp" in r else "-", f"{100 * top1:.1f}" if top1 is not None else "-",
                     f"{1e3 * start:.0f}" if start is not None else "-"])
    lines.append(markdown_table(["row", "model", "impl", "img/s", "bpp", "top-1", "first batch ms"], rows, "lllrrrr"))
    if "cpu-decode-procs" in done:
        c = done["cpu-decode-procs"]
        lines.append(f"CPU decode c8, {c['workers']} processes: {c['images_per_s']:,.0f} img/s (median "
                     f"{c['images_per_s_median']:,.0f}) over {c['files']} files")
    for point, p in done.get("e2e-ratio", {}).get("points", {}).items():
        lines.append(f"e2e ratio {point} (.ndc {p['bpp']['ndc']:.3f} bpp / JPEG {p['bpp']['jpeg']:.3f} bpp): "
                     f"{p['ndc_images_per_s_median']:,.0f} / {p['jpeg_images_per_s_median']:,.0f} img/s, ratio median "
                     f"{p['ratio_median']:.2f}x [{p['ratio_min']:.2f}, {p['ratio_max']:.2f}] over {len(p['ratios'])} rounds")
    if "skipped" in done.get("e2e-ratio", {}):
        lines.append(f"e2e ratio: skipped ({done['e2e-ratio']['skipped']})")
    lines += [f"FAILED {k}: {v}" for k, v in done.get("failed", {}).items()]
    return "\n".join(lines)


def committed_copy(done: dict) -> dict:
    """gpu_decode.json without the run state's per-file lists (prepare's names / originals, counts kept)."""
    if "prepare" not in done:
        return dict(done)
    prep = dict(done["prepare"])
    for k in ("names", "originals"):
        if k in prep:
            prep[f"{k}_count"] = len(prep.pop(k))
    return {**done, "prepare": {**prep, "note": "the per-file name lists of the run state are dropped from this "
                                                "committed copy (counts kept)"}}


def main(argv=None):
    ap = experiment_parser(__doc__, budget_minutes=9.0)
    ap.add_argument("val_dir", nargs="?", help="run: the ImageFolder of val images (e.g. imagenette2-224/val)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--work", default=None, help="where files and shards are written (default: OUT/work)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=None,
                    help="e2e, e2e-ratio: passes over the set per timed row (default 4)")
    ap.add_argument("--rounds", type=int, default=20, help="e2e-ratio: alternating rounds per point")
    ap.add_argument("--classifiers", default=None, help="folder of trained <point>-<input>-<model>-s0 runs")
    ap.add_argument("--stages", default=None, help="run: only these stages, comma separated (default: all), e.g. "
                    "prepare,cpu-decode-per-core on a CPU")
    ap.add_argument("--save", default=None, help="collect: write a copy without the per-file lists here")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode of the compiled rows, e.g. "
                    "max-autotune-no-cudagraphs")
    a = ap.parse_args(argv)
    names = [n for n, _ in STAGES]
    only = a.stages.split(",") if a.stages else names
    if not set(only) <= set(names):
        ap.error(f"--stages: each of {', '.join(names)}")
    out = Path(a.out)
    runs = Runs(out / "gpu_decode.json")           # resume: the stages already in it are not run again
    if a.stage == "run":
        if not a.val_dir:
            ap.error("run takes the val ImageFolder")
        budget = Budget(a.budget_minutes)
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        limit = a.limit or (24 if a.smoke else None)
        batch = a.batch or (8 if a.smoke else 1024)
        workers = a.workers or (2 if a.smoke else min(16, os.cpu_count() or 1))
        repeat = a.repeat or (1 if a.smoke else 4)
        work = Path(a.work) if a.work else out / "work"
        out.mkdir(parents=True, exist_ok=True)
        runs.done.update(provenance("experiments/speed/gpu_decode.py run"), smoke=a.smoke, triton=triton_available(),
                         batch=batch)
        args = {"prepare": lambda: prepare(a.val_dir, work, limit, workers, dev),
                "bitexact": lambda: bitexact(work, dev, batch),
                "kernel": lambda: kernel_speed(work, dev, batch, 3 if a.smoke else 50),
                "cpu-decode-per-core": lambda: cpu_per_core(work, 32 if a.smoke else 512),
                "cpu-decode-procs": lambda: cpu_procs(work, workers, batch, repeat),
                "e2e": lambda: e2e(a.val_dir, work, dev, limit, batch, workers, a.classifiers, a.smoke,
                                   repeat, a.compile_mode),
                "e2e-ratio": lambda: ratio(a.val_dir, work, dev, batch, a.classifiers, a.smoke,
                                           2 if a.smoke else a.rounds, repeat, a.compile_mode)}
        for name in (n for n in names if n in only):
            if run_stage(runs, budget, name, args[name]) is None and name == "prepare":
                break                           # nothing to decode without the files
        runs.done["finished"] = all(n in runs for n, _ in STAGES) and not runs.done["failed"]
        runs.done["wall_s_this_call"] = budget.elapsed() * 60
        runs.save()
    done = runs.done
    if a.stage == "collect" and a.save:
        write_json(Path(a.save), committed_copy(done))
    print(f"\n== {done.get('device', '?')}  (JSON in {runs.path}; finished: {done.get('finished', False)}) ==")
    print(table(done))


if __name__ == "__main__":
    main()
