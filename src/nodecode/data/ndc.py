""".ndc files and shards as network inputs: a PyTorch Dataset over files or shard samples, and a GPU batch loader.

``NdcDataset`` yields (symbols uint8 (C, h, w), label) decoded on the CPU (constriction, in DataLoader workers);
``NdcBatchLoader`` reads shards (one sequential read each), gathers a batch's words into one buffer, copies it to
the device once and entropy-decodes it there (``codec.gpu_entropy``), yielding symbols or ŷ = centers[z] that never
leave the device. Files that fail (bad header, CRC, model, stream) are reported by name, not silently decoded.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from nodecode.codec.gpu_entropy import BatchDecoder
from nodecode.data.shards import Sample, read_shard, shard_paths
from nodecode.errors import NodecodeError


def load_samples(inputs) -> list[Sample]:
    """Samples of shards (.tar) and/or .ndc files (label from a class folder is not inferred for loose files)."""
    out = []
    for p in map(Path, [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs):
        if p.suffix == ".ndc":
            if not p.is_file():
                raise NodecodeError(f"no such file: {p}")
            out.append(Sample(str(p), p.read_bytes()))
        else:
            out += [s for sh in shard_paths(p) for s in read_shard(sh)]
    return out


class NdcDataset(torch.utils.data.Dataset):
    """Map-style: sample i -> (symbols uint8 (C, h, w), label or -1); CPU decoding, one file at a time."""

    def __init__(self, inputs, codec):
        self.samples = inputs if isinstance(inputs, list) and inputs and isinstance(inputs[0], Sample) \
            else load_samples(inputs)
        self.codec = codec
        self._decoder = None

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        if self._decoder is None:          # built in the worker process that uses it
            self._decoder = BatchDecoder(self.codec, "cpu", "constriction")
        s = self.samples[i]
        r = self._decoder.decode([s.ndc])
        if r.errors:
            raise NodecodeError(f"{s.key}: {r.errors[0]}")
        return r.symbols[0], -1 if s.label is None else s.label


class NdcBatchLoader:
    """Batches of (x, labels, keys) on `device`; x = symbols uint8 (B, C, h, w), or ŷ float if `latent`.

    Decoding runs on the device (Triton) when it is CUDA, else on the CPU. Bad files are skipped and recorded in
    ``self.errors`` as (key, message); ``strict`` raises on the first one instead."""

    def __init__(self, inputs, codec, batch: int = 1024, device="cuda", latent: bool = False, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False, strict: bool = False, backend: str | None = None):
        self.samples = load_samples(inputs)
        if not self.samples:
            raise NodecodeError("no .ndc samples found")
        self.decoder = BatchDecoder(codec, device, backend)
        self.batch, self.latent, self.shuffle, self.seed = batch, latent, shuffle, seed
        self.drop_last, self.strict = drop_last, strict
        self.errors: list[tuple[str, str]] = []
        self.epoch = 0

    def __len__(self):
        n = len(self.samples)
        return n // self.batch if self.drop_last else -(-n // self.batch)

    def __iter__(self):
        order = list(range(len(self.samples)))
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(order), generator=g).tolist()
        self.epoch += 1
        dev = self.decoder.device
        for b in range(len(self)):
            chunk = [self.samples[i] for i in order[b * self.batch: (b + 1) * self.batch]]
            r = self.decoder.decode([s.ndc for s in chunk])
            for i, msg in r.errors.items():
                if self.strict:
                    raise NodecodeError(f"{chunk[i].key}: {msg}")
                self.errors.append((chunk[i].key, msg))
            labels = torch.tensor([-1 if chunk[i].label is None else chunk[i].label for i in r.index])
            x = self.decoder.latent(r.symbols) if self.latent else r.symbols
            yield x, labels.to(dev, non_blocking=True), [chunk[i].key for i in r.index]
