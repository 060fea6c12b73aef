"""classify / segment on many .ndc files: batched entropy decoding (the GPU path's code, run on the CPU with the
numpy reference, Triton's interpreter and constriction) gives the per-file path's answers; bad files are named."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CAMVID, IMAGENETTE, imagenette_ndc, needs
from nodecode.cli import main
from nodecode.codec import bitstream
from nodecode.codec.gpu_entropy import triton_available
from nodecode.codec.reader import open_ndc
from nodecode.codec.zoo import load_codec
from nodecode.data.images import load_image, to_tensor, to_uint8

FRAME = CAMVID / "images" / "val" / "0016E5_07959.jpg"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Four 224² Imagenette val images and two small crops as c8 .ndc files, and four bad ones."""
    if not IMAGENETTE.exists():
        pytest.skip("no Imagenette")
    d = tmp_path_factory.mktemp("many")
    c8 = load_codec("c8")
    good = imagenette_ndc(d, c8, [c.name for c in sorted((IMAGENETTE / "val").iterdir())[:2]], 2, by_class=False)
    img = to_uint8(c8.decompress(good[-1].read_bytes()))                  # 224², for two smaller images
    for i, (h, w) in enumerate([(40, 56), (40, 56)]):       # another image size: another batch
        (d / f"crop{i}.ndc").write_bytes(c8.compress(to_tensor(np.ascontiguousarray(img[i * 8: i * 8 + h, :w]))))
        good.append(d / f"crop{i}.ndc")
    data = good[0].read_bytes()
    _flipped(good[0], d / "flipped.ndc")
    (d / "truncated.ndc").write_bytes(data[:-7])
    (d / "garbage.ndc").write_bytes(b"hello")
    bad = [d / "flipped.ndc", d / "truncated.ndc", d / "garbage.ndc", d / "missing.ndc"]
    return good, bad


