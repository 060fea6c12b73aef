"""Checkpoint interval (--checkpoint-every), stale temporaries and log.jsonl on resume."""
import json

import pytest
import torch

from nodecode.errors import NodecodeError
from nodecode.tasks.checkpoint import resume_log
from nodecode.tasks.engine import Engine, EngineConfig, RunOptions, checkpoint_interval


@pytest.mark.parametrize("text,want", [("250", (float("inf"), 250)), ("90s", (90.0, None)), ("2m", (120.0, None)),
                                       ("1.5h", (5400.0, None)), (None, (120, None))])
def test_checkpoint_interval(text, want):
    kw = checkpoint_interval(text, 120)
    assert (kw["checkpoint_every_s"], kw["checkpoint_every_steps"]) == want


@pytest.mark.parametrize("bad", ["0", "-5", "abc", "5x", "", "s"])
def test_checkpoint_interval_rejects(bad):
    with pytest.raises(NodecodeError):
        checkpoint_interval(bad, 120)


def test_run_options_override_task_default():
    cfg = RunOptions(checkpoint_every="7").engine_config("out", 100, checkpoint_every_s=300)
    assert cfg.checkpoint_every_steps == 7 and cfg.checkpoint_every_s == float("inf")
    assert RunOptions().engine_config("out", 100, checkpoint_every_s=300).checkpoint_every_s == 300


def _engine(out, total, every="3"):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return Engine(model, opt, EngineConfig(str(out), total, log_every=1, progress=False,
                                           **checkpoint_interval(every, 0)))


def _fit(engine):
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    return engine.fit(lambda s: x, lambda net, b: (net(b).pow(2).mean(), {}))


def test_resume_cuts_log_and_removes_temporaries(tmp_path):
    """A run killed at step 5 (checkpoint at 3) resumes at 3: no stale temp, log lines 4-5 redone, not repeated."""
    e = _engine(tmp_path, 5)
    _fit(e)                                      # steps 1..5, checkpoints at 3 and (final) 5
    ckpt = tmp_path / "last.safetensors"
    e3 = _engine(tmp_path / "b", 3)
    _fit(e3)                                     # a checkpoint at step 3, as a killed run would have left
    (tmp_path / "b" / "log.jsonl").open("a").write(
        "".join(json.dumps({"step": s, "split": "train", "loss": 0.0}) + "\n" for s in (4, 5)) + '{"step": 6, "spl')
    (tmp_path / "b" / ".last.safetensors.tmp.dead01.safetensors").write_bytes(ckpt.read_bytes()[:100])
    r = _engine(tmp_path / "b", 5)
    assert r.step == 3
    assert not list((tmp_path / "b").glob(".*.tmp.*"))
    _fit(r)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log if x["split"] == "train"] == [1, 2, 3, 4, 5]
    assert [x["step"] for x in log if x["split"] == "resume"] == [3]
    assert torch.equal(r.model.weight, e.model.weight)       # the resumed run ends where the uninterrupted one did


def test_checkpoint_every_steps(tmp_path, monkeypatch):
    saved = []
    e = _engine(tmp_path, 10, every="4")
    monkeypatch.setattr(e, "save", lambda: saved.append(e.step))
    _fit(e)
    assert saved == [4, 8, 10]


def test_resume_log_without_checkpoint_empties_it(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1, "split": "train"}\n')
    resume_log(tmp_path / "log.jsonl", 0)
    assert (tmp_path / "log.jsonl").read_text() == ""
