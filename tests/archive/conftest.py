"""Fixtures of the archive suite: a real PostgreSQL server (Debian's binaries, started in a temp dir), the same
tests parametrized over SQLite and PostgreSQL, small real photos, a `nodecode serve` subprocess."""
import glob
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from nodecode.archive.testing import Server, free_port, subprocess_env as env

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def pg_server():
    """postgresql://postgres@127.0.0.1:PORT — a throwaway server (initdb + pg_ctl), stopped and removed after."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) not installed")
    bindir = Path(bins[-1]).parent
    tmp = Path(tempfile.mkdtemp(prefix="nodecode-pg-"))
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
    port = free_port()
    data = tmp / "data"
    subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                 "--no-sync"]), check=True, capture_output=True, timeout=120)
    subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-w", "-t", "60",
                                 "-o", f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]),
                   check=True, capture_output=True, timeout=90)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


_dbs = iter(range(10**6))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    """None (SQLite inside the archive) or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    import psycopg
    base = request.getfixturevalue("pg_server")
    name = f"archive_{os.getpid()}_{next(_dbs)}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"


def _samples() -> list[np.ndarray]:
    from skimage import data
    return [data.astronaut(), data.chelsea(), data.coffee(), np.stack([data.camera()] * 3, -1), data.rocket(),
            data.immunohistochemistry()]


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """Six real photos (scikit-image samples) as 224x224 JPEGs."""
    from PIL import Image
    root = tmp_path_factory.mktemp("photos")
    for i, img in enumerate(_samples()):
        Image.fromarray(img).resize((224, 224), Image.BILINEAR).save(root / f"photo{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def many_photos(tmp_path_factory) -> Path:
    """24 distinct small JPEGs (96x96 crops of the sample photos) for crash and load tests."""
    from PIL import Image
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    imgs = _samples()
    for i in range(24):
        img = imgs[i % len(imgs)]
        y, x = rng.integers(0, img.shape[0] - 96), rng.integers(0, img.shape[1] - 96)
        Image.fromarray(img[y:y + 96, x:x + 96]).save(root / f"crop{i:02d}.jpg", quality=90)
    return root


def cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nodecode.cli", *map(str, args)], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def consistency(archive: Path, restart: bool = False) -> dict:
    """Rows and objects agree one to one, every image has its labels, no temp files; returns counts.

    restart: open the archive as a writer first, as a restarted `add` or server does (repairs what a crash left)."""
    from nodecode.archive.store import Archive
    with Archive(archive, write=restart) as ar:
        shas = [r[0] for r in ar.db.query("SELECT sha256 FROM images")]
        labels = ar.db.query("SELECT COUNT(*) FROM labels")[0][0]
        names = [r[0] for r in ar.db.query("SELECT name FROM images")]
    objects = sorted(p.stem for p in (archive / "objects").glob("*/*.ndc"))
    temps = [p for p in (archive / "objects").glob("*/.*")]
    assert sorted(shas) == objects, "rows and objects differ"
    assert len(set(shas)) == len(shas)
    assert not temps, f"temp files left: {temps}"
    assert labels == 5 * len(shas)
    return {"images": len(shas), "names": names}


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def server_factory():
    started = []

    def make(archive, *extra):
        s = Server(archive, *extra)
        started.append(s)
        return s
    yield make
    for s in started:
        s.stop()


def png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()
