"""Fuzz the .ndc readers: structured mutations (mutations.py) through read_symbols and through the file-level
decompress / classify / segment, plus atheris (coverage-guided) on read_symbols where it is installed.

Every input is classified: clean (a NodecodeError: the CLI's one-line error, exit 2), accepted (decoded), crash (any
other exception), hang (over --hang-s; an alarm at 2x stops it) or memory (MemoryError / a failed allocation under
the address-space ceiling --mem-gb). Writes results/fuzz/summary.json and summary.md; crashes with their hex inputs.

    nice -n 10 python experiments/fuzz/run.py --read-symbols 1000000 --files 20000 --atheris-runs 200000
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mutations import FAMILIES, mutate, random_valid, seed_files  # the sibling file: python experiments/fuzz/run.py

from nodecode.errors import NodecodeError

ROOT = Path(__file__).resolve().parents[2]
POINTS = ("c8", "c16", "c32", "c8-joint")
# through the file-level targets: families that mostly get past the CRC, and well-formed files of odd shapes
CRC_FAMILIES = tuple(f for f in FAMILIES if f not in ("truncate", "bitflip", "insdel")) + ("valid_random",)


class Hang(BaseException):
    """Raised by the per-input alarm (a BaseException, so that no `except Exception` in the code swallows it)."""


def _alarm(signum, frame):
    raise Hang()


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def classify_outcome(fn, data: bytes, hang_s: float) -> tuple[str, float, BaseException | None]:
    signal.setitimer(signal.ITIMER_REAL, 2 * hang_s)
    t = time.perf_counter()
    try:
        fn(data)
        out, err = "accepted", None
    except NodecodeError:
        out, err = "clean", None
    except Hang as e:
        out, err = "hang", e
    except MemoryError as e:
        out, err = "memory", e
    except Exception as e:  # noqa: BLE001 - the point: anything else is a crash
        msg = str(e).lower()
        out = "memory" if ("allocate" in msg or "out of memory" in msg) else "crash"
        err = e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    dt = time.perf_counter() - t
    if out in ("accepted", "clean") and dt > hang_s:
        out = "hang"
    return out, dt, err


class Stats:
    def __init__(self):
        self.counts = collections.defaultdict(collections.Counter)   # family -> outcome -> n
        self.crashes: list[dict] = []
        self.max_s, self.n, self.max_len, self.wall = 0.0, 0, 0, 0.0

    def add(self, family, data, out, dt, err, target):
        self.counts[family][out] += 1
        self.n += 1
        self.max_s = max(self.max_s, dt)
        self.max_len = max(self.max_len, len(data))
        if out not in ("accepted", "clean") and len(self.crashes) < 50:
            self.crashes.append({"target": target, "family": family, "outcome": out, "seconds": round(dt, 3),
                                 "error": f"{type(err).__name__}: {str(err)[:200]}" if err else None,
                                 "hex": data.hex()})

    def as_dict(self):
        total = collections.Counter()
        for c in self.counts.values():
            total.update(c)
        return {"inputs": self.n, "wall_s": round(self.wall, 1), "rate_per_s": round(self.n / max(self.wall, 1e-9), 1),
                "outcomes": dict(total), "by_family": {f: dict(c) for f, c in sorted(self.counts.items())},
                "max_input_s": round(self.max_s, 4), "max_input_bytes": self.max_len, "problems": self.crashes}


def run_target(name, fn, n, seeds, families, rng, hang_s, codecs, log_every=50_000):
    st = Stats()
    t0 = time.time()
    for i in range(n):
        fam = families[i % len(families)]
        point, seed = seeds[int(rng.integers(len(seeds)))]
        data = random_valid(codecs[point], rng, big=name == "read_symbols") if fam == "valid_random" else \
            mutate(seed, fam, rng, seeds[int(rng.integers(len(seeds)))][1])
        out, dt, err = classify_outcome(lambda d: fn(point, d), data, hang_s)
        st.add(fam, data, out, dt, err, name)
        if (i + 1) % log_every == 0:
            print(f"  {name}: {i + 1}/{n}  {(i + 1) / (time.time() - t0):.0f}/s  {dict(sum(st.counts.values(), collections.Counter()))}",
                  flush=True)
    st.wall = time.time() - t0
    return st.as_dict()


def file_targets(codecs, work: Path):
    """decompress / classify / segment as the CLI runs them, on a file; models loaded once (as a server would)."""
    import torch
    from nodecode.codec.files import decompress_file
    from nodecode.tasks import inference
    src, dst = work / "in.ndc", work / "out.png"

    cache: dict = {}

    def cached(fn):
        def wrapper(*a, **k):
            key = (fn.__name__, tuple(map(str, a)), tuple(sorted((x, str(y)) for x, y in k.items())))
            if key not in cache:
                cache[key] = fn(*a, **k)
            return cache[key]
        return wrapper
    # the model loaders are pure functions of their path: cache them so the fuzzer spends its time on the input
    import nodecode.codec.files as files_mod
    import nodecode.tasks.segmentation as seg_mod
    files_mod.load_codec = inference.load_codec = cached(inference.load_codec)
    inference.load_classifier = cached(inference.load_classifier)
    seg_mod.load_segmenter = cached(seg_mod.load_segmenter)

    def decompress(point, data):
        src.write_bytes(data)
        decompress_file(src, dst)

    def classify(point, data):
        src.write_bytes(data)
        inference.classify_files([src])

    def segment(point, data):
        src.write_bytes(data)
        inference.segment_file(src, dst)

    torch.set_num_threads(1)
    return {"decompress": decompress, "classify": classify, "segment": segment}


def run_atheris(runs: int, seconds: int, seeds, work: Path) -> dict:
    """atheris on read_symbols in a child process (libFuzzer exits the process); its crash files are kept."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        return {"status": "atheris not installed (pip install atheris)"}
    corpus = work / "corpus"
    corpus.mkdir(exist_ok=True)
    for i, (point, s) in enumerate(seeds):
        (corpus / f"seed{i}").write_bytes(s)
    art = work / "artifacts"
    art.mkdir(exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).parent / "atheris_target.py"), f"-runs={runs}",
           f"-max_total_time={seconds}", "-timeout=5", "-rss_limit_mb=1024", "-max_len=1024",
           f"-artifact_prefix={art}/", str(corpus)]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    tail = (p.stdout + p.stderr).splitlines()
    done = [ln for ln in tail if ln.startswith("Done ") or "#" in ln[:2]]
    found = sorted(x.name for x in art.iterdir())
    return {"status": "ran", "exit_code": p.returncode, "wall_s": round(time.time() - t0, 1),
            "last_lines": tail[-6:], "summary_line": done[-1] if done else None, "artifacts": found,
            "crash_inputs_hex": [(art / f).read_bytes().hex() for f in found][:20]}


