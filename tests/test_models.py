"""Models (Tables 1 and 3, §4.1-4.2, §5.1) and the Table 1 MAC counter."""
import pytest
import torch

from nodecode.errors import NodecodeError
from nodecode.bench import count_macs, format_table, table1_rows
from nodecode.bench.flops import model_gmacs
from nodecode.models import create_model, get_config, list_models, load_backbone, upsample_logits

CLS = ["resnet50", "resnet71", "cresnet39", "cresnet51", "cresnet72"]
SEG = [n + "_d" for n in CLS]
RGB, LAT, C, K = 64, 8, 8, 5  # tiny inputs: 64x64 RGB, 8x8x8 latents, 5 classes
W = 0.25  # width multiplier for speed; shapes do not depend on it


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convs: one intra-op thread avoids oversubscription stalls on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_input(name, n=2):
    latent = get_config(name).input == "latent"
    return torch.randn(n, C if latent else 3, LAT if latent else RGB, LAT if latent else RGB)


def build(name, **kw):
    latent = get_config(name).input == "latent"
    kw.setdefault("width", W)
    return create_model(name, in_channels=C if latent else 3, num_classes=K, **kw).eval()


def test_registry_lists_every_model():
    ablations = ["decoder_resnet50", "decoder_resnet50_codec", "decoder_resnet50_codec_slow"]   # issue 12's
    assert set(list_models()) == set(CLS + SEG + ablations)
    assert [n for n in list_models() if get_config(n).codec_init] == ablations[1:]
    assert [n for n in list_models() if get_config(n).front_lr_scale] == ablations[2:]
    assert list_models("cresnet*_d") == ["cresnet39_d", "cresnet51_d", "cresnet72_d"]
    assert get_config("cresnet51").input == "latent" and get_config("cresnet51").input_size == (28, 28)
    assert get_config("resnet50_d").input_size == (320, 320) and get_config("cresnet39_d").input_size == (40, 40)


@pytest.mark.parametrize("name", CLS + SEG)
def test_output_shapes(name):
    x = tiny_input(name)
    with torch.no_grad():
        y = build(name)(x)
    if name in CLS:
        assert y.shape == (2, K)
    else:
        os = get_config(name).output_stride
        assert os == (8 if name.startswith("resnet") else 1)
        assert y.shape == (2, K, x.shape[-2] // os, x.shape[-1] // os)
        assert upsample_logits(y, (17, 19)).shape == (2, K, 17, 19)


def test_decoder_resnet50_is_the_decoder_architecture_then_resnet50():
    """The ablation's front is g_s (same layers and shapes as the codec's decoder, its own fresh weights)."""
    from nodecode.codec.autoencoder import Decoder
    m, x = build("decoder_resnet50"), tiny_input("decoder_resnet50")
    with torch.no_grad():
        assert m(x).shape == (2, K) and m[0](x).shape == (2, 3, 8 * LAT, 8 * LAT)
    ref = Decoder(C).state_dict()
    assert {k: v.shape for k, v in m[0].state_dict().items()} == {k: v.shape for k, v in ref.items()}
    assert {k: v.shape for k, v in m[1].state_dict().items()} == \
        {k: v.shape for k, v in build("resnet50").state_dict().items()}


def test_decoder_resnet50_codec_starts_from_the_codecs_decoder_on_the_centred_latent():
    """init_from_codec: the ablation's g_s takes the bundled c8 decoder's weights, and on the classifier's centred input
    ŷ − m it gives the codec's own g_s(ŷ) (its offset adds m back); from scratch (no init) the same input does not."""
    from nodecode.codec.zoo import load_codec
    from nodecode.models import init_from_codec
    codec = load_codec("c8", torch.device("cpu"))
    m = build("decoder_resnet50_codec")
    y = codec.quantizer.centers[torch.randint(0, codec.config.num_centers, (2, C, LAT, LAT))]
    mean = y.mean(dim=(0, 2, 3))
    with torch.no_grad():
        ref = codec.g_s(y)
        assert not torch.allclose(m[0](y - mean.view(1, -1, 1, 1)), ref, atol=1e-3)
        init_from_codec(m, codec, mean)
        assert torch.allclose(m[0](y - mean.view(1, -1, 1, 1)), ref, atol=1e-5)
    assert all(torch.equal(m[0].state_dict()[k], v) for k, v in codec.g_s.state_dict().items())
    assert m[0].state_dict()["latent_offset"].tolist() == pytest.approx(mean.tolist())
    assert set(m[1].state_dict()) == set(build("resnet50").state_dict())


def test_decoder_resnet50_codec_slow_trains_g_s_at_a_hundredth_of_the_recipes_lr():
    """recipe.sgd with the model's front_lr_scale: every parameter in exactly one group, g_s's at lr / 100 and the
    ResNet's at the lr (the Engine scales each group from its own base, so the ratio holds all along the schedule);
    without a scale one lr for all."""
    from nodecode.tasks.recipe import get_recipe, sgd
    m, rec = build("decoder_resnet50_codec_slow"), get_recipe("imagenette60")
    front = {id(p) for p in m[0].parameters()}
    groups = sgd(m, rec, get_config("decoder_resnet50_codec_slow").front_lr_scale).param_groups
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters()) and front
    for g in groups:
        in_front = {id(p) in front for p in g["params"]}
        assert len(in_front) == 1 and g["lr"] == pytest.approx(rec.lr() * (0.01 if in_front.pop() else 1))
    assert {g["lr"] for g in sgd(m, rec).param_groups} == {rec.lr()}


