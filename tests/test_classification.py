"""Classification (§4, App. A.4): inputs equal real .ndc symbols, augmentation, resume, DDP, top-k, inference."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from nodecode.codec.files import compress_file
from nodecode.codec.zoo import load_codec
from nodecode.data.augment import Batches, InputPipeline, _reflect
from nodecode.data.classification import load_inputs
from nodecode.data.folders import load_rgb, prepare_image, scan_image_folder
from nodecode.data.latents import channel_mean
from nodecode.eval.metrics import topk_accuracy
from nodecode.tasks.classification import (ClassifierTrainConfig, evaluate_classifier, load_classifier,
                                           save_classifier, train_classifier)
from nodecode.tasks.inference import classify_files

from conftest import IMAGENETTE, imagenette_subset, needs, run_ddp

pytestmark = needs(IMAGENETTE)
CLASSES = ["n01440764", "n02102040", "n02979186"]   # tench, English springer, cassette player
PER_SPLIT = {"train": 5, "val": 2}                   # 15 + 6 real photos


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 3-class ImageFolder of symlinks to real Imagenette images, with classes.tsv."""
    return imagenette_subset(tmp_path_factory.mktemp("nette"), CLASSES, PER_SPLIT, names=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def c8():
    return load_codec("c8")


def small_cfg(folder, cache, out, **kw) -> ClassifierTrainConfig:
    base = dict(data=str(folder), out=str(out), model="cresnet39", input="latent", codec="c8", width=0.125, epochs=2,
                lr_epochs=(1,), batch_size=4, cache_dir=str(cache), log_every=1, progress=False, eval_batch=4)
    return ClassifierTrainConfig(**{**base, **kw})


def test_image_folder_rgb_cache_and_resize(folder, cache):
    f = scan_image_folder(folder / "train")
    assert f.classes == CLASSES and f.names[:2] == ["tench", "English springer"]
    assert f.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    rgb = load_rgb(f, cache)
    assert rgb.shape == (15, 3, 224, 224) and rgb.dtype == torch.uint8
    d = cache / f"imagefolder-{f.key()}"
    assert (d / "rgb.npy").exists() and json.loads((d / "folder.json").read_text())["classes"] == CLASSES
    assert torch.equal(load_rgb(f, cache), rgb)                          # from the cache
    img = rgb[0].permute(1, 2, 0).numpy()
    assert prepare_image(img) is img                                     # 224x224: as it is
    wide = np.ascontiguousarray(np.concatenate([img, img[:, :76]], axis=1))  # 224x300: short side -> 256, centre crop
    assert prepare_image(wide).shape == (224, 224, 3)
    with pytest.raises(Exception, match="not among"):
        scan_image_folder(folder / "val", classes=CLASSES[:2])


def test_latent_cache_equals_symbols_of_real_ndc_files(folder, cache, c8, tmp_path):
    """The cached symbols (batched encoder) are what real .ndc files of the same images entropy-decode to."""
    f = scan_image_folder(folder / "val")
    z, info = load_inputs(f, "latent", c8, cache_dir=cache)
    assert z.shape == (6, 8, 28, 28) and z.dtype == torch.uint8
    bpp = []
    for i in (0, 2, 5):
        stats = compress_file(f.files[i], tmp_path / f"{i}.ndc", c8)
        header, sym = c8.read_symbols((tmp_path / f"{i}.ndc").read_bytes())
        assert (header.height, header.width) == (224, 224)
        assert np.array_equal(sym, z[i].numpy().astype(np.int32))
        bpp.append(stats["bpp"])
    from nodecode.data.latents import ndc_bpp
    per_image = ndc_bpp(c8, z.numpy(), 224, 224)
    assert per_image[[0, 2, 5]].tolist() == pytest.approx(bpp)                          # real file sizes
    assert info["bpp"] == pytest.approx(per_image.mean())
    dec, _ = load_inputs(f, "decoded", c8, cache_dir=cache)                              # x̂ of exactly those symbols
    x_hat = c8.decompress((tmp_path / "2.ndc").read_bytes())[0].mul(255).round().to(torch.uint8)
    assert dec.shape == (6, 3, 224, 224) and (dec[2].int() - x_hat.int()).abs().max() <= 1


def test_webp_inputs_near_target_bpp(folder, cache):
    f = scan_image_folder(folder / "val", max_per_class=1)
    x, info = load_inputs(f, "webp", webp_bpp=0.5, cache_dir=cache)
    assert x.shape == (3, 3, 224, 224) and abs(info["bpp"] - 0.5) < 0.1
    assert not torch.equal(x, load_rgb(f, cache))


def test_augmentation_mirror_crop_and_centering(folder, cache, c8):
    f = scan_image_folder(folder / "train")
    z, _ = load_inputs(f, "latent", c8, cache_dir=cache)
    mean = channel_mean(z, "latent", c8)
    assert torch.allclose(mean, c8.latent(z).mean(dim=(0, 2, 3)), atol=1e-5)
    pipe = InputPipeline("latent", mean, c8)
    assert pipe(z).mean(dim=(0, 2, 3)).abs().max() < 1e-5                 # centred over the training set
    full = pipe(z[:4])
    assert full.shape == (4, 8, 28, 28)
    n = 4
    keep = (torch.zeros(n, dtype=torch.bool), torch.full((n,), 4), torch.full((n,), 4), torch.full((n,), 4))
    assert torch.equal(pipe(z[:4], keep), full)                           # centred window, no mirror = identity
    mirror = (torch.ones(n, dtype=torch.bool),) + keep[1:]
    assert torch.equal(pipe(z[:4], mirror), full.flip(-1))
    params = pipe.crop_params(n, 28, torch.Generator().manual_seed(0))
    out = pipe(z[:4], params)
    ref = F.pad(full, (4, 4, 4, 4), mode="reflect")                       # reference: reflect pad, crop, mirror
    for i in range(n):
        y, x = int(params[1][i]), int(params[2][i])
        w = ref[i, :, y: y + 28, x: x + 28]
        assert torch.equal(out[i], w.flip(-1) if params[0][i] else w)
    rgb = load_rgb(f, cache)[:2]
    rgb_pipe = InputPipeline("rgb", channel_mean(rgb, "rgb"))
    x = rgb_pipe(rgb, rgb_pipe.crop_params(2, 224, torch.Generator()))
    assert int(rgb_pipe.crop_params(1, 224, torch.Generator())[3]) == 32          # RGB pad 32 = 4 latent px * 8
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(_reflect(torch.arange(-3, 7), 4), torch.tensor([3, 2, 1, 0, 1, 2, 3, 2, 1, 0]))


def test_batches_seeded_by_epoch_and_sharded(folder, cache, c8):
    z, _ = load_inputs(scan_image_folder(folder / "train"), "latent", c8, cache_dir=cache)
    y = torch.arange(15)
    pipe = InputPipeline("latent", torch.zeros(8), c8)
    one = Batches(z, y, pipe, 6, seed=3)
    assert one.steps_per_epoch == 2
    seen = torch.cat([one.global_indices(s) for s in (0, 1)])
    assert len(set(seen.tolist())) == 12 and not torch.equal(one.global_indices(0), one.global_indices(2))
    x0, y0 = one(5)
    x1, y1 = Batches(z, y, pipe, 6, seed=3)(5)                           # a fresh object (a resumed run): same batch
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    halves = [Batches(z, y, pipe, 6, seed=3, rank=r, world=2)(5) for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), x0) and torch.equal(torch.cat([h[1] for h in halves]), y0)


