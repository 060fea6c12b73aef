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


def decoded_batches(items: list, model, device, batch: int = 256, backend: str | None = None):
    """(positions, symbols uint8 (B, C, h, w) on `device`, {position: error}) for (position, NdcFile) pairs, in
    batches of files of one image size: read once, one host->device copy and GPU decoding per batch (Triton on CUDA,
    constriction elsewhere). A file that fails is in the errors with its path, the others are decoded."""
    dec = BatchDecoder(model, device, backend)
    groups: dict = {}
    for i, f in items:
        groups.setdefault((f.header.latent_shape, f.size), []).append((i, f))
    for group in groups.values():
        for k in range(0, len(group), batch):
            chunk = group[k: k + batch]
            r = dec.decode([f for _, f in chunk])
            yield ([chunk[j][0] for j in r.index], r.symbols,
                   {chunk[j][0]: f"{chunk[j][1].path}: {m}" if chunk[j][1].path else m for j, m in r.errors.items()})


class NdcSymbols:
    """The symbols of many .ndc samples as a tensor-like dataset on `device`: ``x[idx]`` (an index tensor, list,
    slice or int) entropy-decodes those files there (Triton on CUDA) and returns uint8 (B, C, h, w).

    Stands where a cached uint8 tensor of symbols stands (data.augment.Batches, evaluation, channel_mean), so a
    classifier trains from shards with the bytes held in memory and decoding per batch. Every file is read and
    validated (header, CRC, codec, size) once here; a bad one is refused with its key."""

    def __init__(self, samples: list[Sample], model, device="cpu", backend: str | None = None):
        from nodecode.codec.reader import open_ndc
        if not samples:
            raise NodecodeError("no .ndc samples found")
        self.decoder = BatchDecoder(model, device, backend)
        self.samples, self.files = samples, []
        for s in samples:
            try:
                f = open_ndc(s.ndc)
                self.decoder.model.check(f)
            except NodecodeError as e:
                raise NodecodeError(f"{s.key}: {e}") from None
            self.files.append(f)
        shapes = {f.header.latent_shape for f in self.files}
        if len(shapes) > 1:
            raise NodecodeError(f"the .ndc files have {len(shapes)} latent shapes; training takes one size "
                                f"(e.g. {sorted(shapes)[:2]})")
        self.shape = (len(self.files), *shapes.pop())
        self.device = self.decoder.device
        # on the device every stream is decoded once here (the kernel's statuses read back once), so that a training
        # batch later needs no per-batch status check, i.e. no device synchronisation
        self.trusted = self.decoder.backend in ("triton", "interpret")
        for k in range(0, len(self.files), 4096) if self.trusted else ():
            r = self.decoder.decode(self.files[k: k + 4096])
            if r.errors:
                i, msg = next(iter(r.errors.items()))
                raise NodecodeError(f"{self.samples[k + i].key}: {msg}")

    def __len__(self):
        return len(self.files)

    def to(self, device):
        return self if torch.device(device) == self.device else NdcSymbols(self.samples, self.decoder.model, device)

    def __getitem__(self, idx):
        if isinstance(idx, int):
            return self[[idx]][0]
        rows = range(len(self))[idx] if isinstance(idx, slice) else torch.as_tensor(idx).flatten().tolist()
        r = self.decoder.decode([self.files[i] for i in rows], trusted=self.trusted)
        if r.errors:
            i, msg = next(iter(r.errors.items()))
            raise NodecodeError(f"{self.samples[rows[i]].key}: {msg}")
        return r.symbols


def load_split(root, split: str, classes: list[str] | None = None, max_per_class: int | None = None):
    """(samples, labels int64, classes, names) of the shards root/<split>/*.tar or root/<split>.tar (`nodecode pack`).

    Labels come from each sample's class name (key.json "class", else key.cls), so shards packed separately agree;
    `classes` fixes the order (default: the sorted names found); names from a classes.tsv beside the shards."""
    from nodecode.data.folders import class_names
    root = Path(root)
    where = root / split if (root / split).exists() else root / f"{split}.tar"
    samples = [s for p in shard_paths(where) for s in read_shard(p)]
    of = [str((s.meta or {}).get("class", s.label)) for s in samples]
    if any(c == "None" for c in of):
        raise NodecodeError(f"{where}: samples without a class (pack a folder of <class>/<name>.ndc)")
    classes = classes or sorted(set(of))
    keep, count = [], {}
    for s, c in zip(samples, of):
        if c in classes and (max_per_class is None or count.get(c, 0) < max_per_class):
            count[c] = count.get(c, 0) + 1
            keep.append((s, classes.index(c)))
    if not keep:
        raise NodecodeError(f"{where}: no samples of the classes {classes[:5]}")
    names = class_names(root)
    return ([s for s, _ in keep], torch.tensor([y for _, y in keep], dtype=torch.long), classes,
            [names.get(c, c) for c in classes])
