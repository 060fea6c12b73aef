"""Hostile images, unwritable outputs, error paths of the CLI, and safe outputs (modes, all-or-nothing)."""
import os
import stat

import numpy as np
import pytest
from PIL import Image

from nodecode.cli import main
from nodecode.data.images import load_image
from nodecode.errors import NodecodeError, one_line
from nodecode.limits import set_max_pixels
from nodecode.utils import atomic_outputs, atomic_write_bytes, remove_stale_temporaries


@pytest.fixture(autouse=True)
def default_limit():
    set_max_pixels(None)
    yield
    set_max_pixels(None)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nodecode: error: ") and len(lines[0]) > len("nodecode: error: ") + 3, err
    assert "Traceback" not in err
    return lines[0]


def test_image_modes(tmp_path):
    """16-bit greys are scaled (not clipped to white), CMYK / palette / alpha / animated GIF (first frame) / 1x1 load."""
    a16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    g = load_image(tmp_path / "g16.png")
    assert g.shape == (3, 4, 3) and g[0, 0, 0] == 0 and g[2, 3, 0] == round(55000 * 255 / 65535)
    Image.new("CMYK", (5, 7), (0, 255, 0, 0)).save(tmp_path / "c.tif")
    assert load_image(tmp_path / "c.tif").shape == (7, 5, 3)
    p = Image.new("P", (6, 2))
    p.putpalette([255, 0, 0] * 256)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png")
    assert (load_image(tmp_path / "p.png")[..., 0] == 255).all()
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert tuple(load_image(tmp_path / "a.gif")[0, 0]) == (255, 0, 0)
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "one.png")
    assert load_image(tmp_path / "one.png").shape == (1, 1, 3)


def test_pixel_limit_and_bombs(tmp_path):
    """A small file claiming a huge image is refused before decoding, with a flag to raise the limit."""
    Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")         # ~100 KB, 81 M pixels
    assert (tmp_path / "bomb.png").stat().st_size < 200_000
    with pytest.raises(NodecodeError, match="over the limit"):
        load_image(tmp_path / "bomb.png")
    set_max_pixels(30 * 30)
    Image.new("RGB", (40, 40)).save(tmp_path / "small.png")
    with pytest.raises(NodecodeError, match="over the limit"):
        load_image(tmp_path / "small.png")
    set_max_pixels(40 * 40)
    assert load_image(tmp_path / "small.png").shape == (40, 40, 3)


def test_cli_hostile_images_one_line(tmp_path, capsys):
    """A bomb, a 1x60000 strip to classify, a garbage file, a unicode name: one line, exit 2, no output."""
    Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")
    assert main(["compress", str(tmp_path / "bomb.png"), "-o", str(tmp_path / "b.ndc")]) == 2
    assert "over the limit" in _one_error_line(capsys) and not (tmp_path / "b.ndc").exists()
    Image.new("RGB", (60000, 1), (10, 200, 30)).save(tmp_path / "strip.png")
    assert main(["classify", str(tmp_path / "strip.png")]) == 2
    assert "60000x1" in _one_error_line(capsys)
    (tmp_path / "bild-ü€.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["compress", str(tmp_path / "bild-ü€.png"), "-o", str(tmp_path / "g.ndc")]) == 2
    _one_error_line(capsys)
    assert main(["--max-pixels", "0", "flops"]) == 2
    _one_error_line(capsys)


@pytest.mark.parametrize("exc", [RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB\nmore"), MemoryError(),
                                 RuntimeError(""), OSError(28, "No space left on device"),
                                 RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory")])
def test_cli_error_paths_are_one_sanitised_line(monkeypatch, tmp_path, capsys, exc):
    import nodecode.codec.files as files

    def fail(*a, **k):
        raise exc
    monkeypatch.setattr(files, "decompress_file", fail)
    assert main(["decompress", str(tmp_path / "x.ndc"), "-o", str(tmp_path / "x.png")]) == 2
    line = _one_error_line(capsys)
    assert ("out of memory" in line) == (isinstance(exc, MemoryError) or "memory" in str(exc))


def test_one_line_sanitises():
    assert one_line(ValueError("a\x1b[31mb\nsecond")) == "a\\x1b[31mb"
    assert one_line(ValueError("")) == "ValueError (no message)"


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_get_the_umask_mode(tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o666 & ~mask


def test_all_outputs_or_none(tmp_path):
    """A failure after some outputs were written leaves none of them (and no temporaries)."""
    with pytest.raises(RuntimeError):
        with atomic_outputs(tmp_path / "mask.png", tmp_path / "ov.png") as (a, b):
            a.write_bytes(b"mask")
            raise RuntimeError("overlay failed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(NodecodeError, match="cannot write"):   # an unwritable second output: refused before the first is written
        with atomic_outputs(tmp_path / "mask.png", "/proc/nodecode-test/ov.png") as (a, b):
            a.write_bytes(b"mask")
    assert list(tmp_path.iterdir()) == []
    with atomic_outputs(tmp_path / "mask.png", None, tmp_path / "ov.png") as (a, none, b):
        assert none is None
        a.write_bytes(b"1")
        b.write_bytes(b"2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "ov.png"]


def test_stale_temporaries_removed(tmp_path):
    (tmp_path / ".last.safetensors.tmp.abc123.safetensors").write_bytes(b"half")
    (tmp_path / "last.safetensors").write_bytes(b"keep")
    (tmp_path / ".hidden").write_bytes(b"keep")
    assert len(remove_stale_temporaries(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "last.safetensors"]


def test_segment_unwritable_overlay_leaves_no_mask(tmp_path, capsys):
    """The issue's case: segment good.ndc -o mask.png --overlay /proc/ov.png left mask.png behind."""
    import torch
    from nodecode.codec.zoo import load_codec
    data = load_codec("c8").compress(torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0)))
    (tmp_path / "good.ndc").write_bytes(data)
    assert main(["segment", str(tmp_path / "good.ndc"), "-o", str(tmp_path / "mask.png"),
                 "--overlay", "/proc/nodecode-test/ov.png"]) == 2
    _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.ndc"]
    assert main(["segment", str(tmp_path / "good.ndc"), "-o", str(tmp_path / "mask.png"),
                 "--overlay", str(tmp_path / "ov.png")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.ndc", "mask.png", "ov.png"]


def test_pillow_bomb_check_follows_the_limit(tmp_path):
    """Pillow's own bomb check (2x its default) is replaced by nodecode's limit, so --max-pixels can raise it."""
    Image.new("1", (14000, 14000)).save(tmp_path / "huge.png")        # 196 M pixels: over Pillow's 179 M
    with pytest.raises(NodecodeError, match="over the"):
        load_image(tmp_path / "huge.png")
