"""`nodecode demo` on a fresh machine: photo RD rows, then the bundled CamVid frames segmented and the bundled
Imagenette samples classified from their .ndc symbols, with no dataset folder."""
import json

import numpy as np
from PIL import Image

from nodecode.cli import main


def test_demo_segments_and_classifies_the_bundled_samples(tmp_path, capsys):
    import skimage.data
    (tmp_path / "in").mkdir()
    Image.fromarray(np.ascontiguousarray(skimage.data.astronaut()[:96, 128:256])).save(tmp_path / "in" / "crop.png")
    assert main(["demo", "--data", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["codec"] for r in summary["rows"] if not r["codec"].startswith("jpeg")] == ["c8", "c16", "c32"]
    assert (tmp_path / "out" / "crop_c8.ndc").is_file() and (tmp_path / "out" / "crop_fig9.png").is_file()
    seg = summary["segmentation"]
    assert len(seg) == 3 and all(r["pixel_accuracy"] > 0.6 for r in seg), seg       # CamVid test: 76 % overall
    for r in seg:
        assert (r["read"], Image.open(r["mask"]).size) == ("ndc-symbols", (480, 360))
    cls = summary["classification"]
    assert len(cls) == 10 and len({r["true"] for r in cls}) == 10
    for point in ("c8", "c16", "c32"):                                                 # chance: 1 of 10
        assert sum(r["predicted"][point]["name"] == r["true"] for r in cls) >= 5, point
    assert "segmentation skipped" not in capsys.readouterr().out


def test_eval_codec_on_a_real_frame(tmp_path, capsys):
    """`nodecode eval-codec` writes the RD table: c8 < c16 in bpp and PSNR, JPEG matched to each point's real bpp."""
    from nodecode.demo import SAMPLES
    (tmp_path / "in").mkdir()
    frame = np.asarray(Image.open(sorted((SAMPLES / "camvid").glob("*.jpg"))[0]))[:128, :192]
    Image.fromarray(np.ascontiguousarray(frame)).save(tmp_path / "in" / "f.png")
    assert main(["eval-codec", "--data", str(tmp_path / "in"), "--json", str(tmp_path / "rd.json"),
                 "--plot", str(tmp_path / "rd.png"), "--codecs", "c8,c16"]) == 0
    rows = {(r["codec"], r["matched_to"]): r for r in json.loads((tmp_path / "rd.json").read_text())["rows"]}
    c8, c16 = rows["c8", "c8"], rows["c16", "c16"]
    assert c8["bpp"] < c16["bpp"] and c8["psnr"] < c16["psnr"] and c8["paper_bpp"] == 0.0983
    assert abs(rows["jpeg", "c16"]["bpp"] - c16["bpp"]) < 0.5 * c16["bpp"]
    assert (tmp_path / "rd.png").stat().st_size > 0 and "| c8 | c8 |" in capsys.readouterr().out
