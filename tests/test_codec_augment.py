"""Issue 12: augmentation through the codec, the recipes, the held-out split of train."""
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from nodecode.codec.zoo import load_codec
from nodecode.data.augment import InputPipeline, generator
from nodecode.data.classification import holdout_split, load_inputs
from nodecode.data.codec_augment import (CodecAugmentBatches, cutmix_params, paste_boxes, resized_crop_params,
                                         resized_crops, through_codec)
from nodecode.data.folders import load_rgb, scan_image_folder
from nodecode.models import create_model
from nodecode.tasks.classification import ClassifierTrainConfig, train_classifier
from nodecode.tasks.recipe import RECIPES, Recipe, param_groups, sgd

from conftest import IMAGENETTE, imagenette_subset, needs

CLASSES = ["n01440764", "n02102040", "n02979186"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return imagenette_subset(tmp_path_factory.mktemp("nette"), CLASSES, {"train": 4, "val": 1})


@pytest.fixture(scope="module")
def rgb(folder, tmp_path_factory):
    return load_rgb(scan_image_folder(folder / "train"), tmp_path_factory.mktemp("cache"), size=64)


@pytest.fixture(scope="module")
def c8():
    return load_codec("c8")


@needs(IMAGENETTE)
def test_full_box_is_identity_and_mirror_is_a_true_flip(rgb):
    full = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]]).repeat(len(rgb), 1)
    assert torch.equal(resized_crops(rgb, full), rgb)
    full[:, 0] = 1
    assert torch.equal(resized_crops(rgb, full), rgb.flip(-1))
    boxes = resized_crop_params(500, torch.Generator().manual_seed(0))
    area = boxes[:, 3] * boxes[:, 4]
    assert area.min() >= 0.35 * 0.99 and area.max() <= 1 + 1e-6 and 0.4 < boxes[:, 0].mean() < 0.6
    assert (boxes[:, 1] + boxes[:, 3] <= 1 + 1e-6).all() and (boxes[:, 2] + boxes[:, 4] <= 1 + 1e-6).all()


@needs(IMAGENETTE)
def test_mirrored_image_latent_is_used_not_a_mirrored_latent(rgb, c8):
    """The latent arm of a mirrored image is encode(flip(image)), which is not flip(encode(image))."""
    x = rgb[:3]
    mirror = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0]]).repeat(3, 1)
    z = through_codec(resized_crops(x, mirror), "latent", c8)
    assert z.dtype == torch.uint8 and z.shape == (3, 8, 8, 8)
    assert torch.equal(z, c8.encode_symbols(x.flip(-1).float() / 255).to(torch.uint8))
    assert not torch.equal(z, c8.encode_symbols(x.float() / 255).to(torch.uint8).flip(-1))
    dec = through_codec(x, "decoded", c8)
    ref = c8.decode_latent(c8.latent(c8.encode_symbols(x.float() / 255)), (64, 64)).mul(255).round().to(torch.uint8)
    assert torch.equal(dec, ref) and torch.equal(through_codec(x, "rgb"), x)


@needs(IMAGENETTE)
def test_arms_draw_the_same_augmentation_per_step(rgb, c8):
    y = torch.arange(len(rgb)) % 3
    arms = {k: CodecAugmentBatches(rgb, y, InputPipeline(k, torch.zeros(8 if k == "latent" else 3), c8), 4, k, c8,
                                   seed=5) for k in ("rgb", "decoded", "latent")}
    for step in (0, 3):
        boxes = [b.params(4, step) for b in arms.values()]
        assert all(torch.equal(boxes[0], b) for b in boxes[1:])
        (xr, yr), (xd, yd), (xl, yl) = (b(step) for b in arms.values())
        assert torch.equal(yr, yd) and torch.equal(yr, yl)
        u8 = xr.round().to(torch.uint8)                                          # the rgb arm: the augmented images
        assert torch.equal(xl, c8.latent(c8.encode_symbols(u8.float() / 255)))    # latent arm: ŷ of exactly those
        assert torch.equal(xd.to(torch.uint8), through_codec(u8, "decoded", c8))
    assert not torch.equal(arms["rgb"].params(4, 0), arms["rgb"].params(4, 1))


