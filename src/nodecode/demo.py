"""`nodecode demo`: compress photos at c8/c16/c32 into real .ndc files, compare with JPEG, draw Fig. 9; then
segment street scenes (CamVid frames) and classify Imagenette images straight from their .ndc symbols with the
bundled networks. The frames and images come from the datasets' folders (--camvid / --imagenette, by default
../shared/datasets/{camvid,imagenette2-224} beside the checkout); without them those two parts are skipped with a note
(the datasets carry no licence to redistribute, so no copy of them ships in the package)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from nodecode.codec.files import compress_file
from nodecode.codec.zoo import OPERATING_POINTS, load_codec
from nodecode.data.images import list_images, load_image, save_image, to_tensor, to_uint8
from nodecode.codec.classical import decode, match_bpp
from nodecode.eval.metrics import image_metrics
from nodecode.utils import atomic_path, atomic_write_bytes, pick_device, provenance, write_json

SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # ship inside scikit-image
DATASETS = Path("..") / "shared" / "datasets"   # beside the checkout, where the README's commands run


def dataset_folder(given: str | None, name: str) -> Path | None:
    """The folder given, else ../shared/datasets/<name> if it is there, else None (that part is skipped)."""
    path = Path(given) if given else DATASETS / name
    return path if path.is_dir() else None


def default_images() -> list[tuple[str, np.ndarray]]:
    import skimage.data
    return [(name, np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])) for name in SAMPLE_PHOTOS]


def channel_entropies(symbols: np.ndarray, num_centers: int) -> np.ndarray:
    """Empirical entropy (bits) of each latent channel's symbols, for picking Fig. 9's channels."""
    out = []
    for ch in symbols:
        p = np.bincount(ch.ravel(), minlength=num_centers) / ch.size
        out.append(-(p[p > 0] * np.log2(p[p > 0])).sum())
    return np.array(out)


def figure9(name: str, img: np.ndarray, decoded: dict, latents: dict, path: Path) -> None:
    """Original, then per operating point the decoded image and the 4 highest-entropy latent channels (Fig. 9)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(decoded), 6, figsize=(15, 2.6 * len(decoded)), squeeze=False)
    for r, (point, rec) in enumerate(decoded.items()):
        axes[r, 0].imshow(img); axes[r, 0].set_title("original" if r == 0 else "")
        axes[r, 1].imshow(rec["image"]); axes[r, 1].set_title(f"{point}: {rec['bpp']:.3f} bpp")
        y, order = latents[point]
        for j, c in enumerate(order[:4]):
            axes[r, 2 + j].imshow(y[c], cmap="gray"); axes[r, 2 + j].set_title(f"channel {c}")
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle(f"{name}: decoded images and the 4 highest-entropy channels of ŷ")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def run_demo(data: str | None = None, out: str = "nodecode-demo", device: str | None = None,
             imagenette: str | None = None, camvid: str | None = None) -> list[dict]:
    dev = pick_device(device)
    images = default_images() if data is None else [(p.stem, load_image(p)) for p in list_images(data)]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    codecs = {p: load_codec(p, dev) for p in OPERATING_POINTS}
    rows = []
    for name, img in images:
        h, w = img.shape[:2]
        decoded, latents = {}, {}
        for point, codec in codecs.items():
            x = to_tensor(img).to(dev)
            t0 = time.perf_counter()
            data_bytes = codec.compress(x)
            t1 = time.perf_counter()
            with torch.no_grad():
                _, symbols = codec.read_symbols(data_bytes)
                rec = to_uint8(codec.decompress(data_bytes))
            t2 = time.perf_counter()
            atomic_write_bytes(out_dir / f"{name}_{point}.ndc", data_bytes)
            save_image(rec, out_dir / f"{name}_{point}.png")
            bpp = len(data_bytes) * 8 / (h * w)
            rows.append({"image": name, "codec": point, "bytes": len(data_bytes), "bpp": bpp, **image_metrics(img, rec),
                         "encode_ms": 1e3 * (t1 - t0), "decode_ms": 1e3 * (t2 - t1)})
            jpeg, jbpp, q = match_bpp(img, "jpeg", bpp)
            atomic_write_bytes(out_dir / f"{name}_{point}_jpeg.jpg", jpeg)
            rows.append({"image": name, "codec": f"jpeg (q={int(q)}) @ {point}", "bytes": len(jpeg), "bpp": jbpp,
                         **image_metrics(img, decode(jpeg))})
            decoded[point] = {"image": rec, "bpp": bpp}
            y = codec.latent(torch.from_numpy(symbols)).numpy()
            latents[point] = (y, np.argsort(-channel_entropies(symbols, codec.config.num_centers), kind="stable"))
        figure9(name, img, decoded, latents, out_dir / f"{name}_fig9.png")
    print(format_demo(rows))
    seg = demo_segmentation(out_dir, dev, camvid)
    classified = classification_demo(out_dir / "imagenette", imagenette, dev)
    write_json(out_dir / "summary.json", {"rows": rows, "segmentation": seg, "classification": classified,
                                          **provenance("nodecode demo")})
    print(f"\nfiles, decoded images and Fig. 9 figures in {out_dir}/")
    return rows


