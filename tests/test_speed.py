"""Speed benchmark (App. A.9): BN folding, CPU rows of the network bench, end to end from real .ndc files, CLI."""
import json

import numpy as np
import pytest
import torch

from conftest import IMAGENETTE, KODAK, needs
from nodecode.bench.fuse import fold_bn
from nodecode.bench.speed import SpeedConfig, build, run_speed
from nodecode.cli import main
from nodecode.data.images import to_tensor
from nodecode.models import create_model

ROW_KEYS = {"path", "model", "batch", "precision", "impl", "images_per_s", "ms_per_image", "peak_fraction"}


@pytest.mark.parametrize("name,shape", [("cresnet51", (2, 8, 12, 12)), ("resnet50_d", (1, 3, 40, 40))])
def test_fold_bn_matches_eval_bn(name, shape):
    torch.manual_seed(0)
    net = create_model(name, in_channels=shape[1], num_classes=5, width=0.0625)
    for m in net.modules():  # non-trivial statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5); m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(1, 0.3); m.bias.data.normal_(0, 0.3)
    net.eval()
    x = torch.randn(shape)
    folded = fold_bn(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched
    with torch.no_grad():
        ref, out = net(x), folded(x)
    assert ref.abs().max() > 0
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_cpu_rows_well_formed():
    cfg = SpeedConfig(device="cpu", models=("cresnet51", "cresnet39"), impls=("eager-fp32", "optimized", "compiled"),
                      batch=1, width=0.0625, warmup=0, iters=1, sets=2, compile_models=())
    res = run_speed(cfg, log=lambda *_: None, skip={("cresnet39", "optimized")})
    rows = res["rows"]
    assert [(r["model"], r["impl"]) for r in rows] == [("cresnet51", "eager-fp32"), ("cresnet51", "optimized"),
                                                       ("cresnet39", "eager-fp32")]
    for r in rows:
        assert ROW_KEYS <= set(r) and r["batch"] == 1
        assert r["images_per_s"] > 0 and r["ms_per_image"] == pytest.approx(1e3 / r["images_per_s"])
        assert r["peak_fraction"] == pytest.approx(2 * r["gmacs"] * 1e9 * r["images_per_s"] / res["peak"]["flops"])
    assert rows[0]["path"] == "latent" and rows[0]["input"] == [8, 28, 28] and rows[1]["precision"] == "bf16"


def test_decoder_path_shapes_and_macs():
    net, shape, gmacs, path = build("resnet50+decoder", SpeedConfig(device="cpu", batch=2, width=0.0625))
    alone = build("resnet50", SpeedConfig(device="cpu", batch=2, width=0.0625))
    assert path == "rgb+decoder" and shape == (2, 8, 28, 28) and alone[1] == (2, 3, 224, 224)
    assert 3.0 < gmacs - alone[2] < 4.0   # the c8 decoder, 28x28x8 -> 224x224x3 (3.52 G, bench.flops.codec_rows)
    with torch.no_grad():
        assert net(torch.randn(1, 8, 28, 28)).shape == (1, 1000)


def test_cli_bench_speed_cpu(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["bench", "speed", "--device", "cpu", "--models", "cresnet39", "--impls", "eager-fp32",
                 "--batch", "1", "--width", "0.0625", "--iters", "1", "--warmup", "0", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert len(res["rows"]) == 1 and ROW_KEYS <= set(res["rows"][0]) and res["peak"]["flops"] > 0
    assert "| latent | cresnet39 | 1 | fp32 | eager-fp32 |" in capsys.readouterr().out
    assert main(["bench", "speed", "--device", "cpu", "--impls", "fastest"]) == 2
    assert main(["bench", "speed", "--device", "cpu", "--models", "cresnet51", "--e2e-data", str(tmp_path / "nope")]) == 2
    assert "nodecode: error:" in capsys.readouterr().err


@needs(IMAGENETTE)
def test_e2e_rows_on_the_cpu(tmp_path):
    """The issue-13 rows run on the CPU with tiny sizes: shards decoded by constriction, GPU-only rows skipped."""
    from nodecode.bench.e2e import decode_ndc_chunk, e2e_speed
    from nodecode.bench.speed import format_rows
    from nodecode.codec.zoo import load_codec
    rows = e2e_speed(IMAGENETTE / "val", tmp_path, "c8", "cpu", limit=4, batch=4, workers=1, width=0.0625,
                     log=lambda *_: None, points=("c8", "c16"), train_steps_n=3, repeat=2)
    info = json.loads((tmp_path / "info.json").read_text())
    assert len(info["names"]) == 4 and len({n.split("/")[0] for n in info["names"]}) >= 2
    assert 0.05 < info["bpp"]["c8"] < info["bpp"]["c16"] < 0.6 and info["bpp"]["jpeg@c8"] > 0
    assert (tmp_path / "c8.tar").is_file() and (tmp_path / "c16" / "jpeg").is_dir()
    timed = [(r["path"], r.get("point"), r["impl"]) for r in rows if "skipped" not in r]
    skipped = [r["path"] for r in rows if "skipped" in r]
    modes = ("optimized-sequential", "optimized-pipelined")
    assert timed[:4] == [(f"e2e-ndc-{p}-shard-constriction", p, m) for p in ("c8", "c16") for m in modes]
    assert timed[4:8] == [(f"e2e-{k}-files-cpu1", None, m) for k in ("jpeg", "ndc") for m in modes]
    assert [t[0] for t in timed[8:]] == ["train-input cresnet51 <- .ndc shard", "train-input cresnet51 <- synthetic",
                                         "train-input resnet50 <- synthetic"]
    assert skipped == ["e2e compiled rows", "e2e-jpeg-original-nvjpeg", "e2e-jpeg-c8-nvjpeg", "e2e-jpeg-c16-nvjpeg",
                       "train-input resnet50 <- JPEG nvJPEG"]
    for r in rows:
        if "skipped" not in r:
            assert ROW_KEYS <= set(r) and r["images_per_s"] > 0
    for r in rows[1:5]:              # two passes over the 4 images (the shard read twice)
        assert r["images"] == 8 and r["corrupt"] == 0 and r["weights"] == "random" and r["bpp"] == info["bpp"][r["point"]]
    assert "skipped: nvJPEG needs CUDA" in format_rows(rows)
    # the CPU processes' entropy decoding gives exactly the encoder's symbols (write_ndc packs those)
    from nodecode.data.folders import load_prepared
    from nodecode.data.latents import encode_symbols
    f = next((IMAGENETTE / "val" / info["names"][0].split("/")[0]).glob(info["names"][0].split("/")[1] + ".*"))
    z = encode_symbols(load_codec("c8"), torch.from_numpy(load_prepared((str(f), 224)))[None])
    np.testing.assert_array_equal(decode_ndc_chunk([str(tmp_path / "c8" / "ndc" / f"{info['names'][0]}.ndc")]), z)


def test_e2e_ratio_alternates_abba_and_skips_without_nvjpeg(tmp_path):
    """The ratio's two sides run in ABBA rounds (a drift of the card falls on both); without CUDA it says why."""
    from nodecode.bench.e2e import alternate, e2e_ratio
    order = []
    res = alternate({"ndc": lambda: order.append("n") or len(order), "jpeg": lambda: order.append("j") or len(order)}, 4)
    assert "".join(order) == "njjnnjjn" and res == {"ndc": [1, 4, 5, 8], "jpeg": [2, 3, 6, 7]}
    assert e2e_ratio(tmp_path / "none", tmp_path, device="cpu") == {"skipped": "nvJPEG needs CUDA"}
    assert not any(tmp_path.iterdir())                    # nothing written before the reason


@needs(KODAK)
def test_codec_timing_parts(small_codec, kodak_crop):
    from nodecode.bench.codec_speed import time_codec
    r = time_codec(small_codec, [kodak_crop])
    assert r["images"] == 1 and r["bpp"] > 0
    for k in ("encode_net_ms", "encode_entropy_ms", "decode_entropy_ms", "decode_net_ms"):
        assert r[k] > 0
    h, w = kodak_crop.shape[:2]                                        # the timed path writes compress's file
    assert r["bpp"] == len(small_codec.compress(to_tensor(kodak_crop))) * 8 / (h * w)


def test_bench_speed_flags_are_speed_config_fields():
    """bench speed's flags are generated from SpeedConfig (nodecode.config): the e2e ones included."""
    from nodecode.cli import build_parser
    from nodecode.config import config_from_args
    a = build_parser().parse_args(["bench", "speed", "--e2e-data", "v", "--e2e-points", "c8,c32", "--e2e-train-steps",
                                   "5", "--classifiers", "runs", "--workers", "2", "--kodak-limit", "3"])
    cfg = config_from_args(SpeedConfig, a)
    assert (cfg.e2e_data, cfg.e2e_points, cfg.e2e_train_steps, cfg.classifiers, cfg.workers, cfg.kodak_limit) == \
        ("v", ("c8", "c32"), 5, "runs", 2, 3)
    assert SpeedConfig().e2e_points == ("c8", "c16") and SpeedConfig().e2e_limit == 1024