@needs(IMAGENETTE)
def test_cutmix_pastes_the_partners_crop_before_the_codec_with_area_weighted_labels(rgb, c8):
    """CutMix: inside its box an image shows its partner's augmented crop, outside its own; the soft label weighs the
    two classes by the pixels each keeps; every arm draws the same partners and boxes (the latent arm encodes the
    mixed image); two processes together give the one-process batch."""
    y = torch.arange(len(rgb)) % 3
    pipe = {k: InputPipeline(k, torch.zeros(8 if k == "latent" else 3), c8) for k in ("rgb", "latent")}
    mix = {k: CodecAugmentBatches(rgb, y, pipe[k], 6, k, c8, seed=2, cutmix=3) for k in pipe}
    plain = CodecAugmentBatches(rgb, y, pipe["rgb"], 6, "rgb", seed=2)
    step = 1
    idx, boxes = plain.global_indices(step), plain.params(6, step)
    perm, cut = cutmix_params(6, generator(2, 3, step))                   # what the batches draw at this step
    assert perm.sort().values.tolist() == list(range(6)) and (cut[:, 2:] <= 1).all()
    (xr, yr), (xl, yl) = mix["rgb"](step), mix["latent"](step)
    own = resized_crops(rgb[idx], boxes)
    assert torch.equal(plain(step)[0].round().to(torch.uint8), own)     # without CutMix: the crops themselves
    mixed, lam = paste_boxes(own, own[perm], cut)                         # the partner's crop inside the box
    assert torch.equal(xr.round().to(torch.uint8), mixed) and not torch.equal(mixed, own) and (lam < 1).any()
    onehot = torch.nn.functional.one_hot
    assert torch.allclose(yr, lam[:, None] * onehot(y[idx], 3) + (1 - lam[:, None]) * onehot(y[idx[perm]], 3))
    assert yr.shape == (6, 3) and torch.allclose(yr.sum(1), torch.ones(6)) and torch.equal(yr, yl)
    assert torch.equal(xl, c8.latent(c8.encode_symbols(xr.round().to(torch.uint8).float() / 255)))
    halves = [CodecAugmentBatches(rgb, y, pipe["rgb"], 6, "rgb", seed=2, rank=r, world=2, cutmix=3)(step)
              for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), xr) and torch.equal(torch.cat([h[1] for h in halves]), yr)
    x = torch.zeros(1, 3, 10, 10, dtype=torch.uint8)
    out, lam = paste_boxes(x, torch.full_like(x, 255), torch.tensor([[0.2, 0.0, 0.5, 1.0]]))
    assert out[0, 0, 2:7].eq(255).all() and out[0, 0, :2].eq(0).all() and lam.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="on-the-fly"):
        CodecAugmentBatches(rgb, y, pipe["rgb"], 6, "rgb", seed=2, cutmix=3, variants=1)
    with pytest.raises(Exception, match="CutMix"):
        Recipe().with_overrides(cutmix=True)                               # augment input: no CutMix


@needs(IMAGENETTE)
def test_cached_variants(rgb, c8):
    y = torch.arange(len(rgb))
    b = CodecAugmentBatches(rgb, y, InputPipeline("latent", torch.zeros(8), c8), 4, "latent", c8, seed=1, variants=2)
    assert b.variants.shape == (2, len(rgb), 8, 8, 8)
    x, yb = b(2)
    for row, i in zip(x, yb.tolist()):
        assert any(torch.equal(row, c8.latent(b.variants[v, i])) for v in range(2))


