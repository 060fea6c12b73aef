"""`nodecode serve` as a subprocess on 127.0.0.1 (SQLite and PostgreSQL): API, token, bad uploads, traversal,
concurrent clients (bounded), kill -9 mid-ingest and restart."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from .conftest import consistency, png_bytes
from nodecode.cli import main

TOKEN = "s3cret-token"


@pytest.fixture
def archive(tmp_path, db_url):
    ar = tmp_path / "ar"
    assert main(["archive", "init", str(ar)] + (["--db", db_url] if db_url else [])) == 0
    return ar


def up(url, name, data, token=TOKEN):
    return httpx.post(f"{url}/api/images", files={"file": (name, data)},
                      headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=120)


def test_api_and_bad_uploads(archive, photos, tmp_path, server_factory):
    s = server_factory(archive, "--token", TOKEN, "--max-upload-mb", "1", "--max-pixels", "4000000")
    good = (photos / "photo1.jpg").read_bytes()
    assert up(s.url, "p.jpg", good, token=None).status_code == 401
    assert up(s.url, "p.jpg", good, token="wrong").status_code == 401
    r = up(s.url, "p.jpg", good)
    assert r.status_code == 201
    first = r.json()["id"]
    r2 = up(s.url, "again.jpg", good)
    assert r2.status_code == 200 and r2.json() == {"id": first, "new": False}

    ndc = tmp_path / "x.ndc"
    assert main(["compress", str(photos / "photo2.jpg"), "-o", str(ndc)]) == 0
    flipped = bytearray(ndc.read_bytes())
    flipped[len(flipped) // 2] ^= 0x08
    bomb = tmp_path / "bomb.png"
    Image.new("L", (6000, 6000)).save(bomb)          # 36 MP in a few kB: refused from the header
    rng = np.random.default_rng(0)
    bad = {"text.jpg": (b"hello, not an image", 400), "cut.jpg": (good[: len(good) // 3], 400),
           "bomb.png": (bomb.read_bytes(), 413), "flip.ndc": (bytes(flipped), 400),
           "huge.png": (png_bytes(rng.integers(0, 255, (700, 700, 3), dtype=np.uint8)), 413),
           "empty.jpg": (b"", 400)}
    for name, (data, status) in bad.items():
        r = up(s.url, name, data)
        assert r.status_code == status, (name, r.text)
        msg = r.json()["error"]
        assert msg and "\n" not in msg and "Traceback" not in msg
    assert httpx.get(f"{s.url}/api/stats").json()["images"] == 1        # nothing changed
    r = up(s.url, "x.ndc", ndc.read_bytes())                             # an intact .ndc is accepted as is
    assert r.status_code == 201
    second = r.json()["id"]

    info = httpx.get(f"{s.url}/api/images/{first}").json()
    assert info["name"] == "p.jpg" and len(info["labels"]) == 5 and info["areas"]
    hits = httpx.get(f"{s.url}/api/search", params={"q": info["labels"][0]["name"]}).json()["results"]
    assert first in [h["id"] for h in hits]
    near = httpx.get(f"{s.url}/api/similar/{first}", params={"k": 5}).json()["results"]
    assert [h["id"] for h in near] == [second]
    for path, kind in (("thumb.jpg", "JPEG"), ("image.png", "PNG"), ("overlay.png", "PNG")):
        r = httpx.get(f"{s.url}/api/images/{first}/{path}", timeout=60)
        assert r.status_code == 200
        import io
        im = Image.open(io.BytesIO(r.content))
        assert im.format == kind and im.size == (224, 224)
    assert list((archive / "cache" / "thumbs").glob("*.jpg"))             # decoded once, cached
    # nothing from a request reaches the filesystem unchecked
    for path in ("/api/images/..%2F..%2Fetc%2Fpasswd/thumb.jpg", "/api/images/1%2F..%2F..%2Farchive.json/file.ndc",
                 "/static/..%2F..%2Farchive.json", "/static/../store.py", "/api/images/-1", "/api/images/99"):
        r = httpx.get(s.url + path)
        assert r.status_code in (404, 422), (path, r.status_code)
        assert b"nodecode-archive" not in r.content and b"import" not in r.content
    page = httpx.get(f"{s.url}/", params={"q": "<script>x</script>"}).text
    assert "<script>x</script>" not in page                            # escaped by Jinja2
    consistency(archive)


def test_concurrent_clients(archive, many_photos, server_factory):
    """6 clients for ~10 s: each uploads its own photos (and one shared duplicate) and searches in between."""
    s = server_factory(archive)
    files = sorted(many_photos.glob("*.jpg"))[:18]
    shared = files[0].read_bytes()
    statuses, lost = [], []
    stop_at = time.time() + 10

    def client(k):
        mine = files[1 + k::6]
        for f in mine:
            r = up(s.url, f.name, f.read_bytes(), token=None)
            statuses.append(r.status_code)
            if r.status_code not in (200, 201):
                lost.append((f.name, r.status_code))
            statuses.append(up(s.url, "dup.jpg", shared, token=None).status_code)
        rounds = 0
        while time.time() < stop_at or rounds < 3:          # searches while the others upload, at least 3 rounds
            statuses.append(httpx.get(f"{s.url}/api/search", params={"q": "sky"}, timeout=120).status_code)
            statuses.append(httpx.get(f"{s.url}/", timeout=120).status_code)
            rounds += 1

    with ThreadPoolExecutor(6) as ex:
        list(ex.map(client, range(6)))
    assert not lost
    assert all(st < 500 for st in statuses) and len(statuses) >= 2 * 17 + 6 * 3 * 2
    assert consistency(archive)["images"] == 18


def test_kill9_server_mid_ingest(archive, many_photos, server_factory):
    s = server_factory(archive)
    files = sorted(many_photos.glob("*.jpg"))
    done = []

    def uploader():
        for f in files:
            try:
                if up(s.url, f.name, f.read_bytes(), token=None).status_code in (200, 201):
                    done.append(f.name)
            except httpx.HTTPError:
                return

    t = threading.Thread(target=uploader)
    t.start()
    deadline = time.time() + 120
    while len(done) < 3 and time.time() < deadline:
        time.sleep(0.02)
    s.kill9()
    t.join(timeout=60)
    assert 3 <= len(done) < len(files)
    s2 = server_factory(archive)                                         # restart: repairs what the kill left
    n = consistency(archive)["images"]
    assert n >= len(done)                                                # nothing acknowledged was lost
    for f in files:                                                      # rerun completes it
        assert up(s2.url, f.name, f.read_bytes(), token=None).status_code in (200, 201)
    assert consistency(archive)["images"] == len(files)