def demo_segmentation(out_dir: Path, device, camvid: str | None = None) -> list[dict]:
    """Segment c8 .ndc files of CamVid frames from their symbols with the bundled segmenter (§5), scored against
    their labels: the bundled sample frames, or every 40th val frame of a CamVid folder; skipped with a note if
    the segmenter or the CamVid folder is absent."""
    from PIL import Image
    from nodecode.errors import NodecodeError
    from nodecode.tasks.inference import bundled_segmenter, segment_file
    try:
        model = bundled_segmenter()
    except NodecodeError as e:
        print(f"note: segmentation skipped: {e}")
        return []
    root = dataset_folder(camvid, "camvid")
    if root is None:
        print("note: segmentation skipped: no CamVid folder (pass --camvid DIR)")
        return []
    frames = sorted((root / "images" / "val").glob("*.jpg"))[::40]
    labels = {f: root / "labels" / "val" / f"{f.stem}.png" for f in frames}
    rows = []
    seg_dir = out_dir / "camvid"
    seg_dir.mkdir(parents=True, exist_ok=True)
    codec = load_codec("c8", device)
    for f in frames:
        ndc = seg_dir / f"{f.stem}_c8.ndc"
        compress_file(f, ndc, codec)
        r = segment_file(ndc, seg_dir / f"{f.stem}_mask.png", seg_dir / f"{f.stem}_overlay.png", model, device)
        label = np.asarray(Image.open(labels[f]))
        mask, keep = np.asarray(Image.open(r["mask"])), label != 11
        rows.append({**r, "frame": f.name, "bpp": ndc.stat().st_size * 8 / label.size,
                     "pixel_accuracy": float((mask[keep] == label[keep]).mean())})
    print("\nsegmentation of CamVid frames from c8 .ndc symbols (bundled cResNet-51-d width 0.25, no RGB decoding):")
    for r in rows:
        top = ", ".join(f"{k} {v:.0%}" for k, v in sorted(r["classes"].items(), key=lambda kv: -kv[1])[:4])
        print(f"{r['frame']:<18} {r['bpp']:.3f} bpp  pixel accuracy {r['pixel_accuracy']:.1%}  ({top})")
    return rows


def format_demo(rows: list[dict]) -> str:
    lines = [f"{'image':<10} {'codec':<22} {'bytes':>7} {'bpp':>7} {'PSNR':>6} {'MS-SSIM':>8} {'enc ms':>7} {'dec ms':>7}"]
    for r in rows:
        enc = f"{r['encode_ms']:7.0f}" if "encode_ms" in r else f"{'':>7}"
        dec = f"{r['decode_ms']:7.0f}" if "decode_ms" in r else f"{'':>7}"
        lines.append(f"{r['image']:<10} {r['codec']:<22} {r['bytes']:>7} {r['bpp']:7.4f} {r['psnr']:6.2f} "
                     f"{r['ms_ssim']:8.4f} {enc} {dec}")
    return "\n".join(lines)


def classification_demo(out_dir: Path, imagenette: str | None, dev) -> list[dict]:
    """The first Imagenette val image of each class -> .ndc at each point -> the bundled classifier of that point
    (§4); skipped with a note without an Imagenette folder."""
    from nodecode import zoo
    from nodecode.data.folders import scan_image_folder
    from nodecode.tasks.inference import classify_files
    bundled = {zoo.index()[n].codec for n in zoo.list_pretrained("classifier")}
    points = [p for p in OPERATING_POINTS if p in bundled]
    if not points:
        print("\nclassification skipped: no bundled classifier")
        return []
    root = dataset_folder(imagenette, "imagenette2-224")
    if root is None:
        print("\nnote: classification skipped: no Imagenette folder (pass --imagenette DIR)")
        return []
    folder = scan_image_folder(root / "val")
    first = {folder.names[int(y)]: Path(p) for p, y in reversed(list(zip(folder.files, folder.labels)))}
    names = dict(zip(zoo.index()[f"classifier-{points[0]}"].classes, zoo.index()[f"classifier-{points[0]}"].class_names))
    out_dir.mkdir(parents=True, exist_ok=True)
    codecs = {p: load_codec(p, dev) for p in points}
    files = {(y, p): out_dir / f"{path.stem}_{p}.ndc" for y, path in first.items() for p in points}
    for (y, p), ndc in files.items():
        compress_file(first[y], ndc, codecs[p])
    preds = dict(zip(files, classify_files(list(files.values()), device=dev, topk=1)))  # symbols only: no decoder
    rows = [{"image": path.name, "true": names.get(y, y),
             "predicted": {p: {"name": preds[y, p]["name"], "prob": preds[y, p]["top"][0]["prob"],
                               "bpp": files[y, p].stat().st_size * 8 / 224**2} for p in points}}
            for y, path in sorted(first.items())]
    print("\nclassification from .ndc files (bundled cResNet-51 width 0.25 per point, no RGB decoding):")
    print(f"{'image':<29} {'true class':<18} " + " ".join(f"{p:<26}" for p in points))
    for r in rows:
        print(f"{r['image'][:28]:<29} {r['true']:<18} " + " ".join(
            f"{r['predicted'][p]['name'][:17]:<18} {r['predicted'][p]['prob']:.2f}   " for p in points))
    acc = {p: sum(r["predicted"][p]["name"] == r["true"] for r in rows) for p in points}
    print("correct: " + ", ".join(f"{p} {acc[p]}/{len(rows)}" for p in points))
    return rows