def write_md(path: Path, s: dict) -> None:
    lines = [f"# Fuzzing the .ndc readers\n", f"`{s['command']}` — commit {s['git_commit']}, {s['device']}, "
             f"hang threshold {s['hang_s']} s, address-space ceiling {s['mem_ceiling_gb']} GB, "
             f"peak RSS of the whole run {s['peak_rss_mb']:.0f} MB (every input's peak is at most this).\n"]
    for tgt, r in s["targets"].items():
        lines.append(f"\n## {tgt}: {r['inputs']:,} inputs in {r['wall_s']:.0f} s ({r['rate_per_s']:.0f}/s), "
                     f"slowest input {r['max_input_s']:.3f} s, largest {r['max_input_bytes']} bytes\n")
        outs = ("clean", "accepted", "crash", "hang", "memory")
        lines.append("| family | " + " | ".join(outs) + " |")
        lines.append("|---|" + "---:|" * len(outs))
        for fam, c in r["by_family"].items():
            lines.append(f"| {fam} | " + " | ".join(str(c.get(o, 0)) for o in outs) + " |")
        tot = r["outcomes"]
        lines.append("| **all** | " + " | ".join(f"**{tot.get(o, 0)}**" for o in outs) + " |")
    a = s.get("atheris", {})
    lines.append(f"\n## atheris (coverage-guided, read_symbols)\n\n{json.dumps(a, indent=1)[:3000]}\n")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--read-symbols", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=20_000, help="inputs through each of decompress, classify, segment")
    ap.add_argument("--atheris-runs", type=int, default=0)
    ap.add_argument("--atheris-seconds", type=int, default=600)
    ap.add_argument("--hang-s", type=float, default=5.0)
    ap.add_argument("--mem-gb", type=float, default=4.0, help="address-space ceiling above the start-up size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "results" / "fuzz"))
    a = ap.parse_args()
    import torch
    from nodecode.codec.zoo import load_codec
    from nodecode.utils import provenance
    torch.set_num_threads(1)
    codecs = {p: load_codec(p) for p in POINTS}
    seeds = seed_files(codecs)
    signal.signal(signal.SIGALRM, _alarm)
    rng = np.random.default_rng(a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        targets = file_targets(codecs, work)
        # warm every target once so that the ceiling is set above what loading the models takes
        for fn in targets.values():
            classify_outcome(lambda d: fn("c8", d), seeds[0][1], 60)
        vm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        ceiling = vm + int(a.mem_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (ceiling, resource.RLIM_INFINITY))
        results = {}
        print(f"read_symbols: {a.read_symbols} inputs", flush=True)
        results["read_symbols"] = run_target("read_symbols", lambda p, d: codecs[p].read_symbols(d), a.read_symbols,
                                             seeds, FAMILIES + ("valid_random",), rng, a.hang_s, codecs)
        for name, fn in targets.items():
            if a.files:
                print(f"{name}: {a.files} inputs", flush=True)
                results[name] = run_target(name, fn, a.files, seeds, CRC_FAMILIES, rng, a.hang_s, codecs, log_every=2000)
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        ath = run_atheris(a.atheris_runs, a.atheris_seconds, seeds, work) if a.atheris_runs else {"status": "not run"}
    summary = {**provenance(" ".join(["python experiments/fuzz/run.py"] + sys.argv[1:])), "hang_s": a.hang_s,
               "mem_ceiling_gb": round(ceiling / (1 << 30), 2), "peak_rss_mb": rss_mb(), "seeds": len(seeds),
               "seed_bytes": [len(s) for _, s in seeds], "families": list(FAMILIES),
               "file_families": sorted(set(CRC_FAMILIES)), "targets": results, "atheris": ath}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_md(out / "summary.md", summary)
    bad = sum(r["outcomes"].get(k, 0) for r in results.values() for k in ("crash", "hang", "memory"))
    print(f"done: {sum(r['inputs'] for r in results.values())} inputs, {bad} problems, peak RSS {rss_mb():.0f} MB")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
