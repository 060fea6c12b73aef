"""Issue 13, CPU decoding: the per-file bound on what a file's words can hold, computed once per EntropyModel
(`bits_per_position`, now) vs once per file (before), timed on one core in one process with the two interleaved, so
that a noisy machine slows both alike. Prints min / median microseconds per c8 file.

    taskset -c 1 python experiments/speed/decode_bound_ab.py SHARD.tar [--passes 30]
(SHARD: a `nodecode pack` shard of one codec's files, e.g. gpu_decode.py's work/c8.tar)
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from nodecode.codec import bitstream
from nodecode.codec.reader import EntropyModel, open_ndc
from nodecode.data.shards import read_shard


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shard")
    ap.add_argument("--passes", type=int, default=30)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    files = [open_ndc(s.ndc) for s in read_shard(a.shard)]
    model = EntropyModel.load(files[0].header.model)
    models, once = model.channel_models, model.bits_per_position
    times: dict[str, list[float]] = {"bound once per model": [], "bound per file (before)": []}
    for _ in range(a.passes):
        for name, bits in zip(times, (once, None)):
            t = time.perf_counter()
            for f in files:
                bitstream.decode_symbols(f.words, model.freqs, f.header.latent_shape, models, bits)
            times[name].append((time.perf_counter() - t) / len(files) * 1e6)
    print(f"{len(files)} {model.name} files, {a.passes} interleaved passes, one core")
    for name, v in times.items():
        print(f"{name:24s} min {min(v):6.1f} us/file   median {np.median(v):6.1f} us/file")


if __name__ == "__main__":
    main()
