"""Inference-only rewrites used by the speed benchmark (App. A.9): BN folded into convs, CUDA-graph replay."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every BatchNorm2d folded into the Conv2d registered just before it.

    In ResNet/Bottleneck/Sequential the registration order is the data flow (conv1, bn1, conv2, bn2, ...,
    downsample = (conv, bn)), so "the conv registered just before" is the conv that feeds the BN; the BN is
    replaced by nn.Identity. Outputs equal the eval-mode model's up to float rounding.
    """
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        prev_name, prev = None, None
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d) and isinstance(prev, nn.Conv2d):
                setattr(parent, prev_name, fuse_conv_bn_eval(prev, child))
                setattr(parent, name, nn.Identity())
                prev_name, prev = None, None
                continue
            prev_name, prev = name, child
    return model


class GraphRunner:
    """fn(x) captured once as a CUDA graph on a static input of x's shape; a call copies x in and replays. A smaller
    batch (the last one) fills the first rows and gets the first rows of the output: fn must treat samples
    independently (an inference network: BN folded or in eval mode)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, warmup: int = 3):
        self.static_in = example.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                fn(self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.static_out = fn(self.static_in)

    def fits(self, x: torch.Tensor) -> bool:
        return x.shape[0] <= self.static_in.shape[0] and x.shape[1:] == self.static_in.shape[1:]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        self.static_in[:n].copy_(x)
        self.graph.replay()
        return self.static_out if n == self.static_in.shape[0] else self.static_out[:n]


def maybe_graph(fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, log=print):
    """GraphRunner(fn, example) on CUDA; fn itself on the CPU or when capture fails (logged, the run goes on)."""
    if example.device.type != "cuda":
        return fn
    try:
        return GraphRunner(fn, example)
    except Exception as e:  # noqa: BLE001 - an uncapturable op must not cost the whole benchmark
        log(f"CUDA graph capture failed ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); eager")
        torch.cuda.synchronize()
        return fn
