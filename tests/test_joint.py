"""Joint training (§6, Eq. 2, App. A.8): the loss value, CE gradients reaching the encoder, resume, the control."""
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from nodecode.cli import main
from nodecode.codec.zoo import load_codec
from nodecode.data.folders import scan_image_folder
from nodecode.models import create_model
from nodecode.tasks.classification import ClassifierTrainConfig, load_classifier, save_classifier, train_classifier
from nodecode.tasks.joint import JointModel, JointTrainConfig, joint_loss, train_joint

from conftest import CAMVID, IMAGENETTE, imagenette_subset, needs

CLASSES = ["n01440764", "n02102040", "n03000684"]
PER_SPLIT = {"train": 2, "val": 1}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny-width cResNets on 8x8 latents are ~100x slower with 2 OpenMP threads on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return imagenette_subset(tmp_path_factory.mktemp("nette"), CLASSES, PER_SPLIT)


def tiny_classifier(path, channels=8, classes=CLASSES):
    torch.manual_seed(0)
    model = create_model("cresnet51", in_channels=channels, num_classes=len(classes), width=0.0625)
    meta = {"model": "cresnet51", "width": 0.0625, "input": "latent", "in_channels": channels, "codec": "c8",
            "codec_name": "c8", "webp_bpp": None, "classes": classes, "class_names": classes,
            "mean": [0.1] * channels, "pixel_scale": 255, "size": [28, 28]}
    save_classifier(model, path, meta)
    return path


def test_eq2_loss_value_on_a_tiny_case():
    x = torch.full((1, 3, 2, 2), 0.5)
    out = {"x_hat": x + 2 / 255, "entropy": torch.tensor(1.0), "bpp": torch.tensor(0.125),
           "logits": torch.tensor([[2.0, 0.0]])}
    y = torch.tensor([0])
    loss, logs = joint_loss(out, x, y, gamma=0.001, beta=600.0, target_entropy=0.8)
    ce = float(F.cross_entropy(out["logits"], y))
    assert float(loss) == pytest.approx(0.001 * (4.0 + 600 * 0.2) + ce, rel=1e-5)   # MSE 2^2 on the 0..255 scale
    assert float(logs["ce"]) == pytest.approx(ce) and float(logs["mse"]) == pytest.approx(4.0, rel=1e-4)
    below, _ = joint_loss({**out, "entropy": torch.tensor(0.5)}, x, y, 0.001, 600.0, 0.8)  # under Ht: no rate term
    assert float(below) == pytest.approx(0.004 + ce, rel=1e-5)
    control, logs = joint_loss({k: v for k, v in out.items() if k != "logits"}, x, None, 0.001, 600.0, 0.8)
    assert float(control) == pytest.approx(0.001 * 124.0, rel=1e-5) and "ce" not in logs


def test_ce_gradients_reach_the_encoder(kodak_crop):
    codec = load_codec("c8")
    classifier = create_model("cresnet51", in_channels=8, num_classes=3, width=0.0625)
    model = JointModel(codec, classifier, torch.zeros(8)).train()
    x = torch.from_numpy(kodak_crop[:64, :64]).permute(2, 0, 1)[None].float().div(255)
    loss, _ = joint_loss(model(x), x, torch.tensor([1]), gamma=0.0, beta=0.0, target_entropy=0.0)  # CE only
    loss.backward()
    g = model.codec.g_a[0].weight.grad
    assert g is not None and g.abs().sum() > 0                  # through Q̄'s soft backward into g_a
    assert model.codec.g_s[0].weight.grad is None or model.codec.g_s[0].weight.grad.abs().sum() == 0


