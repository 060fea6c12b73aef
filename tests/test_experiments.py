"""The experiments helper: runs.json merge / skip / record, the time budget, jobs over GPUs, tables."""
import json
import os
import sys

from nodecode.experiments import ROOT, Budget, Runs, experiment_parser, markdown_table, read_json, run_jobs


def test_runs_merge_skip_and_record(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps({"a": {"v": 1}, "b": {"v": 2}}))
    (tmp_path / "runs.json").write_text(json.dumps({"b": {"v": 3}}))
    runs = Runs(tmp_path / "runs.json", merge=[tmp_path / "old.json", tmp_path / "missing.json"])
    assert runs["a"] == {"v": 1} and runs["b"] == {"v": 3}            # its own file wins over the merged one
    calls = []
    budget = Budget(10.0)
    assert runs.stage("a", lambda m: calls.append(m), budget) == {"v": 1} and calls == []     # done: skipped
    assert runs.stage("c", lambda m: None, budget) is None and "c" not in runs               # stopped: not recorded
    r = runs.stage("d", lambda m: calls.append(m) or {"top1": 0.5}, budget)
    assert r["top1"] == 0.5 and r["wall_s"] >= 0 and 9.0 < calls[0] <= 9.5                   # minutes left - margin
    assert json.loads((tmp_path / "runs.json").read_text())["d"]["top1"] == 0.5              # saved at once
    assert runs.stage("e", lambda m: {"x": 1}, Budget(0.5)) is None                          # under the reserve
    assert runs.stage("a", lambda m: {"v": 4}, budget, redo=lambda r: r["v"] == 2) == {"v": 1}  # recorded, kept
    assert runs.stage("a", lambda m: {"v": 4}, budget, redo=lambda r: r["v"] == 1)["v"] == 4    # redone, recorded
    assert json.loads((tmp_path / "runs.json").read_text())["a"]["v"] == 4


def test_run_jobs_one_per_gpu(tmp_path):
    code = "import os, sys; print(os.environ['CUDA_VISIBLE_DEVICES']); sys.exit(int(sys.argv[1]))"
    jobs = [(f"j{i}", [sys.executable, "-c", code, str(i % 2)]) for i in range(3)]
    codes = run_jobs(jobs, gpus=["3", "5"], log_dir=tmp_path, poll_s=0.05)
    assert codes == {"j0": 0, "j1": 1, "j2": 0}
    gpus = [(tmp_path / f"j{i}.log").read_text().strip() for i in range(3)]
    assert gpus[:2] == ["3", "5"] and gpus[2] in ("3", "5")


def test_run_jobs_unpinned_with_own_env_and_logs(tmp_path):
    code = "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ['MARK'])"
    env = {"PATH": "/usr/bin:/bin", "MARK": "x", "CUDA_VISIBLE_DEVICES": "7"}
    logs = {f"j{i}": tmp_path / f"run{i}" / "stdout.log" for i in range(3)}
    codes = run_jobs([(n, [sys.executable, "-c", code]) for n in logs], gpus=[], per_gpu=3, env=env, logs=logs,
                     poll_s=0.05)
    assert codes == {"j0": 0, "j1": 0, "j2": 0}
    assert all(p.read_text() == "7 x\n" for p in logs.values())          # gpus=[]: CUDA_VISIBLE_DEVICES left alone


def test_run_jobs_share_the_cores_unless_told(tmp_path, monkeypatch):
    code = "import os; print(os.environ['OMP_NUM_THREADS'])"
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    run_jobs([("a", [sys.executable, "-c", code])], gpus=["0", "1"], per_gpu=4, log_dir=tmp_path, poll_s=0.05)
    assert (tmp_path / "a.log").read_text() == "8\n"                       # 64 cores over 2 GPUs x 4 slots
    run_jobs([("b", [sys.executable, "-c", code])], gpus=["0"], per_gpu=3, log_dir=tmp_path, poll_s=0.05,
             env={"OMP_NUM_THREADS": "2"})
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    run_jobs([("c", [sys.executable, "-c", code])], gpus=[], per_gpu=100, log_dir=tmp_path, poll_s=0.05)
    assert [(tmp_path / f"{n}.log").read_text() for n in "bc"] == ["2\n", "5\n"]   # env, then the caller's own


def test_read_json(tmp_path):
    assert read_json(tmp_path / "none.json") is None and read_json(tmp_path / "none.json", {}) == {}
    (tmp_path / "a.json").write_text('{"a": 1}')
    assert read_json(tmp_path / "a.json") == {"a": 1}


def test_markdown_table():
    assert markdown_table(["run", "top-1"], [("a", "1.00")]) == "| run | top-1 |\n|---|---:|\n| a | 1.00 |"


def test_experiment_parser():
    a = experiment_parser("doc", budget_minutes=5.0).parse_args(["collect"])
    assert (a.stage, a.budget_minutes, a.results) == ("collect", 5.0, None)
    a = experiment_parser("doc", area="joint").parse_args(["collect"])
    assert a.results == str(ROOT / "results" / "joint")
