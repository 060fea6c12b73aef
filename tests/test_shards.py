"""WebDataset-style .ndc shards (`nodecode pack`) and the .ndc data loaders, on real c8 files of Imagenette images."""
import subprocess
import tarfile

import numpy as np
import pytest
import torch

from nodecode.cli import main
from nodecode.codec.zoo import load_codec
from nodecode.data.ndc import NdcBatchLoader, NdcDataset
from nodecode.data.shards import iter_members, read_shard
from nodecode.errors import NodecodeError

from conftest import IMAGENETTE, imagenette_ndc

CLASSES = ["n01440764", "n03028079"]


@pytest.fixture(scope="module")
def ndc_dir(tmp_path_factory):
    """<class>/<name>.ndc: three real Imagenette val images per class, compressed with the bundled c8 codec."""
    if not IMAGENETTE.exists():
        pytest.skip("no Imagenette")
    root = tmp_path_factory.mktemp("ndc")
    imagenette_ndc(root, load_codec("c8"), CLASSES, 3)
    return root


@pytest.fixture(scope="module")
def shard(ndc_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("shard") / "val.tar"
    assert main(["pack", str(ndc_dir), "-o", str(out)]) == 0
    return out


def test_shard_is_a_plain_tar_in_webdataset_layout(ndc_dir, shard):
    files = sorted(ndc_dir.rglob("*.ndc"))
    listing = subprocess.run(["tar", "tf", str(shard)], capture_output=True, text=True, check=True).stdout.split()
    keys = [f.relative_to(ndc_dir).with_suffix("").as_posix() for f in files]
    assert listing == [f"{k}.{e}" for k in keys for e in ("ndc", "cls", "json")]
    with tarfile.open(shard) as t:                      # the standard reader agrees with ours, byte for byte
        std = {m.name: t.extractfile(m).read() for m in t.getmembers()}
    assert {n: bytes(b) for n, b in iter_members(shard.read_bytes())} == std
    samples = read_shard(shard)
    assert [s.key for s in samples] == keys
    for s, f in zip(samples, files):
        assert s.ndc == f.read_bytes()
        assert s.label == CLASSES.index(f.parent.name) and s.meta["class"] == f.parent.name
        assert s.meta["model"] == "c8" and (s.meta["height"], s.meta["width"]) == (224, 224)


def _tar(path, members, fmt):
    """A tar of (name, bytes or None for a directory) written by the standard tarfile module."""
    import io
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def test_numpy_walk_reads_regular_shards_and_leaves_the_rest_to_the_member_walk(shard, tmp_path):
    """The header walk in numpy (_walk_regular) gives the member walk's result on a shard; on a tar it cannot read
    exactly (a long pax name, a directory entry, a payload block that looks like a ustar header) it declines, and
    scan_members still agrees with the standard tarfile reader, also when it declines only after a first part."""
    from nodecode.data.shards import _header_candidates, _walk, _walk_regular, scan_members, scan_parts
    buf = shard.read_bytes()
    heads: list[int] = []
    blocks, cand = _header_candidates(buf)
    fast = _walk_regular(blocks, cand, 0, len(cand))
    assert fast is not None and (fast[0], fast[1]) == (_walk(buf, "s", heads), heads)
    fake = bytearray(1024)                          # a payload whose second block carries the ustar magic
    fake[512 + 257: 512 + 262] = b"ustar"
    cases = {"pax": ([("a/" + "x" * 150 + ".ndc", b"1"), ("c.cls", b"3")], tarfile.PAX_FORMAT),
             "dir": ([("a", None), ("a/b.ndc", b"12")], tarfile.USTAR_FORMAT),
             "fake": ([("a.ndc", b"7"), ("b.bin", bytes(fake)), ("c.cls", b"3")], tarfile.USTAR_FORMAT)}
    for name, (members, fmt) in cases.items():
        data = _tar(tmp_path / f"{name}.tar", members, fmt)
        found = _header_candidates(data)
        assert found is None or _walk_regular(*found, 0, len(found[1])) is None, name
        want = [(n, d) for n, d in members if d is not None]
        assert [(n, bytes(b)) for n, b in iter_members(data)] == want, name
    data = (tmp_path / "fake.tar").read_bytes()     # a first part read in numpy, the rest by the member walk
    assert [[m[0] for m in part] for part in scan_parts(data, first=1)] == [["a.ndc"], ["b.bin", "c.cls"]]
    assert scan_members(data) == [("a.ndc", 512, 1), ("b.bin", 1536, 1024), ("c.cls", 3072, 1)]


def test_shard_parts_stream_the_first_samples_and_keys_must_be_consecutive(shard, tmp_path):
    """iter_shard's first part holds the samples among the first members (one cut in two by the boundary goes with
    the rest); the parts together are read_shard; a key that comes back after another one is refused."""
    from nodecode.data.shards import iter_shard
    full = read_shard(shard)
    parts = list(iter_shard(shard, first=4))            # ndc cls json ndc | cls json ...
    assert [s.key for s in parts[0]] == [full[0].key] and [s for p in parts for s in p] == full
    assert all(s.label is not None and s.meta_json for p in parts for s in p)
    _tar(tmp_path / "split.tar", [("a.ndc", b"1"), ("b.ndc", b"2"), ("a.cls", b"3")], tarfile.USTAR_FORMAT)
    with pytest.raises(NodecodeError, match="a.cls is not next to the other members of a"):
        read_shard(tmp_path / "split.tar")


def test_webdataset_package_reads_the_shard(shard):
    wds = pytest.importorskip("webdataset")
    got = [(s["__key__"], s["ndc"], int(s["cls"])) for s in wds.WebDataset(str(shard), shardshuffle=False)]
    assert [(s.key, s.ndc, s.label) for s in read_shard(shard)] == got


def test_batch_loader_decodes_shards_to_the_files_symbols(ndc_dir, shard):
    codec = load_codec("c8")
    loader = NdcBatchLoader([shard], codec, batch=4, device="cpu")
    seen = []
    for x, labels, keys in loader:
        assert x.dtype == torch.uint8 and x.shape[1:] == (8, 28, 28)
        for z, y, k in zip(x, labels.tolist(), keys):
            np.testing.assert_array_equal(z.numpy(), codec.read_symbols((ndc_dir / f"{k}.ndc").read_bytes())[1])
            assert y == CLASSES.index(k.split("/")[0])
            seen.append(k)
    assert len(seen) == 6 and loader.errors == []
    y_hat, _, _ = next(iter(NdcBatchLoader([shard], codec, batch=6, device="cpu", latent=True)))
    ds = NdcDataset([shard], codec)
    z0, label0 = torch.utils.data.DataLoader(ds, batch_size=6)._get_iterator().__next__()
    torch.testing.assert_close(y_hat, codec.latent(z0))
    assert label0.tolist() == [0, 0, 0, 1, 1, 1]


def test_corrupt_member_is_reported_by_name(ndc_dir, shard, tmp_path):
    buf = bytearray(shard.read_bytes())
    target = read_shard(shard)[2]
    at = bytes(buf).index(target.ndc) + len(target.ndc) // 2
    buf[at] ^= 0x10                                     # a flipped bit inside one member's payload
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(buf))
    loader = NdcBatchLoader([bad], load_codec("c8"), batch=4, device="cpu")
    keys = [k for _, _, ks in loader for k in ks]
    assert target.key not in keys and len(keys) == 5
    assert loader.errors == [(target.key, "corrupted .ndc file (checksum mismatch)")]
    with pytest.raises(NodecodeError, match=target.key):
        list(NdcBatchLoader([bad], load_codec("c8"), batch=4, device="cpu", strict=True))


