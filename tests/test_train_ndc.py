"""`nodecode train classifier --input ndc`: a latent classifier trained from .ndc shards, decoding per batch on the
device, is the classifier trained on the encoder's symbols of the same images (same batches, same steps)."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import IMAGENETTE, imagenette_subset, needs
from nodecode.cli import main
from nodecode.codec.zoo import load_codec
from nodecode.data.classification import load_inputs
from nodecode.data.folders import scan_image_folder
from nodecode.errors import NodecodeError
from nodecode.tasks.classification import ClassifierTrainConfig, train_classifier

pytestmark = needs(IMAGENETTE)
CLASSES = ["n01440764", "n02102040", "n02979186"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same 3-class subset as an ImageFolder and as c8 shards shards/{train,val}.tar (+ classes.tsv)."""
    root = tmp_path_factory.mktemp("ndc-train")
    folder = imagenette_subset(root / "images", CLASSES, {"train": 4, "val": 2}, names=True)
    c8 = load_codec("c8")
    (root / "shards").mkdir()
    for split in ("train", "val"):   # the files of the encoder's (batched) symbols, which the latent kind caches
        images = scan_image_folder(folder / split)
        z, _ = load_inputs(images, "latent", c8, cache_dir=str(root / "cache"))
        for f, zi in zip(images.files, z.numpy()):
            dst = root / "ndc" / split / f.parent.name / f"{f.stem}.ndc"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(c8.pack(zi, 224, 224))
        assert main(["pack", str(root / "ndc" / split), "-o", str(root / "shards" / f"{split}.tar")]) == 0
    shutil.copy(folder / "classes.tsv", root / "shards")
    return folder, root / "shards"


def test_training_from_shards_is_training_on_the_symbols(data, tmp_path):
    folder, shards = data
    args = ["--model", "cresnet39", "--codec", "c8", "--width", "0.125", "--epochs", "2", "--batch-size", "4",
            "--device", "cpu"]
    assert main(["train", "classifier", "--input", "ndc", "--data", str(shards), "--out", str(tmp_path / "ndc"),
                 *args]) == 0
    train_classifier(ClassifierTrainConfig(data=str(folder), out=str(tmp_path / "lat"), model="cresnet39",
                                           input="latent", codec="c8", width=0.125, epochs=2, batch_size=4,
                                           device="cpu", cache_dir=str(tmp_path / "cache")))
    a, b = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("ndc", "lat"))
    assert a["steps"] == b["steps"] == 6 and a["train_images"] == 12 and a["val"]["n"] == 6
    assert a["val"]["top1"] == b["val"]["top1"] and a["val"]["loss"] == pytest.approx(b["val"]["loss"], abs=1e-5)
    assert a["checkpoint"]["input"] == "latent" and a["config"]["input"] == "ndc"
    assert a["checkpoint"]["classes"] == CLASSES and a["checkpoint"]["class_names"][0] == "tench"
    assert a["checkpoint"]["mean"] == pytest.approx(b["checkpoint"]["mean"])
    wa, wb = (load_file(str(tmp_path / r / "classifier.safetensors")) for r in ("ndc", "lat"))
    for k in wa:                       # same inputs and steps; float sums in another order (threads)
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-5)
    from nodecode.data.ndc import NdcSymbols, load_split
    z, _ = load_inputs(scan_image_folder(folder / "train"), "latent", load_codec("c8"), cache_dir=str(tmp_path / "cache"))
    assert torch.equal(NdcSymbols(load_split(shards, "train")[0], load_codec("c8"))[:], z)   # the very same symbols
    # the run is a latent classifier like any other: it classifies .ndc files by their symbols
    ndc = next((shards.parent / "ndc" / "val").rglob("*.ndc"))
    assert main(["classify", str(ndc), "--classifier", str(tmp_path / "ndc")]) == 0


