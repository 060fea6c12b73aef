"""Speed (App. A.9, Fig. 12 and beyond) on one card, resumably, in one device call of at most ~10 minutes.

  run      stages in order, each skipped when its part file exists under --out: networks.json (Fig. 12 rows,
           resumed row by row), kodak.json (codec speed), e2e.json (end to end from files, the files written once
           under --work); stops before --budget-minutes and merges what exists into --out/speed.json
  collect  from speed.json: results/speed/<card>.json (h100.json on an H100), fig12.png and speed.md (the issue's
           four targets with the measured figures and the card)
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from nodecode.experiments import ROOT, Budget, experiment_parser, markdown_table, pyplot, save_figure

STAGES = ("networks", "kodak", "e2e")


def _load(p: Path):
    return json.loads(p.read_text()) if p.exists() else None


def run(a) -> None:
    import torch

    from nodecode.bench.speed import SpeedConfig, format_rows, run_speed
    from nodecode.utils import provenance, write_json
    budget = Budget(a.budget_minutes)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    left = lambda: budget.left() * 60  # noqa: E731   (seconds)
    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    prov = provenance("experiments/speed/run.py run")
    print(f"device: {prov['device']}; budget {a.budget_minutes} min", flush=True)
    cfg = SpeedConfig(device=dev, batch=a.batch, seg_batch=a.seg_batch, width=a.width, iters=a.iters,
                      warmup=a.warmup, compile_budget_s=a.compile_budget_s,
                      **({"models": tuple(a.models.split(","))} if a.models else {}),
                      **({"impls": tuple(a.impls.split(","))} if a.impls else {}))
    net = _load(out / "networks.json") or {"rows": [], "complete": False, "compile_s": 0.0}
    if not net["complete"]:
        skip = {(r["model"], r["impl"]) for r in net["rows"]}
        cfg.compile_budget_s = max(0.0, cfg.compile_budget_s - net["compile_s"])
        res = run_speed(cfg, skip=skip, budget_s=max(0.0, left() - a.reserve_minutes * 60))
        net = {"rows": net["rows"] + res["rows"], "complete": res["complete"], "peak": res["peak"],
               "compile_s": net["compile_s"] + res["compile_s"], "config": dict(cfg.__dict__), **prov}
        write_json(out / "networks.json", net)
    # kodak and e2e run even when the networks stage stopped on the budget (it resumes next call)
    if not (out / "kodak.json").exists() and left() > 60:
        from nodecode.bench.codec_speed import kodak_speed
        rows = kodak_speed(a.kodak, "c8", dev, a.kodak_limit, a.cpu_images)
        write_json(out / "kodak.json", {"rows": rows, **prov})
    if not (out / "e2e.json").exists() and left() > 90:
        from nodecode.bench.e2e import e2e_speed
        rows = e2e_speed(Path(a.data) / "val", a.work, "c8", dev, a.limit, a.e2e_batch, a.workers, a.cls)
        write_json(out / "e2e.json", {"rows": rows, **prov})
    parts = {s: _load(out / f"{s}.json") for s in STAGES}
    merged = {"rows": parts["networks"]["rows"] + (parts["e2e"] or {}).get("rows", []),
              "codec": (parts["kodak"] or {}).get("rows", []), "peak": parts["networks"].get("peak"),
              "compile_s": parts["networks"]["compile_s"], "config": parts["networks"].get("config"),
              "finished": [s for s in STAGES if parts[s] and parts[s].get("complete", True)],
              "wall_s_this_call": budget.elapsed() * 60, **prov}
    write_json(out / "speed.json", merged)
    print(format_rows(merged["rows"]))
    print(f"stages finished: {merged['finished']}; wall {budget.elapsed() * 60:.0f}s on {prov['device']}", flush=True)


def card_slug(device: str) -> str:
    for k in ("H100", "H200", "A100"):
        if k in device:
            return k.lower()
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")[:40] or "device"


def best(rows, model, impls=("optimized", "compiled"), path=None):
    rs = [r for r in rows if r["model"] == model and r["impl"] in impls and (path is None or r["path"] == path)]
    return max(rs, key=lambda r: r["images_per_s"]) if rs else None


def targets(res: dict) -> list[dict]:
    """The issue's four targets: (name, measured, goal met?) from one run on one card."""
    rows, dev, out = res["rows"], res["device"], []
    lat, rgb = best(rows, "cresnet51"), best(rows, "resnet50+decoder")
    if lat and rgb:
        x = lat["images_per_s"] / rgb["images_per_s"]
        out.append({"target": "cResNet-51 on latent >= 3x images/s of decoder + ResNet-50 (optimized vs optimized, batch 256)",
                    "measured": f"{x:.2f}x ({lat['images_per_s']:.0f} [{lat['impl']}] vs {rgb['images_per_s']:.0f} img/s [{rgb['impl']}])",
                    "met": x >= 3})
    if lat:
        pf = max(r["peak_fraction"] for r in rows if r["model"] == "cresnet51" and r["precision"] == "bf16" and r["peak_fraction"] is not None)
        out.append({"target": "cResNet-51 >= 50% of measured bf16 matmul peak at batch 256",
                    "measured": f"{100 * pf:.1f}% of {res['peak']['flops'] / 1e12:.0f} TFLOP/s", "met": pf >= 0.5})
    nd, jp = best(rows, "cresnet51", ("optimized-pipelined",), "e2e-ndc"), best(rows, "resnet50", ("optimized-pipelined",), "e2e-jpeg")
    if nd and jp:
        x = nd["images_per_s"] / jp["images_per_s"]
        out.append({"target": "end to end from files: .ndc >= 2x JPEG at equal bpp",
                    "measured": f"{x:.2f}x ({nd['images_per_s']:.0f} vs {jp['images_per_s']:.0f} img/s; "
                                f"{nd['bpp']:.3f} vs {jp['bpp']:.3f} bpp reached)", "met": x >= 2})
    gpu = [r for r in res.get("codec", []) if r["device"] == "cuda" and r["path"] == "kodak-codec" and r["model"].startswith("c")]
    if gpu:
        g = min(gpu, key=lambda r: r["total_ms"])
        out.append({"target": "Kodak encode+decode <= 5 ms per image on the GPU",
                    "measured": f"{g['total_ms']:.2f} ms ({g.get('precision', 'fp32')}; encode {g['encode_ms']:.2f}, "
                                f"decode {g['decode_ms']:.2f}, of which entropy coding "
                                f"{g['encode_entropy_ms'] + g['decode_entropy_ms']:.2f})", "met": g["total_ms"] <= 5})
    for t in out:
        t["card"] = dev
    return out