def test_recipes_and_weight_decay_on_weights_only():
    paper = ClassifierTrainConfig(data="d", out="o").recipe_values()
    assert paper == RECIPES["paper"] and paper.lr() == 0.025 and paper.lr_epochs == (8, 16, 24)
    assert paper.lr_factor(8 * 10 - 1, 10) == 1 and paper.lr_factor(8 * 10, 10) == pytest.approx(0.1)
    new = ClassifierTrainConfig(data="d", out="o", recipe="imagenette", epochs=10).recipe_values()
    assert (new.epochs, new.batch_size, new.lr(), new.weight_decay, new.label_smoothing, new.augment) == \
        (10, 128, 0.2, 5e-4, 0.1, "codec") and new.nesterov
    assert new.lr_factor(0, 10) == pytest.approx(0.05) and new.lr_factor(19, 10) == 1      # 2-epoch warm-up
    won = ClassifierTrainConfig(data="d", out="o", recipe="imagenette60").recipe_values()   # the search's winner
    assert won.epochs == 60 and replace(won, epochs=40) == RECIPES["imagenette"]
    assert new.lr_factor(20 + 40, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    model = create_model("resnet50", in_channels=3, num_classes=3, width=0.125)
    decay, rest = param_groups(model, 5e-4)
    norms_biases = {id(p) for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Linear))
                    for n, p in m.named_parameters(recurse=False) if isinstance(m, torch.nn.BatchNorm2d) or n == "bias"}
    assert norms_biases and {id(p) for p in rest["params"]} == norms_biases and rest["weight_decay"] == 0
    assert decay["weight_decay"] == 5e-4 and all(p.ndim == 4 or p.ndim == 2 for p in decay["params"])
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))
    opt = sgd(model, new)
    assert opt.defaults["nesterov"] and opt.param_groups[0]["lr"] == pytest.approx(0.2)
    with pytest.raises(Exception, match="augmentation"):
        Recipe().with_overrides(augment="mirror")


def test_holdout_split_disjoint_stratified_deterministic():
    labels = np.repeat(np.arange(4), 50)
    kept, held = holdout_split(labels, 0.1, seed=0)
    assert len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == 200
    assert np.bincount(labels[held]).tolist() == [5] * 4
    k2, h2 = holdout_split(labels, 0.1, seed=0)
    assert np.array_equal(held, h2) and np.array_equal(kept, k2)
    assert not np.array_equal(held, holdout_split(labels, 0.1, seed=1)[1])


@needs(IMAGENETTE)
def test_train_imagenette_recipe_on_holdout(folder, tmp_path):
    cfg = ClassifierTrainConfig(data=str(folder), out=str(tmp_path / "r"), model="resnet50", input="rgb", width=0.125,
                                recipe="imagenette", epochs=2, batch_size=4, holdout_frac=0.25, image_size=64,
                                cache_dir=str(tmp_path / "cache"), log_every=1, progress=False, eval_batch=4)
    r = train_classifier(cfg)
    s = r.summary
    assert r.finished and r.step == r.total_steps == 4 and r.metrics["top1"] == s["val"]["top1"]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["eval_on"] == s["eval_on"]
    assert s["eval_on"] == "holdout-0.25" and s["val"]["n"] == 3 and s["train_images"] == 9
    assert s["recipe"]["augment"] == "codec" and s["steps"] == 4
    with pytest.raises(Exception, match="webp"):
        train_classifier(ClassifierTrainConfig(**{**cfg.__dict__, "input": "webp", "out": str(tmp_path / "w")}))
    cut = train_classifier(ClassifierTrainConfig(**{**cfg.__dict__, "cutmix": True, "out": str(tmp_path / "c")}))
    assert cut.finished and cut.summary["recipe"]["cutmix"] and 0 <= cut.metrics["top1"] <= 1   # soft labels train
    with pytest.raises(Exception, match="on the fly"):
        train_classifier(ClassifierTrainConfig(**{**cfg.__dict__, "cutmix": True, "augment_variants": 2,
                                                  "out": str(tmp_path / "v")}))


def test_augment_speed_bench_rows():
    from nodecode.bench.augment_speed import augment_speed, format_rows
    rows = augment_speed("c8", "cpu", batch=2, iters=1, warmup=0, size=32, kinds=("rgb", "latent"), variants=2)
    assert [r["arm"] for r in rows] == ["rgb", "latent"] and all(r["img_per_s"] > 0 for r in rows)
    assert rows[1]["variants_s"] == pytest.approx(2 * rows[1]["epoch_s"]) and "| latent | c8 |" in format_rows(rows)