def test_bad_shard_member_is_named(data, tmp_path):
    from nodecode.data.ndc import NdcSymbols, load_split
    _, shards = data
    samples, labels, classes, names = load_split(shards, "val")
    assert len(samples) == 6 and labels.tolist() == [0, 0, 1, 1, 2, 2] and classes == CLASSES
    x = NdcSymbols(samples, load_codec("c8"))
    assert x.shape == (6, 8, 28, 28) and x[torch.tensor([5, 0])].shape == (2, 8, 28, 28) and x[1:3].shape[0] == 2
    samples[3].ndc = samples[3].ndc[:-1]
    with pytest.raises(NodecodeError, match=samples[3].key):
        NdcSymbols(samples, load_codec("c8"))
    assert main(["train", "classifier", "--input", "ndc", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_ndc_is_a_generated_input_and_refuses_codec_augmentation(data, tmp_path, capsys):
    from nodecode.cli import build_parser
    _, shards = data
    tk = build_parser()._subparsers._group_actions[0].choices["train"]._subparsers._group_actions[0].choices
    action = next(a for a in tk["classifier"]._actions if a.dest == "input")
    assert "ndc" in action.choices and "ndc" in action.help
    capsys.readouterr()
    assert main(["train", "classifier", "--input", "ndc", "--data", str(shards), "--out", str(tmp_path / "o"),
                 "--augment", "codec", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--input ndc" in err[0] and not (tmp_path / "o").exists()


def test_ndc_holdout_and_recipe(data, tmp_path):
    """The recipe options and holdout_frac work on shards: the held-out part of train is evaluated, val never read."""
    _, shards = data
    r = train_classifier(ClassifierTrainConfig(data=str(shards), out=str(tmp_path / "h"), model="cresnet39",
                                               input="ndc", codec="c8", width=0.125, recipe="imagenette",
                                               augment="input", epochs=1, batch_size=3, holdout_frac=0.25,
                                               device="cpu"))
    s = r.summary
    assert r.finished and s["eval_on"] == "holdout-0.25" and s["train_images"] == 9 and s["val"]["n"] == 3
    assert s["recipe"]["nesterov"] and s["checkpoint"]["image_size"] == 224 and s["checkpoint"]["input"] == "latent"


def test_streams_are_checked_once_at_load_then_batches_decode_without_status(data):
    """With the Triton kernel (here its CPU interpreter) every stream is decoded once when NdcSymbols is built, a bad
    stream (valid header and CRC, wrong words) is refused there by key, and later batches (no status read back)
    give constriction's symbols."""
    from nodecode.codec import bitstream
    from nodecode.codec.gpu_entropy import triton_available
    from nodecode.data.ndc import NdcSymbols, load_split
    if not triton_available():
        pytest.skip("triton not installed")
    _, shards = data
    codec = load_codec("c8")
    samples = load_split(shards, "val")[0]
    for s in samples:    # 4 x 4 latents: Triton's interpreter pays ~0.1 ms per operation and symbol (~1 min at 28 x 28)
        s.ndc = codec.pack(codec.read_symbols(s.ndc)[1][:, :4, :4], 32, 32)
    x = NdcSymbols(samples, codec, backend="interpret")
    assert x.trusted
    ref = torch.stack([torch.from_numpy(codec.read_symbols(s.ndc)[1]) for s in samples])
    assert torch.equal(x[torch.tensor([4, 1, 0])], ref[[4, 1, 0]]) and torch.equal(x[:], ref)
    header, words = bitstream.unpack(samples[2].ndc)
    samples[2].ndc = bitstream.pack(header, np.concatenate([[7], words]).astype(np.uint32))
    with pytest.raises(NodecodeError, match=samples[2].key):
        NdcSymbols(samples, codec, backend="interpret")
    from nodecode.codec.gpu_entropy import BatchDecoder
    dec = BatchDecoder(codec, "cpu", "interpret")
    assert dec.decode([samples[2].ndc]).errors and not dec.decode([samples[2].ndc], trusted=True).errors  # no status read
