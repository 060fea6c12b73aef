"""experiments/classification/matched.py end to end on tiny data (--smoke): grid, scheduling, resume, report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IMAGENETTE, needs, rerun_after_losing

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "classification" / "matched.py"


def _run(*args, tmp):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("OUT", None)
    p = subprocess.run([sys.executable, str(SCRIPT), *args, "--smoke", "--state", str(tmp / "state"),
                        "--out", str(tmp / "out")], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p.stdout


def _check_bundle_candidate(tmp_path, row, monkeypatch):
    """The seed-0 run of the bundled classifier's point / architecture / width comes back as its fp16 candidate,
    the run's weights rounded to fp16, with its val top-1 in the header."""
    import torch

    from nodecode import zoo
    from nodecode.tasks.classification import load_classifier
    path = tmp_path / "out" / "bundled" / "classifier-c8.safetensors"
    assert zoo.load_tensors(path)["fc.weight"].dtype == torch.float16
    got, meta = load_classifier(path, "cpu")
    ref, _ = load_classifier(tmp_path / "state" / "runs" / "c8-latent-cresnet51-w0.25-s0", "cpu")
    header = json.loads(zoo.header(path)["meta"])
    assert header["val_top1"] == row["val"]["top1"] and header["source_run"] == "c8-latent-cresnet51-w0.25-s0"
    assert meta["width"] == 0.25 and meta["codec"] == "c8"
    for (k, a), b in zip(got.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b.half().float()) if a.is_floating_point() else torch.equal(a, b), k
    import shutil                                   # and it is what `python -m nodecode.zoo import-legacy` bundles
    from nodecode.zoo.__main__ import import_legacy
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(zoo.WEIGHTS_DIR / "c8.safetensors", weights)
    (weights / "zoo.json").write_text(json.dumps({"c8": json.loads(zoo.index()["c8"].to_json())}))
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", weights)
    cfg = import_legacy(path, "classifier-c8")
    assert cfg.metrics == {"val_top1": row["val"]["top1"]} and cfg.fingerprint == zoo.index()["c8"].fingerprint
    assert cfg.width == 0.25 and zoo.read_cfg(weights / "classifier-c8.safetensors") == cfg


@needs(IMAGENETTE)
def test_matched_smoke_runs_resumes_and_reports(tmp_path):
    out = _run("run", tmp=tmp_path)
    assert out.strip().splitlines()[-1] == "8 runs finished; 0 left"
    runs = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert sorted(runs) == sorted(f"{p}-{m}-w0.25-s{s}" for s in (0, 1) for p, m in
                                  (("c8-decoded", "resnet50"), ("c8-latent", "cresnet51"), ("c8-latent", "cresnet39"),
                                   ("none-rgb", "resnet50")))
    assert all(r["recipe"]["augment"] == "codec" and r["eval_on"] == "val" for r in runs.values())
    rep = json.loads((tmp_path / "out" / "matched.json").read_text())
    assert len(rep["table2"]) == 4 and all(r["seeds"] == [0, 1] and r["gmacs"] > 0 for r in rep["table2"])
    assert {(r["input"], r["model"]) for r in rep["fig6"]} == {("decoded", "resnet50"), ("latent", "cresnet51"),
                                                               ("latent", "cresnet39"), ("rgb", "resnet50")}
    assert "| c8 | 0.25 | latent | cresnet51 |" in out
    with pytest.MonkeyPatch.context() as mp:
        _check_bundle_candidate(tmp_path, runs["c8-latent-cresnet51-w0.25-s0"], mp)
    again = _run("run", tmp=tmp_path)                                  # resumed: nothing left to train
    assert "start " not in again and again.strip().endswith("8 runs finished; 0 left")
    assert "bundle candidate" not in again                             # written once
    k = "c8-latent-cresnet51-w0.25-s1"                # its result lost: the job resumes at its end, TrainResult finished
    redone = rerun_after_losing(lambda: _run("run", tmp=tmp_path), tmp_path, k, 8)
    assert {**redone, "minutes": 0} == {**runs[k], "minutes": 0} and redone["steps"] == 3    # 12 images / batch 4
    search = _run("search", "--variants", "ls0", "--holdout-frac", "0.25", tmp=tmp_path)
    row = json.loads((tmp_path / "out" / "search.json").read_text())["search-ls0"]
    assert row["eval_on"] == "holdout-0.25" and row["recipe"]["label_smoothing"] == 0 and "| ls0 |" in search


