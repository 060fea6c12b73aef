"""Finished grid runs from one lent machine to the next: a lost machine costs no retraining of the backbones that
segmentation and joint training read.

  pack   STATE PATTERNS OUT: the finished runs of STATE/runs.json whose keys match PATTERNS (comma separated shell
         patterns) as fp16 weights + their runs.json rows (marked "restored": "fp16"), in OUT/keep-<STATE name>-NNN.tar
         files of at most --max-mib each (files that come back from a call are limited to 16 MiB)
  unpack STATE TAR...: those runs into STATE/runs/<key>/ and their rows into STATE/runs.json, so that the grid skips
         them and `--cls` / `--cls-pattern` find their classifier.safetensors

experiments/device/call.sh runs `unpack /root/matched` on every carried `.device-data/keep-matched-*.tar` and, with
KEEP_RUNS set, `pack /root/matched "$KEEP_RUNS" "$OUT"` at the end of the call.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import tarfile
import tempfile
from pathlib import Path

from nodecode.errors import NodecodeError
from nodecode.experiments import read_json
from nodecode.utils import write_json

WEIGHTS = "classifier.safetensors"


def pack(state: Path, patterns: str, out: Path, max_mib: float = 15.0) -> list[Path]:
    """fp16 copies of the matching finished runs in tar files of at most `max_mib`; the files written."""
    from nodecode.tasks.classification import load_classifier, save_classifier
    runs = read_json(state / "runs.json", {})
    keys = [k for k in sorted(runs) if any(fnmatch.fnmatch(k, p) for p in patterns.split(","))
            and (state / "runs" / k / WEIGHTS).exists()]
    written, kept, tar, size = [], 0, None, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for key in keys:
            d = Path(tmp) / key
            d.mkdir()
            model, meta = load_classifier(state / "runs" / key / WEIGHTS, "cpu")
            save_classifier(model, d / WEIGHTS, meta, half=True)
            (d / "row.json").write_text(json.dumps({**runs[key], "restored": "fp16"}))
            mib = sum(f.stat().st_size for f in d.iterdir()) / 2**20
            if mib > max_mib:      # e.g. a full-width ResNet-50 (47 MiB in fp16): it would not come back
                print(f"not kept: {key} ({mib:.1f} MiB > {max_mib:g})")
                continue
            if tar is None or size + mib > max_mib:
                close(tar, written)
                written.append(out / f"keep-{state.name}-{len(written):03d}.tar")
                tar, size = tarfile.open(written[-1].with_suffix(".part"), "w"), 0.0
            tar.add(d, arcname=key)
            size, kept = size + mib, kept + 1
        close(tar, written)
    print(f"kept {kept} runs of {state} in {len(written)} file(s): {', '.join(p.name for p in written)}")
    return written


def close(tar, written: list[Path]) -> None:
    """A finished tar takes its name only once complete (a call cut short leaves no half archive under it)."""
    if tar is not None:
        tar.close()
        written[-1].with_suffix(".part").replace(written[-1])


def unpack(state: Path, tars: list[Path]) -> list[str]:
    """The runs of `tars` into `state` (runs already finished there are left as they are); the keys restored."""
    runs = read_json(state / "runs.json", {})
    restored = []
    for t in tars:
        try:
            with tarfile.open(t, "r:") as tar:
                new = [m for m in tar.getmembers() if Path(m.name).parts[0] not in runs]
                tar.extractall(state / "runs", members=new, filter="data")
                keys = sorted({Path(m.name).parts[0] for m in new})
        except (OSError, tarfile.TarError) as e:
            raise NodecodeError(f"{t}: not a keep archive ({' '.join(str(e).split())})") from e
        for key in keys:
            row = state / "runs" / key / "row.json"
            if row.exists():
                runs[key] = json.loads(row.read_text())
                restored.append(key)
    write_json(state / "runs.json", runs)
    print(f"restored {len(restored)} runs into {state}: {', '.join(restored) or 'none'}")
    return restored


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("pack")
    p.add_argument("state", type=Path)
    p.add_argument("patterns")
    p.add_argument("out", type=Path)
    p.add_argument("--max-mib", type=float, default=15.0)
    u = sub.add_parser("unpack")
    u.add_argument("state", type=Path)
    u.add_argument("tars", type=Path, nargs="+")
    a = ap.parse_args(argv)
    try:
        if a.stage == "pack":
            pack(a.state, a.patterns, a.out, a.max_mib)
        else:
            a.state.joinpath("runs").mkdir(parents=True, exist_ok=True)
            unpack(a.state, a.tars)
    except NodecodeError as e:
        print(f"keep: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
