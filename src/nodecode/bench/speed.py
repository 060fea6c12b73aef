"""Network speed of Fig. 12 / App. A.9: per-image time of the RGB and latent networks, three implementations.

eager-fp32 / eager-bf16 (autocast + channels_last) / optimized (bf16 weights, channels_last, BN folded, CUDA graph)
/ compiled (optimized + torch.compile, only where its compile time fits the budget; the compile time is recorded).
Timing: warm-up, then `iters` calls cycling over `sets` distinct input tensors (nothing timed from a cache),
each timed with CUDA events (perf_counter on CPU); the median is reported. Weights are random (timing only).
peak_fraction = 2 * MACs * images/s / the card's bf16 matmul peak measured in the same run.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from nodecode.bench.flops import count_macs, model_gmacs
from nodecode.bench.fuse import GraphRunner, fold_bn, maybe_graph
from nodecode.config import option
from nodecode.errors import NodecodeError

IMPLS = ("eager-fp32", "eager-bf16", "optimized", "compiled")
CLS_MODELS = ("resnet50", "resnet71", "cresnet39", "cresnet51", "cresnet72")
SEG_MODELS = ("resnet50_d", "resnet71_d", "cresnet39_d", "cresnet51_d", "cresnet72_d")


@dataclass
class SpeedConfig:
    device: Literal["cuda", "cpu"] = option("cuda", "where the networks are timed")
    models: tuple[str, ...] = option(CLS_MODELS + SEG_MODELS + ("resnet50+decoder", "resnet71+decoder"),
                                     "networks timed (comma list)")
    impls: tuple[str, ...] = option(IMPLS, "implementations timed (comma list)")
    batch: int = option(256, "classification batch (Fig. 12)")
    seg_batch: int = option(20, "-d networks' batch, 320x320 / 40x40")
    latent_channels: int = option(8, "latent C (bundled codec cC; Fig. 12's point is c8)", flag="channels")
    num_classes: int = 1000          # ImageNet head (Fig. 12); -d networks keep their registered 21
    width: float = option(1.0, "channel width multiplier")
    warmup: int = option(5, "untimed calls first")
    iters: int = option(20, "timed calls (the median is reported)")
    sets: int = option(4, "distinct input tensors cycled")
    compile_models: tuple[str, ...] = option(("cresnet51", "resnet50+decoder", "resnet50"),
                                             "networks also torch.compiled (comma list)")
    compile_budget_s: float = option(240.0, "stop compiling once this much compile time has been spent")
    compile_mode: str = option("default", "torch.compile mode of the compiled rows (e.g. max-autotune-no-cudagraphs; "
                                          "the CUDA graph is captured here either way)")
    peak_n: int = option(8192, "matrix side of the bf16 matmul peak measurement")
    # end to end from files (bench.e2e) and the Kodak codec speed (bench.codec_speed): off unless a folder is given
    e2e_data: str | None = option(None, "ImageFolder (e.g. imagenette2-224/val): run end to end from files")
    e2e_work: str | None = option(None, "where the .ndc/JPEG/WebP files are written (kept, reused; default: a "
                                        "temporary folder)")
    e2e_limit: int | None = option(1024, "images of --e2e-data used")
    e2e_batch: int = option(256, "end-to-end batch")
    e2e_points: tuple[str, ...] = option(("c8", "c16"), "operating points of the .ndc shard rows (JPEG at each's bpp)")
    e2e_train_steps: int = option(30, "training steps timed per training-input row")
    e2e_repeat: int = option(1, "passes over the --e2e-data images per timed row (a small set then measures the "
                                "steady state)")
    workers: int | None = option(None, "decoding worker processes (default: the CPU count)")
    classifiers: str | None = option(None, "folder of trained <point>-<input>-<model>-s0 runs (top-1 of the e2e rows)")
    kodak: str | None = option(None, "Kodak folder: codec encode/decode speed")
    kodak_limit: int | None = option(None, "only the first N Kodak images")
    cpu_images: int = option(3, "Kodak images timed on one CPU core")


class DecodeThenClassify(nn.Module):
    """The RGB path of Fig. 12: x̂ = g_s(ŷ) (28x28xC -> 224x224x3), then the ResNet (inputs scaled to 0..255)."""

    def __init__(self, decoder: nn.Module, net: nn.Module):
        super().__init__()
        self.decoder, self.net = decoder, net

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(self.decoder(y) * 255.0)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_calls(fn, inputs: list, warmup: int, iters: int) -> float:
    """Median milliseconds of fn(x) over `iters` calls cycling through `inputs`, after `warmup` calls."""
    dev = inputs[0].device
    with torch.no_grad():
        for i in range(warmup):
            fn(inputs[i % len(inputs)])
        _sync(dev)
        times = []
        for i in range(iters):
            x = inputs[i % len(inputs)]
            if dev.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn(x)
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            else:
                t = time.perf_counter()
                fn(x)
                times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def matmul_peak(device: str | torch.device, n: int = 8192, iters: int = 10) -> dict:
    """Measured dense matmul throughput (FLOP/s, 2 per MAC): bf16 on CUDA, fp32 on CPU."""
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    ms = time_calls(lambda x: x @ b, [a], warmup=3, iters=iters)
    return {"flops": 2 * n ** 3 / (ms / 1e3), "n": n, "dtype": str(dtype).replace("torch.", "")}


def build(name: str, cfg: SpeedConfig) -> tuple[nn.Module, tuple, float, str]:
    """(model in eval mode, input shape, GMACs per image, path) for a registered name or "resnetXX+decoder"."""
    from nodecode.codec.zoo import load_codec
    from nodecode.models import create_model, get_config

    base = name.split("+")[0]
    kind = get_config(base).input
    seg = get_config(base).task == "segmentation"
    batch = cfg.seg_batch if seg else cfg.batch
    size = 320 if seg and kind == "rgb" else 40 if seg else 224 if kind == "rgb" else 28
    c = cfg.latent_channels if kind == "latent" else 3
    ncls = None if seg else cfg.num_classes
    net = create_model(base, in_channels=c, num_classes=ncls, width=cfg.width)
    gmacs = model_gmacs(base, size, c, ncls, width=cfg.width)[0]
    path = ("seg-" if seg else "") + kind
    if name.endswith("+decoder"):
        if kind != "rgb":
            raise NodecodeError(f"{name}: only an RGB network takes the decoder's output")
        codec = load_codec(f"c{cfg.latent_channels}")
        net = DecodeThenClassify(codec.g_s, net)
        gmacs += count_macs(codec.g_s, (1, cfg.latent_channels, size // 8, size // 8)) / 1e9
        c, size, path = cfg.latent_channels, size // 8, path + "+decoder"
    return net.eval(), (batch, c, size, size), gmacs, path


def _runner(net: nn.Module, impl: str, example: torch.Tensor, mode: str = "default"):
    """(callable x -> logits, converted example input) for one implementation (`mode`: torch.compile's)."""
    dev = example.device
    if impl == "eager-fp32":
        return net, example
    cl = example.contiguous(memory_format=torch.channels_last)
    if impl == "eager-bf16":
        m = net.to(memory_format=torch.channels_last)
        def fn(x):
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                return m(x)
        return fn, cl
    m = fold_bn(net).to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    fn = torch.compile(m, mode=mode) if impl == "compiled" else m
    x = cl.to(torch.bfloat16)
    return maybe_graph(fn, x), x


def bench_model(name: str, impl: str, cfg: SpeedConfig, peak: float, compile_spent: list) -> dict | None:
    """One row {"path","model","batch","precision","impl","images_per_s","ms_per_image","peak_fraction",...}."""
    dev = torch.device(cfg.device)
    if impl == "compiled" and (name not in cfg.compile_models or compile_spent[0] >= cfg.compile_budget_s):
        return None
    net, shape, gmacs, path = build(name, cfg)
    net = net.to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    raw = [torch.randn(shape, device=dev, generator=gen) for _ in range(cfg.sets)]
    t = time.perf_counter()
    with torch.no_grad():
        fn, _ = _runner(net, impl, raw[0], cfg.compile_mode)
        if impl == "eager-fp32":
            inputs = raw
        else:
            dt = torch.float32 if impl == "eager-bf16" else torch.bfloat16
            inputs = [r.to(dt).contiguous(memory_format=torch.channels_last) for r in raw]
        fn(inputs[0])
    _sync(dev)
    setup_s = time.perf_counter() - t
    if impl == "compiled":
        compile_spent[0] += setup_s
    ms = time_calls(fn, inputs, cfg.warmup, cfg.iters)
    ips = shape[0] / (ms / 1e3)
    return {"path": path, "model": name, "batch": shape[0], "precision": "fp32" if impl == "eager-fp32" else "bf16",
            "impl": impl, "images_per_s": ips, "ms_per_image": ms / shape[0],
            "peak_fraction": 2 * gmacs * 1e9 * ips / peak, "gmacs": gmacs, "input": list(shape[1:]),
            "setup_s": setup_s, "weights": "random", "width": cfg.width, "cuda_graph": isinstance(fn, GraphRunner),
            "compile_mode": cfg.compile_mode if impl == "compiled" else None,
            "tf32_conv": bool(torch.backends.cudnn.allow_tf32) if impl == "eager-fp32" and dev.type == "cuda" else None}


def run_speed(cfg: SpeedConfig, log=print, skip: set | None = None, budget_s: float | None = None) -> dict:
    """All (model, impl) rows of cfg, skipping keys in `skip`; stops (partial) when budget_s runs out."""
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NodecodeError("--device cuda but no CUDA device is available")
    t0 = time.time()
    peak = matmul_peak(dev, cfg.peak_n if dev.type == "cuda" else min(cfg.peak_n, 512))
    log(f"matmul peak: {peak['flops'] / 1e12:.1f} TFLOP/s ({peak['dtype']}, n={peak['n']})")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True   # algorithms chosen in warm-up, before any graph capture
    rows, spent, done = [], [0.0], True
    # every eager/optimized row first (model by model), the compiled rows last: compile time is the risky part
    jobs = [(m, i) for m in cfg.models for i in cfg.impls if i != "compiled"]
    jobs += [(m, "compiled") for m in cfg.compile_models if m in cfg.models and "compiled" in cfg.impls]
    for name, impl in jobs:
        if skip and (name, impl) in skip:
            continue
        left = None if budget_s is None else budget_s - (time.time() - t0)
        if left is not None and left <= 0:
            done = False
            log(f"budget spent: stopping before {name} {impl}")
            break
        if left is not None and impl == "compiled" and left < 90:
            log(f"budget: {left:.0f}s left, too little to compile {name}; skipped")
            continue
        try:
            r = bench_model(name, impl, cfg, peak["flops"], spent)
        except Exception as e:  # noqa: BLE001 - torch.compile may be unavailable (no triton / compiler) on a card
            if impl != "compiled":
                raise
            log(f"{name} compiled: failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); skipped")
            spent[0] = cfg.compile_budget_s
            r = None
        if r is not None:
            rows.append(r)
            log(f"{name:18s} {impl:10s} b={r['batch']:3d} {r['images_per_s']:9.1f} img/s "
                f"{r['ms_per_image']:.4f} ms/img  peak {100 * r['peak_fraction']:.1f}%  (setup {r['setup_s']:.1f}s)")
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows, "peak": peak, "compile_s": spent[0], "complete": done, "seconds": time.time() - t0}


