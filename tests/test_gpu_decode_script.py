"""experiments/speed/gpu_decode.py end to end on a CPU (--smoke): every stage runs or says why not, the JSON is
resumable, the table carries each row's idle start (first_launch_s), and collect --save drops the per-file lists."""
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import IMAGENETTE, needs

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "speed" / "gpu_decode.py"


def _run(out, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = args or ("run", str(IMAGENETTE / "val"), "--smoke", "--compile-mode", "max-autotune-no-cudagraphs")
    p = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p.stdout


@needs(IMAGENETTE)
def test_gpu_decode_smoke_runs_every_stage_and_resumes(tmp_path):
    out = _run(tmp_path)
    done = json.loads((tmp_path / "gpu_decode.json").read_text())
    assert done["finished"] and done["failed"] == {} and done["e2e"]["compile_mode"] == "max-autotune-no-cudagraphs"
    assert all(done["bitexact"][p]["identical"] == done["bitexact"][p]["files"] > 0 for p in ("c8", "c16"))
    shard_rows = [r for r in done["e2e"]["rows"] if r.get("path", "").startswith("e2e-ndc-c8-shard")]
    assert shard_rows and all(0 < r["first_launch_s"] < r["seconds"] and r["corrupt"] == 0 for r in shard_rows)
    assert "| first batch ms |" in out and "skipped: nvJPEG needs CUDA" in out
    assert done["e2e-ratio"]["skipped"] == "nvJPEG needs CUDA" and "e2e ratio: skipped (nvJPEG needs CUDA)" in out
    again = _run(tmp_path)                                 # resumed: every stage is in the JSON already
    assert json.loads((tmp_path / "gpu_decode.json").read_text())["e2e"] == done["e2e"] and "| first batch ms |" in again
    _run(tmp_path, "collect", "--save", str(tmp_path / "committed.json"))   # the copy for results/: no per-file lists
    kept = json.loads((tmp_path / "committed.json").read_text())
    assert kept["e2e"] == done["e2e"] and "names" not in kept["prepare"]
    assert kept["prepare"]["names_count"] == len(done["prepare"]["names"]) == 24


@needs(IMAGENETTE)
def test_stages_runs_only_the_named_ones_and_refuses_an_unknown_one(tmp_path):
    """--stages prepare,cpu-decode-per-core,cpu-decode-procs (what a CPU can measure): those in the JSON, nothing else, the run not
    finished; an unknown stage is refused before anything is written; decode_bound_ab.py times both bounds on the
    shard that prepare wrote."""
    out = _run(tmp_path, "run", str(IMAGENETTE / "val"), "--smoke", "--stages", "prepare,cpu-decode-per-core,cpu-decode-procs")
    done = json.loads((tmp_path / "gpu_decode.json").read_text())
    assert {"prepare", "cpu-decode-per-core", "cpu-decode-procs"} <= set(done)
    assert not {"bitexact", "kernel", "e2e", "e2e-ratio"} & set(done)
    per_core = done["cpu-decode-per-core"]
    assert not done["finished"] and per_core["decode_ndc_datas (shard bytes)"] > 0
    assert per_core["of which: constriction decode calls"] > 0 and per_core["of which: read the files"] > 0
    procs = done["cpu-decode-procs"]                       # every file decoded in 2 spawn processes, once (smoke)
    assert (procs["workers"], procs["files"], len(procs["decode_s_passes"])) == (2, 24, 1)
    assert procs["images_per_s"] == 24 / procs["decode_s_passes"][0] and "CPU decode c8, 2 processes" in out
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run([sys.executable, str(SCRIPT), "run", str(IMAGENETTE / "val"), "--stages", "kernel,bogus",
                        "--out", str(tmp_path / "x")], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "--stages: each of prepare" in p.stderr and not (tmp_path / "x").exists()
    p = subprocess.run([sys.executable, str(ROOT / "experiments" / "speed" / "decode_bound_ab.py"),
                        str(tmp_path / "work" / "c8.tar"), "--passes", "2"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0 and "24 c8 files, 2 interleaved passes" in p.stdout and p.stdout.count("us/file") == 4
