"""CPU .ndc decoding throughput, per core and over N processes (issue 13): where the time goes and what it is now.

    python experiments/speed/cpu_decode.py NDC_DIR [--workers N]     # NDC_DIR: .ndc files (any depth), one codec

Per core: the old path (each file read, unpacked twice, 8 constriction models built per file, read_symbols),
decode_ndc_chunk now (one decoder per process: models built once, one unpack), and the same from bytes already in
memory (a shard's one read). N processes: chunks of file paths vs chunks of shard bytes sent to a spawn pool.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from nodecode.experiments import best_seconds



def main(argv=None):
    from nodecode.bench.e2e import _DECODERS, decode_ndc_chunk, decode_ndc_datas, start_pool
    from nodecode.codec import bitstream
    from nodecode.codec.files import codec_for
    ap = argparse.ArgumentParser()
    ap.add_argument("ndc_dir")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    files = sorted(str(p) for p in Path(a.ndc_dir).rglob("*.ndc"))
    datas = [Path(f).read_bytes() for f in files]
    codec = codec_for(datas[0], None, "cpu")

    def old():  # what decode_ndc_chunk did before
        return np.stack([bitstream.read_header(d) and codec.read_symbols(d)[1].astype(np.uint8)
                         for d in (Path(f).read_bytes() for f in files)])
    decode_ndc_chunk(files[:2])
    n = len(files)
    rows = {"old: read_symbols per file": best_seconds(old), "now: decode_ndc_chunk(files)": best_seconds(lambda: decode_ndc_chunk(files)),
            "now: decode_ndc_datas(bytes in memory)": best_seconds(lambda: decode_ndc_datas(datas)),
            "  of which: read the files": best_seconds(lambda: [Path(f).read_bytes() for f in files]),
            "  of which: constriction decode calls": None}
    dec = next(iter(_DECODERS.values()))
    p = dec.decode(datas)  # noqa: F841 - warm
    from nodecode.codec.gpu_entropy import pack_files
    pk = pack_files(datas, codec)
    words, starts, counts = pk.parts(pk.buffer)
    rows["  of which: constriction decode calls"] = best_seconds(
        lambda: [dec._constriction(words[s: s + k], pk.shape) for s, k in zip(starts.astype(int), counts.astype(int))])
    for k, t in rows.items():
        print(f"one core  {k:42s} {1e3 * t / n:7.3f} ms/img {n / t:9.0f} img/s")
    pool = start_pool(a.workers)
    try:
        for name, fn, items in (("file paths", decode_ndc_chunk, files), ("shard bytes", decode_ndc_datas, datas)):
            k = -(-n // (4 * a.workers))
            chunks = [items[i: i + k] for i in range(0, n, k)]
            list(pool.map(fn, chunks))
            t = best_seconds(lambda: list(pool.map(fn, chunks)))
            print(f"{a.workers} processes, chunks of {name:12s} {n / t:9.0f} img/s ({n / t / a.workers:.0f} per process)")
    finally:
        pool.shutdown()


if __name__ == "__main__":
    main()
