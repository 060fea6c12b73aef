"""experiments/device/keep.py: finished grid runs packed on one machine (fp16, their runs.json rows) and restored
into the next machine's state, where the grid skips them and their classifiers load."""
import json
import tarfile

import torch

from conftest import load_script
from test_joint import tiny_classifier


def _state(tmp_path):
    state = tmp_path / "matched"
    rows = {}
    for i, key in enumerate(["c8-latent-cresnet51-w0.25-s0", "c8-latent-cresnet51-w0.25-s1", "c16-latent-cresnet51-w0.25-s0"]):
        tiny_classifier(state / "runs" / key / "classifier.safetensors")
        rows[key] = {"point": key.split("-")[0], "seed": i, "val": {"top1": 0.5 + i / 10}}
    rows["c8-latent-cresnet39-w0.25-s0"] = {"val": {"top1": 0.1}}      # finished, but its weights are gone
    (state / "runs.json").write_text(json.dumps(rows))
    return state, rows


def test_pack_then_unpack_restores_matching_runs_as_fp16(tmp_path, capsys):
    keep = load_script("experiments/device/keep.py")
    from nodecode.tasks.classification import load_classifier
    state, rows = _state(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    one = (state / "runs" / "c8-latent-cresnet51-w0.25-s0" / "classifier.safetensors").stat().st_size / 2**20
    tars = keep.pack(state, "c8-*", out, max_mib=0.8 * one)   # fp16: half the size, one run per file
    assert [t.name for t in tars] == ["keep-matched-000.tar", "keep-matched-001.tar"]
    assert not list(out.glob("*.part"))
    assert [tarfile.open(t).getnames()[0] for t in tars] == ["c8-latent-cresnet51-w0.25-s0", "c8-latent-cresnet51-w0.25-s1"]

    fresh = tmp_path / "next" / "matched"
    (fresh / "runs").mkdir(parents=True)
    (fresh / "runs.json").write_text(json.dumps({"c8-latent-cresnet51-w0.25-s1": {"val": {"top1": 0.9}}}))
    assert keep.main(["unpack", str(fresh), *map(str, tars)]) == 0
    restored = json.loads((fresh / "runs.json").read_text())
    assert restored["c8-latent-cresnet51-w0.25-s0"] == {**rows["c8-latent-cresnet51-w0.25-s0"], "restored": "fp16"}
    assert restored["c8-latent-cresnet51-w0.25-s1"] == {"val": {"top1": 0.9}}      # one finished there stays
    assert set(restored) == {"c8-latent-cresnet51-w0.25-s0", "c8-latent-cresnet51-w0.25-s1"}
    got, meta = load_classifier(fresh / "runs" / "c8-latent-cresnet51-w0.25-s0", "cpu")
    ref, ref_meta = load_classifier(state / "runs" / "c8-latent-cresnet51-w0.25-s0", "cpu")
    assert meta["width"] == ref_meta["width"] and meta["codec"] == "c8"
    for (k, a), b in zip(got.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b.half().float()) if a.is_floating_point() else torch.equal(a, b), k


def test_unpack_refuses_a_file_that_is_not_a_keep_archive(tmp_path, capsys):
    keep = load_script("experiments/device/keep.py")
    bad = tmp_path / "keep-matched-000.tar"
    bad.write_bytes(b"not a tar at all" * 10)
    assert keep.main(["unpack", str(tmp_path / "state"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("keep: error: ") and err.count("\n") == 1 and "not a keep archive" in err
