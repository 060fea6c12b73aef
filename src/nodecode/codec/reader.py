"""One .ndc reader: read a file once, validate it once, and turn it into symbols z / ŷ = centers[z].

Reading a .ndc needs only what :class:`EntropyModel` holds — the codec's name, its stored fingerprint, its L centers
and its per-channel integer tables — not the encoder g_a or the decoder g_s. ``EntropyModel.load`` reads those
two tensors from a zoo file without building the network (a training-code codec file, which stores no fingerprint,
is loaded whole once to hash it). classify, segment, the data loaders and the benchmarks all go through here.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nodecode import zoo
from nodecode.codec import bitstream
from nodecode.errors import NodecodeError

TENSORS = ("quantizer.centers", "freqs")   # all of a codec that reading a file needs


@dataclass(frozen=True)
class NdcFile:
    """A .ndc file read and validated (magic, version, sizes, CRC-32, header) once: its header and coded words."""
    header: bitstream.Header
    words: np.ndarray
    data: bytes
    path: str = ""

    @property
    def size(self) -> tuple[int, int]:
        return self.header.height, self.header.width

    @property
    def bpp(self) -> float:
        return len(self.data) * 8 / (self.header.height * self.header.width)


def open_ndc(path_or_data: "str | os.PathLike | bytes | NdcFile") -> NdcFile:
    """Read (if a path) and validate a .ndc file; NodecodeError on a missing or corrupted file."""
    if isinstance(path_or_data, NdcFile):
        return path_or_data
    if isinstance(path_or_data, (bytes, bytearray, memoryview)):
        data, name = bytes(path_or_data), ""
    else:
        path = Path(path_or_data)
        if not path.is_file():
            raise NodecodeError(f"no such file: {path}")
        data, name = path.read_bytes(), str(path)
    try:
        header, words = bitstream.unpack(data)
    except NodecodeError as e:
        raise NodecodeError(f"{name}: {e}" if name else str(e)) from None
    return NdcFile(header, words, data, name)


@dataclass(frozen=True)
class EntropyModel:
    """What reading a codec's files takes: name, fingerprint, centers (L,) and integer tables (C, L)."""
    name: str
    fingerprint: bytes
    centers: torch.Tensor
    freqs: np.ndarray

    @classmethod
    def from_codec(cls, codec) -> "EntropyModel":
        """From a loaded CompressionModel (its fingerprint computed from its weights)."""
        return cls(codec.config.name, codec.fingerprint(), codec.quantizer.centers.detach().float().cpu(),
                   codec.tables())

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> "EntropyModel":
        """From a bundled operating point or a codec file, reading only TENSORS when the file stores its fingerprint."""
        path, cfg = zoo.resolve(str(name_or_path), "codec")
        if cfg is None:                                   # a training-code file: no stored fingerprint to trust
            from nodecode.codec.zoo import load_codec
            return cls.from_codec(load_codec(str(path)))
        t = zoo.load_tensors(path, TENSORS)
        return cls(cfg.name, cfg.fingerprint_bytes, t["quantizer.centers"].float(), t["freqs"].numpy())

    @property
    def num_centers(self) -> int:
        return self.centers.numel()

    @property
    def channels(self) -> int:
        return len(self.freqs)

    @functools.cached_property
    def channel_models(self) -> list:
        """constriction's models of the tables, built once per EntropyModel (not once per file)."""
        return bitstream.models(self.freqs)

    @functools.cached_property
    def bits_per_position(self) -> float:
        """min_bits of one latent position under the tables: the bound decode_symbols checks a file's length against."""
        return bitstream.min_bits(self.freqs, 1)

    def __getstate__(self) -> dict:
        """Pickled (to a reader process) without the constriction models, which cannot be; rebuilt there if used."""
        return {k: v for k, v in self.__dict__.items() if k != "channel_models"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def check(self, f: NdcFile) -> None:
        """NodecodeError unless `f` was written by this codec (fingerprint and L)."""
        bitstream.check_model(f.header, self.name, self.fingerprint, self.num_centers)

    def symbols(self, f: NdcFile) -> np.ndarray:
        """Entropy-decode the symbols z (C, h, w) of a file this codec wrote; no pixels, no network."""
        self.check(f)
        return bitstream.decode_symbols(f.words, self.freqs, f.header.latent_shape, self.channel_models,
                                        self.bits_per_position)

    def latent(self, symbols: torch.Tensor) -> torch.Tensor:
        """ŷ = centers[z] (float32, on the symbols' device): what g_s and the cResNets receive."""
        return self.centers.to(symbols.device)[symbols.long()]


def bundled_codec(f: NdcFile, hint: str = "") -> str:
    """The bundled operating point that wrote `f` (its header's name); NodecodeError naming the file if none did."""
    if f.header.model not in zoo.list_pretrained("codec"):
        raise NodecodeError(f"{f.path or 'file'}: written by codec '{f.header.model}', which is not bundled{hint}")
    return f.header.model


def read_symbols(path_or_data, model: EntropyModel) -> tuple[bitstream.Header, np.ndarray]:
    """(header, symbols) of one .ndc file: read once, validated once."""
    f = open_ndc(path_or_data)
    return f.header, model.symbols(f)
