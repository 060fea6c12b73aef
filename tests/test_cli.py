"""The command line: real files, and one-line errors with a non-zero exit for bad input."""
import subprocess
import sys

import pytest

from nodecode.cli import main
from nodecode.data.images import load_image, save_image


@pytest.fixture()
def photo(tmp_path, kodak_crop):
    p = tmp_path / "photo.png"
    save_image(kodak_crop, p)
    return p


def test_compress_decompress_roundtrip(tmp_path, photo, capsys):
    ndc, out = tmp_path / "a.ndc", tmp_path / "a.png"
    assert main(["compress", str(photo), "-o", str(ndc), "--codec", "c16"]) == 0
    assert ndc.read_bytes()[:4] == b"NDC\x1a"
    assert main(["decompress", str(ndc), "-o", str(out)]) == 0      # model found from the header
    assert load_image(out).shape == load_image(photo).shape
    assert "bpp" in capsys.readouterr().out


def test_model_is_a_deprecated_alias_of_codec(tmp_path, photo, capsys):
    a, b = tmp_path / "a.ndc", tmp_path / "b.ndc"
    assert main(["compress", str(photo), "-o", str(a), "--codec", "c16"]) == 0
    assert main(["compress", str(photo), "-o", str(b), "--model", "c16"]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert "nodecode: warning: --model is deprecated here, use --codec" in capsys.readouterr().err


def _bad(tmp_path, capsys, argv, expect, leftover):
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("nodecode: error:") and err.count("\n") == 1 and expect in err
    assert "Traceback" not in err
    assert not leftover.exists()


def test_missing_and_non_image_inputs(tmp_path, capsys):
    out = tmp_path / "x.ndc"
    _bad(tmp_path, capsys, ["compress", str(tmp_path / "nope.png"), "-o", str(out)], "no such file", out)
    txt = tmp_path / "notes.png"
    txt.write_text("not an image")
    _bad(tmp_path, capsys, ["compress", str(txt), "-o", str(out)], "cannot read image", out)


def test_truncated_image(tmp_path, photo, capsys):
    cut = tmp_path / "cut.png"
    cut.write_bytes(photo.read_bytes()[:200])
    out = tmp_path / "x.ndc"
    _bad(tmp_path, capsys, ["compress", str(cut), "-o", str(out)], "cannot read image", out)


@pytest.mark.parametrize("mutate, expect", [
    (lambda d: d[: len(d) // 2], "truncated"),
    (lambda d: d[:40] + bytes([d[40] ^ 1]) + d[41:], "checksum"),
    (lambda d: b"XXXX" + d[4:], "magic"),
])
def test_corrupted_ndc(tmp_path, photo, capsys, mutate, expect):
    ndc = tmp_path / "a.ndc"
    assert main(["compress", str(photo), "-o", str(ndc)]) == 0
    bad = tmp_path / "bad.ndc"
    bad.write_bytes(mutate(ndc.read_bytes()))
    out = tmp_path / "out.png"
    _bad(tmp_path, capsys, ["decompress", str(bad), "-o", str(out)], expect, out)


def test_unknown_model_and_extension(tmp_path, photo, capsys):
    out = tmp_path / "x.ndc"
    _bad(tmp_path, capsys, ["compress", str(photo), "-o", str(out), "--codec", "c12"], "no codec named", out)
    ndc = tmp_path / "a.ndc"
    assert main(["compress", str(photo), "-o", str(ndc)]) == 0
    _bad(tmp_path, capsys, ["decompress", str(ndc), "-o", str(tmp_path / "a.xyz")], "unknown image extension",
         tmp_path / "a.xyz")


def test_console_script_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nodecode.cli", "decompress", str(tmp_path / "none.ndc"), "-o",
                        str(tmp_path / "o.png")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith("nodecode: error: no such file") and not r.stdout


def test_classify_without_classifier_is_one_line(tmp_path, photo, capsys):
    ndc = tmp_path / "a.ndc"
    assert main(["compress", str(photo), "-o", str(ndc)]) == 0
    code = main(["classify", str(ndc), "--classifier", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("nodecode: error: no such classifier") and err.count("\n") == 1
