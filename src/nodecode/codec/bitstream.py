"""The .ndc file: header, ANS-coded symbols under per-channel integer tables, CRC-32. No torch in here."""
from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

import constriction
import numpy as np

from nodecode.errors import NodecodeError, safe_text
from nodecode.limits import check_pixels

MAGIC = b"NDC\x1a"
VERSION = 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")   # what a model name in a header may be
SLACK_BITS = 128              # ANS state and rounding: a real file never holds fewer bits than its symbols' minimum
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


def models(freqs: np.ndarray) -> list:
    """constriction's per-channel models of integer tables (C, L); build once, pass to decode_symbols many times."""
    probs = np.asarray(freqs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)  # exact: integer frequencies over a power of two
    return [constriction.stream.model.Categorical(p, perfect=False) for p in probs]


def encode_symbols(symbols: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """ANS-code symbols (C, h, w) channel by channel under tables (C, L); returns uint32 words."""
    coder = constriction.stream.stack.AnsCoder()
    per_channel = models(freqs)
    for c in reversed(range(symbols.shape[0])):  # a stack: encode in reverse, decode forward
        coder.encode_reverse(np.ascontiguousarray(symbols[c].reshape(-1), dtype=np.int32), per_channel[c])
    return coder.get_compressed()


def min_bits(freqs: np.ndarray, positions: int) -> float:
    """A lower bound on the bits any encoding of `positions` latent positions needs: every symbol of channel c costs
    at least -log2(max_l p_cl). A header claiming more symbols than its words can hold is refused before decoding."""
    f = np.asarray(freqs, dtype=np.float64)
    return positions * float(-np.log2(f.max(1) / f.sum(1)).sum())


def _is_constriction_error(e: BaseException) -> bool:
    """constriction reports bad data as ValueError, or as a Rust panic (pyo3's PanicException, a BaseException)."""
    return isinstance(e, (ValueError, RuntimeError, OverflowError)) or type(e).__name__ == "PanicException"


def decode_symbols(words: np.ndarray, freqs: np.ndarray, shape: tuple, channel_models: list | None = None,
                   bits_per_position: float | None = None) -> np.ndarray:
    """Symbols (C, h, w) int32 of a file's words; when decoding many files, `channel_models` = models(freqs) and
    `bits_per_position` = min_bits(freqs, 1), computed once (EntropyModel holds both)."""
    c, h, w = shape
    if c != len(freqs):
        raise NodecodeError(f"latent has {c} channels but the model has {len(freqs)}")
    bits = min_bits(freqs, 1) if bits_per_position is None else bits_per_position
    if h * w * bits > 32 * len(words) + SLACK_BITS:
        raise NodecodeError(f"corrupted .ndc file: {len(words)} words cannot hold {c}x{h}x{w} symbols")
    try:
        coder = constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))
        channel_models = channel_models or models(freqs)
        out = np.empty((c, h * w), dtype=np.int32)
        for i in range(c):
            out[i] = coder.decode(channel_models[i], h * w)
        left = not coder.is_empty()
    except BaseException as e:  # noqa: BLE001 - re-raised unless it is one of constriction's (see above)
        if not _is_constriction_error(e):
            raise
        raise NodecodeError(f"corrupted .ndc file: entropy decoding failed ({type(e).__name__})") from None
    if left:
        raise NodecodeError("corrupted .ndc file: data left over after the last symbol")
    return out.reshape(c, h, w)


def pack(header: Header, words: np.ndarray) -> bytes:
    if not NAME.fullmatch(header.model):
        raise ValueError(f"model name {header.model!r} is not 1-64 characters of [A-Za-z0-9._+-]")
    name = header.model.encode("ascii")
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
    raw = data[_FIXED.size: _FIXED.size + nlen]
    name = raw.decode("latin-1")
    if not NAME.fullmatch(name):
        raise NodecodeError(f"corrupted .ndc header: invalid model name '{safe_text(name)}'")
    check_pixels(width, height, "the image this .ndc header claims")
    if (h, w) != (-(-height // DOWNSAMPLING), -(-width // DOWNSAMPLING)) or c == 0:
        raise NodecodeError("corrupted .ndc header: latent shape does not match the image size")
    words = np.frombuffer(data, dtype="<u4", count=nwords, offset=off).astype(np.uint32)
    return Header(name, fp, height, width, (c, h, w), ncent), words


def header_prefix(data: bytes) -> bytes:
    """The header bytes of a file that unpack() accepted, up to (not including) its word count: identical for every
    file of one model and image size, so a file that starts with them needs only its length and CRC checked."""
    return bytes(data[: _FIXED.size + data[5] + _DIMS.size - 4])


def words_after(data: bytes, prefix: bytes) -> np.ndarray | None:
    """The words of `data` if it starts with `prefix` (of a file unpack() accepted), its length and CRC checked as
    unpack() checks them; None if the header differs (then unpack() it)."""
    p = len(prefix)
    if data[:p] != prefix:
        return None
    nwords = int.from_bytes(data[p: p + 4], "little")
    if len(data) != p + 4 + 4 * nwords + _CRC.size:
        raise NodecodeError(f"truncated or padded .ndc file ({len(data)} bytes, header says {p + 4 + 4 * nwords + 4})")
    if zlib.crc32(memoryview(data)[: -_CRC.size]) != int.from_bytes(data[-_CRC.size:], "little"):
        raise NodecodeError("corrupted .ndc file (checksum mismatch)")
    return np.frombuffer(data, dtype="<u4", count=nwords, offset=p + 4)


def check_model(header: Header, name: str, fingerprint: bytes, num_centers: int) -> None:
    """The one check that a header (already validated by unpack) belongs to the loaded model: name, weights, L."""
    if header.model != name or header.fingerprint != fingerprint or header.num_centers != num_centers:
        raise NodecodeError(f"this file was written by model '{safe_text(header.model)}' ({header.fingerprint.hex()}), "
                            f"not by the loaded model '{safe_text(name)}' ({fingerprint.hex()})")


def read_header(data: bytes) -> Header:
    return unpack(data)[0]
