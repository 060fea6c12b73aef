"""The .ndc file: header, ANS-coded symbols under per-channel integer tables, CRC-32. No torch in here."""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import constriction
import numpy as np

from nodecode.errors import NodecodeError

MAGIC = b"NDC\x1a"
VERSION = 1
MAX_PIXELS = 1 << 28          # a header claiming more is refused before anything is allocated
DOWNSAMPLING = 8
_FIXED = struct.Struct("<4sBB")          # magic, version, name length
_DIMS = struct.Struct("<8sIIHHHBI")     # fingerprint, H, W, C, h, w, L, number of 32-bit words
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class Header:
    """What a .ndc file says about itself; the tables live with the model named here."""
    model: str
    fingerprint: bytes
    height: int
    width: int
    latent_shape: tuple
    num_centers: int


def _models(freqs: np.ndarray):
    probs = np.asarray(freqs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)  # exact: integer frequencies over a power of two
    return [constriction.stream.model.Categorical(p, perfect=False) for p in probs]


def encode_symbols(symbols: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """ANS-code symbols (C, h, w) channel by channel under tables (C, L); returns uint32 words."""
    coder = constriction.stream.stack.AnsCoder()
    models = _models(freqs)
    for c in reversed(range(symbols.shape[0])):  # a stack: encode in reverse, decode forward
        coder.encode_reverse(np.ascontiguousarray(symbols[c].reshape(-1), dtype=np.int32), models[c])
    return coder.get_compressed()


def decode_symbols(words: np.ndarray, freqs: np.ndarray, shape: tuple) -> np.ndarray:
    c, h, w = shape
    if c != len(freqs):
        raise NodecodeError(f"latent has {c} channels but the model has {len(freqs)}")
    coder = constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))
    models = _models(freqs)
    out = np.empty((c, h * w), dtype=np.int32)
    try:
        for i in range(c):
            out[i] = coder.decode(models[i], h * w)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - constriction raises a Rust panic (a BaseException) on bad data
        raise NodecodeError(f"corrupted .ndc file: entropy decoding failed ({type(e).__name__})") from None
    if not coder.is_empty():
        raise NodecodeError("corrupted .ndc file: data left over after the last symbol")
    return out.reshape(c, h, w)


def pack(header: Header, words: np.ndarray) -> bytes:
    name = header.model.encode("ascii")
    if len(name) > 64:
        raise ValueError("model name longer than 64 characters")
    c, h, w = header.latent_shape
    body = (_FIXED.pack(MAGIC, VERSION, len(name)) + name
            + _DIMS.pack(header.fingerprint, header.height, header.width, c, h, w, header.num_centers, len(words))
            + np.asarray(words, dtype="<u4").tobytes())
    return body + _CRC.pack(zlib.crc32(body))


def unpack(data: bytes) -> tuple[Header, np.ndarray]:
    """Parse and validate a .ndc file; every inconsistency is a NodecodeError, never an allocation."""
    if len(data) < _FIXED.size + _DIMS.size + _CRC.size:
        raise NodecodeError("not a .ndc file (too short)")
    magic, version, nlen = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise NodecodeError("not a .ndc file (wrong magic)")
    if version != VERSION:
        raise NodecodeError(f"unsupported .ndc format version {version} (this nodecode reads {VERSION})")
    off = _FIXED.size + nlen
    if len(data) < off + _DIMS.size + _CRC.size:
        raise NodecodeError("truncated .ndc file")
    fp, height, width, c, h, w, ncent, nwords = _DIMS.unpack_from(data, off)
    off += _DIMS.size
    if len(data) != off + 4 * nwords + _CRC.size:
        raise NodecodeError(f"truncated or padded .ndc file ({len(data)} bytes, header says {off + 4 * nwords + 4})")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise NodecodeError("corrupted .ndc file (checksum mismatch)")
    if height == 0 or width == 0 or height * width > MAX_PIXELS:
        raise NodecodeError(f".ndc header claims an image of {width}x{height} pixels, which is refused")
    if (h, w) != (-(-height // DOWNSAMPLING), -(-width // DOWNSAMPLING)) or c == 0:
        raise NodecodeError("corrupted .ndc header: latent shape does not match the image size")
    try:
        name = data[_FIXED.size: _FIXED.size + nlen].decode("ascii")
    except UnicodeDecodeError:
        raise NodecodeError("corrupted .ndc header: model name is not ASCII") from None
    words = np.frombuffer(data, dtype="<u4", count=nwords, offset=off).astype(np.uint32)
    return Header(name, fp, height, width, (c, h, w), ncent), words


def check_model(header: Header, name: str, fingerprint: bytes, num_centers: int) -> None:
    if header.fingerprint != fingerprint or header.num_centers != num_centers:
        raise NodecodeError(f"this file was written by model '{header.model}' ({header.fingerprint.hex()}), "
                            f"not by the loaded model '{name}' ({fingerprint.hex()})")


def read_header(data: bytes) -> Header:
    return unpack(data)[0]