@needs(IMAGENETTE)
def test_matched_ablation_arm_trains_the_decoder_shaped_front_on_the_latent(tmp_path):
    """--arms picks the grid's arms: the ablations (g_s's architecture + ResNet-50 on the latent, g_s from scratch, from
    the codec's decoder, or from it at 1/100 of the lr) run like any arm, their GMACs those of decoder + ResNet-50;
    an unknown arm is refused before anything runs."""
    models = ("decoder_resnet50", "decoder_resnet50_codec", "decoder_resnet50_codec_slow")
    out = _run("run", "--arms", ",".join(f"latent:{m}" for m in models), tmp=tmp_path)
    assert out.strip().splitlines()[-1] == "6 runs finished; 0 left"
    rep = json.loads((tmp_path / "out" / "matched.json").read_text())
    from nodecode.bench.flops import model_gmacs
    gmacs = model_gmacs("decoder_resnet50", 28, 8, 10, width=0.25)[0]
    assert gmacs > model_gmacs("resnet50", 224, 3, 10, width=0.25)[0] + 3.4
    assert sorted((r["input"], r["model"], r["seeds"], r["gmacs"]) for r in rep["table2"]) == [
        ("latent", m, [0, 1], gmacs) for m in models]
    from safetensors.torch import load_file          # the codec arm's g_s saw ŷ: its offset is the latent's mean
    runs = tmp_path / "state" / "runs"
    assert load_file(next(runs.glob("c8-latent-decoder_resnet50_codec-*-s0")) / "classifier.safetensors")[
        "0.latent_offset"].abs().sum() > 0
    from safetensors import safe_open                # the slow arm trained g_s (its first groups) at lr / 100
    with safe_open(str(next(runs.glob("c8-latent-decoder_resnet50_codec_slow-*-s0")) / "last.safetensors"), "pt") as f:
        lrs = [g["lr"] for g in json.loads(f.metadata()["nodecode"])["optimizer"]["param_groups"]]
    assert len(lrs) == 4 and lrs[0] == lrs[1] == pytest.approx(lrs[2] / 100) and lrs[2] == lrs[3] > 0
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run([sys.executable, str(SCRIPT), "run", "--arms", "latent:resnet50", "--state", str(tmp_path / "x")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "--arms: each of" in p.stderr and not (tmp_path / "x").exists()


def test_repeats_pool_every_run_of_the_arms_that_were_run_again(tmp_path):
    """matched.py collect --reruns: an arm re-run at the table's seeds gets every run pooled (the table's and the
    repeats'), keyed apart so that the same key twice counts twice; arms not re-run stay out."""
    from conftest import load_script
    matched = load_script("experiments/classification/matched.py")

    def row(model, kind, seed, top1, point="c8"):
        return {"point": point, "input": kind, "model": model, "width": 0.25, "seed": seed,
                "val": {"top1": top1, "top5": 0.98}, "device": "H200"}
    table = {"c8-latent-cresnet51-w0.25-s0": row("cresnet51", "latent", 0, 0.80),
             "c8-latent-cresnet51-w0.25-s1": row("cresnet51", "latent", 1, 0.82),
             "c8-decoded-resnet50-w0.25-s0": row("resnet50", "decoded", 0, 0.85),
             "c32-latent-cresnet51-w0.25-s0": row("cresnet51", "latent", 0, 0.87, "c32")}
    again = tmp_path / "reruns.json"
    again.write_text(json.dumps({"c8-latent-cresnet51-w0.25-s0": row("cresnet51", "latent", 0, 0.84),
                                 "c8-decoded-resnet50-w0.25-s0": row("resnet50", "decoded", 0, 0.87)}))
    rows, md = matched.repeats(table, [str(again)])
    by = {(r["point"], r["input"]): r for r in rows}
    assert set(by) == {("c8", "latent"), ("c8", "decoded")}                 # c32 was not re-run
    assert by["c8", "latent"]["seeds"] == [0, 0, 1] and by["c8", "latent"]["top1"] == pytest.approx(82.0)
    assert by["c8", "decoded"]["top1"] == pytest.approx(86.0) and by["c8", "decoded"]["top1_std"] == pytest.approx(1.0)
    assert "| runs |" in md.splitlines()[0] and "| -4.00 |" in md
    _, md = matched.table(table)                     # a one-seed row shows its value, no "± 0.00" spread
    c32 = next(line for line in md.splitlines() if line.startswith("| c32 "))
    assert "| 87.00 | 98.00 | 1 |" in c32 and "±" not in c32
    assert "| 81.00 ± 1.00 | 98.00 ± 0.00 | 2 |" in md


@needs(IMAGENETTE)
def test_search_report_ranks_the_held_out_variants_and_puts_the_winner_beside_the_table_recipe(tmp_path):
    """matched.py collect --search / --search-val: the variants best first with their held-out size, and the
    winner's val runs (mean ± std over seeds) beside the RGB row of the same width from the table's runs.json."""
    from conftest import load_script
    matched = load_script("experiments/classification/matched.py")

    def held(variant, top1, ov):
        return {"variant": variant, "overrides": ov, "point": "none", "input": "rgb", "width": 1.0,
                "val": {"top1": top1, "top5": 0.99, "n": 947}, "eval_on": "holdout-0.1", "minutes": 6.0,
                "device": "H200", "recipe": {"epochs": 40, "batch_size": 128, **ov}}

    def val(seed, top1, width=1.0):
        return {"point": "none", "input": "rgb", "model": "resnet50", "width": width, "seed": seed,
                "val": {"top1": top1, "top5": 0.99}, "recipe": {"epochs": 60}, "device": "H200"}
    search, winner = tmp_path / "search.json", tmp_path / "winner.json"
    search.write_text(json.dumps({"search-base": held("base", 0.88, {}), "search-ep60": held("ep60", 0.91, {"epochs": 60}),
                                  "search-lr0.4": held("lr0.4", 0.87, {"base_lr": 0.4})}))
    winner.write_text(json.dumps({f"none-rgb-resnet50-w1-s{s}": val(s, t) for s, t in ((0, 0.89), (1, 0.90), (2, 0.91))}))
    done = {"none-rgb-resnet50-w1-s0": val(0, 0.88), "none-rgb-resnet50-w0.25-s0": val(0, 0.80, 0.25),
            "c8-latent-cresnet51-w1-s0": {**val(0, 0.84), "point": "c8", "input": "latent", "model": "cresnet51"}}
    md = matched.search_report(str(search), str(winner), done, tmp_path)
    order = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "{" in line]
    assert order == ["ep60", "base", "lr0.4"] and "| 60 | 128 | 91.00 | 947 |" in md   # epochs, batch of its recipe
    out = json.loads((tmp_path / "search.json").read_text())
    assert [(r["top1"], len(r["seeds"])) for r in out["val_table"]] == [(pytest.approx(90.0), 3)]
    assert [(r["top1"], r["width"]) for r in out["base_table"]] == [(pytest.approx(88.0), 1.0)]   # RGB, same width
    assert (tmp_path / "search.md").read_text() == md


def test_collect_writes_the_report_where_results_says(tmp_path):
    """matched.py collect --results DIR --recipe NAME: a second recipe's grid gets its own report folder (runs.json,
    matched.json naming the recipe, matched.md) and the default one is left alone."""
    from conftest import load_script
    matched = load_script("experiments/classification/matched.py")
    runs = {f"c8-{kind}-{model}-w0.25-s{s}": {"point": "c8", "input": kind, "model": model, "width": 0.25, "seed": s,
                                              "val": {"top1": t + s / 100, "top5": 0.98}, "device": "H200"}
            for kind, model, t in (("decoded", "resnet50", 0.85), ("latent", "cresnet51", 0.84)) for s in (0, 1)}
    done, out = tmp_path / "done.json", tmp_path / "matched60"
    done.write_text(json.dumps(runs))
    default = matched.ROOT / "results" / "classification" / "matched" / "matched.json"
    before = default.read_bytes() if default.exists() else None
    matched.main(["collect", "--done", str(done), "--results", str(out), "--recipe", "imagenette60"])
    report = json.loads((out / "matched.json").read_text())
    assert report["recipe"] == "imagenette60" and json.loads((out / "runs.json").read_text()) == runs
    by = {r["input"]: r for r in report["table2"]}
    assert by["latent"]["top1"] == pytest.approx(84.5) and by["decoded"]["top1"] == pytest.approx(85.5)
    assert "| -1.00 |" in (out / "matched.md").read_text()
    assert (default.read_bytes() if default.exists() else None) == before


def test_collect_add_merges_a_device_sessions_rows_and_refuses_a_changed_run(tmp_path, capsys):
    """matched.py collect --add FILE: the session's new rows join the table's runs.json (saved) before the report; a
    row already there unchanged is fine, the same key with other values stops with one line and changes nothing."""
    from conftest import load_script
    matched = load_script("experiments/classification/matched.py")

    from dataclasses import asdict

    from nodecode.tasks.recipe import RECIPES
    recipe = json.loads(json.dumps(asdict(RECIPES["imagenette60"])))      # as a run records it (tuples as lists)
    recipe.pop("cutmix")                                                  # a run older than that field

    def row(kind, model, seed, top1):
        return {"point": "c8", "input": kind, "model": model, "width": 0.5, "seed": seed,
                "val": {"top1": top1, "top5": 0.98}, "device": "H200", "recipe": recipe}
    table = {"c8-decoded-resnet50-w0.5-s0": row("decoded", "resnet50", 0, 0.86),
             "c8-latent-cresnet51-w0.5-s0": row("latent", "cresnet51", 0, 0.85)}
    out = tmp_path / "matched60"
    out.mkdir()
    (out / "runs.json").write_text(json.dumps(table))
    session = tmp_path / "m60-c8-0.5.json"
    new = {"c8-decoded-resnet50-w0.5-s1": row("decoded", "resnet50", 1, 0.88),
           "c8-latent-cresnet51-w0.5-s1": row("latent", "cresnet51", 1, 0.87)}
    session.write_text(json.dumps({**new, "c8-latent-cresnet51-w0.5-s0": table["c8-latent-cresnet51-w0.5-s0"]}))
    matched.main(["collect", "--results", str(out), "--add", str(session)])
    assert "2 new run(s) added" in capsys.readouterr().out
    assert json.loads((out / "runs.json").read_text()) == {**table, **new}
    report = json.loads((out / "matched.json").read_text())
    assert report["recipe"] == "imagenette60"          # named from the runs' recorded recipe, not --recipe's default
    by = {r["input"]: r for r in report["table2"]}
    assert by["decoded"]["top1"] == pytest.approx(87.0) and by["latent"]["top1"] == pytest.approx(86.0)
    assert len(by["latent"]["seeds"]) == 2
    # Δ -1.00 with its standard error from the sample stds: sqrt(1.41^2 / 2 + 1.41^2 / 2) = 1.41 at two seeds a side
    assert by["latent"]["delta_top1"] == pytest.approx(-1.0)
    assert by["latent"]["delta_top1_se"] == pytest.approx(2 ** 0.5)
    assert "| -1.00 | 1.41 |" in (out / "matched.md").read_text()
    from nodecode.experiments import delta_se
    assert delta_se(0.5, 1, 0.5, 3) is None                          # one run has no spread to compare

    before = (out / "runs.json").read_bytes()
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps({"c8-latent-cresnet51-w0.5-s2": row("latent", "cresnet51", 2, 0.8),
                                   "c8-latent-cresnet51-w0.5-s1": row("latent", "cresnet51", 1, 0.5)}))
    with pytest.raises(SystemExit, match="c8-latent-cresnet51-w0.5-s1 is already in .* with other values"):
        matched.main(["collect", "--results", str(out), "--add", str(changed)])
    with pytest.raises(SystemExit, match="no runs.json"):
        matched.main(["collect", "--results", str(out), "--add", str(tmp_path / "missing.json")])
    assert (out / "runs.json").read_bytes() == before
    with pytest.raises(SystemExit, match="--add is for collect"):
        matched.parse(["run", "--add", str(session)])
