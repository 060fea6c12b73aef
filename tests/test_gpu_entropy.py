"""The batched (GPU) entropy decoder against constriction: real files, the numpy reference and Triton's interpreter."""
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from nodecode.codec import bitstream
from nodecode.codec.gpu_entropy import (LEFTOVER, NONZERO_STATE, ZERO_WORD, BatchDecoder, cdf_table,
                                        decode_reference, triton_available)
from nodecode.codec.entropy import frequency_table
from nodecode.codec.zoo import load_codec
from nodecode.data.images import to_tensor

from conftest import KODAK, needs

GPU_FILES = Path(__file__).parent / "data" / "gpu_kodak"


def _by_shape(datas):
    groups = {}
    for d in datas:
        groups.setdefault(bitstream.read_header(d).latent_shape, []).append(d)
    return groups.values()


def _recrc(data: bytes, words: np.ndarray) -> bytes:
    """The same header with other ANS words and a valid CRC: only the entropy layer can tell."""
    header, _ = bitstream.unpack(data)
    return bitstream.pack(header, words)


ON_GPU = pytest.mark.skipif(not (triton_available() and torch.cuda.is_available()), reason="needs Triton and a GPU")


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=ON_GPU)])   # triton: the real kernel
@pytest.mark.parametrize("point,limit", [("c8", None), ("c16", 1)])   # c32: same code, 4x the CPU time
def test_batch_decoder_decodes_gpu_written_kodak_like_constriction(point, limit, backend):
    codec = load_codec(point)
    datas = [p.read_bytes() for p in sorted((GPU_FILES / point).glob("*.ndc"))][:limit]
    assert datas
    dec = BatchDecoder(codec, "cuda" if backend == "triton" else "cpu", backend)
    for group in _by_shape(datas):
        r = dec.decode(group)
        assert r.errors == {} and r.index == list(range(len(group)))
        for k, d in enumerate(group):
            np.testing.assert_array_equal(r.symbols[k].cpu().numpy(), codec.read_symbols(d)[1])


def test_cdf_table_is_constrictions_quantization():
    f = np.array([[65531, 1, 1, 1, 1, 1], [10000, 20000, 5536, 10000, 10000, 10000]])
    cdf = cdf_table(f)
    assert cdf[:, 0].tolist() == [0, 0] and cdf[:, -1].tolist() == [1 << 24] * 2
    assert (np.diff(cdf, axis=1) >= 1).all()
    assert cdf[0, 1] == ((65531 * ((1 << 24) - 6)) >> 16) + 1    # F_1 = f_0, plus i = 1
    with pytest.raises(Exception):
        cdf_table(np.array([[65536, 0]]))


def test_corrupted_streams_are_refused_exactly_when_constriction_refuses():
    rng = np.random.default_rng(0)
    c, num, s = 4, 6, 40
    refused = 0
    for trial in range(60):
        f = frequency_table(rng.integers(0, 3000, (c, num)) ** (trial % 3 + 1))   # flat to very skewed
        z = rng.integers(0, num, (c, 1, s))
        w = bitstream.encode_symbols(z, f).copy()
        kind = trial % 5
        if kind == 0:
            w[rng.integers(len(w))] ^= np.uint32(1 << int(rng.integers(32)))
        elif kind == 1:
            w = w[1:]
        elif kind == 2:
            w = np.concatenate([np.array([rng.integers(1, 2**32)], np.uint32), w])
        elif kind == 3:
            w = np.concatenate([w, np.zeros(1, np.uint32)])
        try:
            bitstream.decode_symbols(w, f, (c, 1, s))
            ok = True
        except Exception:  # noqa: BLE001 - NodecodeError
            ok = False
        sym, status = decode_reference([w], cdf_table(f), s)
        assert ok == (status[0] == 0), (trial, status)
        if kind == 3:
            assert status[0] & ZERO_WORD
        if ok:
            np.testing.assert_array_equal(sym.reshape(c, 1, s), z)
        refused += not ok
    assert refused >= 40       # the corruptions above are nearly always detected


@pytest.fixture(scope="module")
def c8():
    return load_codec("c8")


