"""experiments/segmentation/matched.py end to end on tiny data (--smoke): grid, init, --runs, resume, report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CAMVID, needs, rerun_after_losing

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "segmentation" / "matched.py"
ARMS = (("c8-decoded", "resnet50_d"), ("c8-latent", "cresnet51_d"), ("c8-latent", "cresnet39_d"),
        ("none-rgb", "resnet50_d"))


def _run(*args, tmp):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("OUT", None)
    p = subprocess.run([sys.executable, str(SCRIPT), *args, "--smoke", "--state", str(tmp / "state"),
                        "--out", str(tmp / "out"), "--cls", str(tmp / "cls")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p.stdout


def _classifier(path: Path) -> None:
    """A tiny cResNet-51 on c8 latents where the classification matched run of c8-latent-cresnet51-w0.0625-s0 lies."""
    from nodecode.models import create_model
    from nodecode.tasks.classification import save_classifier
    path.parent.mkdir(parents=True)
    save_classifier(create_model("cresnet51", in_channels=8, num_classes=10, width=0.0625), path,
                    {"model": "cresnet51", "width": 0.0625, "input": "latent", "in_channels": 8, "codec": "c8",
                     "codec_name": "c8", "classes": list("abcdefghij"), "class_names": list("abcdefghij")})


@needs(CAMVID)
def test_segmatched_smoke_runs_resumes_and_reports(tmp_path):
    init = tmp_path / "cls" / "c8-latent-cresnet51-w0.0625-s0" / "classifier.safetensors"
    _classifier(init)
    first = _run("run", "--runs", "c8-latent-*-s0", tmp=tmp_path)      # --runs: the two latent arms of seed 0
    assert first.count("start ") == 2 and first.strip().endswith("2 runs finished; 0 left")
    assert "WARNING: no classifier" in first and "cresnet39-w0.0625-s0/classifier.safetensors" in first
    assert "cresnet51-w0.0625-s0/classifier.safetensors" not in first
    runs = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert sorted(runs) == ["c8-latent-cresnet39_d-w0.0625-s0", "c8-latent-cresnet51_d-w0.0625-s0"]
    assert runs["c8-latent-cresnet51_d-w0.0625-s0"]["init"] == str(init)
    assert runs["c8-latent-cresnet39_d-w0.0625-s0"]["init"] is None
    out = _run("run", tmp=tmp_path)                                    # the rest of the grid
    assert out.count("start ") == 6 and out.strip().splitlines()[-1] == "8 runs finished; 0 left"
    runs = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert sorted(runs) == sorted(f"{p}-{m}-w0.0625-s{s}" for s in (0, 1) for p, m in ARMS)
    assert all(r["augment"] == "codec" and r["steps"] == 2 and 0 <= r["test"]["miou"] <= 1 for r in runs.values())
    rep = json.loads((tmp_path / "out" / "matched.json").read_text())
    assert len(rep["rows"]) == 4 and all(r["seeds"] == [0, 1] and r["gmacs"] > 0 for r in rep["rows"])
    assert {(r["input"], r["model"]) for r in rep["rows"]} == {(k.split("-")[1], m) for k, m in ARMS}
    dec = next(r for r in rep["rows"] if r["input"] == "decoded")     # Δ vs decoded, its SE from two seeds a side
    for r in (r for r in rep["rows"] if r["input"] == "latent"):
        assert r["delta_val_miou"] == pytest.approx(r["val_miou"] - dec["val_miou"])
        assert r["delta_val_miou_se"] == pytest.approx((r["val_miou_std"] ** 2 + dec["val_miou_std"] ** 2) ** 0.5)
    md = (tmp_path / "out" / "matched.md").read_text()
    assert "| c8 | 0.0625 | latent | cresnet51_d |" in out and md.count("\n| c8 | 0.0625 | latent |") == 2
    again = _run("run", tmp=tmp_path)                                  # resumed: nothing left to train
    assert "start " not in again and "WARNING" not in again and again.strip().endswith("8 runs finished; 0 left")
    k = "c8-decoded-resnet50_d-w0.0625-s1"                # its result lost: the job resumes at its end, TrainResult finished
    redone = rerun_after_losing(lambda: _run("run", tmp=tmp_path), tmp_path, k, 8)
    assert {**redone, "minutes": 0} == {**runs[k], "minutes": 0}
    _run("collect", "--done", str(tmp_path / "out" / "runs.json"), "--results", str(tmp_path / "res"), tmp=tmp_path)
    assert {p.name for p in (tmp_path / "res").iterdir()} == {"runs.json", "matched.json", "matched.md",
                                                              "miou_vs_width.png"}


def test_segmatched_grid_order_and_runs_filter():
    """point -> width -> seed -> arm (a width's seeds finish before the next width); --runs filters keys."""
    from conftest import load_script
    m = load_script("experiments/segmentation/matched.py")
    a = m.parse(["run", "--points", "c8,c16", "--widths", "1.0,0.25", "--seeds", "0,1"])
    keys = [g[0] for g in m.grid(a)]
    assert keys[:5] == ["c8-decoded-resnet50_d-w1-s0", "c8-latent-cresnet51_d-w1-s0", "c8-latent-cresnet39_d-w1-s0",
                        "none-rgb-resnet50_d-w1-s0", "c8-decoded-resnet50_d-w1-s1"]
    assert keys.index("c8-decoded-resnet50_d-w0.25-s0") == 8 and len(keys) == 2 * 2 * 2 * 3 + 2 * 2
    assert keys[-1] == "c16-latent-cresnet39_d-w0.25-s1"
    a = m.parse(["run", "--runs", "c16-latent-*-w0.25-s*,none-*-w1-s2"])
    assert [g[0] for g in m.grid(a)] == ["none-rgb-resnet50_d-w1-s2"] + [
        f"c16-latent-{d}-w0.25-s{s}" for s in (0, 1, 2) for d in ("cresnet51_d", "cresnet39_d")]