def test_truncated_or_foreign_shards_are_one_error(shard, tmp_path, capsys):
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[:2000])
    with pytest.raises(NodecodeError, match="truncated"):
        read_shard(cut)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"x" * 1024)
    with pytest.raises(NodecodeError, match="not a tar file|corrupt tar header"):
        read_shard(junk)


def test_pack_refuses_bad_input_without_writing(ndc_dir, tmp_path, capsys):
    out = tmp_path / "o.tar"
    assert main(["pack", str(tmp_path / "missing"), "-o", str(out)]) == 2
    src = tmp_path / "src" / "cls"
    src.mkdir(parents=True)
    (src / "a.ndc").write_bytes((ndc_dir / CLASSES[0]).glob("*.ndc").__next__().read_bytes()[:-3])
    assert main(["pack", str(src.parent), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("nodecode: error: ") for e in err) and "a.ndc" in err[1]
    assert not out.exists() and list(tmp_path.glob(".o.tar*")) == []


def test_a_damaged_later_header_is_named_by_its_offset(shard, tmp_path):
    """Header checksums are verified for every member (in one pass): damage to the 4th header is found there."""
    buf = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:
        fourth = tar.getmembers()[3].offset
    buf[fourth + 20] ^= 0x01                           # inside the member's name: only the checksum can tell
    bad = tmp_path / "hdr.tar"
    bad.write_bytes(bytes(buf))
    with pytest.raises(NodecodeError, match=f"corrupt tar header at byte {fourth}"):
        read_shard(bad)


def test_meta_is_parsed_when_read_and_bad_json_names_its_key(shard, tmp_path):
    samples = read_shard(shard)
    assert samples[0].meta == {"model": "c8", "height": 224, "width": 224, "class": CLASSES[0]}
    buf = bytearray(shard.read_bytes())
    at = bytes(buf).index(b'{"model"')
    buf[at] = ord("[")                                  # same length, same tar checksums: only the JSON is broken
    bad = tmp_path / "json.tar"
    bad.write_bytes(bytes(buf))
    s = read_shard(bad)[0]
    assert s.ndc == samples[0].ndc and s.label == samples[0].label
    with pytest.raises(NodecodeError, match=f"{s.key}.json is not valid json"):
        s.meta


def test_shard_pass_with_reader_processes_equals_this_thread(shard, tmp_path):
    """The e2e .ndc path with shards read + packed in 2 spawned processes gives the same labels, keys (of the files
    decoded, in order) and corrupt count as reading them in this thread; a corrupt member is skipped in both."""
    from nodecode.bench.e2e import start_pool
    from nodecode.bench.e2e_gpu import ndc_shard_pass
    from nodecode.codec.gpu_entropy import BatchDecoder
    buf = bytearray(shard.read_bytes())
    target = read_shard(shard)[1]
    buf[bytes(buf).index(target.ndc) + 40] ^= 0x04
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(buf))
    dec = BatchDecoder(load_codec("c8"), "cpu", "constriction")
    infer = lambda z: z.flatten(1).long().sum(1)        # a label that is a function of each file's symbols  # noqa: E731
    here = ndc_shard_pass([shard, bad, shard], dec, infer, 4, True)
    pool = start_pool(2)
    try:
        there = ndc_shard_pass([shard, bad, shard], dec, infer, 4, True, pool)
    finally:
        pool.shutdown()
    assert here["corrupt"] == there["corrupt"] == 1
    assert there["keys"] == here["keys"] and there["labels"] == here["labels"]
    assert len(here["keys"]) == len(here["labels"]) == 17 and here["keys"].count(target.key) == 2
    sums = {s.key: int(load_codec("c8").read_symbols(s.ndc)[1].astype(np.int64).sum()) for s in read_shard(shard)}
    assert here["labels"] == [sums[k] for k in here["keys"]]
    for r in (here, there):                 # the idle start: the first batch's read + pack, within the pass
        assert 0 < r["first_launch_s"] < r["seconds"]
