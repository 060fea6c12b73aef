"""The archive on SQLite and on PostgreSQL (the same tests, parametrized by `db_url`): CLI, idempotence,
indexing from symbols, search, similarity, get, stats, bad input, repair, transactions, kill -9 of `archive add`."""
import json
import signal
import time

import numpy as np
import pytest
from PIL import Image

from .conftest import cli, consistency, sha_of
from nodecode.cli import main


def init(tmp_path, db_url):
    ar = tmp_path / "ar"
    assert main(["archive", "init", str(ar)] + (["--db", db_url] if db_url else [])) == 0
    return ar


def test_add_search_similar_get_stats(tmp_path, db_url, photos, capsys):
    from nodecode.archive.store import Archive
    from nodecode.tasks.classification import bundled_classifier, load_classifier
    ar = init(tmp_path, db_url)
    assert main(["archive", "add", str(ar), str(photos), "--quiet"]) == 0
    assert "6 added, 0 already there" in capsys.readouterr().out
    # idempotent: the same files again, and one of them under another name, are not stored twice
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "copy.jpg").write_bytes((photos / "photo0.jpg").read_bytes())
    assert main(["archive", "add", str(ar), str(photos), str(tmp_path / "again"), "--quiet"]) == 0
    assert "0 added, 7 already there" in capsys.readouterr().out
    assert consistency(ar)["images"] == 6

    classes = load_classifier(bundled_classifier("c8"))[1]["class_names"]
    with Archive(ar) as a:
        img = a.image(1)
        # labels: top-5 softmax probabilities of the bundled classifier, best first
        scores = [l["score"] for l in img["labels"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-5
        assert all(l["name"] in classes for l in img["labels"])
        # areas: fractions of the segmenter's classes summing to one
        assert img["areas"] and abs(sum(img["areas"].values()) - 1) < 1e-4
        assert img["ndc_bytes"] < img["orig_bytes"] and (img["width"], img["height"]) == (224, 224)
        emb = a.embedding(1)
        assert emb.dtype == np.float32 and abs(np.linalg.norm(emb) - 1) < 1e-4
        top1 = img["labels"][0]["name"]

    assert main(["archive", "search", str(ar), top1, "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert 1 in [h["id"] for h in hits] and all(h["match"] == top1 for h in hits)
    assert [h["score"] for h in hits] == sorted([h["score"] for h in hits], reverse=True)
    assert main(["archive", "search", str(ar), top1, "--min-score", "1.01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    assert main(["archive", "similar", str(ar), "1", "-k", "3", "--json"]) == 0
    near = json.loads(capsys.readouterr().out)
    assert len(near) == 3 and 1 not in [h["id"] for h in near]
    assert [h["score"] for h in near] == sorted([h["score"] for h in near], reverse=True)
    # an image file as the query: the stored copy of that very image is its nearest neighbour
    assert main(["archive", "similar", str(ar), str(photos / "photo2.jpg"), "-k", "1", "--json"]) == 0
    best = json.loads(capsys.readouterr().out)[0]
    assert best["name"] == "photo2.jpg" and best["score"] > 0.999

    out = tmp_path / "one.png"
    assert main(["archive", "get", str(ar), "1", "-o", str(out)]) == 0
    capsys.readouterr()
    dec = np.asarray(Image.open(out).convert("RGB"), dtype=np.float64)
    orig = np.asarray(Image.open(photos / "photo0.jpg").convert("RGB"), dtype=np.float64)
    assert dec.shape == orig.shape and 10 * np.log10(255**2 / ((dec - orig) ** 2).mean()) > 18  # a real decode

    assert main(["archive", "stats", str(ar), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["images"] == 6 and sum(s["labels"].values()) == 6
    assert s["ndc_bytes"] == s["objects_on_disk_bytes"] < s["original_bytes"]
    assert s["database"] == ("postgresql" if db_url else "sqlite")


def test_bad_input(tmp_path, db_url, photos, capsys):
    ar = init(tmp_path, db_url)
    assert main(["archive", "init", str(ar)]) == 2                       # already an archive
    assert main(["archive", "init", str(tmp_path / "x"), "--db", "mysql://h/db"]) == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.jpg").write_text("not an image")
    (bad / "cut.jpg").write_bytes((photos / "photo1.jpg").read_bytes()[:2000])
    ndc = tmp_path / "x.ndc"
    assert main(["compress", str(photos / "photo3.jpg"), "-o", str(ndc)]) == 0
    data = bytearray(ndc.read_bytes())
    data[len(data) // 2] ^= 0x40
    (bad / "flip.ndc").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["archive", "add", str(ar), str(bad), str(photos / "photo0.jpg"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("rejected:") == 3 and "Traceback" not in err
    assert consistency(ar)["names"] == ["photo0.jpg"]                    # the good file went in, nothing else
    assert main(["archive", "add", str(ar), str(ndc), "--quiet"]) == 0   # an intact .ndc is stored as is
    assert main(["archive", "get", str(ar), "99", "-o", str(tmp_path / "o.png")]) == 2
    assert main(["archive", "get", str(ar), "1", "-o", str(tmp_path / "o.txt")]) == 2
    assert main(["archive", "similar", str(ar), "nope.jpg"]) == 2
    assert main(["archive", "stats", str(tmp_path / "nothing")]) == 2
    assert main(["archive", "add", str(ar), str(tmp_path / "missing")]) == 2
    assert consistency(ar)["images"] == 2


def test_repair_and_transaction(tmp_path, db_url, photos, monkeypatch):
    from nodecode.archive.index import Indexer
    from nodecode.archive.store import Archive
    ar = init(tmp_path, db_url)
    assert main(["archive", "add", str(ar), str(photos), "--quiet"]) == 0
    # what a crash can leave: a temp file, an object without a row; and (damage) a row without its object
    (ar / "objects" / "ab").mkdir(exist_ok=True)
    (ar / "objects" / "ab" / ".tmp.123.tmp").write_bytes(b"partial")
    (ar / "objects" / "ab" / ("ab" + "0" * 62 + ".ndc")).write_bytes(b"orphan")
    next((ar / "objects").glob("*/" + sha_of(photos / "photo4.jpg") + ".ndc")).unlink()
    with Archive(ar, write=True) as a:
        assert a.repaired == {"temp_files": 1, "orphan_objects": 1, "rows_without_object": 1}
    assert consistency(ar)["images"] == 5
    # a failing DB transaction leaves neither a row nor the object
    rows = Indexer("c8").rows([("photo4.jpg", (photos / "photo4.jpg").read_bytes())])
    with Archive(ar, write=True) as a, monkeypatch.context() as m:
        m.setattr(type(a.db), "transaction", lambda self: (_ for _ in ()).throw(RuntimeError("disk full")))
        with pytest.raises(RuntimeError):
            a.put(rows[0])
    assert consistency(ar)["images"] == 5
    assert main(["archive", "add", str(ar), str(photos), "--quiet"]) == 0   # rerun completes it
    assert consistency(ar)["images"] == 6


def test_concurrent_puts_of_the_same_content(tmp_path, db_url, photos, monkeypatch):
    """The server's upload threads storing one image at once (a shared duplicate): one is new, the rest get its id,
    none fails, and the object stays. A slow fsync widens the window in which two writes of the object overlap."""
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from nodecode.archive.index import Indexer
    from nodecode.archive.store import Archive
    ar = init(tmp_path, db_url)
    row = Indexer("c8").rows([("photo1.jpg", (photos / "photo1.jpg").read_bytes())])[0]
    fsync, start = os.fsync, threading.Barrier(4)
    monkeypatch.setattr(os, "fsync", lambda fd: (time.sleep(0.05), fsync(fd))[1])
    with Archive(ar, write=True) as a:
        def put(_):
            start.wait()
            return a.put(row)
        with ThreadPoolExecutor(4) as ex:
            got = list(ex.map(put, range(4)))
        assert sorted(new for _, new in got) == [False, False, False, True] and len({i for i, _ in got}) == 1
        assert a.ndc(got[0][0]) == row.ndc
    assert consistency(ar)["images"] == 1


def test_kill9_of_add_then_rerun(tmp_path, db_url, many_photos):
    ar = init(tmp_path, db_url)
    proc = cli("archive", "add", ar, many_photos, "--batch", "2", "--quiet")
    from nodecode.archive.store import Archive
    deadline = time.time() + 180
    with Archive(ar) as a:
        while time.time() < deadline and proc.poll() is None:
            if a.db.query("SELECT COUNT(*) FROM images")[0][0] >= 3:
                break
            time.sleep(0.05)
    assert proc.poll() is None, "add finished before it could be killed: " + proc.stderr.read()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    n = consistency(ar, restart=True)["images"]
    assert 3 <= n < 24
    done = cli("archive", "add", ar, many_photos, "--quiet")
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, err
    assert f"{24 - n} added, {n} already there" in out
    assert consistency(ar)["images"] == 24
