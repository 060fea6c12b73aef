"""Segmentation (§5, App. A.5): data and crops, training resume, mIoU, `nodecode segment` on .ndc files, errors."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CAMVID, needs
from nodecode.cli import main
from nodecode.data.augment import InputPipeline
from nodecode.data.segmentation import IGNORE, SegBatches, load_segmentation, scan_segmentation
from nodecode.tasks.segmentation import (SegmenterTrainConfig, evaluate, load_segmenter, save_segmenter,
                                         scaled_iterations, train_segmenter)

FRAME = CAMVID / "images" / "val" / "0016E5_07959.jpg"


def test_crops_align_latent_and_rgb_on_the_8px_grid():
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 255, (6, 3, 48, 64), generator=g, dtype=torch.uint8)
    labels = rgb[:, 0].clone()                       # labels = channel 0: a label crop must equal the RGB crop
    lat = rgb[:, :, ::8, ::8].contiguous()           # one "latent pixel" per 8x8 block
    pipe = InputPipeline("rgb", torch.zeros(3))
    xr, yr = SegBatches(rgb, labels, pipe, 4, crop=32, seed=3)(5)
    xl, yl = SegBatches(lat, labels, pipe, 4, crop=32, seed=3)(5)
    assert xr.shape == (4, 3, 32, 32) and xl.shape == (4, 3, 4, 4) and yr.dtype == torch.long
    assert torch.equal(yr, yl) and torch.equal(yr, xr[:, 0].long())
    for i in range(4):   # the latent crop is the RGB crop's 8x8 block grid, mirrored together with it
        plain, mirrored = xr[i, :, ::8, ::8], xr[i].flip(-1)[:, ::8, ::8].flip(-1)
        assert torch.equal(plain, xl[i]) or torch.equal(mirrored, xl[i])


@needs(CAMVID)
def test_load_segmentation_kinds_and_cache(tmp_path, small_codec):
    folder = scan_segmentation(CAMVID, "val", limit=2)
    assert folder.names[0] == "Sky" and len(folder.names) == 11
    x, y, _ = load_segmentation(folder, "rgb", cache_dir=tmp_path)
    assert x.shape == (2, 3, 360, 480) and y.shape == (2, 360, 480) and int(y.max()) <= IGNORE
    z, y2, info = load_segmentation(folder, "latent", small_codec, cache_dir=tmp_path)
    assert z.shape == (2, 8, 45, 60) and z.dtype == torch.uint8 and info["bpp"] > 0 and torch.equal(y, y2)
    z2, _, _ = load_segmentation(folder, "latent", small_codec, cache_dir=tmp_path)   # from the cache
    assert torch.equal(z, z2)
    assert torch.equal(z[0], small_codec.encode_symbols(x[:1].float() / 255)[0].to(torch.uint8))


def test_scaled_iterations_follow_the_paper_epochs():
    assert scaled_iterations(10582) == 20000 and scaled_iterations(367) == 694


def test_evaluate_known_confusion():
    class Echo(torch.nn.Module):          # logits = one-hot of input channel 0, at the input resolution
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0].long(), 3).permute(0, 3, 1, 2).float()

    y = torch.tensor([[[0, 0, 1, 1], [2, 2, IGNORE, IGNORE]]], dtype=torch.uint8)
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 1]]], dtype=torch.uint8)
    r = evaluate(Echo(), pred[:, None].expand(1, 3, 2, 4), y, InputPipeline("rgb", torch.zeros(3)), 3)
    # class 0: TP 1, FP 1, FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2 (ignored pixels skipped)
    assert r["iou"] == pytest.approx([1 / 3, 2 / 3, 1 / 2]) and r["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


@needs(CAMVID)
def test_training_resumes_to_the_same_weights(tmp_path):
    from nodecode.models import create_model
    from nodecode.tasks.classification import save_classifier
    torch.manual_seed(1)
    cls = create_model("cresnet39", in_channels=8, num_classes=10, width=0.0625)
    save_classifier(cls, tmp_path / "cls.safetensors", {"model": "cresnet39", "width": 0.0625, "input": "latent",
                                                        "in_channels": 8, "codec": "c8", "codec_name": "c8",
                                                        "classes": list("abcdefghij"), "class_names": list("abcdefghij")})

    def cfg(out, **kw):
        return SegmenterTrainConfig(data=str(CAMVID), out=str(out), model="cresnet39_d", input="latent", codec="c8",
                                    width=0.0625, iters=3, batch_size=2, limit=2, crop=64, eval_splits=("val",),
                                    init=str(tmp_path / "cls.safetensors"), cache_dir=str(tmp_path / "cache"),
                                    progress=False, **kw)
    train_segmenter(cfg(tmp_path / "a"))
    assert not train_segmenter(cfg(tmp_path / "b", max_minutes=0.0)).finished   # stops after one step, checkpointed
    assert not (tmp_path / "b" / "segmenter.safetensors").exists()
    train_segmenter(cfg(tmp_path / "b"))                       # resumes
    (ma, meta), (mb, _) = load_segmenter(tmp_path / "a"), load_segmenter(tmp_path / "b")
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-6), k
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert meta["input"] == "latent" and 0 <= s["val"]["miou"] <= 1 and len(s["val"]["iou"]) == 11
    sd = cls.state_dict()   # backbone from the classifier (§5.3); BN frozen at its values, the convs trained
    assert torch.equal(ma.state_dict()["layer2.0.bn1.running_var"], sd["layer2.0.bn1.running_var"])
    assert torch.equal(ma.state_dict()["layer2.0.bn1.weight"], sd["layer2.0.bn1.weight"])
    assert not torch.equal(ma.state_dict()["layer2.0.conv1.weight"], sd["layer2.0.conv1.weight"])


@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory):
    from nodecode.models import create_model
    torch.manual_seed(0)
    net = create_model("cresnet51_d", in_channels=8, num_classes=11, width=0.0625).eval()
    p = tmp_path_factory.mktemp("seg") / "segmenter.safetensors"
    save_segmenter(net, p, {"model": "cresnet51_d", "width": 0.0625, "input": "latent", "in_channels": 8,
                            "codec": "c8", "codec_name": "c8", "classes": list(range(11)),
                            "class_names": [f"k{i}" for i in range(11)], "mean": [0.0] * 8}, half=True)
    return p


@needs(FRAME)
def test_segment_ndc_from_symbols_matches_image(tmp_path, tiny_segmenter):
    ndc = tmp_path / "f.ndc"
    assert main(["compress", str(FRAME), "-o", str(ndc), "--codec", "c8"]) == 0
    assert main(["segment", str(ndc), "-o", str(tmp_path / "m.png"), "--overlay", str(tmp_path / "o.png"),
                 "--segmenter", str(tiny_segmenter)]) == 0
    # --model: the deprecated spelling of --segmenter, still honoured
    assert main(["segment", str(FRAME), "-o", str(tmp_path / "m2.png"), "--model", str(tiny_segmenter)]) == 0
    m, m2 = Image.open(tmp_path / "m.png"), Image.open(tmp_path / "m2.png")
    assert m.mode == "P" and m.size == (480, 360) and np.asarray(m).max() < 11
    assert np.array_equal(np.asarray(m), np.asarray(m2))
    assert Image.open(tmp_path / "o.png").size == (480, 360)


@needs(FRAME)
def test_bad_inputs_exit_2(tmp_path, tiny_segmenter, monkeypatch, capsys):
    import nodecode.zoo as zoo
    bad = tmp_path / "bad.ndc"
    bad.write_bytes(b"NDC\x00garbage")
    notimg = tmp_path / "x.jpg"
    notimg.write_text("hello")
    m = ["--segmenter", str(tiny_segmenter)]
    for args in (["segment", str(tmp_path / "missing.ndc"), "-o", str(tmp_path / "a.png"), *m],
                 ["segment", str(bad), "-o", str(tmp_path / "a.png"), *m],
                 ["segment", str(notimg), "-o", str(tmp_path / "a.png"), *m],
                 ["segment", str(FRAME), "-o", str(tmp_path / "a.jpg"), *m],
                 ["segment", str(FRAME), "-o", str(tmp_path / "a.png"), "--segmenter", str(notimg)],
                 ["eval", "segmenter", str(tiny_segmenter), "--data", str(tmp_path)],
                 ["train", "segmenter", "--data", str(CAMVID), "--out", str(tmp_path / "r"), "--model", "cresnet51"],
                 ["train", "segmenter", "--data", str(CAMVID), "--out", str(tmp_path / "r"), "--model", "resnet50_d"]):
        assert main(args) == 2, args
        assert capsys.readouterr().err.startswith("nodecode: error:")
    assert not (tmp_path / "a.png").exists()
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)           # no bundled segmenter: one line, exit 2
    assert main(["segment", str(FRAME), "-o", str(tmp_path / "a.png")]) == 2
    assert "no bundled segmenter" in capsys.readouterr().err
    from nodecode.demo import demo_segmentation
    assert demo_segmentation(tmp_path, "cpu") == []
    assert "segmentation skipped" in capsys.readouterr().out


def test_codec_augmentation_encodes_the_mirrored_rgb_crop(small_codec):
    """--augment codec: the latent arm gets encode(crop of the mirrored frame), on the same crops as the RGB arm."""
    from functools import partial
    from nodecode.data.codec_augment import through_codec
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 255, (6, 3, 48, 64), generator=g, dtype=torch.uint8)
    labels = rgb[:, 0].clone()
    plain = SegBatches(rgb, labels, InputPipeline("rgb", torch.zeros(3)), 4, crop=32, seed=3)
    arm = SegBatches(rgb, labels, InputPipeline("latent", torch.zeros(8), small_codec), 4, crop=32, seed=3,
                     arm=partial(through_codec, kind="latent", codec=small_codec))
    (xr, yr), (xl, yl) = plain(5), arm(5)
    assert xl.shape == (4, 8, 4, 4) and torch.equal(yr, yl)
    assert torch.equal(xl, small_codec.latent(small_codec.encode_symbols(xr / 255)))
