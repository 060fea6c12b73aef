"""One timm-style model registry for the ResNet/cResNet classifiers and their "-d" segmenters (Tables 1 and 3, §5.1)."""
from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from nodecode.models.resnet import ResNet

DEFAULT_LATENT_CHANNELS = 32  # C of the 0.635 bpp operating point (App. A.1); Table 1 is counted with it


@dataclass(frozen=True)
class ModelConfig:
    """What a caller needs to feed a registered model."""
    name: str
    input: str                      # "rgb" or "latent"
    input_size: tuple[int, int]     # default spatial size (224/28 classification, 320/40 segmentation, App. A.4/A.5)
    in_channels: int                # default: 3, or DEFAULT_LATENT_CHANNELS for a latent
    num_classes: int                # default: 1000 (ImageNet) or 21 (PASCAL VOC)
    task: str                       # "classification" or "segmentation"
    output_stride: int              # input size / backbone output size
    paper_gmacs: float | None       # Table 1 (classification nets only)
    codec_init: str | None = None   # "g_s": training starts the first module from the codec's decoder (init_from_codec)
    front_lr_scale: float | None = None   # the first module trains at this fraction of the recipe's lr (recipe.sgd)

    def to_dict(self) -> dict:
        return asdict(self)


_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CONFIGS: dict[str, ModelConfig] = {}


def register_model(*, input: str, paper_gmacs: float | None = None, task: str = "classification",
                   output_stride: int = 32, input_size: tuple[int, int] | None = None, codec_init: str | None = None,
                   front_lr_scale: float | None = None):
    """Decorator: register `fn(in_channels, num_classes, **kw) -> nn.Module` under its function name."""
    if input not in ("rgb", "latent"):
        raise ValueError(f"input must be 'rgb' or 'latent', not {input!r}")

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        seg = task == "segmentation"
        size = input_size or {("rgb", False): (224, 224), ("rgb", True): (320, 320),
                              ("latent", False): (28, 28), ("latent", True): (40, 40)}[input, seg]
        _MODELS[name] = fn
        _CONFIGS[name] = ModelConfig(name, input, tuple(size), 3 if input == "rgb" else DEFAULT_LATENT_CHANNELS,
                                     21 if seg else 1000, task, output_stride, paper_gmacs, codec_init,
                                     front_lr_scale)
        return fn
    return wrap


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, sorted, optionally filtered by a shell-style pattern (e.g. "cresnet*", "*_d")."""
    names = sorted(_MODELS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_config(name: str) -> ModelConfig:
    """The default configuration registered beside `name`."""
    _check(name)
    return _CONFIGS[name]


def create_model(name: str, in_channels: int | None = None, num_classes: int | None = None,
                 pretrained: str | None = None, **kw) -> nn.Module:
    """Build a registered model; None means the registered default. Extra kw (width, stride_in_1x1,
    zero_init_last, aspp_rates) go to :class:`ResNet`. The config is attached as ``model.default_cfg``.

    `pretrained`: a bundled zoo name (classifier-c8, segmenter-c8, ...) or a classifier / segmenter file (a zoo
    file or a training run's); its PretrainedCfg sets channels, classes and width, its weights are loaded (fp32,
    train mode as built), and it is attached as ``model.pretrained_cfg``."""
    if pretrained is not None:
        return _pretrained(name, pretrained, in_channels, num_classes, kw)
    cfg = get_config(name)
    model = _MODELS[name](in_channels=cfg.in_channels if in_channels is None else in_channels,
                          num_classes=cfg.num_classes if num_classes is None else num_classes, **kw)
    model.default_cfg = cfg
    return model


def pretrained_cfg(name_or_path, kind: str):
    """(weights path, PretrainedCfg) of a bundled name or a file / run folder; kind: classifier or segmenter."""
    from nodecode import zoo
    path, _ = zoo.resolve(name_or_path, kind)
    return path, zoo.network_cfg(path, kind)


def _pretrained(name, pretrained, in_channels, num_classes, kw) -> nn.Module:
    from nodecode import zoo
    from nodecode.errors import NodecodeError
    kind = "segmenter" if get_config(name).task == "segmentation" else "classifier"
    path, pcfg = pretrained_cfg(pretrained, kind)
    if pcfg.architecture != name:
        raise NodecodeError(f"{path} holds a {pcfg.architecture}, not a {name}")
    if (in_channels, num_classes) != (None, None) and (in_channels, num_classes) != (pcfg.in_channels, pcfg.num_classes):
        raise NodecodeError(f"{path} has {pcfg.in_channels} input channels and {pcfg.num_classes} classes")
    model = create_model(name, pcfg.in_channels, pcfg.num_classes, width=pcfg.width, **kw)
    state = zoo.load_tensors(path)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as e:
        raise NodecodeError(f"{path} does not hold a {name} of this configuration: {str(e).splitlines()[0]}") from None
    model.pretrained_cfg = pcfg
    return model


def _check(name: str) -> None:
    if name not in _MODELS:
        from nodecode.errors import NodecodeError
        raise NodecodeError(f"unknown model {name!r}; known: {', '.join(list_models())}")


def _rgb(blocks, dilated, in_channels, num_classes, kw) -> ResNet:
    return ResNet(blocks, in_channels=in_channels, num_classes=num_classes, root=True, dilated=dilated, **kw)


def _latent(blocks, dilated, in_channels, num_classes, kw) -> ResNet:
    return ResNet(blocks, in_channels=in_channels, num_classes=num_classes, root=False, dilated=dilated, **kw)


# Classification networks, Table 1 (block counts of conv2_x..conv5_x; cResNets start at conv3_x).
@register_model(input="rgb", paper_gmacs=3.86)
def resnet50(in_channels=3, num_classes=1000, **kw):
    return _rgb([3, 4, 6, 3], False, in_channels, num_classes, kw)


@register_model(input="rgb", paper_gmacs=5.38)
def resnet71(in_channels=3, num_classes=1000, **kw):
    return _rgb([3, 4, 13, 3], False, in_channels, num_classes, kw)


@register_model(input="latent", paper_gmacs=2.95, output_stride=4)
def cresnet39(in_channels=DEFAULT_LATENT_CHANNELS, num_classes=1000, **kw):
    return _latent([4, 6, 3], False, in_channels, num_classes, kw)


@register_model(input="latent", paper_gmacs=3.83, output_stride=4)
def cresnet51(in_channels=DEFAULT_LATENT_CHANNELS, num_classes=1000, **kw):
    return _latent([4, 10, 3], False, in_channels, num_classes, kw)


@register_model(input="latent", paper_gmacs=5.36, output_stride=4)
def cresnet72(in_channels=DEFAULT_LATENT_CHANNELS, num_classes=1000, **kw):
    return _latent([4, 17, 3], False, in_channels, num_classes, kw)


# Ablation beyond the paper (issue 12): the decoded-RGB arm's depth on the latent without the codec's decoder weights.
@register_model(input="latent", output_stride=4)
def decoder_resnet50(in_channels=DEFAULT_LATENT_CHANNELS, num_classes=1000, **kw):
    """g_s's architecture (App. A.1, full width, trained from scratch with the rest) in front of ResNet-50 (`width`
    applies to the ResNet): is the decoded arm's edge the decoder's learned weights or its extra depth?"""
    from nodecode.codec.autoencoder import Decoder
    return _behind(Decoder(in_channels), num_classes, kw)


@register_model(input="latent", output_stride=4, codec_init="g_s")
def decoder_resnet50_codec(in_channels=DEFAULT_LATENT_CHANNELS, num_classes=1000, **kw):
    """decoder_resnet50 whose g_s starts from the codec's trained decoder and is trained on with the ResNet (the
    decoded arm with g_s no longer frozen): the decoder's weights as pre-training, against the ablation's fresh g_s."""
    from nodecode.codec.autoencoder import CenteredDecoder
    return _behind(CenteredDecoder(in_channels), num_classes, kw)


@register_model(input="latent", output_stride=4, codec_init="g_s", front_lr_scale=0.01)
def decoder_resnet50_codec_slow(in_channels=DEFAULT_LATENT_CHANNELS, num_classes=1000, **kw):
    """decoder_resnet50_codec whose g_s trains at 1/100 of the recipe's lr: between the decoded arm (g_s frozen) and
    g_s trained on at the full rate, does a gently fine-tuned decoder keep the decoded arm's c8 edge?"""
    return decoder_resnet50_codec(in_channels, num_classes, **kw)


