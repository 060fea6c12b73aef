"""Encoder g_a, decoder g_s and the codec model of App. A.1 (Theis et al. 2017 with the quantizer Q̄)."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nodecode.codec import bitstream
from nodecode.codec.entropy import entropy_bits, frequency_table, histogram, table_bits
from nodecode.codec.quantizer import ScalarQuantizer

DOWNSAMPLING = 8  # the latent is w/8 x h/8 x C


@dataclass
class CodecConfig:
    """One operating point: C latent channels, L centers and the Eq. 1 hyperparameters it was trained with."""
    name: str = "c16"
    channels: int = 16
    num_centers: int = 6
    sigma: float = 1.0
    beta: float = 0.0
    target_entropy: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> "CodecConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualUnit(nn.Module):
    """Two 3x3 convolutions of 128 channels with an identity shortcut."""

    def __init__(self, ch: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class Encoder(nn.Sequential):
    """g_a: 5x5/2 conv 64, 5x5/2 conv 128, three residual units, 5x5/2 conv C (App. A.1)."""

    def __init__(self, channels: int):
        super().__init__(
            nn.Conv2d(3, 64, 5, stride=2, padding=2), nn.ReLU(inplace=True),
            nn.Conv2d(64, 128, 5, stride=2, padding=2), nn.ReLU(inplace=True),
            ResidualUnit(), ResidualUnit(), ResidualUnit(),
            nn.Conv2d(128, channels, 5, stride=2, padding=2),
        )


class Decoder(nn.Sequential):
    """g_s: the encoder mirrored, 5x5/2 transposed convolutions (deconvolutions) for upsampling."""

    def __init__(self, channels: int):
        def up(cin, cout):
            return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)
        super().__init__(
            up(channels, 128), nn.ReLU(inplace=True),
            ResidualUnit(), ResidualUnit(), ResidualUnit(),
            up(128, 64), nn.ReLU(inplace=True),
            up(64, 3),
        )


class CenteredDecoder(Decoder):
    """g_s for a centred latent ŷ − m (a classifier's input): `latent_offset` (m; zero until set) is added back first."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.register_buffer("latent_offset", torch.zeros(channels))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return super().forward(y + self.latent_offset.view(1, -1, 1, 1).to(y.dtype))


class CompressionModel(nn.Module):
    """The codec: x -> g_a -> Q̄ -> ŷ -> g_s -> x̂, with per-channel integer tables for entropy coding."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = config
        self.g_a = Encoder(config.channels)
        self.g_s = Decoder(config.channels)
        self.quantizer = ScalarQuantizer(config.num_centers, config.sigma)
        uniform = np.full((config.channels, config.num_centers), 1, dtype=np.int64)
        self.register_buffer("freqs", torch.from_numpy(frequency_table(uniform)))
        self._fingerprint = None

    # -- training -------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> dict:
        """Training pass: reconstruction, dequantized latent, symbols, the (C, L) histogram and its entropy H(q) in bits."""
        y = self.g_a(x - 0.5)
        y_hat, symbols, assign = self.quantizer(y)
        x_hat = self.g_s(y_hat.to(y.dtype)) + 0.5
        probs = histogram(assign)
        h = entropy_bits(probs)
        return {"x_hat": x_hat, "y_hat": y_hat, "symbols": symbols, "probs": probs, "entropy": h,
                "bpp": h * self.config.channels / DOWNSAMPLING**2}

    # -- inference ------------------------------------------------------------------------------------------
    @staticmethod
    def pad(x: torch.Tensor) -> torch.Tensor:
        """Replicate-pad (N, 3, H, W) to a multiple of 8."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % DOWNSAMPLING, (-w) % DOWNSAMPLING
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    @torch.no_grad()
    def encode_symbols(self, x: torch.Tensor) -> torch.Tensor:
        """Symbols z (N, C, ceil(H/8), ceil(W/8)) of images in [0, 1]."""
        return self.quantizer.quantize(self.g_a(self.pad(x) - 0.5))

    def latent(self, symbols: torch.Tensor) -> torch.Tensor:
        """ŷ = centers[z]: what the decoder and the cResNets receive."""
        return self.quantizer.dequantize(symbols.long()).float()

    @torch.no_grad()
    def decode_latent(self, y_hat: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """x̂ in [0, 1] from ŷ, cropped to `size` (H, W)."""
        x_hat = (self.g_s(y_hat) + 0.5).clamp(0, 1)
        return x_hat[..., : size[0], : size[1]] if size else x_hat

    def compress(self, x: torch.Tensor) -> bytes:
        """One image (1, 3, H, W) in [0, 1] -> the bytes of a .ndc file."""
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(f"compress takes one RGB image of shape (1, 3, H, W), got {tuple(x.shape)}")
        return self.pack(self.encode_symbols(x)[0].cpu().numpy(), x.shape[2], x.shape[3])

    def pack(self, symbols: np.ndarray, height: int, width: int) -> bytes:
        """Symbols (C, h, w) of an image of height x width -> the bytes of a .ndc file."""
        header = bitstream.Header(self.config.name, self.fingerprint(), height, width, tuple(symbols.shape),
                                  self.config.num_centers)
        return bitstream.pack(header, bitstream.encode_symbols(symbols, self.tables()))

    def read_symbols(self, data) -> tuple[bitstream.Header, np.ndarray]:
        """Entropy-decode a .ndc file made by this model into its header and symbols (C, h, w); no RGB."""
        from nodecode.codec.reader import EntropyModel, read_symbols
        return read_symbols(data, EntropyModel.from_codec(self))

    def decompress(self, data) -> torch.Tensor:
        """The bytes of a .ndc file (or its NdcFile, read and validated once) -> x̂ (1, 3, H, W) in [0, 1]."""
        header, symbols = self.read_symbols(data)
        dev = next(self.parameters()).device
        y_hat = self.latent(torch.from_numpy(symbols).to(dev)).unsqueeze(0)
        return self.decode_latent(y_hat, (header.height, header.width))

    # -- entropy tables ---------------------------------------------------------------------------------------
    def tables(self) -> np.ndarray:
        return self.freqs.cpu().numpy()

    @torch.no_grad()
    def set_tables_from_counts(self, counts: np.ndarray) -> None:
        """Replace the per-channel integer frequency tables with ones fitted to symbol counts (C, L)."""
        self.freqs.copy_(torch.from_numpy(frequency_table(counts)))
        self._fingerprint = None

    def estimated_bits(self, symbols: np.ndarray) -> float:
        """The ideal code length of symbols (C, h, w) under the model's tables."""
        return table_bits(self.tables(), symbols)

    def fingerprint(self) -> bytes:
        """8 bytes identifying the exact weights and tables: a file only decodes with the model that wrote it."""
        if self._fingerprint is None:
            h = hashlib.sha256(repr(sorted(self.config.to_dict().items())).encode())
            for k, v in sorted(self.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
            self._fingerprint = h.digest()[:8]
        return self._fingerprint

    def load_state_dict(self, *args, **kwargs):
        self._fingerprint = None
        return super().load_state_dict(*args, **kwargs)

    def train(self, mode: bool = True):
        self._fingerprint = None  # weights may change while training
        return super().train(mode)
