"""Re-run the issue's hostile CLI cases (corrupted / crafted .ndc files, hostile images, unwritable outputs) as real
`nodecode` processes. A case passes when it gives a correct result (exit 0, outputs valid) or exactly one
`nodecode: error:` line and exit 2 with no output file left behind; never a traceback. Writes
results/fuzz/cli_table.json and cli_table.md.

    PYTHONPATH=src python experiments/fuzz/cli_table.py
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
LAST_WORD_ZERO = "4e44431a01026338f679a86a7a9d71aa0100000001000000080001000100060100000000000000316241c0"
EMPTY_HUGE = "4e44431a01026338f679a86a7a9d71aa004000000040000008000008000806000000008c7ee5bc"


def crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def rebuilt(hexstr: str, fp: bytes) -> bytes:
    d = bytearray(bytes.fromhex(hexstr)[:-4])
    d[6 + d[5]: 14 + d[5]] = fp
    return crc(bytes(d))


def with_name(data: bytes, name: bytes) -> bytes:
    return crc(data[:5] + bytes([len(name)]) + name + data[6 + data[5]: -4])


def make_inputs(d: Path) -> None:
    import torch
    from nodecode.codec.zoo import load_codec
    c8, c16 = load_codec("c8"), load_codec("c16")
    rng = np.random.default_rng(0)
    photo = (np.asarray(Image.open(ROOT.parent / "shared/datasets/kodak/kodim23.png").convert("RGB"))[100:260, 200:400]
             if (ROOT.parent / "shared/datasets/kodak").exists() else rng.integers(0, 255, (160, 200, 3), dtype=np.uint8))
    Image.fromarray(photo).save(d / "photo.png")
    good = c8.compress(torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float().div(255))
    (d / "good.ndc").write_bytes(good)
    (d / "good16.ndc").write_bytes(c16.compress(torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float().div(255)))
    (d / "trunc.ndc").write_bytes(good[: len(good) // 2])
    (d / "magic.ndc").write_bytes(b"XYZ\x1a" + good[4:])
    flip = bytearray(good)
    flip[len(flip) // 2] ^= 0x10
    (d / "flip.ndc").write_bytes(bytes(flip))
    (d / "empty.ndc").write_bytes(b"")
    (d / "repro1.ndc").write_bytes(bytes.fromhex(LAST_WORD_ZERO))
    (d / "repro2.ndc").write_bytes(bytes.fromhex(EMPTY_HUGE))
    (d / "repro1-now.ndc").write_bytes(rebuilt(LAST_WORD_ZERO, c8.fingerprint()))
    (d / "repro2-now.ndc").write_bytes(rebuilt(EMPTY_HUGE, c8.fingerprint()))
    (d / "ansi-name.ndc").write_bytes(with_name(good, b"c8\n\x1b[31mEVIL"))
    (d / "unknown-name.ndc").write_bytes(with_name(good, b"c9"))
    (d / "text.png").write_text("not an image\n")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(d / "one.png")
    Image.fromarray((rng.integers(0, 65535, (40, 56), dtype=np.uint16))).save(d / "gray16.png")
    Image.fromarray(photo).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(photo).convert("P", palette=Image.ADAPTIVE).save(d / "palette.png", transparency=0)
    frames = [Image.fromarray(np.roll(photo, 10 * i, axis=1)) for i in range(3)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("1", (9000, 9000)).save(d / "bomb-9000.png")
    Image.new("1", (30000, 30000)).save(d / "bomb-30000.png")
    Image.fromarray(np.tile(photo[:1, :1], (1, 60000, 1))).save(d / "strip-1x60000.png")
    Image.fromarray(photo).save(d / "bild-üñí€.png")
    (d / "folder.png").mkdir()


CASES = [  # (name, argv after `nodecode`, outputs that must not exist on error / must be valid on success)
    ("decompress good file", "decompress good.ndc -o out/good.png", ["out/good.png"]),
    ("decompress missing file", "decompress nothere.ndc -o out/a.png", ["out/a.png"]),
    ("decompress empty file", "decompress empty.ndc -o out/a.png", ["out/a.png"]),
    ("decompress truncated", "decompress trunc.ndc -o out/a.png", ["out/a.png"]),
    ("decompress wrong magic", "decompress magic.ndc -o out/a.png", ["out/a.png"]),
    ("decompress flipped bit", "decompress flip.ndc -o out/a.png", ["out/a.png"]),
    ("decompress repro 1 (last word 0)", "decompress repro1.ndc -o out/a.png", ["out/a.png"]),
    ("decompress repro 1, today's fingerprint", "decompress repro1-now.ndc -o out/a.png", ["out/a.png"]),
    ("decompress repro 2 (39 B, 16384²)", "decompress repro2.ndc -o out/a.png", ["out/a.png"]),
    ("decompress repro 2, today's fingerprint", "decompress repro2-now.ndc -o out/a.png", ["out/a.png"]),
    ("decompress repro 2, --max-pixels 2^28", "--max-pixels 268435456 decompress repro2-now.ndc -o out/a.png", ["out/a.png"]),
    ("decompress ANSI/newline model name", "decompress ansi-name.ndc -o out/a.png", ["out/a.png"]),
    ("decompress unknown model name", "decompress unknown-name.ndc -o out/a.png", ["out/a.png"]),
    ("decompress to unknown extension", "decompress good.ndc -o out/a.xyz", ["out/a.xyz"]),
    ("decompress to /proc (unwritable)", "decompress good.ndc -o /proc/nodecode-out.png", []),
    ("decompress to a directory", "decompress good.ndc -o folder.png", []),
    ("classify good file", "classify good.ndc", []),
    ("classify repro 1, today's fingerprint", "classify repro1-now.ndc", []),
    ("classify repro 2 (39 B, 16384²)", "classify repro2.ndc", []),
    ("classify repro 2, --max-pixels 2^28", "--max-pixels 268435456 classify repro2-now.ndc", []),
    ("classify ANSI/newline model name", "classify ansi-name.ndc", []),
    ("classify 1x60000 strip", "classify strip-1x60000.png", []),
    ("classify 1x1 image", "classify one.png", []),
    ("classify 16-bit grey", "classify gray16.png", []),
    ("classify CMYK JPEG", "classify cmyk.jpg", []),
    ("classify palette PNG", "classify palette.png", []),
    ("classify animated GIF", "classify anim.gif", []),
    ("classify bomb 9000² (1-bit PNG)", "classify bomb-9000.png", []),
    ("classify unicode file name", "classify bild-üñí€.png", []),
    ("classify text file", "classify text.png", []),
    ("segment good file", "segment good.ndc -o out/m.png --overlay out/o.png", ["out/m.png", "out/o.png"]),
    ("segment repro 1, today's fingerprint", "segment repro1-now.ndc -o out/m.png", ["out/m.png"]),
    ("segment repro 2 (39 B, 16384²)", "segment repro2.ndc -o out/m.png", ["out/m.png"]),
    ("segment repro 2, --max-pixels 2^28", "--max-pixels 268435456 segment repro2-now.ndc -o out/m.png", ["out/m.png"]),
    ("segment ANSI/newline model name", "segment ansi-name.ndc -o out/m.png", ["out/m.png"]),
    ("segment unknown model name", "segment unknown-name.ndc -o out/m.png", ["out/m.png"]),
    ("segment c16 file (c8 segmenter)", "segment good16.ndc -o out/m.png", ["out/m.png"]),
    ("segment overlay to /proc: no mask left", "segment good.ndc -o out/m.png --overlay /proc/ov.png", ["out/m.png"]),
    ("segment 1x1 image", "segment one.png -o out/m1.png", ["out/m1.png"]),
    ("segment 1x60000 strip", "segment strip-1x60000.png -o out/ms.png", ["out/ms.png"]),
    ("segment 16-bit grey", "segment gray16.png -o out/mg.png", ["out/mg.png"]),
    ("compress 1x1", "compress one.png -o out/one.ndc", ["out/one.ndc"]),
    ("compress 1x60000 strip", "compress strip-1x60000.png -o out/strip.ndc", ["out/strip.ndc"]),
    ("compress 16-bit grey", "compress gray16.png -o out/g16.ndc", ["out/g16.ndc"]),
    ("compress CMYK JPEG", "compress cmyk.jpg -o out/cmyk.ndc", ["out/cmyk.ndc"]),
    ("compress palette PNG", "compress palette.png -o out/pal.ndc", ["out/pal.ndc"]),
    ("compress animated GIF", "compress anim.gif -o out/anim.ndc", ["out/anim.ndc"]),
    ("compress unicode name", "compress bild-üñí€.png -o out/bild-ü.ndc", ["out/bild-ü.ndc"]),
    ("compress bomb 9000² (1-bit PNG)", "compress bomb-9000.png -o out/b.ndc", ["out/b.ndc"]),
    ("compress bomb 30000² (1-bit PNG)", "compress bomb-30000.png -o out/b.ndc", ["out/b.ndc"]),
    ("compress text as image", "compress text.png -o out/t.ndc", ["out/t.ndc"]),
    ("compress a directory", "compress folder.png -o out/f.ndc", ["out/f.ndc"]),
    ("compress to /proc (unwritable)", "compress photo.png -o /proc/x.ndc", []),
    ("--max-pixels 0", "--max-pixels 0 compress photo.png -o out/z.ndc", ["out/z.ndc"]),
    ("NODECODE_MAX_PIXELS=abc", "ENV:NODECODE_MAX_PIXELS=abc compress photo.png -o out/z.ndc", ["out/z.ndc"]),
    ("train codec --checkpoint-every bogus", "train codec --data . --out out/run --checkpoint-every 5x", ["out/run"]),
]


def run_case(d: Path, name: str, args: str, outputs: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    argv = args.split()
    if argv[0].startswith("ENV:"):
        k, v = argv.pop(0)[4:].split("=", 1)
        env[k] = v
    t0 = time.time()
    p = subprocess.Popen([sys.executable, "-m", "nodecode.cli", *argv], cwd=d, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=300)
        _, status, ru = os.wait4(p.pid, 0) if p.returncode is None else (0, 0, None)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    wall = time.time() - t0
    err_s, out_s = err.decode(errors="replace"), out.decode(errors="replace")
    lines = [ln for ln in err_s.splitlines() if ln.strip()]
    left = [o for o in outputs if (d / o).exists()]
    one_line = len(lines) == 1 and lines[0].startswith("nodecode: error: ")
    if p.returncode == 0:
        ok, result = len(left) == len(outputs) and all(_valid(d / o) for o in outputs), (out_s.strip().splitlines() or [""])[-1]
    else:
        ok, result = p.returncode == 2 and one_line and not left and "\x1b" not in err_s, lines[0] if lines else ""
    for o in left:
        (d / o).unlink() if (d / o).is_file() else None
    return {"case": name, "command": "nodecode " + args, "exit": p.returncode, "result": result[:160],
            "stderr_lines": len(lines), "traceback": "Traceback" in err_s, "outputs_left_on_error": left if p.returncode else [],
            "wall_s": round(wall, 2), "pass": bool(ok) and "Traceback" not in err_s}


def _valid(path: Path) -> bool:
    if path.suffix == ".ndc":
        from nodecode.codec.bitstream import read_header
        return read_header(path.read_bytes()).height > 0
    with Image.open(path) as im:
        im.load()
    return True


def main() -> None:
    from nodecode.utils import provenance
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "out").mkdir()
        make_inputs(d)
        for name, args, outputs in CASES:
            rows.append(run_case(d, name, args, outputs))
            r = rows[-1]
            print(f"{'PASS' if r['pass'] else 'FAIL'} {r['exit']} {r['wall_s']:6.1f}s  {name}: {r['result']}", flush=True)
    out = ROOT / "results" / "fuzz"
    out.mkdir(parents=True, exist_ok=True)
    summary = {**provenance("python experiments/fuzz/cli_table.py"), "cases": len(rows),
               "passed": sum(r["pass"] for r in rows), "rows": rows}
    (out / "cli_table.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    md = ["# Hostile CLI cases\n", f"`python experiments/fuzz/cli_table.py` — commit {summary['git_commit']}, "
          f"{summary['device']}: {summary['passed']}/{len(rows)} pass (a correct result, or one `nodecode: error:` "
          "line + exit 2 with no output left; never a traceback).\n",
          "| case | command | exit | output / error line | s | pass |", "|---|---|---:|---|---:|---|"]
    for r in rows:
        res = r["result"].replace("|", "\\|")
        md.append(f"| {r['case']} | `{r['command']}` | {r['exit']} | {res} | {r['wall_s']} | {'yes' if r['pass'] else '**NO**'} |")
    (out / "cli_table.md").write_text("\n".join(md) + "\n")
    sys.exit(0 if summary["passed"] == len(rows) else 1)


if __name__ == "__main__":
    main()
