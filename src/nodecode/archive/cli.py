"""`nodecode archive init|add|search|similar|get|stats` and `nodecode serve`; `add_commands` hooks them in."""
from __future__ import annotations

import os
import sys

from nodecode.config import add_json_option, emit_json


def _init(a):
    from nodecode.archive.store import init_archive
    root = init_archive(a.archive, a.db, a.codec)
    print(f"{root}: archive created ({'postgresql' if a.db else 'sqlite'}, codec {a.codec})")


def _add(a):
    from nodecode.archive.ingest import add_files, collect
    from nodecode.archive.index import Indexer
    from nodecode.archive.store import Archive
    from nodecode.errors import NodecodeError
    from nodecode.utils import pick_device
    files = collect(a.paths)
    with Archive(a.archive, write=True) as ar:
        if ar.repaired and any(ar.repaired.values()):
            print(f"repaired: {ar.repaired}", file=sys.stderr)
        indexer = Indexer(ar.codec_name, pick_device(a.device))
        r = add_files(ar, indexer, files, batch=a.batch, progress=not a.quiet)
    print(f"{r['added']} added, {r['present']} already there, {r['rejected']} rejected")
    if r["rejected"]:
        raise NodecodeError(f"{r['rejected']} file(s) rejected (see above)")


def _print_hits(hits, json_dest):
    if emit_json(json_dest, hits):
        return
    for h in hits:
        score = "" if h.get("score") is None else f"  {h['score']:.3f}"
        print(f"{h['id']}\t{h['name']}\t{h.get('match') or ''}{score}")


def _search(a):
    from nodecode.archive.store import Archive
    with Archive(a.archive) as ar:
        _print_hits(ar.search(a.text, a.min_score, a.limit), a.json)


def _similar(a):
    from nodecode.archive.store import Archive
    with Archive(a.archive) as ar:
        if a.query.isdigit():
            hits = ar.similar(ar.embedding(int(a.query)), a.k, exclude=int(a.query))
        else:
            from nodecode.archive.index import Indexer
            from nodecode.errors import NodecodeError
            from nodecode.utils import pick_device
            if not os.path.isfile(a.query):
                raise NodecodeError(f"{a.query} is neither an image id nor a file")
            with open(a.query, "rb") as f:
                row = Indexer(ar.codec_name, pick_device(a.device)).rows([(os.path.basename(a.query), f.read())])[0]
            hits = ar.similar(row.embedding, a.k)
        _print_hits(hits, a.json)


def _get(a):
    from nodecode.archive.render import write_png
    from nodecode.archive.store import Archive
    from nodecode.codec.zoo import load_codec
    with Archive(a.archive) as ar:
        info = ar.image(a.id)
        out = write_png(ar, a.id, load_codec(info["codec"]), a.output)
    print(f"{out}: {info['width']}x{info['height']} decoded from {info['ndc_bytes']} bytes")


def _stats(a):
    from nodecode.archive.store import Archive
    with Archive(a.archive) as ar:
        s = ar.stats()
    if emit_json(a.json, s):
        return
    ratio = f" ({s['ratio']:.1f}x smaller)" if s["ratio"] else ""
    print(f"{s['images']} images, {s['ndc_bytes']} bytes of .ndc vs {s['original_bytes']} bytes of originals{ratio}; "
          f"{s['database']}, codec {s['codec']}")
    for k, v in s["labels"].items():
        print(f"  {k}\t{v}")


def _serve(a):
    from nodecode.archive.server import serve
    serve(a.archive, host=a.host, port=a.port, token=a.token or os.environ.get("NODECODE_TOKEN"),
          max_upload=int(a.max_upload_mb * 2**20), max_pixels=a.max_pixels, device=a.device)


def add_commands(sub) -> None:
    """Add `archive ...` and `serve` to the main parser's subparsers."""
    ar = sub.add_parser("archive", help="a compressed photo archive indexed from latents").add_subparsers(
        dest="what", required=True)
    i = ar.add_parser("init", help="create an archive folder (SQLite inside it, or --db postgresql://...)")
    i.add_argument("archive")
    i.add_argument("--db", default=None, help="postgresql://user@host:port/db (default: SQLite in the archive)")
    i.add_argument("--codec", default="c8", help="operating point of the stored files (c8 has the segmenter)")
    i.set_defaults(fn=_init)
    d = ar.add_parser("add", help="compress and index images or folders (idempotent, resumable)")
    d.add_argument("archive")
    d.add_argument("paths", nargs="+")
    d.add_argument("--batch", type=int, default=16)
    d.add_argument("--device", default=None)
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(fn=_add)
    s = ar.add_parser("search", help="images whose labels match (classifier class, or segmenter class by area)")
    s.add_argument("archive")
    s.add_argument("text")
    s.add_argument("--min-score", type=float, default=0.0)
    s.add_argument("--limit", type=int, default=50)
    add_json_option(s, "the hits")
    s.set_defaults(fn=_search)
    m = ar.add_parser("similar", help="nearest images by embedding, to a stored id or an image file")
    m.add_argument("archive")
    m.add_argument("query", metavar="ID_OR_IMAGE")
    m.add_argument("-k", type=int, default=10)
    m.add_argument("--device", default=None)
    add_json_option(m, "the hits")
    m.set_defaults(fn=_similar)
    g = ar.add_parser("get", help="decode a stored image to PNG")
    g.add_argument("archive")
    g.add_argument("id", type=int)
    g.add_argument("-o", "--output", required=True)
    g.set_defaults(fn=_get)
    t = ar.add_parser("stats", help="images, bytes on disk vs the originals, per-label counts")
    t.add_argument("archive")
    add_json_option(t, "the statistics")
    t.set_defaults(fn=_stats)
    v = sub.add_parser("serve", help="HTTP API and web page over an archive")
    v.add_argument("archive")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8016)
    v.add_argument("--token", default=None, help="required for uploads (also $NODECODE_TOKEN)")
    v.add_argument("--max-upload-mb", type=float, default=20.0)
    v.add_argument("--max-pixels", type=int, default=40_000_000)
    v.add_argument("--device", default=None)
    v.set_defaults(fn=_serve)
