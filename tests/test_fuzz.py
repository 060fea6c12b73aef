"""Hostile .ndc files: the structured-mutation smoke run (CI) and every crash or hazard found as a regression test.

The long run (a million inputs, atheris) is experiments/fuzz/run.py; it shares mutations.py with this file."""
import collections
import struct
import zlib

import numpy as np
import pytest

from nodecode.codec import bitstream
from nodecode.codec.zoo import load_codec
from nodecode.errors import NodecodeError
from nodecode.limits import set_max_pixels

from conftest import load_script

_mutations = load_script("experiments/fuzz/mutations.py")     # shared with experiments/fuzz/run.py
FAMILIES, mutate, random_valid, seed_files = (_mutations.FAMILIES, _mutations.mutate, _mutations.random_valid,
                                              _mutations.seed_files)

# the reproducers, written against the c8 weights of the day (fingerprint 6379a86a... may change)
LAST_WORD_ZERO = "4e44431a01026338f679a86a7a9d71aa0100000001000000080001000100060100000000000000316241c0"
EMPTY_HUGE = "4e44431a01026338f679a86a7a9d71aa004000000040000008000008000806000000008c7ee5bc"


@pytest.fixture(scope="module")
def codecs():
    return {p: load_codec(p) for p in ("c8", "c16", "c32")}


@pytest.fixture(scope="module")
def seeds(codecs):
    return seed_files(codecs, sizes=((16, 16), (24, 40), (8, 120)))


@pytest.fixture(autouse=True)
def default_limit():
    set_max_pixels(None)
    yield
    set_max_pixels(None)


def rebuilt(hexstr: str, codec) -> bytes:
    """A reproducer with today's fingerprint of `codec` (and its CRC recomputed): the same code path as when written."""
    data = bytearray(bytes.fromhex(hexstr)[:-4])
    off = 6 + data[5]
    data[off: off + 8] = codec.fingerprint()
    return bytes(data) + struct.pack("<I", zlib.crc32(bytes(data)))


def test_smoke_fuzz_read_symbols(codecs, seeds):
    """A few thousand structured mutations of real files: each one is decoded or cleanly refused, nothing else."""
    rng = np.random.default_rng(15)
    outcomes = collections.Counter()
    for i in range(3900):
        fam = FAMILIES[i % len(FAMILIES)]
        point, seed = seeds[int(rng.integers(len(seeds)))]
        data = mutate(seed, fam, rng, seeds[int(rng.integers(len(seeds)))][1])
        try:
            header, z = codecs[point].read_symbols(data)
            assert z.shape == header.latent_shape and z.min() >= 0 and z.max() < header.num_centers
            outcomes["accepted"] += 1
        except NodecodeError as e:
            assert str(e) and "\n" not in str(e) and "\x1b" not in str(e)
            outcomes["clean"] += 1
    assert outcomes["clean"] > 3000 and outcomes["accepted"] > 0


def test_smoke_fuzz_files(codecs, seeds, tmp_path):
    """Mutants and odd-shaped valid files through decompress / classify as the CLI runs them: decoded or refused."""
    from nodecode.codec.files import decompress_file
    from nodecode.tasks.inference import classify_files
    rng = np.random.default_rng(16)
    good = []
    for i in range(24):
        point = ("c8", "c16", "c32")[i % 3]
        src, dst = tmp_path / f"in{i}.ndc", tmp_path / f"out{i}.png"
        src.write_bytes(random_valid(codecs[point], rng, big=False) if i % 2 else
                        mutate(seeds[i % len(seeds)][1], FAMILIES[i % len(FAMILIES)], rng))
        try:
            decompress_file(src, dst)
            good.append(src)
        except NodecodeError as e:
            assert not dst.exists() and str(e).startswith(f"{src}: ")
            if i % 4 == 0:
                row, = classify_files([src])          # refused with its name, not raised
                assert str(src) in row["error"] and "top" not in row
    assert len(good) >= 12          # every valid file of every shape (1x1, 1xN strips) decodes ...
    rows = classify_files(good)     # ... and classifies (one call: each point's classifier is loaded once)
    assert len(rows) == len(good) and all(0.0 <= r["top"][0]["prob"] <= 1.0 for r in rows)


def test_last_word_zero_is_a_clean_error(codecs):
    """Issue reproducer 1: constriction's ValueError from the AnsCoder constructor (was outside the try)."""
    c8 = codecs["c8"]
    with pytest.raises(NodecodeError):
        c8.read_symbols(bytes.fromhex(LAST_WORD_ZERO))
    with pytest.raises(NodecodeError, match="entropy decoding failed"):
        c8.read_symbols(rebuilt(LAST_WORD_ZERO, c8))


def test_empty_stream_claiming_a_huge_image_is_refused_without_work(codecs):
    """Issue reproducer 2: no ANS words decode to all-zero symbols at any size; refused by the pixel limit, and
    above it by the bound on what the words can hold, before anything is allocated."""
    c8 = codecs["c8"]
    with pytest.raises(NodecodeError):
        c8.read_symbols(bytes.fromhex(EMPTY_HUGE))
    data = rebuilt(EMPTY_HUGE, c8)
    with pytest.raises(NodecodeError, match="over the limit"):
        c8.read_symbols(data)
    set_max_pixels(1 << 28)
    with pytest.raises(NodecodeError, match="cannot hold"):
        c8.read_symbols(data)


@pytest.mark.parametrize("point", ["c8", "c16", "c32"])
def test_words_bound_never_refuses_a_real_file(codecs, point):
    """The lower bound on bits per symbol holds for the most compressible content (a flat image)."""
    import torch
    for h, w in ((8, 8), (64, 200), (1, 300)):
        data = codecs[point].compress(torch.full((1, 3, h, w), 0.5))
        header, z = codecs[point].read_symbols(data)
        assert z.shape == header.latent_shape


@pytest.mark.parametrize("name", [b"zz\n\x1b[31m", b"c8 ", "ü".encode(), b"", b"c16"])
def test_model_name_validated_and_sanitised(codecs, seeds, name):
    """The header's model name is checked by every reader (read_symbols too) and never echoed raw."""
    seed = seeds[0][1]
    body = seed[:5] + bytes([len(name)]) + name + seed[6 + seed[5]: -4]
    data = body + struct.pack("<I", zlib.crc32(body))
    with pytest.raises(NodecodeError) as e:
        codecs["c8"].read_symbols(data)
    assert "\x1b" not in str(e.value) and "\n" not in str(e.value)


def test_constriction_errors_only(monkeypatch, codecs, seeds):
    """Only constriction's own exception types become 'corrupted file'; an interrupt is not swallowed."""
    import constriction

    class Boom(BaseException):
        pass

    def boom(*a, **k):
        raise Boom()
    monkeypatch.setattr(constriction.stream.stack, "AnsCoder", boom)
    with pytest.raises(Boom):
        codecs["c8"].read_symbols(seeds[0][1])
