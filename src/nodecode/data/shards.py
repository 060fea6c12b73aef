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

import numpy as np

from nodecode.codec import bitstream
from nodecode.errors import NodecodeError
from nodecode.utils import atomic_path


@dataclass
class Sample:
    key: str
    ndc: bytes | None
    label: int | None = None       # from key.cls
    meta_json: bytes | None = None  # key.json as stored: parsed on first use of .meta (the GPU path never needs it)

    @property
    def meta(self) -> dict | None:
        if self.meta_json is None:
            return None
        try:
            return json.loads(self.meta_json)
        except ValueError:
            raise NodecodeError(f"shard member {self.key}.json is not valid json") from None


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


def _octal_digits(f: np.ndarray) -> np.ndarray:
    """The octal number the digits of each row of (n, width) header fields spell, other bytes skipped."""
    value = np.zeros(len(f), np.int64)
    for j in range(f.shape[1]):
        digit = (f[:, j] >= 48) & (f[:, j] <= 55)
        value = np.where(digit, value * 8 + f[:, j].astype(np.int64) - 48, value)
    return value


def _check_headers(buf: bytes, heads: list[int], where: str, blocks: np.ndarray | None = None) -> None:
    """Every tar header's checksum (bytes summed with the checksum field as spaces), all headers in one numpy pass
    (`blocks`: the header blocks when the caller has them gathered already)."""
    if not heads:
        return
    if blocks is None:
        arr = np.frombuffer(buf, np.uint8, count=len(buf) // 512 * 512).reshape(-1, 512)
        blocks = arr[np.asarray(heads, np.int64) // 512]          # headers sit on 512-byte blocks
    field = blocks[:, 148:156].astype(np.int64)
    got = blocks.sum(1, dtype=np.uint32).astype(np.int64) - field.sum(1) + 8 * 32     # 512 * 255 fits 32 bits
    bad = np.flatnonzero(got != _octal_digits(field))   # the field: leading spaces, then digits, then NUL / space
    if len(bad):
        raise NodecodeError(f"{where}: corrupt tar header at byte {heads[bad[0]]}")


def _walk(buf: bytes, where: str, heads: list[int], start: int = 0) -> list[tuple[str, int, int]]:
    """(name, payload offset, size) of each regular file from the header at `start` on; the offset of every header
    visited goes to `heads`."""
    off, n, pending, out = start, len(buf), None, []
    while off + 512 <= n:
        if buf[off] == 0 and buf.count(0, off, off + 512) == 512:     # the end-of-archive block
            return out
        heads.append(off)
        size = _octal(buf[off + 124: off + 136], where)
        kind = buf[off + 156: off + 157]
        body = off + 512
        if body + size > n:
            raise NodecodeError(f"{where}: truncated tar (member at byte {off} runs past the end)")
        if kind == b"x":
            pending = _pax_path(buf[body: body + size]) or pending
        elif kind == b"L":
            pending = buf[body: body + size].rstrip(b"\0").decode("utf-8")
        elif kind in (b"0", b"\0", b"7"):
            name = pending
            if name is None:
                name = buf[off: off + 100].rstrip(b"\0").decode("utf-8")
                if buf[off + 257: off + 262] == b"ustar" and buf[off + 345] != 0:
                    name = buf[off + 345: off + 500].rstrip(b"\0").decode("utf-8") + "/" + name
            pending = None
            out.append((name, body, size))
        else:                    # directories, links, global pax headers: nothing to read
            pending = None
        off = body + (size + 511) // 512 * 512
    if off < n and buf.count(0, off) != n - off:
        raise NodecodeError(f"{where}: truncated tar")
    return out


def _fields_octal(f: np.ndarray) -> np.ndarray | None:
    """The values of (n, width) octal header fields, or None unless every one is spaces, digits, then NULs / spaces
    (the fields _octal reads the same way)."""
    digit = (f >= 48) & (f <= 55)
    pos = np.arange(f.shape[1])
    first = np.where(digit.any(1), digit.argmax(1), f.shape[1])
    last = np.where(digit.any(1), f.shape[1] - 1 - digit[:, ::-1].argmax(1), -1)
    ok = np.where(pos < first[:, None], f == 32,
                  np.where(pos > last[:, None], (f == 0) | (f == 32), digit))
    return _octal_digits(f) if ok.all() else None


def _header_candidates(buf: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """(the buffer as 512-byte blocks, the blocks carrying the ustar magic), or None when it starts with no such
    header (then only the member walk can read it)."""
    nb = len(buf) // 512
    if nb < 2:
        return None
    blocks = np.frombuffer(buf, np.uint8, count=nb * 512).reshape(nb, 512)
    cand = np.flatnonzero((blocks[:, 257:262] == np.frombuffer(b"ustar", np.uint8)).all(1))
    return (blocks, cand) if len(cand) and cand[0] == 0 else None


def _walk_regular(blocks: np.ndarray, cand: np.ndarray, i0: int, i1: int):
    """(members, header offsets, header blocks) of the candidate headers cand[i0:i1], read in numpy, when they are
    what the member walk would read from cand[i0] on: regular files with short names, each header's size leading
    exactly to the next candidate (to cand[i1], or to the end-of-archive block after the last one); else None."""
    at = cand[i0:i1]
    hdr = blocks[at]
    size = _fields_octal(hdr[:, 124:136])
    if size is None or not np.isin(hdr[:, 156], (48, 0, 55)).all() or hdr[:, 345].any():
        return None
    nxt = at + 1 + (size + 511) // 512
    if (nxt[:-1] != at[1:]).any():
        return None
    if i1 < len(cand):
        if nxt[-1] != cand[i1]:
            return None
    elif nxt[-1] >= len(blocks) or blocks[nxt[-1]].any():
        return None
    try:
        names = [n.decode("utf-8") for n in hdr[:, :100].copy().view("S100")[:, 0].tolist()]
    except UnicodeDecodeError:
        return None
    return list(zip(names, ((at + 1) * 512).tolist(), size.tolist())), (at * 512).tolist(), hdr


def scan_parts(buf: bytes, where: str = "shard", first: int | None = None):
    """(name, payload offset, size) of each regular file of a tar held in memory (ustar, pax and GNU long names), as
    lists: the first `first` members (all when None), then the rest, each list's headers checksummed before it is
    given; a damaged header is reported as such, even when the walk tripped over it first. Headers are read in numpy
    where the tar is regular (_walk_regular), member by member from the first header it declines."""
    found, i0, start = _header_candidates(buf), 0, 0
    if found is not None:
        blocks, cand = found
        for i1 in ([first] if first and first < len(cand) else []) + [len(cand)]:
            part = _walk_regular(blocks, cand, i0, i1)
            if part is None:
                break
            out, heads, hdr = part
            _check_headers(buf, heads, where, hdr)
            yield out
            i0 = i1
        else:
            return
        start = int(cand[i0]) * 512
    heads: list[int] = []
    try:
        out = _walk(buf, where, heads, start)
    except (NodecodeError, ValueError, UnicodeDecodeError) as e:
        _check_headers(buf, heads, where)
        raise e if isinstance(e, NodecodeError) else NodecodeError(f"{where}: not a tar file (bad header)") from None
    _check_headers(buf, heads, where)
    yield out


def scan_members(buf: bytes, where: str = "shard") -> list[tuple[str, int, int]]:
    """All of scan_parts in one list."""
    return [m for part in scan_parts(buf, where) for m in part]


def iter_members(buf: bytes, where: str = "shard"):
    """(name, bytes) of each regular file of a tar held in memory."""
    mv = memoryview(buf)
    for name, off, size in scan_members(buf, where):
        yield name, mv[off: off + size]


def iter_shard(path: str | os.PathLike, first: int | None = None):
    """The samples of a shard, in order, from one sequential read, as lists: those whose members are among the first
    `first` members (all when None), then the others, so that a reader can start on the first ones before the rest
    is parsed. A sample is the run of consecutive members sharing a key (folder + stem up to its first dot), as in
    WebDataset; a key that comes back after another is refused, and members other than .ndc/.cls/.json are ignored."""
    path = Path(path)
    if not path.is_file():
        raise NodecodeError(f"no such file: {path}")
    buf = path.read_bytes()
    seen: set[str] = set()
    cur = None
    for members in scan_parts(buf, str(path), first):
        done = []
        for name, off, size in members:
            dot = name.find(".", name.rfind("/") + 1)
            if dot < 0:
                continue
            key, ext = name[:dot], name[dot + 1:]
            if cur is None or key != cur.key:
                if key in seen:
                    raise NodecodeError(f"{path}: member {name} is not next to the other members of {key}")
                seen.add(key)
                if cur is not None and cur.ndc is not None:
                    done.append(cur)
                cur = Sample(key, None)
            if ext == "ndc":
                cur.ndc = buf[off: off + size]
            elif ext == "cls":
                try:
                    cur.label = int(buf[off: off + size])
                except ValueError:
                    raise NodecodeError(f"{path}: member {name} is not valid cls") from None
            elif ext == "json":
                cur.meta_json = buf[off: off + size]
        if done:
            yield done
    if cur is not None and cur.ndc is not None:
        yield [cur]


def read_shard(path: str | os.PathLike) -> list[Sample]:
    """All samples of a shard (iter_shard), in one list."""
    return [s for part in iter_shard(path) for s in part]


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