def format_rows(rows: list[dict]) -> str:
    """A Markdown table of speed rows."""
    lines = ["| path | model | batch | precision | impl | images/s | ms/image | peak |", "|---|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['path']} | {r.get('model', '–')} | – | – | {r.get('impl', '–')} | skipped: {r['skipped']} | – | – |")
            continue
        pf = r.get("peak_fraction")
        lines.append(f"| {r['path']} | {r['model']} | {r['batch']} | {r['precision']} | {r['impl']} | "
                     f"{r['images_per_s']:.1f} | {r['ms_per_image']:.4f} | {'–' if pf is None else f'{100 * pf:.1f}%'} |")
    return "\n".join(lines)


def run_all(cfg: SpeedConfig, json_out=None, log=print) -> dict:
    """`nodecode bench speed`: the network rows, then optionally end to end from files and the Kodak codec speed."""
    from nodecode.utils import provenance, write_json
    for p in (cfg.e2e_data, cfg.kodak):
        if p is not None and not __import__("pathlib").Path(p).is_dir():
            raise NodecodeError(f"no such folder: {p}")
    res = run_speed(cfg, log)
    if cfg.e2e_data:
        from nodecode.bench.e2e import e2e_speed
        work = cfg.e2e_work or __import__("tempfile").mkdtemp(prefix="nodecode-e2e-")
        res["rows"] += e2e_speed(cfg.e2e_data, work, f"c{cfg.latent_channels}", cfg.device, cfg.e2e_limit,
                                 cfg.e2e_batch, cfg.workers, cfg.classifiers, cfg.width, log, cfg.e2e_points,
                                 cfg.compile_mode if "compiled" in cfg.impls else None, cfg.e2e_train_steps,
                                 cfg.e2e_repeat)
    if cfg.kodak:
        from nodecode.bench.codec_speed import kodak_speed
        res["codec"] = kodak_speed(cfg.kodak, f"c{cfg.latent_channels}", cfg.device, cfg.kodak_limit, cfg.cpu_images,
                                   log)
    res.update(config=dict(cfg.__dict__), **provenance("nodecode bench speed"))
    if json_out:
        write_json(json_out, res)
    log(format_rows(res["rows"]))
    return res
