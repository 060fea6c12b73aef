"""The bundled operating points: sizes, rate ordering, and GPU-written files decoding on the CPU."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nodecode.codec.zoo import OPERATING_POINTS, WEIGHTS_DIR, list_codecs, load_codec
from nodecode.data.images import to_tensor, to_uint8
from nodecode.eval.metrics import psnr

GPU_FILES = Path(__file__).parent / "data" / "gpu_kodak"


def test_three_points_bundled_small_and_safetensors():
    assert list_codecs() == ["c8", "c16", "c32"]
    total = 0
    for name in OPERATING_POINTS:
        path = WEIGHTS_DIR / f"{name}.safetensors"
        assert path.stat().st_size <= 8 * 2**20
        total += path.stat().st_size
        codec = load_codec(name)
        assert codec.config.channels == int(name[1:]) and codec.config.name == name
    assert total <= 32 * 2**20


def test_rate_and_quality_increase_with_channels(kodak_crop):
    img = np.ascontiguousarray(kodak_crop)
    bpp, quality = [], []
    for name in OPERATING_POINTS:
        codec = load_codec(name)
        data = codec.compress(to_tensor(img))
        bpp.append(len(data) * 8 / (img.shape[0] * img.shape[1]))
        quality.append(psnr(img, to_uint8(codec.decompress(data))))
    assert bpp[0] < bpp[1] < bpp[2], bpp
    assert quality[0] < quality[1] < quality[2], quality
    assert quality[0] > 20


@pytest.mark.parametrize("point", list(OPERATING_POINTS))
def test_files_written_on_gpu_decode_to_identical_symbols_on_cpu(point):
    """Every Kodak image compressed on the H200 (export stage) entropy-decodes here to the GPU encoder's symbols."""
    manifest = json.loads((GPU_FILES / "manifest.json").read_text())["symbols_sha256"][point]
    codec = load_codec(point)
    assert len(manifest) == 24
    for fname, digest in manifest.items():
        header, symbols = codec.read_symbols((GPU_FILES / point / fname).read_bytes())
        assert header.model == point
        assert hashlib.sha256(symbols.astype(np.uint8).tobytes()).hexdigest() == digest, fname


def test_latent_path_needs_no_decoder(kodak_crop):
    codec = load_codec("c8")
    data = codec.compress(to_tensor(kodak_crop))
    _, symbols = codec.read_symbols(data)
    y_hat = codec.latent(torch.from_numpy(symbols))
    assert y_hat.shape == (8, 12, 16)
    assert set(np.unique(y_hat.numpy())) <= set(codec.quantizer.centers.detach().numpy().tolist())
