"""Multiply-accumulate counts of the task networks, the paper's "FLOPs" of Table 1 / Table 3.

torch's FlopCounterMode counts 2 FLOPs per multiply-accumulate of conv/matmul (BN, ReLU, pooling and
additions are not counted), so MACs = FLOPs / 2, which is what the paper reports (ResNet-50: 3.86e9).
Models are built and run on the meta device: no memory, no arithmetic, well under a second per model.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# (classification name, its -d name) in Table 1's order.
TABLE1_MODELS = (("resnet50", "resnet50_d"), ("resnet71", "resnet71_d"), ("cresnet39", "cresnet39_d"),
                 ("cresnet51", "cresnet51_d"), ("cresnet72", "cresnet72_d"))
SEG_SIZE = {"rgb": 320, "latent": 40}  # training crops of App. A.5


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of `model` on an input of shape (N, C, H, W).

    Runs on the meta device when the model's parameters are on meta, otherwise on the model's device.
    """
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    x = torch.empty(tuple(input_shape), device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        model.train(was_training)
    return fc.get_total_flops() // 2


def model_gmacs(name: str, size: int | tuple[int, int] | None = None, in_channels: int | None = None,
                num_classes: int | None = None, **kw) -> tuple[float, str]:
    """GMACs of registered model `name` at a square `size` or (height, width) (default: its registered input size),
    and an input label."""
    from nodecode.models import create_model, get_config

    cfg = get_config(name)
    size = size or cfg.input_size[0]
    h, w = (size, size) if isinstance(size, int) else size
    with torch.device("meta"):
        model = create_model(name, in_channels=in_channels, num_classes=num_classes, **kw)
    c = in_channels if in_channels is not None else cfg.in_channels
    macs = count_macs(model, (1, c, h, w))
    return macs / 1e9, f"{h}x{w}x{c} {cfg.input}"


def table1_rows(latent_channels: int = 32, num_classes: int = 1000, seg_classes: int = 21,
                stride_in_1x1: bool = True, extra_rows: Iterable[dict] | None = None) -> list[dict]:
    """Rows {"model", "gmacs", "paper_gmacs", "input"}: the five Table 1 classifiers at 224x224x3 / 28x28xC,
    then the five -d segmenters at 320x320x3 / 40x40xC (paper_gmacs None), then `extra_rows` as given.

    `extra_rows` is the hook for rows computed elsewhere (e.g. the codec's encoder and decoder); each is a
    dict with at least "model" and "gmacs" ("paper_gmacs" and "input" default to None and "").
    """
    from nodecode.models import get_config

    rows = []
    for name, _ in TABLE1_MODELS:
        latent = get_config(name).input == "latent"
        g, inp = model_gmacs(name, 28 if latent else 224, latent_channels if latent else 3, num_classes,
                             stride_in_1x1=stride_in_1x1)
        rows.append({"model": name, "gmacs": g, "paper_gmacs": get_config(name).paper_gmacs, "input": inp})
    for _, name in TABLE1_MODELS:
        kind = get_config(name).input
        g, inp = model_gmacs(name, SEG_SIZE[kind], latent_channels if kind == "latent" else 3, seg_classes,
                             stride_in_1x1=stride_in_1x1)
        rows.append({"model": name, "gmacs": g, "paper_gmacs": None, "input": inp})
    for r in extra_rows or ():
        rows.append({"paper_gmacs": None, "input": "", **r})
    return rows


def format_table(rows: Iterable[dict]) -> str:
    """A Markdown table of `rows` with the relative gap to the paper where the paper gives a number."""
    lines = ["| model | input | GMACs | paper GMACs | gap |", "|---|---|---:|---:|---:|"]
    for r in rows:
        paper = r.get("paper_gmacs")
        gap = f"{100 * (r['gmacs'] - paper) / paper:+.2f}%" if paper else "–"
        lines.append(f"| {r['model']} | {r.get('input', '')} | {r['gmacs']:.3f} | "
                     f"{paper if paper is not None else '–'} | {gap} |")
    return "\n".join(lines)


def codec_rows(channels: Sequence[int] = (8, 16, 32)) -> list[dict]:
    """The codec's encoder at 224x224x3 and decoder at 28x28xC (§3.1: 3.56 and 2.85 GMACs).

    Our encoder matches at C = 32 (3.557). Our mirrored decoder counts the same 3.557 at C = 32: its first
    transposed convolution plus the three residual units alone are 2.855, the paper's 2.85, so the paper's
    decoder figure appears to leave out the two last upsampling layers (0.702 GMACs at 56->112->224).
    """
    from nodecode.codec.autoencoder import Decoder, Encoder

    rows = []
    for c in channels:
        with torch.device("meta"):
            enc, dec = Encoder(c), Decoder(c)
        rows.append({"model": f"encoder (C={c})", "gmacs": count_macs(enc, (1, 3, 224, 224)) / 1e9,
                     "paper_gmacs": 3.56 if c == 32 else None, "input": "224x224x3 rgb"})
        rows.append({"model": f"decoder (C={c})", "gmacs": count_macs(dec, (1, c, 28, 28)) / 1e9,
                     "paper_gmacs": 2.85 if c == 32 else None, "input": f"28x28x{c} latent"})
    return rows
