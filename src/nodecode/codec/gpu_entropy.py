"""Batched entropy decoding of .ndc v1 files: a Triton kernel on CUDA, the same algorithm in numpy, constriction on CPU.

The arithmetic is the one constriction 0.5 uses for ``AnsCoder<u32, u64>`` with ``Categorical(perfect=False)``
(24-bit precision), written out in ``../shared/notes/ndc-v1-entropy-layer.md``: per channel the 2^16 table becomes
cdf_i = ((F_i (2^24 - L)) >> 16) + i; words are a stack read from the end; per symbol q = x mod 2^24, s is found
by L - 1 comparisons, x = (x >> 24) p_s + q - cdf_s, and one 32-bit word is pulled in when x < 2^32. A valid
stream ends with x == 0 and no words left; anything else is a corrupted file, reported per file.

One thread decodes one file (a dependent chain of ~10 integer operations per symbol); the symbols are stored
symbol-major so that the stores of a warp coalesce, then transposed to (N, C, h, w) on the device. A batch is one
host->device copy: words, start offsets and word counts in one uint32 buffer.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from nodecode.codec import bitstream
from nodecode.errors import NodecodeError

PRECISION = 24
_MASK = (1 << PRECISION) - 1
BLOCK = 128                     # files per Triton program (one per lane)

# per-file status bits, as the kernel and the reference write them
LEFTOVER, NONZERO_STATE, ZERO_WORD = 1, 2, 4


def status_message(status: int) -> str:
    why = [m for bit, m in ((ZERO_WORD, "the stream ends in a zero word"),
                            (LEFTOVER, "data left over after the last symbol"),
                            (NONZERO_STATE, "the coder's final state is not empty")) if status & bit]
    return "corrupted .ndc file: entropy decoding failed (" + "; ".join(why) + ")"


def cdf_table(freqs: np.ndarray) -> np.ndarray:
    """(C, L) integer tables summing to 2^16 -> (C, L + 1) int64 24-bit CDFs, constriction's exact quantization."""
    f = np.asarray(freqs, dtype=np.int64)
    c, n = f.shape
    if n < 2 or (f < 1).any() or (f.sum(1) != 1 << 16).any():
        raise NodecodeError("entropy tables must have every frequency >= 1 and sum to 2^16")
    prefix = np.concatenate([np.zeros((c, 1), np.int64), np.cumsum(f, 1)[:, :-1]], 1)
    cdf = ((prefix * ((1 << PRECISION) - n)) >> 16) + np.arange(n)
    return np.concatenate([cdf, np.full((c, 1), 1 << PRECISION, np.int64)], 1)


@dataclass
class Packed:
    """Files parsed on the host: one uint32 buffer = all words | start of each file | word count of each file."""
    buffer: np.ndarray
    n: int
    shape: tuple                          # (C, h, w), shared by every file of the batch
    index: list[int]                      # input positions of the files in the buffer
    headers: list[bitstream.Header]
    errors: dict[int, str] = field(default_factory=dict)   # input position -> why it was refused

    def parts(self, buf):
        total = len(buf) - 2 * self.n
        return buf[:total], buf[total: total + self.n], buf[total + self.n:]


def entropy_model(model):
    """The EntropyModel (name, fingerprint, centers, tables) of an EntropyModel or a loaded codec."""
    from nodecode.codec.reader import EntropyModel
    return model if isinstance(model, EntropyModel) else EntropyModel.from_codec(model)


