"""Training: Eq. 1 lowers on real crops, checkpoints are safetensors, a cut run resumes where it stopped."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nodecode.codec.autoencoder import CodecConfig, CompressionModel
from nodecode.codec.zoo import load_codec
from nodecode.tasks.compression import CodecTrainConfig, codec_loss, train_codec
from nodecode.tasks.engine import Engine, EngineConfig

from conftest import IMAGENETTE, needs, run_ddp


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """Eight real Imagenette photos, downscaled to 64x64."""
    from PIL import Image
    d = tmp_path_factory.mktemp("tiny")
    files = sorted((IMAGENETTE / "train").rglob("*.JPEG"))[::1200][:8]
    for i, f in enumerate(files):
        Image.open(f).convert("RGB").resize((64, 64)).save(d / f"{i}.png")
    return d


@needs(IMAGENETTE)
def test_codec_loss_decreases(tiny_folder):
    from nodecode.data.tiles import load_tiles
    torch.manual_seed(0)
    x = load_tiles(tiny_folder, tile=64)[:4, :, :32, :32].float() / 255
    model = CompressionModel(CodecConfig("t", channels=8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss, logs = codec_loss(model, x, beta=100.0, target_entropy=1.0)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])


@needs(IMAGENETTE)
def test_train_codec_resumes_and_bundles(tiny_folder, tmp_path):
    cfg = CodecTrainConfig(data=str(tiny_folder), out=str(tmp_path / "run"), name="c8", channels=8, steps=6,
                           batch_size=2, crop=32, tile=64, target_entropy=1.0, beta=50.0, max_minutes=0.0, table_tiles=8)
    r = train_codec(cfg)                                # budget of 0 minutes: stops at the first check, checkpointed
    assert not r.finished and r.step == 1 and r.total_steps == 6 and r.summary == {}
    ckpt = tmp_path / "run" / "last.safetensors"
    tensors = load_file(str(ckpt))
    assert any(k.startswith("optim.") for k in tensors) and "rng.cpu" in tensors
    assert not (tmp_path / "run" / "codec.safetensors").exists()
    cfg.max_minutes = None
    r = train_codec(cfg)                                # resumes and finishes
    assert r.finished and r.step == 6 and r.metrics == r.summary["val"]
    assert r.summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if r["split"] == "train"]
    assert steps == sorted(steps) and steps[-1] == 6
    codec = load_codec(str(tmp_path / "run" / "codec.safetensors"))
    assert codec.config.channels == 8 and codec.tables().sum(1).tolist() == [1 << 16] * 8


def test_engine_resume_restores_optimizer_and_step(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = torch.randn(16, 4), torch.randn(16, 1)

    def step_fn(net, batch):
        return torch.nn.functional.mse_loss(net(batch[0]), batch[1]), {}

    full = Engine(model, opt, EngineConfig(str(tmp_path / "a"), total_steps=10, log_every=1, progress=False))
    full.fit(lambda s: data, step_fn)
    torch.manual_seed(0)
    m2 = torch.nn.Linear(4, 1)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    Engine(m2, o2, EngineConfig(str(tmp_path / "b"), total_steps=4, log_every=1, progress=False)).fit(lambda s: data, step_fn)
    m3 = torch.nn.Linear(4, 1)
    o3 = torch.optim.SGD(m3.parameters(), lr=0.1, momentum=0.9)
    e3 = Engine(m3, o3, EngineConfig(str(tmp_path / "b"), total_steps=10, log_every=1, progress=False))
    assert e3.step == 4
    e3.fit(lambda s: data, step_fn)
    for p, q in zip(model.parameters(), m3.parameters()):
        torch.testing.assert_close(p, q)


@needs(IMAGENETTE)
def test_codec_two_process_ddp_matches_one_process(tiny_folder, tmp_path):
    """gloo DDP with 2 x 2 crops gives the weights of one process on the same 4 crops: the histogram entropy of
    Eq. 1 is taken over both ranks' symbols (an all-reduce inside the loss), not per rank."""
    # Ht = 0.1 with β = 200: the rate term dominates these steps (it drives H towards 0)
    kw = dict(data=str(tiny_folder), name="c8", channels=8, steps=5, batch_size=4, crop=32, tile=64,
              target_entropy=0.1, beta=200.0, rate_warmup=0.0, table_tiles=8, progress=False, cache_dir=str(tmp_path))
    torch.set_num_threads(1)
    train_codec(CodecTrainConfig(out=str(tmp_path / "one"), **kw))
    run_ddp(train_codec, CodecTrainConfig(out=str(tmp_path / "ddp"), **kw))
    one, ddp = (load_file(str(tmp_path / d / "last.safetensors")) for d in ("one", "ddp"))
    weights = [k for k in one if k.startswith("model.") and one[k].is_floating_point()]
    assert len(weights) > 20
    start = CompressionModel(CodecConfig("c8", channels=8))
    assert any((one[k] - v).abs().max() > 1e-3 for k, v in (("model." + n, t) for n, t in start.state_dict().items())
               if k in weights)                                   # training moved the weights
    for k in weights:  # equal up to float summation order (Adam magnifies it in near-zero gradients)
        assert float((ddp[k] - one[k]).norm() / one[k].norm()) < 1e-4, k
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["processes"] == 2


def test_lr_schedules():
    from nodecode.tasks.compression import lr_factor
    step = CodecTrainConfig(data="", out="", steps=100)
    assert [lr_factor(step, s) for s in (0, 79, 80, 99)] == [1.0, 1.0, 0.1, 0.1]
    cos = CodecTrainConfig(data="", out="", steps=100, schedule="cosine", warmup_steps=10)
    f = [lr_factor(cos, s) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] == pytest.approx(0.01, abs=1e-3)
