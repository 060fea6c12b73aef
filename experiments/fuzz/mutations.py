"""Structured mutations of .ndc files for the fuzzing harness (tests/test_fuzz.py, experiments/fuzz/run.py).

Families: truncation, bit flips, byte insertions/deletions (each with and without a recomputed CRC), header fields
(version, name length, name, fingerprint, H, W, C, h, w, L, word count) set to edge or random values with a
recomputed CRC (and, for the dimensions, a consistent latent shape), last-word and word-count edits, random
bodies behind a valid magic, and splices of one file's header with another's words.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from nodecode.codec import bitstream

EDGE32 = (0, 1, 2, 7, 8, 9, 255, 256, 4095, 4096, 65535, 65536, 1 << 24, (1 << 31) - 1, 1 << 31, (1 << 32) - 1)
EDGE16 = (0, 1, 2, 7, 8, 255, 256, 4096, 32767, 32768, 65535)
FIELDS = ("height", "width", "channels", "lat_h", "lat_w", "centers", "nwords")
FAMILIES = ("truncate", "bitflip", "bitflip_crc", "insdel", "insdel_crc", "header_field", "dims_consistent",
            "name", "version", "last_word", "word_count", "random_body", "splice")


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _layout(data: bytes):
    """(offset of the dims struct, its fields) of a well-formed file."""
    nlen = data[5]
    off = bitstream._FIXED.size + nlen
    return off, list(bitstream._DIMS.unpack_from(data, off))


def _repack(data: bytes, fields: list, words: bytes | None = None) -> bytes:
    off, _ = _layout(data)
    head = data[:off] + bitstream._DIMS.pack(*fields)
    if words is None:
        words = data[off + bitstream._DIMS.size: -4]
    return with_crc(head + words)


def _edge(rng, bits: int) -> int:
    pool = EDGE32 if bits == 32 else EDGE16
    r = rng.random()
    if r < 0.5:
        return int(pool[rng.integers(len(pool))])
    if r < 0.8:
        return int(rng.integers(0, 1 << min(bits, 12)))
    return int(rng.integers(0, 1 << bits, dtype=np.uint64))


def mutate(seed: bytes, family: str, rng: np.random.Generator, other: bytes | None = None) -> bytes:
    """One mutant of a well-formed .ndc file `seed` (`other`: a second file, for splices)."""
    d = bytearray(seed)
    n = len(d)
    if family == "truncate":
        return bytes(d[: int(rng.integers(0, n))])
    if family in ("bitflip", "bitflip_crc"):
        body = d[:-4] if family == "bitflip_crc" else d
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(len(body) * 8))
            body[i // 8] ^= 1 << (i % 8)
        return with_crc(bytes(body)) if family == "bitflip_crc" else bytes(body)
    if family in ("insdel", "insdel_crc"):
        body = d[:-4] if family == "insdel_crc" else d
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(len(body) + 1))
            if rng.random() < 0.5 and len(body):
                del body[min(i, len(body) - 1): min(i, len(body) - 1) + int(rng.integers(1, 9))]
            else:
                body[i:i] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        return with_crc(bytes(body)) if family == "insdel_crc" else bytes(body)
    _, f = _layout(seed)      # fingerprint, H, W, C, h, w, L, nwords
    if family == "header_field":
        k = int(rng.integers(1, 8))
        f[k] = _edge(rng, 32 if k in (1, 2, 7) else (8 if k == 6 else 16)) & (0xFF if k == 6 else 0xFFFFFFFF if k in (1, 2, 7) else 0xFFFF)
        return _repack(seed, f)
    if family == "dims_consistent":     # a plausible header: latent shape matching the claimed image size
        hh, ww = _edge(rng, 32) if rng.random() < 0.3 else int(rng.integers(1, 5000)), \
            _edge(rng, 32) if rng.random() < 0.3 else int(rng.integers(1, 5000))
        f[1], f[2] = hh, ww
        f[4], f[5] = min(-(-hh // 8), 0xFFFF), min(-(-ww // 8), 0xFFFF)
        if rng.random() < 0.3:
            f[3] = _edge(rng, 16)
        words = None
        if rng.random() < 0.5:         # no words at all, or a few random ones
            nw = int(rng.integers(0, 4))
            words = rng.integers(0, 1 << 32, nw, dtype=np.uint64).astype("<u4").tobytes()
            f[7] = nw
        return _repack(seed, f, words)
    if family == "name":
        choices = [b"", b"c8", b"c16", b"c32", b"c8-joint", b"zz", b"c8\n\x1b[31mred", "ü".encode(),
                   bytes(rng.integers(0, 256, int(rng.integers(0, 70)), dtype=np.uint8)), b"c" * 255]
        name = choices[int(rng.integers(len(choices)))][:255]
        body = bytes(d[:5]) + bytes([len(name)]) + name + bytes(d[6 + d[5]: -4])
        return with_crc(body)
    if family == "version":
        d[4] = int(rng.integers(0, 256))
        return with_crc(bytes(d[:-4])) if rng.random() < 0.8 else bytes(d)
    off, _ = _layout(seed)
    wstart = off + bitstream._DIMS.size
    words = np.frombuffer(bytes(d[wstart:-4]), dtype="<u4").copy()
    if family == "last_word":
        if len(words) == 0:
            words = np.zeros(1, dtype="<u4")
        r = rng.random()
        words[-1] = 0 if r < 0.4 else (1 if r < 0.5 else int(rng.integers(0, 1 << 32, dtype=np.uint64)))
        if rng.random() < 0.3:
            words[int(rng.integers(len(words)))] = 0
        f[7] = len(words)
        return _repack(seed, f, words.astype("<u4").tobytes())
    if family == "word_count":
        k = int(rng.integers(-3, 4))
        if k < 0:
            words = words[: max(0, len(words) + k)]
        else:
            words = np.concatenate([words, rng.integers(0, 1 << 32, k, dtype=np.uint64).astype("<u4")])
        f[7] = len(words) if rng.random() < 0.8 else _edge(rng, 32)
        return _repack(seed, f, words.astype("<u4").tobytes())
    if family == "random_body":
        body = bitstream.MAGIC + rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        if rng.random() < 0.5 and len(body) > 5:       # a valid version and a short name half of the time
            body = bytearray(body)
            body[4], body[5] = bitstream.VERSION, min(body[5], 8)
            body = bytes(body)
        return with_crc(body) if rng.random() < 0.8 else body
    if family == "splice":
        other = other or seed
        o_off, _ = _layout(other)
        return _repack(seed, f, other[o_off + bitstream._DIMS.size: -4]) if rng.random() < 0.5 else \
            with_crc(seed[:wstart] + other[o_off + bitstream._DIMS.size: -4])
    raise ValueError(f"unknown family {family}")


def seed_files(codecs: dict, sizes=((16, 16), (24, 40), (33, 17), (64, 64), (8, 120))) -> list[tuple[str, bytes]]:
    """Well-formed files of every codec in `codecs` (name -> codec) on crops of a real photo (scikit-image's)."""
    import torch
    from skimage import data as skdata
    img = skdata.astronaut()
    out = []
    for name, codec in codecs.items():
        for i, (h, w) in enumerate(sizes):
            crop = np.ascontiguousarray(img[37 * i: 37 * i + h, 53 * i: 53 * i + w])
            x = torch.from_numpy(crop).permute(2, 0, 1)[None].float().div(255)
            out.append((name, codec.compress(x)))
    return out


def random_valid(codec, rng: np.random.Generator, big: bool = True) -> bytes:
    """A well-formed file of random symbols and an odd shape (1x1 up to 1x300 strips): what gets past every check
    and drives the networks on shapes no photo has (`big`: latents up to 1x300 / 40x40, else 1x64 / 16x16)."""
    shapes = [(1, 1), (1, int(rng.integers(1, 300 if big else 64))), (int(rng.integers(1, 300 if big else 64)), 1),
              (int(rng.integers(1, 40 if big else 16)), int(rng.integers(1, 40 if big else 16)))]
    h, w = shapes[int(rng.integers(len(shapes)))]
    c, L = codec.config.channels, codec.config.num_centers
    if rng.random() < 0.5:
        z = rng.integers(0, L, (c, h, w))
    else:   # from the tables, as a real image's symbols would be
        f = codec.tables().astype(np.float64)
        z = np.stack([rng.choice(L, (h, w), p=f[i] / f[i].sum()) for i in range(c)])
    height, width = 8 * h - int(rng.integers(0, 8)), 8 * w - int(rng.integers(0, 8))
    return codec.pack(z.astype(np.int32), height, width)