@needs(IMAGENETTE)
def test_joint_training_resumes_exactly_and_writes_checkpoints(folder, tmp_path):
    cls = tiny_classifier(tmp_path / "cls" / "classifier.safetensors")
    base = dict(data=str(folder), classifier=str(cls), codec="c8", epochs=2 / 6, lr_epochs=(1,), batch_size=1,
                cache_dir=str(tmp_path / "cache"), log_every=1, progress=False, eval_batch=4, table_images=2, image_size=64)
    train_joint(JointTrainConfig(out=str(tmp_path / "a"), **base))
    train_joint(JointTrainConfig(out=str(tmp_path / "b"), max_minutes=0.0, **base))   # stops after one step
    assert not (tmp_path / "b" / "codec.safetensors").exists()
    assert json.loads(load_file_meta(tmp_path / "b" / "last.safetensors"))["meta"]["step"] == 1
    train_joint(JointTrainConfig(out=str(tmp_path / "b"), **base))                     # resumes: step 2
    a, b = load_file(str(tmp_path / "a" / "last.safetensors")), load_file(str(tmp_path / "b" / "last.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a if k.startswith("model."))
    assert not torch.equal(a["model.codec.g_a.0.weight"], load_codec("c8").state_dict()["g_a.0.weight"])
    codec = load_codec(tmp_path / "a" / "codec.safetensors")
    assert codec.config.name == "c8-joint" and codec.config.beta == 600.0
    assert codec.config.target_entropy == load_codec("c8").config.target_entropy
    model, meta = load_classifier(tmp_path / "a")
    assert meta["codec_name"] == "c8-joint" and load_codec(meta["codec"]).fingerprint() == codec.fingerprint()
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["steps"] == 2 and s["steps_per_epoch"] == 6 and 0 <= s["val"]["top1"] <= 1 and s["val"]["psnr"] > 15


def load_file_meta(path):
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["nodecode"]


@needs(IMAGENETTE)
def test_control_pipeline_codec_only_then_scratch_then_nine_more(folder, tmp_path):
    cache = str(tmp_path / "cache")
    rc = main(["train", "joint", "--data", str(folder), "--out", str(tmp_path / "ft"), "--codec-only", "--epochs", "1",
               "--batch-size", "3", "--image-size", "64", "--cache-dir", cache])
    assert rc == 0
    codec_path = tmp_path / "ft" / "codec.safetensors"
    assert load_codec(codec_path).config.name == "c8-ft" and not (tmp_path / "ft" / "classifier.safetensors").exists()
    cfg = ClassifierTrainConfig(data=str(folder), out=str(tmp_path / "scratch"), model="cresnet51", codec=str(codec_path),
                                width=0.0625, epochs=1, lr_epochs=(1,), batch_size=3, cache_dir=cache, progress=False)
    train_classifier(cfg)
    more = ClassifierTrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "more"), "init": str(tmp_path / "scratch"),
                                    "base_lr": 0.0025, "lr_epochs": (3, 6)})
    train_classifier(more)
    _, meta = load_classifier(tmp_path / "more")
    assert meta["codec"] == str(codec_path) and meta["codec_name"] == "c8-ft"
    wrong = ClassifierTrainConfig(**{**more.__dict__, "out": str(tmp_path / "w"), "model": "cresnet39"})
    with pytest.raises(Exception, match="is not a cresnet39"):
        train_classifier(wrong)
    assert main(["train", "joint", "--data", str(folder), "--out", str(tmp_path / "x"),
                 "--classifier", str(tmp_path / "missing")]) == 2
    assert scan_image_folder(folder / "val").labels.tolist() == [0, 1, 2]


