import zlib

import numpy as np
import pytest
import torch

from nodecode.codec import bitstream
from nodecode.codec.entropy import entropy_bits, frequency_table, histogram, rate_loss, table_bits
from nodecode.codec.quantizer import ScalarQuantizer
from nodecode.data.images import to_tensor, to_uint8
from nodecode.errors import NodecodeError


def test_quantizer_hard_forward_soft_backward():
    q = ScalarQuantizer(num_centers=6)
    y = torch.randn(2, 4, 5, 5, requires_grad=True)
    y_hat, symbols, assign = q(y)
    nearest = q.centers.detach()[(y.detach().unsqueeze(-1) - q.centers.detach()).abs().argmin(-1)]
    assert torch.equal(y_hat.detach(), nearest)                       # forward: hard
    assert torch.equal(assign.detach().sum(-1), torch.ones_like(y))    # one-hot rows
    assert set(assign.detach().unique().tolist()) <= {0.0, 1.0}
    (y_hat.sum() + entropy_bits(histogram(assign))).backward()
    assert y.grad.abs().sum() > 0 and q.centers.grad.abs().sum() > 0   # backward: soft, reaches both


def test_entropy_and_rate_term():
    uniform = torch.full((3, 8), 1 / 8)
    assert entropy_bits(uniform).item() == pytest.approx(3.0)
    assert entropy_bits(torch.tensor([[1.0, 0, 0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert rate_loss(torch.tensor(1.0), 1.5, 100.0).item() == 0.0
    assert rate_loss(torch.tensor(2.0), 1.5, 100.0).item() == pytest.approx(50.0)


def test_frequency_table_is_exact_integer_and_codable():
    counts = np.array([[1000, 0, 5, 0, 0, 1], [1, 1, 1, 1, 1, 1]])
    f = frequency_table(counts)
    assert f.dtype == np.int32 and (f.sum(1) == 1 << 16).all() and (f >= 1).all()
    assert f[0, 0] > 0.95 * (1 << 16)


def _random_symbols(freqs, shape, seed=0):
    rng = np.random.default_rng(seed)
    p = freqs / freqs.sum(1, keepdims=True)
    return np.stack([rng.choice(freqs.shape[1], size=shape, p=p[c]) for c in range(len(freqs))]).astype(np.int64)


def test_bitstream_roundtrip_and_size_near_entropy():
    freqs = frequency_table(np.random.default_rng(1).integers(0, 500, (8, 6)))
    sym = _random_symbols(freqs, (12, 17))
    words = bitstream.encode_symbols(sym, freqs)
    assert np.array_equal(bitstream.decode_symbols(words, freqs, sym.shape), sym)
    ideal = table_bits(freqs, sym)
    assert ideal <= 32 * len(words) <= ideal + 64


def _file(small_codec, img):
    return small_codec.compress(to_tensor(img))


def test_compress_decompress_any_size(small_codec, kodak_crop):
    img = kodak_crop[:37, :53]                      # not a multiple of 8
    data = _file(small_codec, img)
    header, symbols = small_codec.read_symbols(data)
    assert (header.height, header.width) == (37, 53) and symbols.shape == (8, 5, 7)
    assert np.array_equal(symbols, small_codec.encode_symbols(to_tensor(img))[0].numpy())
    out = to_uint8(small_codec.decompress(data))
    assert out.shape == img.shape


def test_real_size_matches_estimate(small_codec, kodak_crop):
    data = _file(small_codec, kodak_crop)
    _, symbols = small_codec.read_symbols(data)
    est = small_codec.estimated_bits(symbols) / 8
    header_bytes = len(data) - 4 * ((len(data) - 40) // 4)
    assert abs(len(data) - est) < 64, (len(data), est, header_bytes)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:-7], "truncated"),
    (lambda d: b"PNG\x00" + d[4:], "magic"),
    (lambda d: d[:30] + bytes([d[30] ^ 0x10]) + d[31:], "checksum"),
    (lambda d: d[:5], "too short"),
    (lambda d: d + b"\x00", "truncated or padded"),
])
def test_bad_files_are_one_line_errors(small_codec, kodak_crop, mutate, message):
    data = _file(small_codec, kodak_crop)
    with pytest.raises(NodecodeError, match=message):
        small_codec.read_symbols(mutate(data))


def test_huge_image_claim_refused_before_allocation(small_codec, kodak_crop):
    data = bytearray(_file(small_codec, kodak_crop)[:-4])
    off = bitstream._FIXED.size + data[5] + 8      # after magic, version, name, fingerprint
    data[off:off + 8] = (100_000).to_bytes(4, "little") * 2       # 10^10 pixels
    data = bytes(data) + zlib.crc32(bytes(data)).to_bytes(4, "little")
    with pytest.raises(NodecodeError, match="refused"):
        small_codec.read_symbols(data)


def test_file_from_another_model_is_refused(small_codec, kodak_crop):
    from nodecode.codec import CodecConfig, CompressionModel
    other = CompressionModel(CodecConfig("test8", channels=8)).eval()
    with pytest.raises(NodecodeError, match="written by model"):
        other.read_symbols(_file(small_codec, kodak_crop))


def test_quantizer_hard_forward_and_its_center_gradient_match_indexing():
    """Q̄'s one-hot form of centers[z] (a fast backward on GPUs) gives the value and gradients of plain indexing."""
    from nodecode.codec.quantizer import ScalarQuantizer
    torch.manual_seed(0)
    q = ScalarQuantizer(6)
    y = (torch.randn(2, 4, 7, 7) * 1.5).requires_grad_()
    w = torch.randn(2, 4, 7, 7)
    y_hat, symbols, _ = q(y)
    (y_hat * w).sum().backward()
    got_c, got_y = q.centers.grad.clone(), y.grad.clone()
    assert torch.equal(y_hat.detach(), q.centers.detach()[symbols])
    q.centers.grad, y.grad = None, None
    soft = torch.softmax(-q.sigma * q.distances(y), -1)
    y_soft = (soft * q.centers).sum(-1)
    ((q.centers[symbols] + (y_soft - y_soft.detach())) * w).sum().backward()
    torch.testing.assert_close(got_c, q.centers.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got_y, y.grad)