@pytest.fixture(scope="module")
def crops(c8):
    """Five real c8 files of 32x48 Kodak crops (a small latent, so that Triton's interpreter stays quick)."""
    from nodecode.data.images import load_image
    if not KODAK.exists():
        pytest.skip("no Kodak")
    img = load_image(KODAK / "kodim23.png")
    return [c8.compress(to_tensor(np.ascontiguousarray(img[40 * i: 40 * i + 32, 60 * i: 60 * i + 48])))
            for i in range(5)]


def _bad_batch(c8, crops):
    """Good files mixed with every kind of bad one, and what each bad one must be refused for."""
    good = crops[:3]
    _, w = bitstream.unpack(crops[3])
    flipped = w.copy()
    flipped[len(w) // 2] ^= np.uint32(1 << 7)
    other = load_codec("c16").compress(to_tensor(np.zeros((32, 48, 3), np.uint8)))
    crc = bytearray(crops[4])
    crc[-9] ^= 1
    batch = [good[0], _recrc(crops[3], np.concatenate([[7], w]).astype(np.uint32)), good[1], bytes(crc),
             _recrc(crops[3], flipped), other, crops[4][:-5], _recrc(crops[3], np.append(w, 0).astype(np.uint32)),
             good[2]]
    return batch, {1: "entropy decoding failed", 3: "checksum", 4: "entropy decoding failed", 5: "not by the loaded model", 6: "truncated",
                   7: "zero word"}


@pytest.mark.parametrize("backend", ["reference", "constriction", "interpret"])
def test_batch_decodes_good_files_and_names_each_bad_one(backend, c8, crops):
    if backend == "interpret" and not triton_available():
        pytest.skip("triton not installed")
    batch, bad = _bad_batch(c8, crops)
    r = BatchDecoder(c8, "cpu", backend).decode(batch)
    assert sorted(r.errors) == sorted(bad)
    for i, why in bad.items():
        if backend == "constriction" and why in ("entropy decoding failed", "zero word"):
            why = "corrupted .ndc file"            # the per-file decoder's own messages (leftover data, ...)
        assert why in r.errors[i], (i, r.errors[i])
    assert r.index == [0, 2, 8]
    for k, i in enumerate(r.index):
        np.testing.assert_array_equal(r.symbols[k].numpy(), c8.read_symbols(batch[i])[1])
    y = BatchDecoder(c8, "cpu", backend).latent(r.symbols)
    assert y.dtype == np.float32 or y.is_floating_point()
    np.testing.assert_allclose(y.numpy(), c8.latent(r.symbols).numpy())


def test_status_bits_of_an_empty_and_a_garbage_stream():
    f = np.full((2, 6), 65536 // 6)
    f[:, 0] += 65536 - f.sum(1)
    _, st = decode_reference([np.zeros(0, np.uint32), np.array([5, 9, 123456789], np.uint32)], cdf_table(f), 3)
    assert st[0] == 0                # no words: state 0 decodes to symbols 0 and stays 0 (constriction agrees)
    assert st[1] & (LEFTOVER | NONZERO_STATE)


def test_header_refusal_is_one_message(c8):
    data = b"NDC\x1a" + struct.pack("<BB", 1, 2) + b"c8" + b"\0" * 10
    r = BatchDecoder(c8, "cpu", "reference").decode([data + struct.pack("<I", zlib.crc32(data))])
    assert r.index == [] and "not a .ndc file" in r.errors[0] and r.symbols.shape[0] == 0


def test_kernel_compiles_to_a_cubin_for_hopper():
    """The interpreter checks the kernel's arithmetic; this checks that Triton really compiles it (no GPU needed)."""
    if not triton_available():
        pytest.skip("triton not installed")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from nodecode.codec.gpu_entropy import _ans_decode
    sig = {"buf_ptr": "*i32", "start_ptr": "*i32", "count_ptr": "*i32", "cdf_ptr": "*i32", "out_ptr": "*u8",
           "status_ptr": "*i32", "n": "i32", "channels": "i32", "per_channel": "i32", "L": "constexpr",
           "BLOCK": "constexpr"}
    k = triton.compile(ASTSource(triton.jit(_ans_decode), sig, constexprs={"L": 6, "BLOCK": 128}),
                       target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False})   # as decode_triton
    assert len(k.asm["cubin"]) > 1000 and k.asm["ptx"].count("setp.ge.u64") == 5   # L - 1 unsigned compares
