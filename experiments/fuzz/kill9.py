"""kill -9 a tiny CPU `nodecode train codec` run at random moments (half of them while a checkpoint is being
written), N times in a row on the same run folder, then let it finish. After every kill: the checkpoint loads, its
step never goes back, the work lost is at most one checkpoint interval (+ one step); on every restart: no stale
temporaries, no duplicate log lines. Writes results/fuzz/kill9.json and kill9.md.

    nice -n 10 python experiments/fuzz/kill9.py --trials 20
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KODAK = ROOT.parent / "shared" / "datasets" / "kodak"


def checkpoint_state(run: Path) -> dict:
    """Whether last.safetensors loads completely (every tensor, into a fresh codec + Adam), and its step."""
    import torch
    from nodecode.codec.autoencoder import CodecConfig, CompressionModel
    from nodecode.tasks.checkpoint import load_checkpoint
    ckpt = run / "last.safetensors"
    if not ckpt.exists():
        return {"exists": False, "loads": None, "step": 0, "mtime": None}
    try:
        model = CompressionModel(CodecConfig("c8", 8, 6))
        meta = load_checkpoint(ckpt, model, torch.optim.Adam(model.parameters()), restore_rng=False)
        return {"exists": True, "loads": True, "step": int(meta["step"]), "mtime": ckpt.stat().st_mtime}
    except Exception as e:  # noqa: BLE001 - an unloadable checkpoint is what this experiment looks for
        return {"exists": True, "loads": False, "error": str(e)[:200], "step": None, "mtime": ckpt.stat().st_mtime}


def log_state(run: Path) -> dict:
    f = run / "log.jsonl"
    rows = []
    torn = 0
    for line in (f.read_text().splitlines() if f.exists() else []):
        try:
            rows.append(json.loads(line))
        except ValueError:
            torn += 1
    keys = [(r["split"], r["step"]) for r in rows if r.get("split") in ("train", "val")]
    return {"lines": len(rows), "torn": torn, "duplicates": len(keys) - len(set(keys)),
            "resumes": sum(r.get("split") == "resume" for r in rows),
            "max_step": max((r["step"] for r in rows if r.get("split") == "train"), default=0)}


def checkpoint_mtime(run: Path) -> float:
    try:
        return (run / "last.safetensors").stat().st_mtime
    except FileNotFoundError:
        return 0.0


def stale(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob(".*.tmp.*")) if run.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--every", default="2s", help="--checkpoint-every of the run")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "results" / "fuzz"))
    ap.add_argument("--kodak", default=str(KODAK))
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    every_s = float(a.every[:-1]) * {"s": 1, "m": 60}[a.every[-1]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data, run = Path(tmp) / "data", Path(tmp) / "run"
        data.mkdir()
        for name in ("kodim01.png", "kodim02.png", "kodim03.png"):
            (data / name).symlink_to(Path(a.kodak) / name)
        # the library entry of `nodecode train codec` (same config the CLI builds): the CLI's parser imports the
        # benchmark module (torch._dynamo), which adds ~10 s to every start on a loaded 2-core machine
        cfg = (f"CodecTrainConfig(data={str(data)!r}, out={str(run)!r}, name='c8', channels=8, steps={a.steps}, "
               f"batch_size=2, crop=32, tile=64, device='cpu', checkpoint_every={a.every!r})")
        cmd = [sys.executable, "-c", "from nodecode.tasks.compression import CodecTrainConfig, train_codec; "
               f"train_codec({cfg})"]
        for t in range(a.trials + 1):
            final = t == a.trials
            before = checkpoint_state(run)
            errf = open(Path(tmp) / f"stderr{t}.txt", "w+")
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errf, text=True)
            t_start = time.time()
            # at restart: the engine removes stale temporaries and cuts the log before training (checked below)
            if final:
                p.wait()
                mode, kill_at = "run to the end", None
            else:
                mode = "during checkpoint write" if t % 2 else "random moment"
                old_tmp, old_mtime = set(stale(run)), before["mtime"] or 0.0
                deadline = time.time() + 300
                if mode == "random moment":   # once this process trains (its first checkpoint), 0-2 intervals on
                    while time.time() < deadline and p.poll() is None and checkpoint_mtime(run) <= old_mtime:
                        time.sleep(0.05)
                    time.sleep(rnd.uniform(0.0, 2 * every_s))
                else:   # wait until a new checkpoint temporary appears (a write in progress), then kill at once
                    while time.time() < deadline and p.poll() is None and not \
                            any(n.startswith(".last.safetensors") for n in set(stale(run)) - old_tmp):
                        time.sleep(0.0005)
                kill_at = time.time()
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
            errf.seek(0)
            err = errf.read().replace("\r", "\n")
            errf.close()
            st_tmp = stale(run)
            ck = checkpoint_state(run)
            lg = log_state(run)
            # training time lost: since the last checkpoint this process wrote (None: it wrote none before the kill)
            lost = None if final or not ck["exists"] or ck["mtime"] < t_start else round(kill_at - ck["mtime"], 2)
            rows.append({"trial": t + 1, "mode": mode, "seconds_alive": round((kill_at or time.time()) - t_start, 1),
                         "stale_temporaries_after_kill": len(st_tmp), "temporaries": [n.split(".tmp.")[0] for n in st_tmp],
                         "ckpt_loads": ck["loads"], "ckpt_step_before": before["step"], "ckpt_step_after": ck["step"],
                         "step_never_back": ck["step"] is not None and ck["step"] >= before["step"],
                         "seconds_since_last_checkpoint": lost, "log_duplicates": lg["duplicates"],
                         "log_torn_lines": lg["torn"], "log_resume_marks": lg["resumes"],
                         "exit": p.returncode, "stderr_tail": err.strip().splitlines()[-1:] if err else []})
            print(json.dumps(rows[-1]), flush=True)
        end = {"stale_after_finish": stale(run), "codec_written": (run / "codec.safetensors").exists(),
               "final_log": log_state(run)}
        if end["codec_written"]:
            from nodecode.codec.zoo import load_codec
            end["codec_loads"] = load_codec(str(run / "codec.safetensors")).config.channels == 8
    kills = rows[:-1]
    # stale temporaries after a kill are expected (a write was cut): what matters is that a restart removes them,
    # which the next row shows (the engine deletes them before loading) and stale_after_finish confirms
    summary = {"command": " ".join(["python experiments/fuzz/kill9.py"] + sys.argv[1:]), "train_command": cmd,
               "checkpoint_every": a.every, "trials": len(kills), "rows": rows, "end": end,
               "all_resumed": all(r["step_never_back"] for r in rows), "all_loadable": all(r["ckpt_loads"] in (True, None) for r in rows),
               "max_seconds_lost": max((r["seconds_since_last_checkpoint"] or 0) for r in kills),
               "any_duplicate_log_line": any(r["log_duplicates"] for r in rows) or end["final_log"]["duplicates"] > 0,
               "kills_during_write": sum(r["stale_temporaries_after_kill"] > 0 for r in kills)}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kill9.json").write_text(json.dumps(summary, indent=1) + "\n")
    md = [f"# kill -9 during training\n", f"`{summary['command']}`; run: `train_codec(CodecTrainConfig(..., checkpoint_every="
          f"{a.every!r}))` (what `nodecode train codec --checkpoint-every {a.every}` runs; C=8, 3 Kodak images, "
          "32x32 crops, CPU, one thread). Random kills come 0-2 intervals after the process's first checkpoint; "
          "write kills the moment a new checkpoint temporary appears.\n",
          "| trial | kill | alive s | ckpt step before → after | loads | s since last ckpt | temporaries left by the kill | "
          "duplicate log lines | torn lines | resume marks |", "|---:|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['trial']} | {r['mode']} | {r['seconds_alive']} | {r['ckpt_step_before']} → {r['ckpt_step_after']} | "
                  f"{r['ckpt_loads']} | {r['seconds_since_last_checkpoint']} | {', '.join(r['temporaries']) or '-'} | "
                  f"{r['log_duplicates']} | {r['log_torn_lines']} | {r['log_resume_marks']} |")
    md.append(f"\nAfter the final run: stale files {end['stale_after_finish'] or 'none'}, codec written "
              f"{end['codec_written']}, loads {end.get('codec_loads')}, final log {end['final_log']}.\n")
    md.append(f"All resumed (step never went back): {summary['all_resumed']}; every checkpoint loadable: "
              f"{summary['all_loadable']}; most work lost at a kill: {summary['max_seconds_lost']} s "
              f"(interval {a.every}); kills that cut a checkpoint write: {summary['kills_during_write']}; "
              f"any duplicate log line: {summary['any_duplicate_log_line']}.\n")
    (out / "kill9.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
