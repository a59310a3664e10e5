"""Start the service for a moment and ask it something: proof that what was packaged and
deployed really serves (the lifecycle flow's last step)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from mlops.errors import MlopsError
from mlops.settings import Workspace
from serving import server_env
from serving.schema import smoke_records


@dataclass(frozen=True)
class ServeCheck:
    url: str
    version: str
    records: int
    seconds: float


def serve_check(
    ws: Workspace, name: str, schema: dict[str, object], *, timeout: float = 120.0
) -> ServeCheck:
    """`bentoml serve` with one worker on a free loopback port until /readyz, one request of
    the manifest's smoke rows, then stop. Raises MlopsError with the server's last log line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = server_env(ws, name, workers=1)
    bentoml = Path(sys.executable).parent / "bentoml"
    log = ws.home / "reports" / "serve-check.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(bentoml), "serve", "serving.service:MlopsService", "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            while not _ready(url):
                if proc.poll() is not None or time.monotonic() - started > timeout:
                    raise MlopsError(f"the service did not become ready: {_last_line(log)}")
                time.sleep(0.2)
            rows = smoke_records(schema)
            r = httpx.post(f"{url}/predict", json={"records": rows}, timeout=30)
            if r.status_code != 200:
                raise MlopsError(f"the service answered {r.status_code}: {r.text[:200]}")
            return ServeCheck(url, r.json()["version"], len(rows), time.monotonic() - started)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _last_line(log: Path) -> str:
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1][:300] if lines else "no output"
