"""The bundled operating points: sizes, rate ordering, and GPU-written files decoding on the CPU."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CAMVID, IMAGENETTE, needs
from nodecode.codec.zoo import OPERATING_POINTS, list_codecs, load_codec
from nodecode.zoo import WEIGHTS_DIR
from nodecode.data.images import to_tensor, to_uint8
from nodecode.errors import NodecodeError
from nodecode.eval.metrics import psnr

GPU_FILES = Path(__file__).parent / "data" / "gpu_kodak"


def test_bundled_codecs_small_and_safetensors():
    assert list_codecs() == ["c8", "c16", "c32", "c8-joint"]
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


def test_joint_codec_is_bundled_and_its_files_decode_by_name(kodak_crop, tmp_path, capsys):
    """§6's c8-joint: its own weights and symbols, files naming it decode without --model; no bundled classifier."""
    from PIL import Image
    from nodecode.cli import main
    base, joint = load_codec("c8"), load_codec("c8-joint")
    assert joint.config.name == "c8-joint" and joint.config.channels == 8
    assert not torch.equal(base.quantizer.centers, joint.quantizer.centers)
    Image.fromarray(np.ascontiguousarray(kodak_crop)).save(tmp_path / "crop.png")
    assert main(["compress", str(tmp_path / "crop.png"), "-o", str(tmp_path / "j.ndc"), "--codec", "c8-joint"]) == 0
    data = (tmp_path / "j.ndc").read_bytes()
    header, symbols = joint.read_symbols(data)
    assert header.model == "c8-joint"
    assert not np.array_equal(symbols, base.read_symbols(base.compress(to_tensor(kodak_crop)))[1])
    assert main(["decompress", str(tmp_path / "j.ndc"), "-o", str(tmp_path / "j.png")]) == 0
    out = np.asarray(Image.open(tmp_path / "j.png"))
    assert np.array_equal(out, to_uint8(joint.decompress(data))) and psnr(kodak_crop, out) > 20
    capsys.readouterr()
    assert main(["classify", str(tmp_path / "j.ndc")]) == 2
    assert capsys.readouterr().err.startswith("nodecode: error: no bundled classifier for 'c8-joint'")


def test_latent_path_needs_no_decoder(kodak_crop, monkeypatch):
    """The reader turns a file into ŷ from the zoo file's centers and tables alone: no codec network is built."""
    from nodecode.codec.autoencoder import CompressionModel
    from nodecode.codec.reader import EntropyModel, read_symbols
    codec = load_codec("c8")
    data = codec.compress(to_tensor(kodak_crop))
    want_header, want = codec.read_symbols(data)
    monkeypatch.setattr(CompressionModel, "__init__", None)
    entropy = EntropyModel.load("c8")
    header, symbols = read_symbols(data, entropy)
    assert header == want_header and np.array_equal(symbols, want)
    y_hat = entropy.latent(torch.from_numpy(symbols))
    assert y_hat.shape == (8, 12, 16) and torch.equal(y_hat, codec.latent(torch.from_numpy(want)))
    with pytest.raises(NodecodeError, match="not by the loaded model"):
        read_symbols(data, EntropyModel.load("c16"))


def test_all_bundled_weights_fit_the_budget():
    files = sorted(WEIGHTS_DIR.glob("*.safetensors"))
    assert {f.stem for f in files} >= {"c8", "c16", "c32", "c8-joint", "classifier-c8", "classifier-c16",
                                       "classifier-c32", "segmenter-c8"}
    assert sum(f.stat().st_size for f in files) <= 32 * 2**20


@needs(IMAGENETTE)
@pytest.mark.parametrize("point", ["c8", "c32"])
def test_bundled_classifier_reads_real_ndc_files(point, tmp_path):
    """Two val images per class -> .ndc -> the bundled classifier of that point (65.7 / 69.4 % top-1 on all of val)."""
    from nodecode.codec.files import compress_file
    from nodecode.tasks.inference import classify_files
    val = IMAGENETTE / "val"
    codec = load_codec(point)
    files, truth = [], []
    for d in sorted(p for p in val.iterdir() if p.is_dir()):
        for img in sorted(d.glob("*.JPEG"))[:2]:
            files.append(tmp_path / f"{img.stem}.ndc")
            compress_file(img, files[-1], codec)
            truth.append(d.name)
    rows = classify_files(files, device="cpu")
    assert all(r["read"] == "ndc-symbols" and r["classifier"] == f"classifier-{point}" for r in rows)
    correct = sum(r["label"] == t for r, t in zip(rows, truth))
    assert correct >= 9, correct                                     # chance is 2 of 20


@needs(CAMVID)
def test_bundled_segmenter_on_a_camvid_val_frame(tmp_path):
    """A real frame -> c8 .ndc -> `nodecode segment` (symbols only) -> mask; most labelled pixels right (val: 79 %)."""
    from PIL import Image
    from nodecode.cli import main
    camvid = CAMVID
    frame = sorted((camvid / "images" / "val").glob("*.jpg"))[0]
    label = np.asarray(Image.open(camvid / "labels" / "val" / f"{frame.stem}.png"))
    assert main(["compress", str(frame), "-o", str(tmp_path / "f.ndc")]) == 0
    assert main(["segment", str(tmp_path / "f.ndc"), "-o", str(tmp_path / "m.png")]) == 0
    mask = np.asarray(Image.open(tmp_path / "m.png"))
    assert mask.shape == label.shape
    keep = label != 11
    assert (mask[keep] == label[keep]).mean() > 0.6
