"""Archive benchmarks that print figures: ingest img/s (224² Imagenette, CPU threads), search by label and by
similarity p50/p99 at 13,394 rows (Imagenette train + val), storage vs the original JPEGs, and N concurrent HTTP
clients against `nodecode serve` on 127.0.0.1.

The 13k-row index: the first --real images (train + val, interleaved by class) are really ingested (compressed,
indexed from their symbols, stored); the remaining rows up to --rows are SYNTHETIC: each copies the labels, areas
and sizes of a random real row and perturbs its embedding (Gaussian noise, renormalised). They are marked
name='synthetic-…' and have no object file, so the timing archive is opened read-only (a writer would repair them away).

    PYTHONPATH=src python experiments/archive/bench.py --out results/archive/bench.json [--pg postgresql://...]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "datasets" / "imagenette2-224"


def pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1000, q))


def real_files(n: int) -> list[Path]:
    per_class = {}
    for split in ("train", "val"):
        for c in sorted((DATA / split).iterdir()):
            per_class.setdefault(c.name, []).extend(sorted(c.glob("*.JPEG")))
    out, lists = [], list(per_class.values())
    for i in range(max(map(len, lists))):
        out += [l[i] for l in lists if i < len(l)]
    return out[:n] if n else out


def ingest(archive: Path, files: list[Path], threads: int) -> dict:
    from nodecode.archive.index import Indexer
    from nodecode.archive.ingest import add_files
    from nodecode.archive.store import Archive
    torch.set_num_threads(threads)
    with Archive(archive, write=True) as ar:
        ix = Indexer(ar.codec_name)
        ix.rows([(f.name, f.read_bytes()) for f in files[:4]])          # warm-up, not stored
        t = time.perf_counter()
        r = add_files(ar, ix, files, batch=16, progress=False)
        dt = time.perf_counter() - t
        # where the time goes, on one batch of 16
        z = torch.randint(0, 6, (16, 8, 28, 28), dtype=torch.uint8)
        x = torch.rand(16, 3, 224, 224)
        parts = {}
        with torch.no_grad():
            for name, fn in (("encode", lambda: ix.codec.encode_symbols(x)),
                             ("classifier+embedding", lambda: ix.cls(ix.cls_pipe(z))),
                             ("segmenter", lambda: ix.seg(ix.seg_pipe(z)))):
                t0 = time.perf_counter()
                fn()
                parts[name] = (time.perf_counter() - t0) / 16 * 1000
    return {"images": r["added"], "seconds": dt, "img_per_s": r["added"] / dt, "torch_threads": threads,
            "ms_per_image_by_stage": parts}


def fill_synthetic(archive: Path, rows: int, seed: int = 0) -> int:
    from nodecode.archive.store import Archive
    rng = np.random.default_rng(seed)
    with Archive(archive) as ar:
        real = ar.db.query("SELECT id, width, height, orig_bytes, ndc_bytes, codec, label, embedding FROM images")
        labels = {}
        for iid, rank, lab, name, score in ar.db.query("SELECT image_id, rank, label, name, score FROM labels"):
            labels.setdefault(iid, []).append((rank, lab, name, score))
        areas = {}
        for iid, name, f in ar.db.query("SELECT image_id, name, fraction FROM areas"):
            areas.setdefault(iid, []).append((name, f))
        need = rows - len(real)
        for start in range(0, need, 1000):
            with ar.db.transaction() as cur:
                for k in range(start, min(need, start + 1000)):
                    src = real[int(rng.integers(len(real)))]
                    e = np.frombuffer(bytes(src[7]), np.float32) + rng.normal(0, 0.02, 512).astype(np.float32)
                    e /= np.linalg.norm(e)
                    iid = cur.insert_id(
                        "INSERT INTO images (sha256, name, width, height, orig_bytes, ndc_bytes, codec, label, added, embedding)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (f"synthetic{k:055d}", f"synthetic-{k}", *src[1:7], time.time(), e.astype(np.float32).tobytes()))
                    cur.executemany("INSERT INTO labels (image_id, rank, label, name, score) VALUES (?, ?, ?, ?, ?)",
                                    [(iid, *v) for v in labels[src[0]]])
                    cur.executemany("INSERT INTO areas (image_id, name, fraction) VALUES (?, ?, ?)",
                                    [(iid, *v) for v in areas.get(src[0], [])])
        return need


def search_latency(archive: Path, queries: int = 1000, seed: int = 0) -> dict:
    from nodecode.archive.store import Archive
    rng = random.Random(seed)
    with Archive(archive) as ar:
        names = [r[0] for r in ar.db.query("SELECT DISTINCT name FROM labels")]
        ids = [r[0] for r in ar.db.query("SELECT id FROM images")]
        ar.similar(ar.embedding(ids[0]), 10)                      # loads the embedding matrix once
        lab, sim, hits = [], [], []
        for _ in range(queries):
            q, ms = rng.choice(names), rng.choice([0.0, 0.3, 0.6])
            t = time.perf_counter()
            hits.append(len(ar.search(q, ms, 50)))
            lab.append(time.perf_counter() - t)
            iid = rng.choice(ids)
            t = time.perf_counter()
            ar.similar(ar.embedding(iid), 10, exclude=iid)
            sim.append(time.perf_counter() - t)
        n = ar.db.query("SELECT COUNT(*) FROM images")[0][0]
    return {"rows": n, "queries": queries, "label_p50_ms": pct(lab, 50), "label_p99_ms": pct(lab, 99),
            "similar_p50_ms": pct(sim, 50), "similar_p99_ms": pct(sim, 99), "mean_label_hits": statistics.mean(hits)}


def load(files: list[Path], clients: int, seconds: float, db: str | None) -> dict:
    import httpx
    from nodecode.archive.testing import Server
    from nodecode.cli import main
    tmp = Path(tempfile.mkdtemp(prefix="nodecode-load-"))
    ar = tmp / "ar"
    main(["archive", "init", str(ar)] + (["--db", db] if db else []))
    srv = Server(ar)
    stats = {"uploads_ok": 0, "uploads_dup": 0, "searches": 0, "pages": 0, "errors_4xx": 0, "errors_5xx": 0,
             "exceptions": 0}
    acked, lat_up, lat_search, lock = [], [], [], threading.Lock()
    stop = time.time() + seconds

    def client(k):
        mine = files[k::clients]
        i = 0
        with httpx.Client(timeout=120) as c:
            while time.time() < stop:
                try:
                    if i < len(mine) and i % 2 == 0 or i % 7 == 3:
                        f = mine[(i // 2) % len(mine)]
                        t = time.perf_counter()
                        r = c.post(f"{srv.url}/api/images", files={"file": (f.name, f.read_bytes())})
                        dt = time.perf_counter() - t
                        with lock:
                            lat_up.append(dt)
                            if r.status_code in (200, 201):
                                acked.append(f.name)
                                stats["uploads_ok" if r.status_code == 201 else "uploads_dup"] += 1
                    else:
                        t = time.perf_counter()
                        r = c.get(f"{srv.url}/api/search", params={"q": random.choice(["tench", "church", "golf ball", "Road"])})
                        with lock:
                            lat_search.append(time.perf_counter() - t)
                            stats["searches"] += 1
                    with lock:
                        if 400 <= r.status_code < 500:
                            stats["errors_4xx"] += 1
                        elif r.status_code >= 500:
                            stats["errors_5xx"] += 1
                except httpx.HTTPError:
                    with lock:
                        stats["exceptions"] += 1
                i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    stored = {r["name"] for r in httpx.get(f"{srv.url}/api/search", params={"limit": 500}).json()["results"]}
    n = httpx.get(f"{srv.url}/api/stats").json()["images"]
    srv.stop()
    lost = len(set(acked) - stored) if n <= 500 else None
    return {"clients": clients, "seconds": wall, **stats, "distinct_acked": len(set(acked)), "images_in_archive": n,
            "lost_uploads": lost, "upload_p50_ms": pct(lat_up, 50) if lat_up else None,
            "search_p50_ms": pct(lat_search, 50) if lat_search else None,
            "search_p99_ms": pct(lat_search, 99) if lat_search else None}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--real", type=int, default=400, help="images really ingested (train+val, by class)")
    p.add_argument("--rows", type=int, default=13394, help="index size for the search timings")
    p.add_argument("--pg-real", type=int, default=40, help="images really ingested into the PostgreSQL archive")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pg", default=None, help="also time search on this PostgreSQL database URL")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--load-seconds", type=float, default=60)
    p.add_argument("--out", default=None)
    p.add_argument("--search-only", nargs="+", default=None, metavar="ARCHIVE",
                   help="only time search on archives a previous run built (their paths are printed); merges into --out")
    a = p.parse_args()
    if a.search_only:
        res = json.loads(Path(a.out).read_text()) if a.out and Path(a.out).exists() else {}
        for ar in map(Path, a.search_only):
            name = json.loads((ar / "archive.json").read_text())["db"] and "postgresql" or "sqlite"
            r = search_latency(ar)
            from nodecode.archive.store import Archive
            with Archive(ar) as x:
                r["real_rows"] = x.db.query("SELECT COUNT(*) FROM images WHERE name NOT LIKE ?", ("synthetic-%",))[0][0]
            r["command"] = " ".join(sys.argv)
            print(f"[{name}] search at {r['rows']} rows ({r['real_rows']} real): label p50 {r['label_p50_ms']:.2f} ms p99 "
                  f"{r['label_p99_ms']:.2f} ms; similar p50 {r['similar_p50_ms']:.2f} ms p99 {r['similar_p99_ms']:.2f} ms")
            res[f"search_{name}"] = r
        if a.out:
            from nodecode.utils import write_json
            write_json(a.out, res)
        return
    from nodecode.cli import main as cli
    from nodecode.utils import provenance
    files = real_files(a.real)
    res = {"provenance": provenance(" ".join(sys.argv)), "note": "rows beyond 'real' are synthetic (see docstring)"}
    tmp = Path(tempfile.mkdtemp(prefix="nodecode-bench-"))
    dbs = [("sqlite", None)] + ([("postgresql", a.pg)] if a.pg else [])
    for name, url in dbs:
        ar = tmp / name
        cli(["archive", "init", str(ar)] + (["--db", url] if url else []))
        r = ingest(ar, files if url is None else files[:a.pg_real], a.threads)
        print(f"[{name}] ingest: {r['images']} images of 224x224 in {r['seconds']:.1f} s = {r['img_per_s']:.2f} img/s "
              f"on {a.threads} threads; ms/image by stage {json.dumps({k: round(v, 1) for k, v in r['ms_per_image_by_stage'].items()})}")
        res[f"ingest_{name}"] = r
        if name == "sqlite":
            from nodecode.archive.store import Archive
            with Archive(ar) as x:
                s = x.stats()
            total = sum(f.stat().st_size for f in real_files(0))
            res["storage"] = {"images": s["images"], "ndc_bytes": s["ndc_bytes"], "original_jpeg_bytes": s["original_bytes"],
                              "ratio": s["ratio"], "ndc_bytes_per_image": s["ndc_bytes"] / s["images"],
                              "all_13394_jpeg_bytes": total,
                              "all_13394_ndc_bytes_extrapolated": s["ndc_bytes"] / s["images"] * 13394,
                              "index_db_bytes": (ar / "index.sqlite").stat().st_size}
            print(f"storage: {s['ndc_bytes']} bytes of .ndc vs {s['original_bytes']} bytes of JPEG for {s['images']} images "
                  f"({s['ratio']:.1f}x smaller, {s['ndc_bytes'] / s['images']:.0f} B/image)")
        fill_synthetic(ar, a.rows)
        r = search_latency(ar)
        r["real_rows"] = res[f"ingest_{name}"]["images"]
        print(f"[{name}] search at {r['rows']} rows ({r['real_rows']} real): label p50 {r['label_p50_ms']:.2f} ms p99 "
              f"{r['label_p99_ms']:.2f} ms; similar p50 {r['similar_p50_ms']:.2f} ms p99 {r['similar_p99_ms']:.2f} ms")
        res[f"search_{name}"] = r
    if a.load_seconds > 0:
        r = load(real_files(0)[a.real:], a.clients, a.load_seconds, None)
        print(f"load: {r['clients']} clients for {r['seconds']:.0f} s: {r['uploads_ok']} new uploads, {r['uploads_dup']} "
              f"duplicates, {r['searches']} searches; 5xx {r['errors_5xx']}, 4xx {r['errors_4xx']}, exceptions "
              f"{r['exceptions']}, lost {r['lost_uploads']}; upload p50 {r['upload_p50_ms']:.0f} ms, search p50 "
              f"{r['search_p50_ms']:.1f} ms p99 {r['search_p99_ms']:.1f} ms")
        res["load"] = r
    if a.out:
        from nodecode.utils import write_json
        write_json(a.out, res)


if __name__ == "__main__":
    main()