def pack_files(files: list, model) -> Packed:
    """Validate and gather the words of many .ndc files (bytes, or NdcFiles already read and validated once);
    a file that fails (magic, CRC, header, model, shape) goes to `errors`, the others into one buffer."""
    from nodecode.codec.reader import NdcFile, open_ndc
    model = entropy_model(model)
    words, headers, index, errors, shape = [], [], [], {}, None
    prefix = accepted = None     # the header bytes of the last file accepted in full, and its Header
    for i, item in enumerate(files):
        try:                     # a file with that same header needs only its length and CRC checked
            w = bitstream.words_after(item, prefix) if prefix is not None and not isinstance(item, NdcFile) else None
            if w is not None:
                words.append(w)
                headers.append(accepted)
                index.append(i)
                continue
            f = open_ndc(item)          # an NdcFile is returned as it is: no second unpack, no second CRC
            model.check(f)
            if f.header.latent_shape[0] != model.channels:
                raise NodecodeError(f"latent has {f.header.latent_shape[0]} channels but the model has "
                                    f"{model.channels}")
        except NodecodeError as e:
            errors[i] = str(e)
            continue
        shape = shape or f.header.latent_shape
        if f.header.latent_shape != shape:
            errors[i] = f"latent shape {f.header.latent_shape} differs from the batch's {shape}"
            continue
        if not isinstance(item, NdcFile):
            prefix, accepted = bitstream.header_prefix(f.data), f.header
        words.append(f.words)
        headers.append(f.header)
        index.append(i)
    counts = np.array([len(w) for w in words], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(words) else counts
    if counts.sum() + 2 * len(words) >= 1 << 32:
        raise NodecodeError("batch too large: more than 2^32 words")
    buf = np.concatenate([*words, starts.astype(np.uint32), counts.astype(np.uint32)]).astype(np.uint32, copy=False) \
        if words else np.zeros(0, np.uint32)
    return Packed(buf, len(words), shape or (0, 0, 0), index, headers, errors)


# --- the numpy reference: the kernel's algorithm, vectorised over files ---------------------------------------
def decode_reference(words: list[np.ndarray], cdf: np.ndarray, symbols_per_channel: int) -> tuple[np.ndarray, np.ndarray]:
    """Files' words -> (symbols uint8 (N, C * S), status int32 (N,)), step for step what the Triton kernel does."""
    n = len(words)
    c = cdf.shape[0]
    num = cdf.shape[1] - 1
    counts = np.array([len(w) for w in words], dtype=np.int64)
    width = max(1, int(counts.max()) if n else 1)
    mat = np.zeros((n, width), dtype=np.uint64)
    for i, w in enumerate(words):
        mat[i, : len(w)] = w
    rows = np.arange(n)
    pos = counts.copy()
    u = np.uint64
    # start: the last word, then one more if the state is still below 2^32
    has = pos > 0
    x = np.where(has, mat[rows, np.maximum(pos - 1, 0)], u(0))
    status = np.where(has & (x == 0), ZERO_WORD, 0).astype(np.int32)
    pos = pos - has
    need = (x < u(1 << 32)) & (pos > 0)
    x = np.where(need, (x << u(32)) | mat[rows, np.maximum(pos - 1, 0)], x)
    pos = pos - need
    out = np.empty((n, c * symbols_per_channel), dtype=np.uint8)
    cd = cdf.astype(np.uint64)
    for ch in range(c):
        for j in range(symbols_per_channel):
            q = x & u(_MASK)
            s = np.zeros(n, np.uint8)
            lo = np.zeros(n, np.uint64)
            hi = np.full(n, cd[ch, 1])
            for k in range(1, num):
                ge = q >= cd[ch, k]
                s += ge
                lo = np.where(ge, cd[ch, k], lo)
                hi = np.where(ge, cd[ch, k + 1], hi)
            x = (x >> u(PRECISION)) * (hi - lo) + (q - lo)
            need = (x < u(1 << 32)) & (pos > 0)
            x = np.where(need, (x << u(32)) | mat[rows, np.maximum(pos - 1, 0)], x)
            pos = pos - need
            out[:, ch * symbols_per_channel + j] = s
    status |= np.where(pos > 0, LEFTOVER, 0).astype(np.int32)
    status |= np.where(x != 0, NONZERO_STATE, 0).astype(np.int32)
    return out, status


# --- the Triton kernel ------------------------------------------------------------------------------------------
try:
    import triton
    import triton.language as tl
except ImportError:   # no Triton (e.g. a CPU-only install): the constriction and numpy paths still work
    triton = tl = None


def _ans_decode(buf_ptr, start_ptr, count_ptr, cdf_ptr, out_ptr, status_ptr, n, channels, per_channel,
                L: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = i < n
    start = tl.load(start_ptr + i, mask=live, other=0).to(tl.int64)
    pos = tl.load(count_ptr + i, mask=live, other=0).to(tl.int64)
    has = pos > 0
    x = tl.load(buf_ptr + start + pos - 1, mask=live & has, other=0).to(tl.uint32, bitcast=True).to(tl.uint64)
    status = tl.where(has & (x == 0), 4, 0)
    pos = pos - has.to(tl.int64)
    need = ((x >> 32) == 0) & (pos > 0)
    w = tl.load(buf_ptr + start + pos - 1, mask=live & need, other=0).to(tl.uint32, bitcast=True).to(tl.uint64)
    x = tl.where(need, (x << 32) | w, x)
    pos = pos - need.to(tl.int64)
    for ch in range(channels):
        row = cdf_ptr + ch * (L + 1)
        for j in range(per_channel):
            q = x & 16777215
            s = (i * 0).to(tl.int32)      # (not tl.zeros: a jit function the in-process interpreter cannot call)
            lo = x * 0
            hi = lo + tl.load(row + 1).to(tl.uint64)
            for k in tl.static_range(1, L):
                ck = tl.load(row + k).to(tl.uint64)
                ge = q >= ck
                s += ge.to(tl.int32)
                lo = tl.where(ge, ck, lo)
                hi = tl.where(ge, tl.load(row + k + 1).to(tl.uint64), hi)
            x = (x >> 24) * (hi - lo) + (q - lo)
            need = ((x >> 32) == 0) & (pos > 0)
            w = tl.load(buf_ptr + start + pos - 1, mask=live & need, other=0).to(tl.uint32, bitcast=True).to(tl.uint64)
            x = tl.where(need, (x << 32) | w, x)
            pos = pos - need.to(tl.int64)
            tl.store(out_ptr + (ch * per_channel + j).to(tl.int64) * n + i, s.to(tl.uint8), mask=live)
    status = status | tl.where(pos > 0, 1, 0) | tl.where(x != 0, 2, 0)
    tl.store(status_ptr + i, status, mask=live)


def triton_available() -> bool:
    return triton is not None


@functools.lru_cache(maxsize=2)
def _kernel(interpret: bool = False):
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction
        return InterpretedFunction(_ans_decode)
    return triton.jit(_ans_decode)


def decode_triton(buf: torch.Tensor, n: int, cdf: torch.Tensor, symbols_per_channel: int,
                  interpret: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed uint32 buffer (as int32) on the device -> (symbols uint8 (N, C * S), status int32 (N,))."""
    c, l1 = cdf.shape
    total = buf.numel() - 2 * n
    starts, counts = buf[total: total + n], buf[total + n:]
    out = torch.empty(c * symbols_per_channel, n, dtype=torch.uint8, device=buf.device)
    status = torch.empty(n, dtype=torch.int32, device=buf.device)
    if n:
        grid = (-(-n // BLOCK),)
        _kernel(interpret)[grid](buf, starts, counts, cdf, out, status, n, c, symbols_per_channel, L=l1 - 1,
                                 BLOCK=BLOCK, enable_fp_fusion=False)   # integer-only: pinned, not Triton's default
    return out.t(), status


# --- the entry point -----------------------------------------------------------------------------------------------
@dataclass
class Decoded:
    symbols: torch.Tensor        # uint8 (n_ok, C, h, w) on the device: the files that decoded
    index: list[int]             # input positions of those files
    headers: list                # their headers
    errors: dict[int, str]       # input position -> why the file was refused (bad header, CRC, model, stream)


class BatchDecoder:
    """Decode batches of .ndc files of one codec to symbols on `device` (Triton on CUDA, constriction elsewhere).

    `model`: the codec's EntropyModel (all that reading files needs) or a loaded codec."""

    def __init__(self, model, device="cuda", backend: str | None = None):
        self.model = entropy_model(model)
        self.device = torch.device(device)
        if backend is None:
            backend = "triton" if self.device.type == "cuda" and triton_available() else "constriction"
        if backend not in ("triton", "reference", "constriction", "interpret"):
            raise ValueError(f"unknown backend {backend}")
        self.backend = backend
        cdf = cdf_table(self.model.freqs)
        self.cdf_np = cdf
        self.cdf = torch.from_numpy(cdf.astype(np.int32)).to(self.device if backend == "triton" else "cpu")
        self.centers = self.model.centers.to(self.device, torch.float32)

    def _constriction(self, words: np.ndarray, shape) -> np.ndarray:
        """One file on the CPU: the per-file decoder's own function, with the models built once."""
        return bitstream.decode_symbols(words, self.model.freqs, shape, self.model.channel_models,
                                        self.model.bits_per_position)

    def decode(self, files: list, packed: Packed | None = None, trusted: bool = False) -> Decoded:
        """Files (bytes or NdcFiles) -> the symbols of those that decode, on the device; the others in errors.

        `trusted`: files whose streams already decoded cleanly once (NdcSymbols checks each at load): the kernel's
        per-file status is not read back, so a batch costs no device synchronisation (training from shards)."""
        p = packed or pack_files(files, self.model)
        c, h, w = p.shape
        errors = dict(p.errors)
        if self.backend in ("triton", "interpret"):
            buf = torch.from_numpy(p.buffer.view(np.int32))
            if trusted and self.device.type == "cuda":   # pinned (torch's caching host allocator): an async copy
                buf = buf.pin_memory().to(self.device, non_blocking=True)
            else:
                buf = buf.to(self.device)      # the one host->device copy of the batch
            sym, status = decode_triton(buf, p.n, self.cdf, h * w, interpret=self.backend == "interpret")
            sym = sym.reshape(p.n, c, h, w)
            if trusted:
                return Decoded(sym, list(p.index), list(p.headers), dict(sorted(errors.items())))
            st = status.cpu().numpy()
        elif self.backend == "reference":
            words, starts, counts = p.parts(p.buffer)
            per = [words[s: s + k] for s, k in zip(starts.astype(np.int64), counts.astype(np.int64))]
            sym, st = decode_reference(per, self.cdf_np, h * w)
            sym = torch.from_numpy(sym.reshape(p.n, c, h, w))
        else:
            words, starts, counts = p.parts(p.buffer)
            sym, st = np.zeros((p.n, c, h * w), np.uint8), np.zeros(p.n, np.int32)
            for k, (s, m) in enumerate(zip(starts.astype(np.int64), counts.astype(np.int64))):
                try:
                    sym[k] = self._constriction(words[s: s + m], p.shape).reshape(c, h * w)
                except NodecodeError as e:
                    st[k], errors[p.index[k]] = NONZERO_STATE, str(e)
            sym = torch.from_numpy(sym.reshape(p.n, c, h, w))
        good = np.flatnonzero(st == 0)
        for k in np.flatnonzero(st != 0):
            errors.setdefault(p.index[k], status_message(int(st[k])))
        if len(good) < p.n:
            sym = sym[torch.from_numpy(good).to(sym.device)]
        return Decoded(sym.to(self.device).contiguous(), [p.index[k] for k in good], [p.headers[k] for k in good],
                       dict(sorted(errors.items())))

    def latent(self, symbols: torch.Tensor) -> torch.Tensor:
        """ŷ = centers[z] on the symbols' device."""
        centers = self.centers if self.centers.device == symbols.device else self.centers.to(symbols.device)
        return centers[symbols.long()]
