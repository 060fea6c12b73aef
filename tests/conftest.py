import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
KODAK = SHARED / "kodak"
IMAGENETTE = SHARED / "imagenette2-224"
CAMVID = SHARED / "camvid"                  # every dataset path of the tests is here
REPO = Path(__file__).resolve().parents[1]


def load_script(relpath: str):
    """A script of the checkout (e.g. experiments/codec/scale.py) as a module, loaded from its file: no sys.path edits.
    Scripts that import a sibling (experiments/fuzz/) keep doing so; this loads the sibling itself."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(f"script_{path.parent.name}_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def imagenette_subset(root: Path, classes: list[str], per_split: dict[str, int], names: bool = False) -> Path:
    """An ImageFolder of symlinks to the first real Imagenette images of `classes` (+ classes.tsv if `names`)."""
    for split, n in per_split.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for f in sorted((IMAGENETTE / split / c).glob("*.JPEG"))[:n]:
                (root / split / c / f.name).symlink_to(f)
    if names:
        tsv = (IMAGENETTE / "classes.tsv").read_text().splitlines()
        (root / "classes.tsv").write_text("\n".join(r for r in tsv if r.split("\t")[0] in classes) + "\n")
    return root


def imagenette_ndc(dest: Path, codec, classes: list[str], per_class: int, by_class: bool = True) -> list[Path]:
    """The first real Imagenette val images of `classes`, evaluation-cropped, as `codec`'s .ndc files in
    dest/<class>/ (or flat in dest); their paths."""
    from nodecode.data.folders import prepare_image
    from nodecode.data.images import load_image, to_tensor
    out = []
    for c in classes:
        d = dest / c if by_class else dest
        d.mkdir(parents=True, exist_ok=True)
        for f in sorted((IMAGENETTE / "val" / c).glob("*.JPEG"))[:per_class]:
            out.append(d / f"{f.stem}.ndc")
            out[-1].write_bytes(codec.compress(to_tensor(prepare_image(load_image(f)))))
    return out


def rerun_after_losing(run, tmp: Path, key: str, total: int) -> dict:
    """A matched-grid experiment whose finished run `key` is dropped from its state runs.json: the next `run`
    starts that job alone (it resumes at its end) and ends with all `total` runs finished; the redone row."""
    import json
    state = tmp / "state" / "runs.json"
    state.write_text(json.dumps({n: r for n, r in json.loads(state.read_text()).items() if n != key}))
    third = run()
    assert third.count("start ") == 1 and f"start {key}" in third and third.strip().endswith(f"{total} runs finished; 0 left")
    return json.loads((tmp / "out" / "runs.json").read_text())[key]


def needs(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present")


@pytest.fixture(scope="session")
def kodak_crop() -> np.ndarray:
    """A real photo: a 96x128 crop of kodim23 (uint8 HxWx3)."""
    from nodecode.data.images import load_image
    if not KODAK.exists():
        pytest.skip("../shared/datasets/kodak not present")
    return load_image(KODAK / "kodim23.png")[200:296, 300:428].copy()


@pytest.fixture(scope="session")
def small_codec():
    """An untrained C=8 codec with tables fitted to its own symbols on a real image."""
    from nodecode.codec import CodecConfig, CompressionModel
    from nodecode.data.images import load_image, to_tensor
    torch.manual_seed(0)
    model = CompressionModel(CodecConfig("test8", channels=8)).eval()
    img = load_image(KODAK / "kodim01.png")[:128, :128] if KODAK.exists() else np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    z = model.encode_symbols(to_tensor(img))
    counts = torch.nn.functional.one_hot(z, 6).sum(dim=(0, 2, 3)).numpy()
    model.set_tables_from_counts(counts)
    return model


def _ddp_worker(rank, world, port, train, cfg):
    import torch.distributed as dist
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        train(cfg)
    finally:
        dist.destroy_process_group()


def run_ddp(train, cfg, world: int = 2) -> None:
    """train(cfg) in `world` gloo processes on this machine (torchrun's environment, a free local port)."""
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(world, port, train, cfg), nprocs=world)
