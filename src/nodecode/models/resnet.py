"""ResNet-v1 and cResNet (Torfason et al. 2018, §4.1-4.2, Tables 1 and 3) with optional atrous stages (§5.1).

Parameter names follow torchvision: ``conv1``/``bn1`` (root), ``layer1``..``layer4`` (= the paper's
conv2_x..conv5_x), ``fc``. A cResNet has no root and no ``layer1``; its first stage is ``layer2`` (conv3_x).
A "-d" network has the same backbone names with ``aspp`` in place of ``fc``, so a classifier's state dict
loads into it (see :func:`load_backbone`).

Stride placement and Table 1 (multiply-accumulates of every conv and the fc, num_classes=1000,
224x224x3 RGB / 28x28x32 latent, measured with ``nodecode.bench.flops``)::

                 paper   stride on 1st 1x1 (v1, default)   stride on 3x3 (torchvision v1.5)
    ResNet-50    3.86    3.858 (-0.05%)                    4.089 (+5.9%)
    ResNet-71    5.38    5.387 (+0.12%)                    5.618 (+4.4%)
    cResNet-39   2.95    2.960 (+0.33%)                    3.114 (+5.6%)
    cResNet-51   3.83    3.833 (+0.08%)                    3.987 (+4.1%)
    cResNet-72   5.36    5.362 (+0.03%)                    5.516 (+2.9%)

Only the v1 placement reproduces the paper (v1.5 moves each striding block's first 1x1 to the 4x larger
input: +0.23 G for ResNets, +0.15 G for cResNets), so it is the default (``stride_in_1x1=True``); it is
also what Table 3 ("downsampling by conv3_1, conv4_1 and conv5_1") and DeepLab's Caffe ResNet do.
The latent channel count C enters only conv3_1 (its first 1x1 and its projection shortcut):
28*28*C*(128+512) MACs = 0.0005 G per channel, so cResNet-39/51/72 count 2.948/3.821/5.350 at C=8,
2.952/3.825/5.354 at C=16 and 2.960/3.833/5.362 at C=32 -- all within 0.35% of the paper, which gives one
number for all three operating points. num_classes enters only the fc (2048*K MACs; 0.002 G at K=1000).

Blocks: BatchNorm after every conv, ReLU after the residual sum; Kaiming-normal (fan_out) conv init and,
by default, zero init of the last BN's gamma in every block (Goyal et al. 2017) so each block starts as
the identity.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nodecode.models.aspp import ASPP

BASE_WIDTHS = (64, 128, 256, 512)  # bottleneck widths of conv2_x..conv5_x (Table 3); outputs are 4x these
EXPANSION = 4


def scaled(channels: int, width: float) -> int:
    """Channel count after the width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck unit of ResNet v1 (Table 3), stride on the first 1x1 by default."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1, dilation: int = 1,
                 stride_in_1x1: bool = True):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_ch)
        self.conv2 = nn.Conv2d(mid_ch, mid_ch, 3, stride=s3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_ch)
        self.conv3 = nn.Conv2d(mid_ch, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_stage(in_ch: int, mid_ch: int, blocks: int, stride: int, dilation: int, stride_in_1x1: bool) -> nn.Sequential:
    """A stage of `blocks` bottlenecks; only the first may stride or project (all share the dilation, as in DeepLab)."""
    out_ch = mid_ch * EXPANSION
    layers = [Bottleneck(in_ch, mid_ch, out_ch, stride, dilation, stride_in_1x1)]
    layers += [Bottleneck(out_ch, mid_ch, out_ch, 1, dilation, stride_in_1x1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """ResNet-v1 (root=True, 4 stages) or cResNet (root=False, 3 stages from conv3_x) with an fc or ASPP head.

    blocks:   blocks per stage, 4 entries (conv2_x..conv5_x) with a root, 3 (conv3_x..conv5_x) without.
    width:    multiplier on every channel count (root 64, bottlenecks 64..512, outputs 256..2048).
    dilated:  the "-d" variant of §5.1: conv4_x and conv5_x do not stride but use dilation 2 and 4
              (output stride 8 with a root, 1 for a cResNet), and the head is DeepLab-v2 ASPP.
    """

    def __init__(self, blocks: Sequence[int], in_channels: int = 3, num_classes: int = 1000, root: bool = True,
                 width: float = 1.0, stride_in_1x1: bool = True, dilated: bool = False,
                 aspp_rates: Sequence[int] = (6, 12, 18, 24), zero_init_last: bool = True):
        super().__init__()
        blocks = list(blocks)
        if len(blocks) != (4 if root else 3):
            raise ValueError(f"expected {4 if root else 3} stage block counts, got {blocks}")
        self.root, self.dilated, self.width = root, dilated, width
        ch = in_channels
        if root:
            stem = scaled(64, width)
            self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            ch = stem
        # (stage index, stride, dilation); conv3_x strides only after a root (cResNet §4.2 keeps 28x28).
        first = 1 if root else 2
        plan = {1: (1, 1), 2: (2 if root else 1, 1), 3: (1, 2) if dilated else (2, 1), 4: (1, 4) if dilated else (2, 1)}
        for i, n in zip(range(first, 5), blocks):
            stride, dil = plan[i]
            mid = scaled(BASE_WIDTHS[i - 1], width)
            self.add_module(f"layer{i}", make_stage(ch, mid, n, stride, dil, stride_in_1x1))
            ch = mid * EXPANSION
        self.stages = tuple(f"layer{i}" for i in range(first, 5))
        self.num_features = ch
        self._init(zero_init_last)  # backbone only; the heads keep their own init
        if dilated:
            self.aspp = ASPP(ch, num_classes, aspp_rates)
        else:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(ch, num_classes)

    def _init(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output: 2048*width channels at 1/32 (ResNet), 1/4 (cResNet), 1/8 (-d) or 1/1 (cResNet-d)."""
        if self.root:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stages:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, K), or for a -d network per-pixel logits (N, K, h, w) at the backbone's resolution."""
        x = self.forward_features(x)
        if self.dilated:
            return self.aspp(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def load_backbone(seg_model: ResNet, cls_state_dict: dict, strict: bool = True) -> ResNet:
    """Copy a classifier's backbone weights into its "-d" counterpart (§5.3); the fc is dropped, ASPP kept.

    Names line up by construction, so this is ``load_state_dict`` without ``fc.*``. With ``strict`` every
    backbone tensor of `seg_model` must be present with the same shape (only ``aspp.*`` may be missing) and
    nothing else may be left over; otherwise NodecodeError. Without it, only the matching tensors are copied.
    State dicts saved from DDP/compiled models (``module.``/``_orig_mod.`` prefixes) are accepted.
    """
    from nodecode.errors import NodecodeError

    sd = {}
    for k, v in cls_state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if not k.startswith("fc."):
            sd[k] = v
    own = seg_model.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith("aspp.")]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if strict and (missing or unexpected or mismatched):
        raise NodecodeError(f"classifier backbone does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                            f"shape mismatch {mismatched[:3]} (same depth, width and input channels needed)")
    seg_model.load_state_dict({k: v for k, v in sd.items() if k in own and k not in mismatched}, strict=False)
    return seg_model
