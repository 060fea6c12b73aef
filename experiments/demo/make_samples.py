"""Re-encode the few real samples `nodecode demo` ships with (src/nodecode/samples/), from ../shared/datasets.

3 CamVid test frames (480x360, JPEG q85) with their label PNGs (unchanged), and the first Imagenette val image
of each of the 10 classes (224x224, JPEG q85). Usage: python experiments/demo/make_samples.py [--shared DIR]
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parents[2] / "src" / "nodecode" / "samples"
FRAMES = ("0001TP_008550", "Seq05VD_f01110", "Seq05VD_f04110")   # CamVid test: one from 0001TP, two from Seq05VD


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[3] / "shared" / "datasets"))
    a = ap.parse_args(argv)
    src = Path(a.shared)
    (OUT / "camvid").mkdir(parents=True, exist_ok=True)
    (OUT / "imagenette").mkdir(parents=True, exist_ok=True)
    for stem in FRAMES:
        Image.open(src / "camvid" / "images" / "test" / f"{stem}.jpg").convert("RGB").save(
            OUT / "camvid" / f"{stem}.jpg", quality=85)
        shutil.copy(src / "camvid" / "labels" / "test" / f"{stem}.png", OUT / "camvid" / f"{stem}.png")
    val = src / "imagenette2-224" / "val"
    for d in sorted(p for p in val.iterdir() if p.is_dir()):
        first = sorted(d.glob("*.JPEG"))[0]
        Image.open(first).convert("RGB").save(OUT / "imagenette" / f"{d.name}_{first.stem}.jpg", quality=85)
    print(f"samples in {OUT}")


if __name__ == "__main__":
    main()
