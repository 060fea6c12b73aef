"""`nodecode serve` in a subprocess on a free 127.0.0.1 port, for the archive's tests and its load benchmark
(experiments/archive/bench.py). Needs httpx (the `test` extra)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[2]          # the folder holding this package


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict:
    """This environment, with this package importable and 2 OpenMP threads (a server beside its clients)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(SRC), e.get("PYTHONPATH", "")])
    e["OMP_NUM_THREADS"] = "2"
    return e


class Server:
    """`nodecode serve ARCHIVE EXTRA...` started and answering /api/stats (or RuntimeError within 120 s)."""

    def __init__(self, archive: Path, *extra):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "nodecode.cli", "serve", str(archive), "--port",
                                      str(self.port), *map(str, extra)], env=subprocess_env(), stdout=self.log,
                                     stderr=subprocess.STDOUT)
        import httpx
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"server exited: {self.log.read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/stats", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not start in 120 s")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()
