"""Tests for nodecode.eval: image metrics, top-k / mIoU, and the classical-codec baselines."""
import io
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from nodecode.data.images import load_image
from nodecode.errors import NodecodeError
from nodecode.codec import classical as B
from conftest import KODAK
from nodecode.eval import metrics as M

KODIM23 = KODAK / "kodim23.png"


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """A 256x256 crop of kodim23 (the parrots: edges, flat areas and texture)."""
    if not KODIM23.exists():
        pytest.skip(f"{KODIM23} not present")
    return load_image(KODIM23)[128:384, 256:512].copy()


def noisy(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).round().astype(np.uint8)


# ---------------------------------------------------------------- image metrics

def test_identical_images(crop):
    assert M.psnr(crop, crop) == M.PSNR_CAP_DB == 100.0
    assert M.ssim(crop, crop) == pytest.approx(1.0, abs=1e-5)
    assert M.ms_ssim(crop, crop) == pytest.approx(1.0, abs=1e-5)
    assert set(M.image_metrics(crop, crop)) == {"psnr", "ssim", "ms_ssim"}


def test_psnr_known_values(crop):
    a = np.full((4, 6, 3), 100, np.uint8)
    assert M.psnr(a, a + 1) == pytest.approx(20 * math.log10(255), abs=1e-9)  # MSE 1 -> 48.13 dB
    b = a.copy()
    b[0, 0, 0] = 110  # one value off by 10: MSE = 100 / 72
    assert M.psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 * 72 / 100), abs=1e-9)
    x = noisy(crop, 7.0)
    mse = np.mean((crop.astype(np.int64) - x.astype(np.int64)) ** 2)
    assert M.psnr(crop, x) == pytest.approx(10 * np.log10(255.0 ** 2 / mse), abs=1e-9)
    assert M.psnr(crop, x) == M.psnr(x, crop)


def test_noise_lowers_every_metric(crop):
    light, heavy = M.image_metrics(crop, noisy(crop, 4.0)), M.image_metrics(crop, noisy(crop, 20.0))
    for k in ("psnr", "ssim", "ms_ssim"):
        assert heavy[k] < light[k] < (100.0 if k == "psnr" else 1.0)
    assert 30 < light["psnr"] < 40 and 18 < heavy["psnr"] < 24
    assert heavy["ssim"] < 0.8


def test_ssim_matches_skimage(crop):
    skm = pytest.importorskip("skimage.metrics")
    x = noisy(crop, 10.0)
    ref = skm.structural_similarity(crop, x, data_range=255, channel_axis=2, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False)
    assert M.ssim(crop, x) == pytest.approx(ref, abs=2e-4)


def test_ms_ssim_levels():
    assert M.ms_ssim_levels(512, 768) == 5
    assert M.ms_ssim_levels(161, 400) == 5
    assert M.ms_ssim_levels(400, 160) == 4
    assert M.ms_ssim_levels(81, 81) == 4
    assert M.ms_ssim_levels(80, 300) == 3
    assert M.ms_ssim_levels(21, 21) == 2
    assert M.ms_ssim_levels(20, 20) == 1
    assert M.ms_ssim_levels(5, 5) == 1


def test_ms_ssim_fallback_loop_is_pytorch_msssim(crop):
    x = noisy(crop, 10.0)
    a, b = M._nchw(crop), M._nchw(x)
    assert M._ms_ssim_levels(a, b, 5) == pytest.approx(M.ms_ssim(crop, x), abs=1e-6)  # same loop as the library
    assert M._ms_ssim_levels(a, b, 1) == pytest.approx(M.ssim(crop, x), abs=1e-6)  # one scale = SSIM


@pytest.mark.parametrize("side", [160, 100, 40, 12, 8])
def test_ms_ssim_small_images_do_not_crash(crop, side):
    a, x = crop[:side, :side], noisy(crop, 10.0)[:side, :side]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sides < 11: pytorch_msssim warns it skips the smoothing
        v, same = M.ms_ssim(a, x), M.ms_ssim(a, a)
    assert 0.0 < v < 1.0 and same == pytest.approx(1.0, abs=1e-5)


def test_metric_input_errors(crop):
    with pytest.raises(NodecodeError, match="shape"):
        M.psnr(crop, crop[:-1])
    with pytest.raises(NodecodeError, match="uint8"):
        M.ssim(crop.astype(np.float32), crop)
    with pytest.raises(NodecodeError, match="uint8"):
        M.ms_ssim(crop, crop[..., 0])


# ---------------------------------------------------------------- task metrics

def test_topk_accuracy():
    logits = torch.tensor([
        [0.1, 0.5, 0.2, 0.9, 0.0, 0.3],  # order 3 1 5 2 0 4
        [2.0, 1.0, 0.0, -1.0, -2.0, -3.0],  # order 0 1 2 3 4 5
        [0.0, 0.0, 0.0, 0.0, 1.0, 0.5],  # order 4 5 ...
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # order 0 1 2 3 4 5
    ])
    targets = torch.tensor([3, 2, 4, 5])  # ranks 1, 3, 1, 6
    acc = M.topk_accuracy(logits, targets, ks=(1, 2, 3, 5, 6, 10))
    assert acc == {1: 0.5, 2: 0.5, 3: 0.75, 5: 0.75, 6: 1.0, 10: 1.0}
    assert M.topk_accuracy(logits, targets) == {1: 0.5, 5: 0.75}
    with pytest.raises(ValueError):
        M.topk_accuracy(logits, targets[:3])


