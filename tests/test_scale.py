"""experiments/codec/scale.py's pieces that need no GPU and no minutes: step planning, the recipe each stage trains
with, the train command, jobs side by side, packing RES into tars the device gives back, and `status`."""
import json
import sys
import tarfile
from argparse import Namespace
from pathlib import Path

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def scale():
    return load_script("experiments/codec/scale.py")


def args(tmp_path, **kw) -> Namespace:
    base = dict(train="/data/train", kodak="/data/kodak", cache=str(tmp_path / "cache"), init_dir=str(tmp_path / "init"),
                runs=str(tmp_path / "runs"), res=str(tmp_path / "res"), points="c8,c16,c32", warm_start=True,
                smoke=False, smoke_ddp=False)
    return Namespace(**{**base, **kw})


BENCH = {"rows": {
    "b128 128² eager": {"crop": 128, "compile": False, "batch_global": 128, "pixel_samples_per_s_per_gpu": 4e8,
                        "steps_per_s": 190.0, "peak_mem_gb": 3.0},
    "b256 128² eager": {"crop": 128, "compile": False, "batch_global": 256, "pixel_samples_per_s_per_gpu": 5e8,
                        "steps_per_s": 120.0, "peak_mem_gb": 6.0},
    "b256 128² compiled": {"crop": 128, "compile": True, "batch_global": 256, "pixel_samples_per_s_per_gpu": 9e8,
                           "steps_per_s": 200.0, "peak_mem_gb": 5.0},
    "b512 128² eager": {"error": "OutOfMemoryError: CUDA out of memory\nTried to allocate"}}}


def test_plan_steps(scale):
    recipe = {"batch": 256, "crop": 128}
    steps = scale.plan_steps(BENCH, recipe, minutes=10, share=1.0)
    assert steps == int(0.95 * 600 * 5e8 / (256 * 128 ** 2))              # the eager b256 row, not the compiled one
    # 4 DDP ranks of a global b1024: each rank steps b256 -> the b256 speed; 4 GPUs -> 4x the pixels
    assert scale.plan_steps(BENCH, {"batch": 1024, "crop": 128}, 10, 4.0, ranks=4) == steps
    # half a GPU: half the steps; no row of this crop: the 5e7 px/s fallback; never fewer than 10
    assert scale.plan_steps(BENCH, recipe, 10, 0.5) == int(0.95 * 600 * 5e8 * 0.5 / (256 * 128 ** 2))
    assert scale.plan_steps(BENCH, {"batch": 256, "crop": 160}, 10, 1.0) == int(0.95 * 600 * 5e7 / (256 * 160 ** 2))
    assert scale.plan_steps(BENCH, recipe, 0.001, 1.0) == 10
    # no row of this batch: the nearest in log scale (|log 192/256| = 0.29 < |log 192/128| = 0.41)
    assert scale.plan_steps(BENCH, {"batch": 192, "crop": 128}, 10, 1.0) == int(0.95 * 600 * 5e8 / (192 * 128 ** 2))


def test_to_pixel_samples(scale, tmp_path):
    a = args(tmp_path, to_pixel_samples=150e9)
    recipe = {"batch": 256, "crop": 128}
    for point in ("c8", "c16", "c32"):
        steps = scale.to_pixel_samples(a, point, recipe)
        total = scale.POINTS[point]["init_pixel_samples"] + steps * 256 * 128 ** 2
        assert 150e9 <= total < 150e9 + 256 * 128 ** 2        # the fewest steps that reach the target
    assert scale.POINTS["c8"]["init_pixel_samples"] == 22000 * 32 * 160 ** 2
    assert scale.to_pixel_samples(args(tmp_path, to_pixel_samples=1e9), "c16", recipe) == 10   # already past it


def test_recipes(scale, tmp_path):
    assert scale.recipe_from_bench(BENCH, args(tmp_path)) == {"batch": 256, "crop": 128, "compile": False,
                                                               "schedule": "cosine", "warmup": 100}
    assert scale.recipe_from_bench(BENCH, args(tmp_path, smoke=True))["crop"] == 32
    assert len(scale.STUDY) == 6 and all("lr" in r for r in scale.STUDY.values())
    # a point's own overrides (points.json) win over the study's best
    assert scale.POINTS["c32"].get("recipe", {}).get("lr") == 3e-4