@needs(IMAGENETTE)
@needs(CAMVID)
def test_experiment_imagenette_recipe_pattern_gamma_ablation_and_resume(folder, kodak_crop, tmp_path, monkeypatch,
                                                                        capsys):
    """experiments/joint/run.py end to end on a CPU: the baseline found by --cls-pattern (per seed), the control's
    classifiers under --recipe imagenette (augmentation through the codec), a second γ's joint_ft_g row with its
    measurements, the §6.1 segmenters at the backbones' width (not --width's); a second call retrains nothing;
    collect tabulates the γ row and the mIoU column (γ rows segmented too)."""
    import sys
    from nodecode.data.images import save_image
    from conftest import load_script
    tiny_classifier(tmp_path / "matched" / "c8-latent-cresnet51-w1-s0" / "classifier.safetensors")
    (tmp_path / "kodak").mkdir()
    save_image(kodak_crop[:64, :64], tmp_path / "kodak" / "kodim23.png")
    out = tmp_path / "out"
    argv = ["run.py", "run", "--data", str(folder), "--kodak", str(tmp_path / "kodak"), "--cache", str(tmp_path / "cache"),
            "--work", str(tmp_path / "work"), "--out", str(out), "--points", "c8", "--seeds", "1",
            "--recipe", "imagenette", "--cls-pattern", str(tmp_path / "matched" / "{point}-latent-cresnet51-w1-s{seed}"),
            "--gammas", "0.001,0.01", "--epochs", str(1 / 6), "--batch-size", "1", "--scratch-epochs", "1",
            "--more-epochs", "1", "--cls-batch-size", "3", "--image-size", "64", "--budget-minutes", "30",
            "--segmentation", "--camvid", str(CAMVID), "--seg-iters", "1", "--seg-batch-size", "1", "--limit", "2"]
    script = load_script("experiments/joint/run.py")
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    runs = json.loads((out / "runs.json").read_text())
    assert runs["c8/baseline-cls-s0"]["trained_here"] is False       # the pattern's checkpoint, keyed per seed
    assert {"c8/joint-s0", "c8/joint-g0.01-s0", "c8/ft", "c8/scratch-s0", "c8/control-s0"} <= set(runs)
    assert runs["c8/joint-g0.01-s0"]["gamma"] == 0.01 and "gamma" not in runs["c8/joint-s0"]
    assert runs["c8/joint-g0.01-s0"]["loss_scale"] == pytest.approx(0.1)     # the default γ's codec step
    assert runs["c8/scratch-s0"]["recipe"] == runs["c8/control-s0"]["recipe"] == "imagenette"
    scratch = json.loads((tmp_path / "work" / "c8" / "scratch-s0" / "summary.json").read_text())
    control = json.loads((tmp_path / "work" / "c8" / "control-s0" / "summary.json").read_text())
    assert scratch["recipe"]["augment"] == "codec" and scratch["recipe"]["label_smoothing"] == 0.1
    assert (scratch["recipe"]["epochs"], scratch["recipe"]["batch_size"], scratch["config"]["image_size"]) == (1, 3, 64)
    assert control["recipe"]["schedule"] == "cosine" and control["recipe"]["warmup_epochs"] == 0
    assert control["recipe"]["base_lr"] == pytest.approx(0.02) and control["config"]["init"]
    rows = {k.split("/")[2] for k in runs if "/measure/" in k}
    assert rows == {"baseline-s0", "compression_ft-s0", "joint_ft-s0", "joint_ft_g0.01-s0"}
    g = runs["c8/measure/joint_ft_g0.01-s0"]
    assert {"bpp", "psnr", "ssim", "ms_ssim"} <= set(g["kodak"]) and 0 <= g["top1"] <= 1
    assert g["codec"].endswith("joint-g0.01-s0/codec.safetensors")
    assert set(g["seconds"]) == {"kodak", "imagenette_bpp", "top1"} and min(g["seconds"].values()) >= 0
    for row in ("baseline", "compression_ft", "joint_ft", "joint_ft_g0.01"):  # width-0.0625 backbone, --width at 1
        seg = json.loads(Path(runs[f"c8/seg/{row}-s0"]["summary"]).read_text())
        assert seg["config"]["width"] == 0.0625 and 0 <= runs[f"c8/seg/{row}-s0"]["val"]["miou"] <= 1
    capsys.readouterr()
    script.main()                                                   # resumes: every stage recorded, nothing trained
    printed = capsys.readouterr().out
    assert "== " not in printed and json.loads((out / "runs.json").read_text()) == runs
    # a new machine (new --out, --work): the finished seed's stages merged as done, only the new γ row runs, and
    # the γ = 0.01 fine-tune whose measurement and segmenter the earlier machine did not finish is trained again
    merged, earlier = tmp_path / "merged", {k: v for k, v in runs.items() if not k.endswith("/joint_ft_g0.01-s0")}
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    i = argv.index("--gammas")
    monkeypatch.setattr(sys, "argv", argv[:i] + ["--gammas", "0.01,0.003", "--merge", str(tmp_path / "earlier.json"),
                                                  "--out", str(merged), "--work", str(tmp_path / "work2")] + argv[i + 2:])
    shutil.rmtree(tmp_path / "work" / "c8" / "joint-g0.01-s0")   # gone with the earlier machine
    script.main()
    again = json.loads((merged / "runs.json").read_text())
    assert set(again) - set(earlier) == {"c8/joint-g0.003-s0", "c8/measure/joint_ft_g0.003-s0",
                                         "c8/seg/joint_ft_g0.003-s0", "c8/measure/joint_ft_g0.01-s0",
                                         "c8/seg/joint_ft_g0.01-s0"}
    assert again["c8/joint-g0.01-s0"]["codec"] == str(tmp_path / "work2" / "c8" / "joint-g0.01-s0" / "codec.safetensors")
    assert again["c8/measure/joint_ft_g0.01-s0"]["codec"] == again["c8/joint-g0.01-s0"]["codec"]
    assert all(again[k] == v for k, v in earlier.items() if k != "c8/joint-g0.01-s0")
    assert not (tmp_path / "work2" / "c8" / "ft").exists()
    assert not (merged / "weights").exists()               # the joint codec was not trained on this machine
    monkeypatch.setattr(sys, "argv", ["run.py", "collect", "--runs-json", str(out / "runs.json"),
                                      "--results", str(tmp_path / "results")])
    script.main()
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())["points"]["c8"]
    assert summary["joint_ft_g0.01"]["seeds"] == 1 and summary["joint_ft_g0.01"]["top1_std"] == 0
    assert "| c8 | joint_ft_g0.01 |" in (tmp_path / "results" / "summary.md").read_text()
    assert summary["joint_ft"]["miou_seeds"] == summary["joint_ft_g0.01"]["miou_seeds"] == 1   # γ rows segmented too