def test_confusion_matrix_and_miou():
    target = torch.tensor([[0, 0, 1], [1, 2, 2]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 0]])
    # class 0: TP 1, FP 1, FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2
    cm = M.ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert torch.allclose(cm.iou(), torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64))
    assert cm.miou() == pytest.approx(0.5)
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)
    # a class in neither target nor prediction is NaN and left out of the mean
    assert M.miou(pred, target, num_classes=4) == pytest.approx(0.5)
    cm4 = M.ConfusionMatrix(4)
    cm4.update(pred, target)
    assert math.isnan(float(cm4.iou()[3]))
    # ignore_index pixels are skipped whatever was predicted there
    t_ign = torch.cat([target, torch.full((2, 3), 11)], dim=1)
    p_ign = torch.cat([pred, torch.tensor([[0, 1, 2], [2, 1, 0]])], dim=1)
    assert M.miou(p_ign, t_ign, num_classes=11, ignore_index=11) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="outside"):
        M.miou(p_ign, t_ign, num_classes=11)  # 11 is not a class and not ignored
    # scores (N, C, H, W) are argmaxed; updates accumulate
    scores = torch.nn.functional.one_hot(pred, 3).permute(2, 0, 1).unsqueeze(0).float()
    cm2 = M.ConfusionMatrix(3)
    cm2.update(scores, target.unsqueeze(0))
    cm2.update(target, target)  # a perfect second batch
    assert cm2.mat.tolist() == [[3, 1, 0], [0, 4, 0], [1, 0, 3]]
    assert cm2.miou() == pytest.approx((3 / 5 + 4 / 5 + 3 / 4) / 3)


# ---------------------------------------------------------------- classical codecs

def bpp_of(data: bytes, img: np.ndarray) -> float:
    return len(data) * 8 / (img.shape[0] * img.shape[1])


@pytest.mark.parametrize("codec,quality", [("jpeg", 50), ("jpeg2000", 48.0), ("webp", 50), ("avif", 50)])
def test_roundtrip(crop, codec, quality):
    data = B.encode(crop, codec, quality)
    out = B.decode(data)
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert 25.0 < M.psnr(crop, out) < 60.0


def test_codec_settings(crop):
    data = B.encode(crop, "jpeg", 50)
    with Image.open(io.BytesIO(data)) as im:
        assert JpegImagePlugin.get_sampling(im) == 2  # 4:2:0
    assert B.encode(crop, "jpeg2000", 48.0)[:4] == b"\xff\x4f\xff\x51"  # raw codestream: SOC, SIZ
    assert B.encode(crop, "webp", 50)[8:12] == b"WEBP"
    assert B.encode(crop, "avif", 50)[4:12] == b"ftypavif"
    # the 9/7 + colour transform settings beat Pillow's JPEG 2000 defaults (5/3, no MCT) at the same rate
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, "JPEG2000", no_jp2=True, quality_mode="rates", quality_layers=[48.0])
    ours = B.encode(crop, "jpeg2000", 48.0)
    assert bpp_of(ours, crop) <= bpp_of(buf.getvalue(), crop) * 1.02
    assert M.psnr(crop, B.decode(ours)) > M.psnr(crop, B.decode(buf.getvalue())) + 1.0


@pytest.mark.parametrize("codec", B.CLASSICAL_CODECS)
def test_match_bpp_lands_near_target_and_is_monotone(crop, codec):
    tol = 0.03 if codec == "jpeg2000" else 0.08  # rates move in steps of a few % on a 256x256 crop (J2K: passes)
    bpps = []
    for target in (0.3, 1.2) if codec == "avif" else (0.3, 0.6, 1.2):  # AVIF's search is the slow one
        data, bpp, q = B.match_bpp(crop, codec, target)
        assert bpp == bpp_of(data, crop)  # the real file size, nothing else
        assert abs(bpp - target) <= tol * target, (codec, target, bpp, q)
        assert B.decode(data).shape == crop.shape
        bpps.append(bpp)
    assert bpps == sorted(bpps)


def test_match_bpp_jpeg_is_closest_of_all_qualities(crop):
    sizes = {q: bpp_of(B.encode(crop, "jpeg", q), crop) for q in range(1, 101)}
    targets = [0.37, 0.81, 2.5]
    for q in (20, 60):  # just above and just below a file's rate: the closest file is that one, either way
        assert sizes[q - 1] < sizes[q] < sizes[q + 1]
        targets += [sizes[q] - 0.2 * (sizes[q] - sizes[q - 1]), sizes[q] + 0.2 * (sizes[q + 1] - sizes[q])]
    for target in targets:
        _, bpp, q = B.match_bpp(crop, "jpeg", target)
        assert abs(bpp - target) == min(abs(b - target) for b in sizes.values())
        assert bpp == sizes[q]


def test_match_bpp_unreachable_targets_return_the_extreme_real_file(crop):
    data, bpp, q = B.match_bpp(crop, "jpeg", 0.01)
    assert q == 1 and bpp == bpp_of(data, crop) > 0.05  # JPEG can't go this low: its smallest file, honestly
    data, bpp, q = B.match_bpp(crop, "webp", 50.0)
    assert q == 100 and bpp == bpp_of(data, crop) < 50.0


def test_codec_errors(crop):
    with pytest.raises(NodecodeError, match="unknown codec"):
        B.encode(crop, "bpg", 50)
    with pytest.raises(NodecodeError, match="unknown codec"):
        B.match_bpp(crop, "heic", 0.5)
    with pytest.raises(NodecodeError, match="quality"):
        B.encode(crop, "webp", 101)
    with pytest.raises(NodecodeError, match="ratio"):
        B.encode(crop, "jpeg2000", 0.5)
    with pytest.raises(NodecodeError, match="decode"):
        B.decode(b"not an image at all")
    with pytest.raises(NodecodeError, match="uint8"):
        B.encode(crop.astype(np.float32), "jpeg", 50)