def _behind(front: nn.Module, num_classes, kw) -> nn.Sequential:
    """The ablations' network: a g_s-shaped front (latent -> RGB-sized tensor), then ResNet-50."""
    return nn.Sequential(front, _rgb([3, 4, 6, 3], False, 3, num_classes, kw))


def init_from_codec(model: nn.Module, codec, latent_mean) -> None:
    """Start a codec_init="g_s" model's front from `codec`'s decoder; its offset adds back the channel means that the
    input pipeline subtracts, so that g_s first sees ŷ exactly as in the codec."""
    front = model[0]
    state = {k: v.detach().clone() for k, v in codec.g_s.state_dict().items()}
    front.load_state_dict({**state, "latent_offset": torch.as_tensor(latent_mean, dtype=torch.float32)})


# Segmentation networks, §5.1: atrous conv4_x/conv5_x (dilation 2/4) and an ASPP head.
@register_model(input="rgb", task="segmentation", output_stride=8)
def resnet50_d(in_channels=3, num_classes=21, **kw):
    return _rgb([3, 4, 6, 3], True, in_channels, num_classes, kw)


@register_model(input="rgb", task="segmentation", output_stride=8)
def resnet71_d(in_channels=3, num_classes=21, **kw):
    return _rgb([3, 4, 13, 3], True, in_channels, num_classes, kw)


@register_model(input="latent", task="segmentation", output_stride=1)
def cresnet39_d(in_channels=DEFAULT_LATENT_CHANNELS, num_classes=21, **kw):
    return _latent([4, 6, 3], True, in_channels, num_classes, kw)


@register_model(input="latent", task="segmentation", output_stride=1)
def cresnet51_d(in_channels=DEFAULT_LATENT_CHANNELS, num_classes=21, **kw):
    return _latent([4, 10, 3], True, in_channels, num_classes, kw)


@register_model(input="latent", task="segmentation", output_stride=1)
def cresnet72_d(in_channels=DEFAULT_LATENT_CHANNELS, num_classes=21, **kw):
    return _latent([4, 17, 3], True, in_channels, num_classes, kw)