def collect(a) -> None:
    from nodecode.bench.speed import format_rows
    src = Path(a.out) / "speed.json"
    if not src.exists():
        sys.exit(f"collect: {src} not found (run the run stage first, or pass --out to where speed.json came back)")
    res = json.loads(src.read_text())
    dst = Path(a.results)
    dst.mkdir(parents=True, exist_ok=True)
    name = card_slug(res["device"])
    tg = targets(res)
    (dst / f"{name}.json").write_text(json.dumps({**res, "targets": tg}, indent=1) + "\n")
    lines = [f"# Speed on {res['device']} (torch {res['torch']}, commit {res['git_commit']})", "",
             "Random weights for the network timings (timing only); 1000-class heads, 21-class -d heads, latent C = 8.",
             "", markdown_table(["target", "measured", "met"],
                                [(t["target"], t["measured"], "yes" if t["met"] else "no") for t in tg], "lll")]
    lines += ["", format_rows(res["rows"]), ""]
    if res.get("codec"):
        lines.append(markdown_table(
            ["Kodak", "device", "threads", "precision", "encode ms", "decode ms", "bpp"],
            [(r["model"], r["device"], r["threads"] or "all", r.get("precision", ""), f"{r['encode_ms']:.2f}",
              f"{r['decode_ms']:.2f}", f"{r['bpp']:.3f}") for r in res["codec"]], "llllrrr"))
    (dst / "speed.md").write_text("\n".join(lines) + "\n")
    plot(res, dst / "fig12.png")
    print("\n".join(lines))


def plot(res: dict, path: Path) -> None:
    """Fig. 12: ms per image of each network (and RGB + decoder) per implementation; classification and -d."""
    import numpy as np
    rows = [r for r in res["rows"] if not r["path"].startswith("e2e")]
    impls = [i for i in ("eager-fp32", "eager-bf16", "optimized", "compiled") if any(r["impl"] == i for r in rows)]
    fig, axes = pyplot().subplots(1, 2, figsize=(13, 4.5))
    for ax, seg in zip(axes, (False, True)):
        models = list(dict.fromkeys(r["model"] for r in rows if r["path"].startswith("seg") == seg))
        for k, impl in enumerate(impls):
            v = [next((r["ms_per_image"] for r in rows if r["model"] == m and r["impl"] == impl), np.nan) for m in models]
            ax.bar(np.arange(len(models)) + (k - len(impls) / 2 + 0.5) * 0.8 / len(impls), v, 0.8 / len(impls), label=impl)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
        b = next((r["batch"] for r in rows if r["path"].startswith("seg") == seg), "?")
        ax.set_ylabel("ms per image"); ax.set_title(f"{'segmentation (-d)' if seg else 'classification'}, batch {b}")
        ax.grid(alpha=0.3, axis="y"); ax.legend()
    fig.suptitle(f"Fig. 12-style: inference time per image on {res['device']}")
    save_figure(fig, path)


def main():
    ap = experiment_parser(__doc__, area="speed", budget_minutes=5.0)
    ap.add_argument("--out", default=os.environ.get("SPEED_OUT", "/root/results/speed"))
    ap.add_argument("--data", default="/root/data/imagenette2-224")
    ap.add_argument("--kodak", default="/root/data/kodak")
    ap.add_argument("--work", default="/root/speed/e2e", help="where the .ndc/JPEG/WebP files are written")
    ap.add_argument("--cls", default="/root/cls", help="trained classifiers (optional; random weights otherwise)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--models", default=None, help="comma list (default: all of Fig. 12)")
    ap.add_argument("--impls", default=None)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seg-batch", type=int, default=20)
    ap.add_argument("--width", type=float, default=1.0, help="< 1 only for smoke tests")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile-budget-s", type=float, default=90.0)
    ap.add_argument("--limit", type=int, default=1024, help="Imagenette val images for end to end")
    ap.add_argument("--e2e-batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--kodak-limit", type=int, default=None)
    ap.add_argument("--cpu-images", type=int, default=3)
    ap.add_argument("--reserve-minutes", type=float, default=2.0, help="kept from the networks stage for kodak + e2e")
    a = ap.parse_args()
    run(a) if a.stage == "run" else collect(a)


if __name__ == "__main__":
    main()