def test_train_resume_continues_and_topk_is_right(folder, cache, tmp_path):
    cfg = small_cfg(folder, cache, tmp_path / "cut", max_minutes=0.0)
    train_classifier(cfg)                                                 # budget 0: stops after step 1, checkpointed
    assert not (tmp_path / "cut" / "classifier.safetensors").exists()
    from safetensors import safe_open
    with safe_open(str(tmp_path / "cut" / "last.safetensors"), "pt") as fh:
        assert json.loads(fh.metadata()["nodecode"])["meta"]["step"] == 1
    train_classifier(replace(cfg, max_minutes=None))                      # resumes at step 1 and finishes
    log = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["split"] == "train"] == list(range(1, 7))
    assert [r["epoch"] for r in log if r["split"] == "val"] == [1.0, 2.0]
    lrs = [r["lr"] for r in log if r["split"] == "train"]
    assert lrs[:3] == [0.025 * 4 / 64] * 3 and lrs[3:] == pytest.approx([0.025 * 4 / 640] * 3)
    train_classifier(replace(cfg, out=str(tmp_path / "whole"), max_minutes=None))
    cut, whole = (load_file(str(tmp_path / d / "classifier.safetensors")) for d in ("cut", "whole"))
    assert all(torch.equal(cut[k], whole[k]) for k in whole)              # the cut run is the uninterrupted run

    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    res = evaluate_classifier(tmp_path / "cut", folder, "val", cache_dir=str(cache))
    assert res["n"] == 6 and res["top1"] == pytest.approx(summary["val"]["top1"])
    model, meta = load_classifier(tmp_path / "cut")
    assert meta["classes"] == CLASSES and meta["input"] == "latent" and len(meta["mean"]) == 8
    z, _ = load_inputs(scan_image_folder(folder / "val"), "latent", load_codec("c8"), cache_dir=cache)
    with torch.no_grad():
        logits = model(load_codec("c8").latent(z) - torch.tensor(meta["mean"]).view(1, -1, 1, 1))
    want = topk_accuracy(logits, torch.tensor([0, 0, 1, 1, 2, 2]), (1, 5))
    assert (res["top1"], res["top5"]) == (pytest.approx(want[1]), 1.0)
    with torch.no_grad():                                                 # fixed prediction 2 > 1 > 0 for every image
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    save_classifier(model, tmp_path / "fixed.safetensors", meta)
    res = evaluate_classifier(tmp_path / "fixed.safetensors", folder / "val", cache_dir=str(cache))
    assert (res["top1"], res["top5"]) == (pytest.approx(2 / 6), 1.0)


