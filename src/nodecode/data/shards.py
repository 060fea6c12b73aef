"""WebDataset-style tar shards of .ndc files: ``key.ndc`` beside ``key.cls`` (class index) and ``key.json``.

Written with the standard ``tarfile`` module (ordinary POSIX tar: ``tar tf`` lists it, the ``webdataset`` package
reads it). Read back by one sequential read of the whole shard and a minimal parser of the tar headers over that
buffer (a few microseconds per member; ``tarfile`` costs tens), so that a batch of files is one read and, on the GPU
path, one host->device copy.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from nodecode.codec import bitstream
from nodecode.errors import NodecodeError
from nodecode.utils import atomic_path


@dataclass
class Sample:
    key: str
    ndc: bytes | None
    label: int | None = None       # from key.cls
    meta: dict | None = None       # from key.json


def _class_of(rel: Path) -> str | None:
    return rel.parts[0] if len(rel.parts) > 1 else None


def pack_dir(src: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Every .ndc file under `src` (sorted) into the tar `out`; the first folder level is the class.

    Files are validated (header and CRC) before anything is written; a bad one names itself in the error."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise NodecodeError(f"no such folder: {src}")
    files = sorted(p for p in src.rglob("*.ndc") if p.is_file())
    if not files:
        raise NodecodeError(f"no .ndc files under {src}")
    rels = [f.relative_to(src) for f in files]
    classes = sorted({c for c in map(_class_of, rels) if c is not None})
    keys = set()
    with atomic_path(out, ".tar") as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for f, rel in zip(files, rels):
            key = rel.with_suffix("").as_posix()
            if "." in rel.name[: -len(".ndc")]:
                raise NodecodeError(f"{f}: a shard key cannot contain a dot (WebDataset splits names at the first dot)")
            if key in keys:
                raise NodecodeError(f"{f}: duplicate key {key}")
            keys.add(key)
            data = f.read_bytes()
            try:
                header = bitstream.read_header(data)
            except NodecodeError as e:
                raise NodecodeError(f"{f}: {e}") from None
            cls = _class_of(rel)
            meta = {"model": header.model, "height": header.height, "width": header.width}
            members = [(f"{key}.ndc", data)]
            if cls is not None:
                meta["class"] = cls
                members.append((f"{key}.cls", str(classes.index(cls)).encode()))
            members.append((f"{key}.json", json.dumps(meta, separators=(",", ":")).encode()))
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(payload), 0o644, 0
                tar.addfile(info, io.BytesIO(payload))
    return {"files": len(files), "classes": classes, "bytes": out.stat().st_size, "shard": str(out)}


def _octal(field: bytes, where: str) -> int:
    s = field.rstrip(b"\0 ").lstrip(b" ")
    try:
        return int(s or b"0", 8)
    except ValueError:
        raise NodecodeError(f"{where}: not a tar file (bad header)") from None


def _pax_path(data: bytes) -> str | None:
    path, i = None, 0
    while i < len(data):
        sp = data.index(b" ", i)
        n = int(data[i:sp])
        k, _, v = data[sp + 1: i + n - 1].partition(b"=")
        if k == b"path":
            path = v.decode("utf-8")
        i += n
    return path


def iter_members(buf: bytes, where: str = "shard"):
    """(name, bytes) of each regular file of a tar held in memory (ustar, pax and GNU long names)."""
    mv, off, n, pending = memoryview(buf), 0, len(buf), None
    while off + 512 <= n:
        head = buf[off: off + 512]
        if head.count(0) == 512:
            return
        if _octal(head[148:156], where) != sum(head[:148]) + 256 + sum(head[156:]):
            raise NodecodeError(f"{where}: corrupt tar header at byte {off}")
        size = _octal(head[124:136], where)
        kind = head[156:157]
        body = off + 512
        if body + size > n:
            raise NodecodeError(f"{where}: truncated tar (member at byte {off} runs past the end)")
        payload = mv[body: body + size]
        off = body + (size + 511) // 512 * 512
        if kind == b"x":
            pending = _pax_path(bytes(payload)) or pending
        elif kind == b"L":
            pending = bytes(payload).rstrip(b"\0").decode("utf-8")
        elif kind in (b"0", b"\0", b"7"):
            name = pending
            if name is None:
                name = head[:100].rstrip(b"\0").decode("utf-8")
                if head[257:262] == b"ustar" and head[345] != 0:
                    name = head[345:500].rstrip(b"\0").decode("utf-8") + "/" + name
            pending = None
            yield name, payload
        else:                    # directories, links, global pax headers: nothing to read
            pending = None
    if off < n and buf[off:].count(0) != n - off:
        raise NodecodeError(f"{where}: truncated tar")


def read_shard(path: str | os.PathLike) -> list[Sample]:
    """All samples of a shard, in order, from one sequential read; members other than .ndc/.cls/.json are ignored."""
    path = Path(path)
    if not path.is_file():
        raise NodecodeError(f"no such file: {path}")
    buf = path.read_bytes()
    samples: dict[str, Sample] = {}
    for name, payload in iter_members(buf, str(path)):
        base = name.rsplit("/", 1)
        stem, dot, ext = base[-1].partition(".")
        if not dot:
            continue
        key = (base[0] + "/" + stem) if len(base) > 1 else stem
        s = samples.get(key)
        if s is None:
            s = samples[key] = Sample(key, None)
        try:
            if ext == "ndc":
                s.ndc = bytes(payload)
            elif ext == "cls":
                s.label = int(bytes(payload))
            elif ext == "json":
                s.meta = json.loads(bytes(payload))
        except ValueError:
            raise NodecodeError(f"{path}: member {name} is not valid {ext}") from None
    return [s for s in samples.values() if s.ndc is not None]


def shard_paths(inputs) -> list[Path]:
    """Shards named directly or found (*.tar, sorted) in folders."""
    out = []
    for p in map(Path, [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs):
        if p.is_dir():
            out += sorted(p.glob("*.tar"))
        elif p.is_file():
            out.append(p)
        else:
            raise NodecodeError(f"no such file or folder: {p}")
    if not out:
        raise NodecodeError("no .tar shards found")
    return out