def _flipped(src, dst):
    """src with one bit of its middle word flipped, under a valid CRC: only the entropy layer tells."""
    header, words = bitstream.unpack(src.read_bytes())
    words = words.copy()
    words[len(words) // 2] ^= np.uint32(1 << 9)
    dst.write_bytes(bitstream.pack(header, words))
    return dst


def _per_file(paths):
    """The per-file path: one file, one EntropyModel.symbols (constriction) call, one network call."""
    from nodecode.tasks.classification import bundled_classifier, load_pretrained
    from nodecode.tasks.inference import Reader
    model, cfg = load_pretrained(bundled_classifier("c8"), "classifier", "cpu")
    reader = Reader(cfg, torch.device("cpu"))
    out = []
    with torch.no_grad():
        for p in paths:
            out.append(torch.softmax(model(reader.pipeline()(reader.symbols(open_ndc(p)))).float(), 1)[0])
    return cfg, out


@pytest.mark.parametrize("backend", ["constriction", "reference", "interpret"])
def test_batched_classify_gives_the_per_file_labels(files, backend, tmp_path):
    from nodecode.tasks.inference import classify_files
    if backend == "interpret" and not triton_available():
        pytest.skip("triton not installed")
    good, bad = files
    if backend == "interpret":       # the interpreter runs every symbol in Python: the small files, one of them flipped
        good, bad = good[-2:], [_flipped(good[-1], tmp_path / "flipped.ndc")]
    order = [bad[0], *good[:2], *bad[1:], *good[2:]]
    rows = classify_files(order, device="cpu", topk=3, batch=3, backend=backend)
    cfg, ref = _per_file(good)
    by_path = {r["path"]: r for r in rows}
    assert [r["path"] for r in rows] == [str(p) for p in order]
    for p, prob in zip(good, ref):
        r = by_path[str(p)]
        assert r["read"] == "ndc-symbols" and r["label"] == cfg.classes[int(prob.argmax())]
        assert r["top"][0]["prob"] == pytest.approx(float(prob.max()), abs=1e-4)
    for p in bad:
        assert set(by_path[str(p)]) == {"path", "error"} and str(p) in by_path[str(p)]["error"]
    if backend != "interpret":
        assert "entropy decoding failed" in by_path[str(bad[0])]["error"] or "left over" in by_path[str(bad[0])]["error"]
        assert "no such file" in by_path[str(bad[3])]["error"]


def test_cli_classify_many_names_each_bad_file_and_exits_2(files, capsys):
    good, bad = files
    assert main(["classify", *map(str, good)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == [str(p) for p in good]
    assert main(["classify", str(bad[0]), *map(str, good), *map(str, bad[1:]), "--batch", "2"]) == 2
    cap = capsys.readouterr()
    assert [line.split(":")[0] for line in cap.out.splitlines()] == [str(p) for p in good]
    err = cap.err.splitlines()
    assert len(err) == len(bad) and "Traceback" not in cap.err
    assert all(e.startswith("nodecode: error: ") and str(p) in e for e, p in zip(err, bad))


def test_cli_classify_many_with_json(files, tmp_path, capsys):
    """--json [PATH] (issue 14) with many files: stdout is the JSON alone, bad files still one line each on stderr;
    --json PATH writes the rows there and prints the text lines."""
    import json
    good, bad = files
    assert main(["classify", *map(str, good[:2]), str(bad[2]), "--json"]) == 2
    cap = capsys.readouterr()
    rows = json.loads(cap.out)
    assert [r["path"] for r in rows] == [str(good[0]), str(good[1]), str(bad[2])] and "error" in rows[2]
    assert cap.err.splitlines() == [f"nodecode: error: {rows[2]['error']}"]
    assert main(["classify", *map(str, good[:2]), "--batch", "1", "--json", str(tmp_path / "p.json")]) == 0
    assert len(json.loads((tmp_path / "p.json").read_text())) == 2 and len(capsys.readouterr().out.splitlines()) == 2


@needs(FRAME)
@pytest.mark.parametrize("backend", ["constriction", "reference"])
def test_batched_segment_gives_the_per_file_masks(tmp_path, backend):
    from nodecode.models import create_model
    from nodecode.tasks.inference import mask_paths, segment_file, segment_files
    from nodecode.tasks.segmentation import save_segmenter
    torch.manual_seed(0)
    net = create_model("cresnet51_d", in_channels=8, num_classes=11, width=0.0625).eval()
    seg = tmp_path / "segmenter.safetensors"
    save_segmenter(net, seg, {"model": "cresnet51_d", "width": 0.0625, "input": "latent", "in_channels": 8,
                              "codec": "c8", "codec_name": "c8", "classes": list(range(11)),
                              "class_names": [f"k{i}" for i in range(11)], "mean": [0.0] * 8})
    img = load_image(FRAME)
    c8 = load_codec("c8")
    paths = []
    for i in range(3):
        p = tmp_path / "in" / f"f{i}.ndc"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(c8.compress(to_tensor(np.ascontiguousarray(img[40 * i: 40 * i + 120, :160]))))
        paths.append(p)
    (tmp_path / "in" / "bad.ndc").write_bytes(paths[0].read_bytes()[:-3])
    paths.insert(1, tmp_path / "in" / "bad.ndc")
    outs, overlays = mask_paths(paths, tmp_path / "masks", tmp_path / "over")
    rows = segment_files(paths, outs, overlays, seg, "cpu", batch=2, backend=backend)
    assert "error" in rows[1] and str(paths[1]) in rows[1]["error"] and not outs[1].exists()
    for p, r, o in zip(paths, rows, outs):
        if p.name == "bad.ndc":
            continue
        assert r["read"] == "ndc-symbols" and r["mask"] == str(o)
        single = segment_file(p, tmp_path / f"one-{p.stem}.png", model=seg, device="cpu")
        assert np.array_equal(np.asarray(Image.open(o)), np.asarray(Image.open(single["mask"])))
        assert Image.open(tmp_path / "over" / f"{p.stem}.png").size == (160, 120)
    assert main(["segment", *map(str, paths), "-o", str(tmp_path / "cli"), "--segmenter", str(seg)]) == 2
    assert sorted(f.name for f in (tmp_path / "cli").iterdir()) == ["f0.png", "f1.png", "f2.png"]
    # issue 14's deprecated --model still names the segmenter (one warning line)
    assert main(["segment", str(paths[0]), "-o", str(tmp_path / "alias.png"), "--model", str(seg)]) == 0
    assert (tmp_path / "alias.png").exists()