def test_cresnet_conv3_does_not_downsample():
    m, x = build("cresnet39"), tiny_input("cresnet39")
    with torch.no_grad():
        f3 = m.layer2(x)
        f5 = m.forward_features(x)
    assert not hasattr(m, "layer1") and not hasattr(m, "conv1")
    assert f3.shape[-2:] == x.shape[-2:] and f5.shape[-1] == x.shape[-1] // 4
    assert m.layer2[0].downsample[0].in_channels == C and m.layer2[0].downsample[0].out_channels == int(512 * W)


@pytest.mark.parametrize("name,stride", [("resnet50", 32), ("resnet50_d", 8), ("cresnet51", 4), ("cresnet51_d", 1)])
def test_backbone_output_stride(name, stride):
    m, x = build(name), tiny_input(name, 1)
    with torch.no_grad():
        assert m.forward_features(x).shape[-1] == x.shape[-1] // stride


def test_table1_within_2_percent():
    rows = table1_rows(extra_rows=[{"model": "encoder", "gmacs": 1.0}])
    by = {r["model"]: r for r in rows}
    for name in CLS:
        r = by[name]
        assert abs(r["gmacs"] - r["paper_gmacs"]) / r["paper_gmacs"] < 0.02, r
    assert all(by[n]["paper_gmacs"] is None and by[n]["gmacs"] > 0 for n in SEG)
    assert rows[-1] == {"model": "encoder", "gmacs": 1.0, "paper_gmacs": None, "input": ""}
    assert "| resnet50 |" in format_table(rows)
    # the torchvision-v1.5 stride placement does not reproduce the paper (docstring of models.resnet)
    assert model_gmacs("resnet50", stride_in_1x1=False)[0] > 3.86 * 1.05


def test_count_macs_real_tensor_matches_hand_count():
    conv = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, padding=1, bias=False))
    assert count_macs(conv, (1, 4, 5, 5)) == 5 * 5 * 4 * 6 * 9


@pytest.mark.parametrize("cls_name", ["resnet50", "cresnet51"])
def test_seg_model_loads_classifier_backbone(cls_name):
    cls = build(cls_name)
    with torch.no_grad():
        for p in cls.parameters():
            p.normal_()
    seg = load_backbone(build(cls_name + "_d"), cls.state_dict())
    cls_sd, seg_sd = cls.state_dict(), seg.state_dict()
    backbone = [k for k in seg_sd if not k.startswith("aspp.")]
    assert backbone and set(backbone) == {k for k in cls_sd if not k.startswith("fc.")}
    assert all(torch.equal(seg_sd[k], cls_sd[k]) for k in backbone)
    with pytest.raises(NodecodeError):
        load_backbone(build("cresnet39_d"), cls.state_dict())  # wrong depth (and input for resnet50)
    with pytest.raises(NodecodeError):
        load_backbone(build(cls_name + "_d", width=0.5), cls.state_dict())  # wrong width


@pytest.mark.parametrize("name", ["resnet50", "cresnet39_d"])
def test_channels_last_matches_contiguous(name):
    m, x = build(name, zero_init_last=False), tiny_input(name)
    with torch.no_grad():
        ref = m(x)
        out = m.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out.contiguous(), ref, rtol=1e-4, atol=1e-4)


def test_width_multiplier_reduces_parameters():
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    full = create_model("cresnet51", in_channels=8, num_classes=10)
    half = create_model("cresnet51", in_channels=8, num_classes=10, width=0.5)
    assert n(half) < n(full) / 3
    assert half.num_features == 1024 and half.layer2[0].conv1.out_channels == 64
