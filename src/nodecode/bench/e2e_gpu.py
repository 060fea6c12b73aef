"""Files -> labels with decoding on the device (issue 13): .ndc shards -> batched entropy decoding (Triton) ->
cResNet, and JPEG files -> nvJPEG (torchvision.io.decode_jpeg on a list, device="cuda") -> ResNet; plus the
training-input throughput (a training step fed from .ndc shards vs from JPEG through nvJPEG).

A pass returns its labels and the time breakdown: read (the shard's one sequential read, or the JPEG files),
parse (host: validate headers, gather words), h2d (one copy per batch), decode, network. "sequential" synchronises
after each part (the breakdown); "pipelined" does not (the throughput). Without CUDA the .ndc pass decodes with
constriction on the CPU and the nvJPEG rows are skipped (their reason is returned).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from nodecode.codec.gpu_entropy import decode_triton, pack_files
from nodecode.data.shards import iter_shard, read_shard


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class PinnedRing:
    """Host->device copies through a few pinned buffers: asynchronous, a slot is reused once its copy is done."""

    def __init__(self, dev: torch.device, slots: int = 3):
        self.dev, self.slots, self.k = dev, [[None, None] for _ in range(slots)], 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.dev.type != "cuda":
            return x
        slot = self.slots[self.k % len(self.slots)]
        self.k += 1
        if slot[1] is not None:
            slot[1].synchronize()
        if slot[0] is None or slot[0].numel() < x.numel():
            slot[0] = torch.empty(2 * x.numel(), dtype=x.dtype).pin_memory()
        staged = slot[0][: x.numel()]
        staged.copy_(x)
        out = staged.to(self.dev, non_blocking=True)
        slot[1] = torch.cuda.Event()
        slot[1].record()
        return out


def read_packed(shard: str, model, batch: int) -> list[tuple]:
    """A shard read and cut into packed batches, [(Packed, the batch's keys)]: the host side of the .ndc path, run
    in a reader process when there are several (its result is one pickled message per shard)."""
    return list(_packed_here(shard, model, batch, dict.fromkeys(("read_s", "parse_s"), 0.0)))


def ndc_shard_pass(shards, dec, infer, batch: int, pipelined: bool, pool=None) -> dict:
    """Shards (paths; or a list of samples) -> parse -> one copy -> decode -> infer, per batch (a batch does not
    cross shards). Without `pool` this thread reads each shard (one sequential read when its turn comes) and packs
    its batches; with a process pool, shards are read and packed by its processes (read_packed), as many at a time
    as it has processes, and this thread only copies, launches and collects ("read_s" is then its wait for them).

    {"seconds", "read_s", "parse_s", "h2d_s", "decode_s", "network_s", "first_launch_s" (from the start until the first
    batch was handed to the network: the GPU's idle start), "labels", "keys", "corrupt"}; keys are those
    of the files decoded (the labels' order); corrupt files are counted from the host's refusals and the decoder's
    statuses at the end (no per-batch synchronisation for them)."""
    dev = dec.device
    t = dict.fromkeys(("read_s", "parse_s", "h2d_s", "decode_s", "network_s"), 0.0)
    t0 = time.perf_counter()
    if isinstance(shards, (str, Path)) or (shards and not isinstance(shards[0], (str, Path))):
        shards = [shards]                                   # one path, or the samples of one shard
    labels, statuses, ring, corrupt, keys = [], [], PinnedRing(dev), 0, []
    for packs in (_pooled(shards, pool, dec.model, batch, t) if pool is not None else
                  (_packed_here(shard, dec.model, batch, t) for shard in shards)):
        for p, ks in packs:
            kept, refused = _decode_infer(p, dec, infer, pipelined, dev, t, labels, statuses, ring)
            t.setdefault("first_launch_s", time.perf_counter() - t0)
            keys += [ks[j] for j in kept]
            corrupt += refused
    labels = torch.cat(labels).cpu().tolist() if labels else []
    if statuses:
        corrupt += int((torch.cat(statuses) != 0).sum())
    return {"seconds": time.perf_counter() - t0, **t, "labels": labels, "keys": keys, "corrupt": corrupt}


def _packed_here(shard, model, batch: int, t: dict):
    """This thread: the shard's one read, parsed first for the members of its first batch (pack_dir writes three per
    sample) so that the GPU starts on it while the rest is parsed (timed as read), then each batch packed when it is
    needed (parse)."""
    parts = iter_shard(shard, 3 * batch + 3) if isinstance(shard, (str, Path)) else iter([shard])
    pending: list = []
    while True:
        a = time.perf_counter()
        part = next(parts, None)
        t["read_s"] += time.perf_counter() - a
        pending += part or []
        while pending and (len(pending) >= batch or part is None):
            a = time.perf_counter()
            now, pending = pending[:batch], pending[batch:]
            p = pack_files([s.ndc for s in now], model)
            t["parse_s"] += time.perf_counter() - a
            yield p, [s.key for s in now]
        if part is None:
            return


def _pooled(shards, pool, model, batch: int, t: dict):
    """The packed batches of each shard, in order, from the pool's processes (up to one shard per process ahead)."""
    from collections import deque
    todo, ahead = iter(shards), deque()

    def submit():
        s = next(todo, None)
        if s is not None:
            ahead.append(pool.submit(read_packed, str(s), model, batch))
    for _ in range(max(getattr(pool, "_max_workers", 1), 1)):
        submit()
    while ahead:
        a = time.perf_counter()
        packs = ahead.popleft().result()
        t["read_s"] += time.perf_counter() - a
        submit()
        yield packs


def _decode_infer(p, dec, infer, pipelined, dev, t, labels, statuses, ring) -> tuple[list[int], int]:
    """One packed batch: copy -> decode -> infer (times added to `t`); (the batch positions of the files given to
    the network, how many were refused before it)."""
    b = time.perf_counter()
    if dec.backend == "triton":
        buf = ring(torch.from_numpy(p.buffer.view(np.int32)))               # the batch's one copy
        if not pipelined:
            sync(dev)
        c = time.perf_counter()
        sym, st = decode_triton(buf, p.n, dec.cdf, p.shape[1] * p.shape[2])
        sym = sym.reshape(p.n, *p.shape)
        statuses.append(st)
        kept, refused = p.index, len(p.errors)   # a stream the kernel refuses is counted from its status at the end
    else:                                        # the CPU decoder: its symbols are copied once instead
        c = time.perf_counter()
        r = dec.decode(None, p)
        sym, kept, refused = r.symbols, r.index, len(r.errors)      # r.errors holds the host's refusals too
    if len(kept):
        d, e = _infer_timed(infer, sym, labels, dev, pipelined)
    else:
        d = e = time.perf_counter()
    t["h2d_s"] += c - b
    t["decode_s"] += d - c
    t["network_s"] += e - d
    return kept, refused


def _infer_timed(infer, x, labels: list, dev: torch.device, pipelined: bool) -> tuple[float, float]:
    """Append infer(x) to labels; the clock just before and just after (synchronized unless pipelined)."""
    if not pipelined:
        sync(dev)
    start = time.perf_counter()
    with torch.no_grad():
        labels.append(infer(x))
    if not pipelined:
        sync(dev)
    return start, time.perf_counter()


def nvjpeg_missing(dev: torch.device) -> str | None:
    """Why the nvJPEG rows cannot run here (None when they can)."""
    if dev.type != "cuda":
        return "nvJPEG needs CUDA"
    try:
        from torchvision.io import decode_jpeg  # noqa: F401 - torchvision is optional, imported only here
    except ImportError as e:
        return f"torchvision not installed ({e})"
    return None


def nvjpeg_pass(files: list[str], infer, batch: int, dev: torch.device, pipelined: bool) -> dict:
    """JPEG files -> read -> decode_jpeg(list, device=cuda) (batched nvJPEG) -> infer, per batch; the time parts of
    ndc_shard_pass (read, decode, network, first_launch_s)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    t = dict.fromkeys(("read_s", "decode_s", "network_s"), 0.0)
    labels = []
    t0 = time.perf_counter()
    for i in range(0, len(files), batch):
        a = time.perf_counter()
        datas = [torch.frombuffer(bytearray(Path(f).read_bytes()), dtype=torch.uint8) for f in files[i: i + batch]]
        b = time.perf_counter()
        x = torch.stack(decode_jpeg(datas, mode=ImageReadMode.RGB, device=dev))
        c, d = _infer_timed(infer, x, labels, dev, pipelined)
        t.setdefault("first_launch_s", d - t0)
        t["read_s"] += b - a
        t["decode_s"] += c - b
        t["network_s"] += d - c
    return {"seconds": time.perf_counter() - t0, **t, "labels": torch.cat(labels).cpu().tolist()}


def train_steps(net: torch.nn.Module, batches, warmup: int = 2) -> float:
    """Images/s of SGD steps (bf16 autocast on CUDA, channels_last) on (x, y) batches, after `warmup` steps."""
    dev = next(net.parameters()).device
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net.train()
    n, t0 = 0, time.perf_counter()
    for k, (x, y) in enumerate(batches):
        if k == warmup:
            sync(dev)
            n, t0 = 0, time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(x)
    sync(dev)
    return n / (time.perf_counter() - t0)


def ndc_train_batches(shard: Path, codec, batch: int, steps: int, dev):
    """(ŷ - 0, labels) batches decoded on the device from a shard, as `train classifier --input ndc` feeds them."""
    from nodecode.data.ndc import NdcSymbols
    samples = read_shard(shard)
    x = NdcSymbols(samples, codec, dev)
    labels = torch.tensor([max(s.label or 0, 0) for s in samples], device=dev)
    for k in range(steps):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(k))[:batch]
        yield codec.latent(x[idx]), labels[idx.to(dev)]


def jpeg_train_batches(files: list[str], labels: list[int], batch: int, steps: int, dev):
    """(pixels - 127.5, labels) batches of JPEG files decoded by nvJPEG."""
    from torchvision.io import ImageReadMode, decode_jpeg
    y = torch.tensor(labels, device=dev)
    for k in range(steps):
        idx = [(k * batch + i) % len(files) for i in range(batch)]
        imgs = decode_jpeg([torch.frombuffer(bytearray(Path(files[i]).read_bytes()), dtype=torch.uint8) for i in idx],
                           mode=ImageReadMode.RGB, device=dev)
        yield torch.stack(imgs).float().sub_(127.5), y[idx]