def test_train_cmd(scale, tmp_path):
    a = args(tmp_path)
    recipe = {"batch": 256, "crop": 128, "lr": 3e-4, "schedule": "cosine", "warmup": 100, "sigma": 4.0}
    cmd = scale.train_cmd(a, "c8", tmp_path / "run", recipe, 500, 7.5, 1, 0, calibrate=True)
    assert cmd[1:3] == ["-m", "nodecode.cli"] and cmd[3:5] == ["train", "codec"]
    flag = lambda f: cmd[cmd.index(f) + 1]  # noqa: E731
    p = scale.POINTS["c8"]
    assert (flag("--channels"), flag("--steps"), flag("--max-minutes"), flag("--sigma")) == (str(p["channels"]), "500",
                                                                                               "7.50", "4.0")
    assert flag("--target-bpp") == str(p["target_bpp"]) and flag("--init") == p["init"]   # no init dir: bundled name
    assert "--compile" not in cmd
    ddp = scale.train_cmd(args(tmp_path, warm_start=False), "c16", tmp_path / "r", recipe, 5, 1.0, 4, 29501, False)
    assert ddp[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=4"] and "--init" not in ddp
    assert "--target-bpp" not in ddp


def test_side_by_side(scale, tmp_path):
    code = "import os, sys; print('cvd', os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ['NCCL_NVLS_ENABLE']); sys.exit(int(sys.argv[1]))"
    jobs = [([sys.executable, "-c", code, str(c)], {}, tmp_path / f"j{i}" / "stdout.log") for i, c in enumerate((0, 3))]
    (tmp_path / "j0").mkdir()
    (tmp_path / "j0" / "stdout.log").write_text("earlier\n")
    assert scale.side_by_side(jobs) == [0, 3]
    assert (tmp_path / "j0" / "stdout.log").read_text().startswith("earlier\ncvd")      # appended, NCCL-safe env
    assert (tmp_path / "j1" / "stdout.log").read_text().strip().endswith(" 0")


def test_pack_into_tars_of_at_most_15_mib(scale, tmp_path):
    res = tmp_path / "res"
    (res / "weights").mkdir(parents=True)
    sizes = {"weights/c8.safetensors": 6, "weights/c16.safetensors": 6, "weights/c32.safetensors": 6,
             "train.json": 0.001, "logs/train_c8_stdout.log": 0.01}
    (res / "logs").mkdir()
    for name, mib in sizes.items():
        (res / name).write_bytes(b"x" * int(mib * 2**20))
    (res / ".train.json.tmp").write_text("{}")                      # a temporary is never packed
    scale.pack(args(tmp_path, out=str(tmp_path / "out")))
    tars = sorted((tmp_path / "out").glob("res*.tar"))
    packed = []
    for t in tars:
        with tarfile.open(t) as f:
            members = f.getmembers()
        assert sum(m.size for m in members) <= 15 * 2**20
        packed += [m.name for m in members]
    assert len(tars) == 2 and sorted(packed) == sorted(sizes)


def test_status_on_a_fake_res(scale, tmp_path, capsys):
    a = args(tmp_path, points="c8")
    res, run = Path(a.res), Path(a.runs) / "c8"
    res.mkdir()
    run.mkdir(parents=True)
    (res / "bench.json").write_text(json.dumps({**BENCH, "scaling": {"1": {"pixel_samples_per_s_all": 5e8}}}))
    (res / "study.json").write_text("{}")
    (res / "pipeline.log").write_text("[12:00:00] bench done (9.0 min left)\n")
    (run / "log.jsonl").write_text(json.dumps({"split": "train", "step": 40, "loss": 0.012345678}) + "\n" +
                                   json.dumps({"split": "val", "psnr": 27.5}) + "\n")
    scale.status(a)
    out = capsys.readouterr().out
    for line in ("bench: done", "study: done", "train: -", "export: -", "downstream: -", "bench done (9.0 min left)",
                 "| variant | steps/s | M px/s per GPU | peak GB |", "| b256 128² eager | 120.00 | 500.0 | 6.0 |",
                 "| b512 128² eager | OutOfMemoryError: CUDA out of memory Tried to allocate |  |  |",
                 'scaling {"1": 500.0}'):
        assert line in out, line
    assert '"loss": 0.0123' in out and '"psnr": 27.5' in out