def test_two_process_ddp_matches_one_process(folder, cache, tmp_path):
    """gloo DDP, 2 x 2 images, gives the weights of one process on batch 4 with BatchNorm over groups of 2."""
    train_classifier(small_cfg(folder, cache, tmp_path / "one", bn_batch=2))
    run_ddp(train_classifier, small_cfg(folder, cache, tmp_path / "ddp"))
    one, ddp = (load_file(str(tmp_path / d / "classifier.safetensors")) for d in ("one", "ddp"))
    model, _ = load_classifier(tmp_path / "one")
    params = [k for k, _ in model.named_parameters()]                     # BN running stats differ by design
    assert len(params) > 50
    for k in params:
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2


def test_classify_ndc_files_without_decoding(folder, cache, tmp_path, monkeypatch):
    from nodecode.codec.autoencoder import CompressionModel
    train_classifier(small_cfg(folder, cache, tmp_path / "run", epochs=1))
    img = sorted((folder / "val" / CLASSES[1]).iterdir())[0]
    compress_file(img, tmp_path / "a.ndc", load_codec("c8"))

    def boom(*a, **k):
        raise AssertionError("the decoder ran")
    monkeypatch.setattr(CompressionModel, "decode_latent", boom)
    monkeypatch.setattr(CompressionModel, "decompress", boom)
    a, b = classify_files([tmp_path / "a.ndc", img], tmp_path / "run")
    assert (a["read"], b["read"]) == ("ndc-symbols", "image-encoded")
    assert len(a["top"]) == 3 and a["label"] in CLASSES and sum(t["prob"] for t in a["top"]) == pytest.approx(1.0)
    assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
    assert [t["prob"] for t in a["top"]] == pytest.approx([t["prob"] for t in b["top"]], abs=1e-5)


def test_bundled_classifier_is_fp16_and_picked_by_the_files_point(folder, cache, tmp_path, monkeypatch, capsys):
    """save_classifier(half=True) + `python -m nodecode.zoo import-legacy` is what ships; without --classifier a
    .ndc goes to its own point's classifier, and that needs only the codec's centers and tables."""
    import shutil
    from nodecode import zoo
    from nodecode.cli import main
    from nodecode.codec.autoencoder import CompressionModel
    from nodecode.zoo.__main__ import main as zoo_main
    train_classifier(small_cfg(folder, cache, tmp_path / "run", epochs=1))
    model, meta = load_classifier(tmp_path / "run")
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("c8", "c16"):                                            # a zoo of two codecs, no classifier
        shutil.copy(zoo.WEIGHTS_DIR / f"{name}.safetensors", weights)
    (weights / "zoo.json").write_text(json.dumps({n: json.loads(c.to_json()) for n, c in zoo.index().items()
                                                  if n in ("c8", "c16")}))
    save_classifier(model, tmp_path / "half.safetensors", meta, half=True)
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", weights)
    assert zoo_main(["import-legacy", str(tmp_path / "half.safetensors"), "classifier-c8"]) == 0
    cfg = zoo.read_cfg(weights / "classifier-c8.safetensors")
    assert cfg == zoo.index()["classifier-c8"] and cfg.fingerprint == zoo.index()["c8"].fingerprint
    assert cfg.architecture == meta["model"] and list(cfg.classes) == CLASSES and list(cfg.mean) == meta["mean"]
    stored = load_file(str(weights / "classifier-c8.safetensors"))
    assert all(v.dtype == torch.float16 for k, v in stored.items() if v.is_floating_point())
    img = sorted((folder / "val" / CLASSES[1]).iterdir())[0]
    compress_file(img, tmp_path / "a.ndc", load_codec("c8"))
    compress_file(img, tmp_path / "b.ndc", load_codec("c16"))
    monkeypatch.setattr(CompressionModel, "__init__", None)               # no codec network is built below
    full, = classify_files([tmp_path / "a.ndc"], tmp_path / "run")
    half, = classify_files([tmp_path / "a.ndc"])
    assert half["classifier"] == "classifier-c8" and half["label"] == full["label"]
    assert [t["prob"] for t in half["top"]] == pytest.approx([t["prob"] for t in full["top"]], abs=2e-2)
    assert main(["classify", str(tmp_path / "b.ndc")]) == 2              # no bundled c16 classifier here
    assert capsys.readouterr().err.startswith("nodecode: error: no bundled classifier for 'c16'")
