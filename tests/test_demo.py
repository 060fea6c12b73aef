"""`nodecode demo`: photo RD rows, then CamVid val frames segmented and Imagenette val images classified from their
.ndc symbols (the datasets' folders); without them those parts are skipped, not failed."""
import json

import numpy as np
from PIL import Image

from nodecode.cli import main

from conftest import CAMVID, IMAGENETTE, needs


@needs(CAMVID)
@needs(IMAGENETTE)
def test_demo_segments_and_classifies_dataset_images(tmp_path, capsys):
    import skimage.data
    (tmp_path / "in").mkdir()
    Image.fromarray(np.ascontiguousarray(skimage.data.astronaut()[:96, 128:256])).save(tmp_path / "in" / "crop.png")
    assert main(["demo", "--data", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--camvid", str(CAMVID), "--imagenette", str(IMAGENETTE)]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["codec"] for r in summary["rows"] if not r["codec"].startswith("jpeg")] == ["c8", "c16", "c32"]
    assert (tmp_path / "out" / "crop_c8.ndc").is_file() and (tmp_path / "out" / "crop_fig9.png").is_file()
    seg = summary["segmentation"]
    assert len(seg) == 3 and all(r["pixel_accuracy"] > 0.6 for r in seg), seg
    for r in seg:
        assert (r["read"], Image.open(r["mask"]).size) == ("ndc-symbols", (480, 360))
    cls = summary["classification"]
    assert len(cls) == 10 and len({r["true"] for r in cls}) == 10
    for point in ("c8", "c16", "c32"):                                                 # chance: 1 of 10
        assert sum(r["predicted"][point]["name"] == r["true"] for r in cls) >= 5, point
    assert "segmentation skipped" not in capsys.readouterr().out


def test_demo_without_datasets_skips_those_parts(tmp_path, capsys, monkeypatch):
    import nodecode.demo as demo
    monkeypatch.setattr(demo, "DATASETS", tmp_path / "none")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "in" / "flat.png")
    assert main(["demo", "--data", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "segmentation skipped" in out and "classification skipped" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["segmentation"] == [] and summary["classification"] == [] and summary["rows"]


def test_eval_codec_on_a_real_photo(tmp_path, capsys, kodak_crop):
    """`nodecode eval-codec` writes the RD table: c8 < c16 in bpp and PSNR, JPEG matched to each point's real bpp."""
    (tmp_path / "in").mkdir()
    Image.fromarray(kodak_crop).save(tmp_path / "in" / "f.png")
    assert main(["eval-codec", "--data", str(tmp_path / "in"), "--json", str(tmp_path / "rd.json"),
                 "--plot", str(tmp_path / "rd.png"), "--codecs", "c8,c16"]) == 0
    rows = {(r["codec"], r["matched_to"]): r for r in json.loads((tmp_path / "rd.json").read_text())["rows"]}
    c8, c16 = rows["c8", "c8"], rows["c16", "c16"]
    assert c8["bpp"] < c16["bpp"] and c8["psnr"] < c16["psnr"] and c8["paper_bpp"] == 0.0983
    assert abs(rows["jpeg", "c16"]["bpp"] - c16["bpp"]) < 0.5 * c16["bpp"]
    assert (tmp_path / "rd.png").stat().st_size > 0 and "| c8 | c8 |" in capsys.readouterr().out