def test_experiment_parallel_runs_one_process_per_point_and_seed(tmp_path, monkeypatch):
    """experiments/joint/run.py run --parallel: one job per point and seed, all at once over the GPUs, each with its
    own --out / --work, the shared --cache and the one seed it runs; the γ list passes on as given."""
    import sys
    from conftest import load_script
    script = load_script("experiments/joint/run.py")
    seen = {}
    monkeypatch.setattr(script, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(script, "run_jobs", lambda jobs, per_gpu, log_dir: seen.update(jobs=dict(jobs), per_gpu=per_gpu)
                        or {name: 0 for name, _ in jobs})
    out, work, cache = tmp_path / "out", tmp_path / "work", tmp_path / "cache"
    monkeypatch.setattr(sys, "argv", ["run.py", "run", "--parallel", "--points", "c8,c32", "--seeds", "3",
                                      "--out", str(out), "--work", str(work), "--cache", str(cache),
                                      "--gammas", "0.001,0.003", "--recipe", "imagenette"])
    script.main()
    assert sorted(seen["jobs"]) == [f"joint-{p}-s{s}" for p in ("c32", "c8") for s in range(3)]
    assert seen["per_gpu"] == 3                                       # six jobs on two GPUs: all at once
    argv = seen["jobs"]["joint-c32-s1"]
    flag = lambda name: argv[argv.index(name) + 1]                   # noqa: E731
    assert (flag("--points"), flag("--first-seed"), flag("--seeds")) == ("c32", "1", "2")
    assert (flag("--out"), flag("--cache"), flag("--work")) == (f"{out}-c32-s1", str(cache), f"{work}-s1")
    assert flag("--gammas") == "0.001,0.003" and flag("--recipe") == "imagenette" and "--parallel" not in argv
    assert argv.count("--seeds") == argv.count("--out") == 1
