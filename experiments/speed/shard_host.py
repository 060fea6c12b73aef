"""The host side of the GPU .ndc path on one core (issue 13): microseconds per sample to read a shard (one sequential
read, tar headers checked) and to validate + gather a batch's words (pack_files), the two steps the GPU waits on,
and the time until the e2e pass has its first batch packed (the GPU's idle start).

    python experiments/speed/shard_host.py NDC_DIR [--json OUT.json]     # NDC_DIR: .ndc files of one codec

The files are packed once into a temporary shard (`nodecode pack`'s format); each step is timed as the best of 5
passes over the whole shard, batches of 1,024.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path



def main(argv=None) -> None:
    import torch

    from nodecode.bench.e2e_gpu import _packed_here
    from nodecode.codec.files import codec_for
    from nodecode.codec.reader import open_ndc
    from nodecode.codec.gpu_entropy import entropy_model, pack_files
    from nodecode.data.shards import pack_dir, read_shard
    from nodecode.experiments import best_seconds
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ndc_dir")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "s.tar"
        pack_dir(a.ndc_dir, shard)
        samples = read_shard(shard)
        model = entropy_model(codec_for(open_ndc(samples[0].ndc), None, "cpu"))
        datas = [s.ndc for s in samples]
        n = len(samples)
        read = best_seconds(lambda: read_shard(shard), 5)
        pack = best_seconds(lambda: [pack_files(datas[i: i + a.batch], model) for i in range(0, n, a.batch)], 5)
        first = best_seconds(lambda: next(_packed_here(shard, model, a.batch, dict.fromkeys(("read_s", "parse_s"), 0.0))), 5)
        shard_bytes = shard.stat().st_size
    row = {"samples": n, "shard_bytes": shard_bytes, "first_batch_ms": 1e3 * first,
           "read_shard_us_per_sample": 1e6 * read / n, "pack_files_us_per_sample": 1e6 * pack / n,
           "host_images_per_s": n / (read + pack), "cpu": platform.processor() or platform.machine(),
           "torch": torch.__version__}
    print(f"{n} samples, one core: read_shard {row['read_shard_us_per_sample']:.2f} us/sample, pack_files "
          f"{row['pack_files_us_per_sample']:.2f} us/sample -> host side {row['host_images_per_s']:,.0f} img/s; "
          f"first batch of {a.batch} packed after {row['first_batch_ms']:.1f} ms")
    if a.json:
        Path(a.json).write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
